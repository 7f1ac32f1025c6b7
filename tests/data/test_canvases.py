"""The digit canvases: deterministic, made from disjoint digits, with tight boxes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dcn_numba.data.canvases import INK_THRESHOLD, box_iou, ink_box, make_canvases, resize, scaled_digit
from dcn_numba.data.mnist import Digits, load_mnist


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def canvases(mnist):
    return make_canvases(mnist.train, 40, seed=3)


def test_same_seed_same_canvases(mnist, canvases):
    again = make_canvases(mnist.train, 40, seed=3)
    np.testing.assert_array_equal(again.images, canvases.images)
    for a, b in zip(again.boxes, canvases.boxes):
        np.testing.assert_array_equal(a, b)
    assert [list(l) for l in again.labels] == [list(l) for l in canvases.labels]


def test_another_seed_other_canvases(mnist, canvases):
    assert not np.array_equal(make_canvases(mnist.train, 40, seed=4).images, canvases.images)


def test_train_and_test_canvases_use_disjoint_digits(mnist):
    train = make_canvases(mnist.train, 30, seed=0)
    test = make_canvases(mnist.test, 30, seed=0)

    def used(digits, canvases):
        return {digits.images[i].tobytes() for sources in canvases.sources for i in sources}

    assert used(mnist.train, train).isdisjoint(used(mnist.test, test))


def test_digit_counts_sizes_and_labels(canvases):
    counts = np.array([len(labels) for labels in canvases.labels])
    assert counts.min() >= 1
    assert counts.max() <= 4
    boxes = np.concatenate(canvases.boxes)
    heights = boxes[:, 3] - boxes[:, 1]
    assert heights.min() >= 12  # 14-pixel digits lose at most a faint rim row to the threshold
    assert heights.max() <= 56
    assert heights.max() / heights.min() >= 3
    assert boxes.min() >= 0
    assert boxes.max() <= 64
    for labels, sources in zip(canvases.labels, canvases.sources):
        assert len(sources) >= len(labels)


def test_boxes_overlap_little(canvases):
    for boxes in canvases.boxes:
        iou = box_iou(boxes, boxes) - np.eye(len(boxes))
        assert iou.max() <= 0.1 + 1e-6


def test_boxes_are_tight_on_the_digit_ink(mnist):
    """Rebuild each canvas without noise or fragments: every box edge row/column holds ink above
    the threshold, and the box of each digit drawn alone is the recorded box."""
    clean = make_canvases(mnist.train, 20, seed=5, fragments=(0, 0), noise=0.0)
    for image, boxes in zip(clean.images[:, 0], clean.boxes):
        ink = image > INK_THRESHOLD
        for x1, y1, x2, y2 in boxes.astype(int):
            inside = ink[y1:y2, x1:x2]
            assert inside[0].any()
            assert inside[-1].any()
            assert inside[:, 0].any()
            assert inside[:, -1].any()
        # with one digit the canvas's whole ink is that digit's: the box is the ink box
        if len(boxes) == 1:
            np.testing.assert_array_equal(ink_box(image), boxes[0])


def test_clutter_stays_outside_the_boxes(mnist):
    """Fragments touch no digit box: a canvas drawn with fragments equals the one drawn without
    them (same seed, noise off) inside every box, and differs outside. Fragments are drawn after
    the digits, so the first canvas of a seed has the same digits either way."""
    differs = 0
    for seed in range(6):
        plain = make_canvases(mnist.train, 1, seed=seed, fragments=(0, 0), noise=0.0)
        cluttered = make_canvases(mnist.train, 1, seed=seed, fragments=(3, 3), noise=0.0)
        np.testing.assert_array_equal(plain.boxes[0], cluttered.boxes[0])
        for x1, y1, x2, y2 in cluttered.boxes[0].astype(int):
            np.testing.assert_array_equal(plain.images[0, 0, y1:y2, x1:x2], cluttered.images[0, 0, y1:y2, x1:x2])
        differs += not np.array_equal(plain.images, cluttered.images)
    assert differs == 6


def test_ink_box_of_a_drawn_rectangle():
    image = np.zeros((10, 12))
    image[2:5, 3:9] = 1
    np.testing.assert_array_equal(ink_box(image), [3, 2, 9, 5])
    assert ink_box(np.zeros((4, 4))) is None


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 30), st.integers(2, 30))
def test_resize_keeps_a_constant_image_constant(height, width):
    np.testing.assert_allclose(resize(np.full((7, 5), 0.4), height, width), 0.4)


def test_scaled_digit_keeps_aspect_and_fits(mnist):
    digit = mnist.train.images[0, 0]
    x1, y1, x2, y2 = ink_box(digit)
    patch = scaled_digit(digit, 40, max_width=64)
    assert patch.shape[0] == 40
    assert patch.shape[1] == round((x2 - x1) * 40 / (y2 - y1))
    assert scaled_digit(digit, 40, max_width=10).shape[1] <= 10


def test_bad_arguments_are_named():
    digits = Digits(np.zeros((1, 1, 28, 28), np.float32), np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="count"):
        make_canvases(digits, -1, seed=0)
    with pytest.raises(ValueError, match="height_range"):
        make_canvases(digits, 1, seed=0, height_range=(14, 80))
