"""Digit canvases for the toy detector: MNIST digits of many sizes, clutter, and tight boxes.

A canvas is a size×size image (64×64 by default, background 0) holding 1 to `max_digits` MNIST
digits, each cut to its ink, scaled to a height drawn log-uniformly from `height_range` (14–56
pixels: 4×, so that one receptive field cannot fit them all) and placed where it overlaps the
digits already there by an IoU of at most `max_iou`. Clutter makes the task harder than finding
ink: `fragments` pieces cut from other digits (strokes that look like a 1, an arc of a 0) are
placed where they touch no digit's box, and Gaussian noise covers the whole canvas.

The ground-truth box of a digit is the tight box of its own ink (pixels above `INK_THRESHOLD`
after scaling), in continuous pixel coordinates [x1, y1, x2, y2): pixel (row i, column j)
covers [j, j+1)×[i, i+1), so a digit whose ink spans columns 3..9 has x1 = 3, x2 = 10.

Everything comes from one seeded generator, so the same digits and seed give the same canvases;
train canvases are built from the training digits and test canvases from the test digits, and the
digits each canvas used (digits and fragments alike) are recorded in `sources`.
"""

from typing import NamedTuple

import numpy as np

INK_THRESHOLD = 0.3  # a pixel at least this bright is ink (MNIST strokes are ~1, their rims fade)
MAX_PLACEMENT_TRIES = 50


class Canvases(NamedTuple):
    """images (N, 1, size, size) float32 in [0, 1]; per canvas, boxes (n_i, 4) float32 rows
    [x1, y1, x2, y2), labels (n_i,) int64 and sources (indices into the digits it was made from,
    its own digits first, then the fragments')."""

    images: np.ndarray
    boxes: list
    labels: list
    sources: list


def ink_box(image, threshold=INK_THRESHOLD):
    """The tight box [x1, y1, x2, y2) of the pixels of image (H, W) above threshold, or None."""
    rows, cols = np.flatnonzero((image > threshold).any(axis=1)), np.flatnonzero((image > threshold).any(axis=0))
    if len(rows) == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def resize(image, height, width):
    """image (h, w) resampled to (height, width) by bilinear interpolation between pixel
    centres: output pixel centre i + 0.5 reads input position (i + 0.5)·h/height − 0.5, clamped."""
    h, w = image.shape
    y = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    x = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    ly, lx = (y - y0)[:, None], (x - x0)[None, :]
    top = image[y0][:, x0] * (1 - lx) + image[y0][:, x1] * lx
    bottom = image[y1][:, x0] * (1 - lx) + image[y1][:, x1] * lx
    return top * (1 - ly) + bottom * ly


def box_iou(a, b):
    """IoU of every box of a (n, 4) with every box of b (m, 4), boxes [x1, y1, x2, y2): (n, m)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def scaled_digit(image, height, max_width):
    """A digit (H, W) cut to its ink box and scaled to `height` rows, keeping its aspect ratio;
    a digit that would be wider than max_width is scaled to that width instead."""
    x1, y1, x2, y2 = ink_box(image).astype(int)
    ink = image[y1:y2, x1:x2]
    aspect = ink.shape[1] / ink.shape[0]
    height = min(height, int(max_width / aspect))
    width = max(1, int(round(aspect * height)))
    return resize(ink, height, width)


def place(canvas, patch, top, left):
    """Draw patch onto canvas at (top, left), keeping the brighter pixel where strokes cross."""
    h, w = patch.shape
    np.maximum(canvas[top:top + h, left:left + w], patch, out=canvas[top:top + h, left:left + w])


def add_digit(canvas, boxes, digit, height, max_iou, rng):
    """Place a digit of `height` rows at a random position inside the canvas overlapping every box
    in `boxes` by an IoU of at most max_iou; returns its tight ink box, or None if no position
    was found in MAX_PLACEMENT_TRIES draws."""
    size = canvas.shape[0]
    patch = scaled_digit(digit, height, size)
    h, w = patch.shape
    own_box = ink_box(patch)
    for _ in range(MAX_PLACEMENT_TRIES):
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        box = own_box + np.array([left, top, left, top], dtype=np.float32)
        if not boxes or box_iou(box, np.array(boxes)).max() <= max_iou:
            place(canvas, patch, top, left)
            return box
    return None


def add_fragment(canvas, boxes, digit, rng, height_range):
    """Cut a random piece (30–60% of each side) of a scaled digit and place it where it touches no
    box in `boxes`; returns whether it was placed."""
    patch = scaled_digit(digit, int(rng.integers(*height_range)), canvas.shape[1])
    h, w = patch.shape
    ph, pw = max(2, int(h * rng.uniform(0.3, 0.6))), max(2, int(w * rng.uniform(0.3, 0.6)))
    y, x = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    piece = patch[y:y + ph, x:x + pw]
    size = canvas.shape[0]
    for _ in range(MAX_PLACEMENT_TRIES):
        top, left = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
        box = np.array([left, top, left + pw, top + ph], dtype=np.float32)
        if not boxes or box_iou(box, np.array(boxes)).max() == 0:
            place(canvas, piece, top, left)
            return True
    return False


def check_canvas_options(caller, count, size, height_range):
    """Raise a ValueError, naming `caller`, unless count >= 0 and 1 <= low <= high <= size."""
    if count < 0:
        raise ValueError(f"{caller}: count must be >= 0, got {count!r}")
    if not 1 <= height_range[0] <= height_range[1] <= size:
        raise ValueError(f"{caller}: height_range must satisfy 1 <= low <= high <= size = {size}, "
                         f"got {height_range!r}")


def make_canvases(digits, count, seed, size=64, max_digits=4, height_range=(14, 56), max_iou=0.1,
                  fragments=(2, 6), noise=0.1, draw_digit=None):
    """`count` canvases drawn from `digits` (a data.Digits) with a generator seeded by `seed`.

    Each canvas draws n ~ U{1..max_digits} digits (one placement attempt each; the first always
    lands, since it has the canvas to itself) of height log-uniform in height_range (a digit too
    wide for the canvas at that height is made as wide as the canvas),
    then U{fragments} fragments of digits of height in 14–40, then adds N(0, noise²) noise,
    clipped to [0, 1].

    draw_digit, when given, draws each digit instead of `add_digit`, told also the canvas's number
    n and the digit's label: draw_digit(n, label, canvas, boxes, digit, height, max_iou, rng)
    returns the digit's box or None, as add_digit does, after the same draws from rng, so that the
    canvases stay the same (the segmentation toy labels each digit's pixels so).
    """
    check_canvas_options("make_canvases", count, size, height_range)
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, size, size), dtype=np.float32)
    all_boxes, all_labels, all_sources = [], [], []
    log_low, log_high = np.log(height_range[0]), np.log(height_range[1] + 1)
    for n in range(count):
        canvas, boxes, labels, sources = images[n, 0], [], [], []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            index = int(rng.integers(len(digits.labels)))
            height = min(size, int(np.exp(rng.uniform(log_low, log_high))))
            label, digit = int(digits.labels[index]), digits.images[index, 0]
            box = (add_digit(canvas, boxes, digit, height, max_iou, rng) if draw_digit is None
                   else draw_digit(n, label, canvas, boxes, digit, height, max_iou, rng))
            if box is not None:
                boxes.append(box)
                labels.append(label)
                sources.append(index)
        for _ in range(int(rng.integers(fragments[0], fragments[1] + 1))):
            index = int(rng.integers(len(digits.labels)))
            if add_fragment(canvas, boxes, digits.images[index, 0], rng, (14, 41)):
                sources.append(index)
        canvas += rng.normal(0, noise, canvas.shape).astype(np.float32)
        np.clip(canvas, 0, 1, out=canvas)
        all_boxes.append(np.array(boxes, dtype=np.float32).reshape(-1, 4))
        all_labels.append(np.array(labels, dtype=np.int64))
        all_sources.append(np.array(sources, dtype=np.int64))
    return Canvases(images, all_boxes, all_labels, all_sources)
