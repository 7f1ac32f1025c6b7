"""The segmentation toy's pieces: labelled canvases, bilinear upsampling (against finite
differences and the canvases' own resampling), the per-pixel loss, and the net's variants."""

import numpy as np
import pytest

from dcn_numba.apps.segmentation.data import BACKGROUND, CLASSES, labelled_canvases
from dcn_numba.apps.segmentation.model import RES5, SegNet, pixel_cross_entropy, width_matched
from dcn_numba.data.canvases import INK_THRESHOLD, make_canvases, resize
from dcn_numba.data.mnist import load_mnist
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.engine.nn import Conv2d, DeformConv2d
from dcn_numba.engine.upsample import bilinear_matrix, upsample_bilinear
from dcn_numba.reference.gradcheck import check_gradients
from engine.autograd_helpers import check_tensor_function


@pytest.fixture(scope="module")
def digits():
    return load_mnist().test


@pytest.mark.parametrize("make, name", [(labelled_canvases, "labelled_canvases"), (make_canvases, "make_canvases")],
                         ids=["labelled", "plain"])
@pytest.mark.parametrize("arguments, message", [({"count": -1}, "count must be >= 0, got -1"),
                                                ({"count": 2, "height_range": (20, 70)},
                                                 r"height_range must satisfy 1 <= low <= high <= size = 64, got \(20, 70\)")],
                         ids=["negative_count", "height_over_size"])
def test_bad_canvas_options_are_refused_in_the_callers_name(digits, make, name, arguments, message):
    with pytest.raises(ValueError, match=f"^{name}: {message}$"):
        make(digits, seed=0, **arguments)


def test_labelled_canvases_are_the_detectors_canvases(digits):
    ours = labelled_canvases(digits, 6, seed=3)
    theirs = make_canvases(digits, 6, seed=3)
    np.testing.assert_array_equal(ours.images, theirs.images)
    for a, b in zip(ours.boxes, theirs.boxes):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ours.digit_labels, theirs.labels):
        np.testing.assert_array_equal(a, b)


def test_digit_pixels_are_ink_inside_their_digits_box_and_the_rest_is_background(digits):
    canvases = labelled_canvases(digits, 8, seed=4, noise=0.0)
    assert canvases.labels.dtype == np.uint8 and canvases.labels.shape == (8, 64, 64)
    fragment_pixels = 0
    for image, labels, boxes, classes in zip(canvases.images, canvases.labels, canvases.boxes,
                                             canvases.digit_labels):
        inside_a_box = np.zeros(labels.shape, dtype=bool)
        for (x1, y1, x2, y2), digit in zip(boxes.astype(int), classes):
            inside_a_box[y1:y2, x1:x2] = True
            assert (labels[y1:y2, x1:x2] == digit).any()
        digit_pixels = labels != BACKGROUND
        assert (image[0][digit_pixels] > INK_THRESHOLD).all()
        assert not (digit_pixels & ~inside_a_box).any()
        # Ink outside every box is a fragment of another digit: background.
        fragments = (image[0] > INK_THRESHOLD) & ~inside_a_box
        assert (labels[fragments] == BACKGROUND).all()
        fragment_pixels += fragments.sum()
    assert fragment_pixels > 0


def test_bilinear_matrix_resamples_as_the_canvases_do():
    image = np.random.default_rng(0).random((5, 7))
    for height, width in ((20, 28), (5, 7), (3, 4)):
        rows, columns = (bilinear_matrix(np, n, m, np.float64) for n, m in ((5, height), (7, width)))
        np.testing.assert_allclose(rows @ image @ columns.T, resize(image, height, width), atol=1e-12)


def test_upsampling_by_two_by_hand():
    # Output rows 0..3 read input rows at (i + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, 1.25, clamped:
    # 0, 0.25, 0.75, 1 → a, 0.75a + 0.25c, 0.25a + 0.75c, c (same along columns).
    x = np.array([[[[1.0, 3.0], [5.0, 9.0]]]])
    out = upsample_bilinear(Tensor(x), (4, 4)).data[0, 0]
    np.testing.assert_allclose(out[:, 0], [1.0, 2.0, 4.0, 5.0])
    np.testing.assert_allclose(out[0], [1.0, 1.5, 2.5, 3.0])
    np.testing.assert_allclose(out[1, 1], 0.75 * (0.75 * 1 + 0.25 * 3) + 0.25 * (0.75 * 5 + 0.25 * 9))


@pytest.mark.parametrize("size, output_size", [((3, 4), (12, 16)), ((4, 4), (5, 3)), ((2, 5), (2, 5))])
def test_upsampling_gradient_against_finite_differences(size, output_size):
    x = np.random.default_rng(1).standard_normal((2, 3, *size))
    check_tensor_function(lambda x: upsample_bilinear(x, output_size), {"x": x})


def test_upsampling_rejects_a_bad_input():
    with pytest.raises(ValueError, match="upsample_bilinear: input must be"):
        upsample_bilinear(Tensor(np.zeros((2, 3, 4))), (8, 8))


def test_pixel_cross_entropy_is_the_engines_cross_entropy_over_pixels():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 4, 3, 5))
    labels = rng.integers(0, 4, (2, 3, 5))
    rows = logits.transpose(0, 2, 3, 1).reshape(-1, 4)
    expected = F.cross_entropy(Tensor(rows), labels.reshape(-1)).item()
    assert pixel_cross_entropy(Tensor(logits), labels).item() == pytest.approx(expected)
    check_tensor_function(lambda z: pixel_cross_entropy(z, labels), {"z": logits})


def test_pixel_cross_entropy_names_bad_labels():
    with pytest.raises(ValueError, match="one per pixel"):
        pixel_cross_entropy(Tensor(np.zeros((1, 3, 4, 4))), np.zeros((1, 4, 5), dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pixel_cross_entropy(Tensor(np.zeros((1, 3, 2, 2))), np.full((1, 2, 2), 3))


TINY = dict(channels=(2, 3))


def test_segnet_scores_every_pixel_and_names_res5():
    net = SegNet(deformable_layers=2, **TINY)
    logits = net(Tensor(np.random.default_rng(3).random((2, 1, 16, 12), dtype=np.float32)))
    assert logits.shape == (2, CLASSES, 16, 12)
    kinds = [type(conv) for _, conv, _ in net.res5()]
    assert kinds == [Conv2d, DeformConv2d, DeformConv2d]
    names = [name for name, _ in net.named_parameters()]
    assert {"res5a.weight", "res5b.offset_conv.weight", "res5c.offset_conv.weight", "classifier.weight"} <= set(names)
    assert [name for name, _, _ in net.res5()] == list(RES5)


@pytest.mark.parametrize("options", [dict(deformable_layers=3), dict(dilation=4)])
def test_variants_start_from_the_regular_nets_function(options):
    images = Tensor(np.random.default_rng(4).random((2, 1, 16, 16), dtype=np.float32))
    with no_grad():
        regular = SegNet(seed=5, **TINY).eval()(images).data
        variant = SegNet(seed=5, **TINY, **options).eval()(images).data
    if "dilation" in options:
        assert not np.allclose(variant, regular)  # same weights, wider taps
    else:
        np.testing.assert_allclose(variant, regular, rtol=1e-5, atol=1e-6)


def test_dilated_res5_keeps_the_map_and_spreads_its_taps():
    net = SegNet(dilation=6, **TINY)
    for _, conv, _ in net.res5():
        assert conv.dilation == 6 and conv.padding == 6
    assert net(Tensor(np.zeros((1, 1, 64, 64), dtype=np.float32))).shape == (1, CLASSES, 64, 64)


def test_width_matched_is_the_nearest_parameter_count():
    target = SegNet(deformable_layers=3).num_parameters()
    width = width_matched(target)
    gap = abs(SegNet(width=width).num_parameters() - target)
    for other in (width - 1, width + 1):
        assert abs(SegNet(width=other).num_parameters() - target) >= gap
    assert gap < 0.05 * target


def test_segnet_gradients_against_finite_differences():
    net = SegNet(deformable_layers=3, seed=6, **TINY).to(dtype=np.float64)
    rng = np.random.default_rng(7)
    for _, conv, _ in net.res5():  # off the integer grid, where bilinear sampling has kinks
        conv.offset_conv.bias.data[...] = 0.3 + 0.1 * rng.standard_normal(conv.offset_conv.bias.shape)
    images = rng.random((2, 1, 8, 8))
    labels = rng.integers(0, CLASSES, (2, 8, 8))
    parameters = dict(net.named_parameters())
    net.zero_grad()
    with F.backend("reference"):
        pixel_cross_entropy(net(Tensor(images)), labels).backward()
    analytic = {name: p.grad for name, p in parameters.items()}

    def loss(**values):
        for name, value in values.items():
            parameters[name].data = value
        with no_grad(), F.backend("reference"):
            return pixel_cross_entropy(net(Tensor(images)), labels).data

    values = {name: p.data.copy() for name, p in parameters.items()}
    check_gradients(loss, values, 1.0, analytic, mode="random", rtol=1e-5, atol=1e-8)


def test_segnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="deformable_layers"):
        SegNet(deformable_layers=4)
    with pytest.raises(ValueError, match="dilation"):
        SegNet(deformable_layers=1, dilation=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        SegNet(**TINY)(Tensor(np.zeros((1, 1, 10, 12), dtype=np.float32)))
