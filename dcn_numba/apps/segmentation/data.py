"""Digit canvases labelled per pixel: the detector's canvases, with the class of every pixel.

The canvases are those of `dcn_numba.data.canvases.make_canvases` (64×64, 1 to 4 digits of
heights 14–56 pixels, fragments of other digits and Gaussian noise as clutter; a test holds the
images equal for the same digits and seed). Each pixel gets one of CLASSES = 11 labels:

* the digit's class, 0 to 9, where that digit's own scaled ink is brighter than INK_THRESHOLD
  (the canvases' definition of ink, which makes the digit's box) and at least as bright as any
  other digit's ink there (a canvas keeps the brighter stroke where two digits cross);
* BACKGROUND = 10 everywhere else: the empty canvas, the noise, and the fragments of other
  digits, which look like strokes but are not digits (the clutter a segmentation net must learn
  to ignore).

A digit's label is thus its value, and the background comes last. Train canvases come from the
training digits and test canvases from the test digits, so no test digit is ever trained on.
"""

from typing import NamedTuple

import numpy as np

from dcn_numba.data.canvases import INK_THRESHOLD, add_digit, add_fragment

BACKGROUND = 10
CLASSES = 11
CLASS_NAMES = tuple(str(digit) for digit in range(10)) + ("background",)


class LabelledCanvases(NamedTuple):
    """images (N, 1, S, S) float32 in [0, 1]; labels (N, S, S) uint8, a class per pixel; per
    canvas, the digits' tight ink boxes (n_i, 4) [x1, y1, x2, y2) and their classes (n_i,)."""

    images: np.ndarray
    labels: np.ndarray
    boxes: list
    digit_labels: list


def draw_labelled_digit(canvas, label_map, boxes, digit, label, height, max_iou, rng):
    """`canvases.add_digit` (same placement, same draws from rng) on a blank copy of the canvas,
    then drawn onto `canvas`, labelling `label_map` with `label` where the digit's ink is the
    brighter stroke. Returns the digit's box, or None when it found no place."""
    alone = np.zeros_like(canvas)
    box = add_digit(alone, boxes, digit, height, max_iou, rng)
    if box is not None:
        label_map[(alone > INK_THRESHOLD) & (alone >= canvas)] = label
        np.maximum(canvas, alone, out=canvas)
    return box


def labelled_canvases(digits, count, seed, size=64, max_digits=4, height_range=(14, 56), max_iou=0.1,
                      fragments=(2, 6), noise=0.1):
    """`count` canvases from `digits` (a data.Digits) and a generator seeded by `seed`, drawn
    exactly as `canvases.make_canvases` draws them (same arguments, same images), with labels."""
    if count < 0:
        raise ValueError(f"labelled_canvases: count must be >= 0, got {count!r}")
    if not 1 <= height_range[0] <= height_range[1] <= size:
        raise ValueError(f"labelled_canvases: height_range must satisfy 1 <= low <= high <= size = "
                         f"{size}, got {height_range!r}")
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, size, size), dtype=np.float32)
    labels = np.full((count, size, size), BACKGROUND, dtype=np.uint8)
    all_boxes, all_digit_labels = [], []
    log_low, log_high = np.log(height_range[0]), np.log(height_range[1] + 1)
    for n in range(count):
        canvas, boxes, digit_labels = images[n, 0], [], []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            index = int(rng.integers(len(digits.labels)))
            height = min(size, int(np.exp(rng.uniform(log_low, log_high))))
            label = int(digits.labels[index])
            box = draw_labelled_digit(canvas, labels[n], boxes, digits.images[index, 0], label, height,
                                      max_iou, rng)
            if box is not None:
                boxes.append(box)
                digit_labels.append(label)
        for _ in range(int(rng.integers(fragments[0], fragments[1] + 1))):
            add_fragment(canvas, boxes, digits.images[int(rng.integers(len(digits.labels))), 0], rng, (14, 41))
        canvas += rng.normal(0, noise, canvas.shape).astype(np.float32)
        np.clip(canvas, 0, 1, out=canvas)
        all_boxes.append(np.array(boxes, dtype=np.float32).reshape(-1, 4))
        all_digit_labels.append(np.array(digit_labels, dtype=np.int64))
    return LabelledCanvases(images, labels, all_boxes, all_digit_labels)
