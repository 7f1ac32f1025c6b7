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

from dcn_numba.data.canvases import INK_THRESHOLD, add_digit, check_canvas_options, make_canvases

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


def digit_labeller(label_maps):
    """A `draw_digit` for `canvases.make_canvases` that labels the pixels of canvas n's digits in
    label_maps[n] (S, S): `canvases.add_digit` (same placement, same draws from rng) on a blank
    copy of the canvas, then drawn onto it, labelling with the digit's label the pixels where its
    ink is the brighter stroke."""
    def draw_labelled_digit(n, label, canvas, boxes, digit, height, max_iou, rng):
        alone = np.zeros_like(canvas)
        box = add_digit(alone, boxes, digit, height, max_iou, rng)
        if box is not None:
            label_maps[n][(alone > INK_THRESHOLD) & (alone >= canvas)] = label
            np.maximum(canvas, alone, out=canvas)
        return box
    return draw_labelled_digit


def labelled_canvases(digits, count, seed, size=64, max_digits=4, height_range=(14, 56), max_iou=0.1,
                      fragments=(2, 6), noise=0.1):
    """`count` canvases from `digits` (a data.Digits) and a generator seeded by `seed`:
    `canvases.make_canvases` with the same arguments (so the same images), with labels."""
    check_canvas_options("labelled_canvases", count, size, height_range)
    labels = np.full((count, size, size), BACKGROUND, dtype=np.uint8)
    canvases = make_canvases(digits, count, seed, size, max_digits, height_range, max_iou, fragments, noise,
                             draw_digit=digit_labeller(labels))
    return LabelledCanvases(canvases.images, labels, canvases.boxes, canvases.labels)
