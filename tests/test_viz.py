"""Sampling locations and their pictures: hand-computed grids, the 729-point trace through three
layers, and the figures written as readable images."""

import numpy as np
import pytest
from matplotlib.image import imread

from dcn_numba import viz
from dcn_numba.data import Digits
from dcn_numba.locations import sampling_locations
from dcn_numba.models import MnistNet


def test_zero_offsets_give_the_regular_dilated_grid():
    # 3×3 kernel, stride 2, padding 1, dilation 2: output (i, j), tap (ki, kj) samples
    # (2i − 1 + 2ki, 2j − 1 + 2kj), written out for output (1, 0).
    offset = np.zeros((1, 18, 2, 3), dtype=np.float32)
    locations = sampling_locations(offset, 3, stride=2, padding=1, dilation=2)
    assert locations.shape == (1, 1, 9, 2, 3, 2)
    expected = [(1, -1), (1, 1), (1, 3), (3, -1), (3, 1), (3, 3), (5, -1), (5, 1), (5, 3)]
    np.testing.assert_array_equal(locations[0, 0, :, 1, 0], expected)


def test_offsets_move_each_tap_by_its_own_pair():
    # Offset channel g·2K + 2k + d, y first: tap 4 (the centre) of group 1 at output (0, 1).
    offset = np.zeros((1, 2 * 2 * 9, 1, 2))
    offset[0, 18 + 2 * 4, 0, 1] = 0.25
    offset[0, 18 + 2 * 4 + 1, 0, 1] = -1.5
    locations = sampling_locations(offset, 3, padding=1)
    np.testing.assert_allclose(locations[0, 1, 4, 0, 1], (0 - 1 + 1 + 0.25, 1 - 1 + 1 - 1.5))
    np.testing.assert_array_equal(locations[0, 0, 4, 0, 1], (0, 1))


def test_feature_and_image_coordinates():
    # On a stride-2 map, cell 3 summarises image pixels 6 and 7, centred at 6.5.
    np.testing.assert_allclose(viz.feature_to_image([[3, 0]], 2), [[6.5, 0.5]])
    np.testing.assert_allclose(viz.feature_to_image([[1, 2]], 4), [[5.5, 9.5]])
    points = np.array([[0.25, 7.0], [-1.0, 3.5]])
    np.testing.assert_allclose(viz.image_to_feature(viz.feature_to_image(points, 4), 4), points)


def test_ink_centre_of_two_pixels():
    images = np.zeros((1, 1, 5, 6))
    images[0, 0, 1, 2] = 1.0
    images[0, 0, 3, 5] = 3.0
    np.testing.assert_allclose(viz.ink_centre(images), [[(1 + 9) / 4, (2 + 15) / 4]])


@pytest.fixture(scope="module")
def tiny_net():
    return MnistNet(deformable=True, seed=0, channels=(4, 4))


@pytest.fixture(scope="module")
def two_digits():
    rng = np.random.default_rng(0)
    return (rng.random((2, 1, 28, 28)) * (rng.random((2, 1, 28, 28)) > 0.7)).astype(np.float32)


def test_three_regular_layers_read_a_7x7_block_with_binomial_weights(tiny_net, two_digits):
    # Three 3×3 taps in {−1, 0, 1} per axis add up to −3…3 with multiplicities the coefficients
    # of (1 + z + z²)³: 1, 3, 6, 7, 6, 3, 1.
    _, fixed = viz.layer_locations(tiny_net, two_digits, "cpu")
    points = viz.traced_points(fixed, np.array([[7, 7], [6, 8]]), stride=1)
    assert points.shape == (2, 729, 2)
    for image, (y, x) in enumerate([(7, 7), (6, 8)]):
        rows, row_counts = np.unique(points[image, :, 0], return_counts=True)
        np.testing.assert_array_equal(rows, np.arange(y - 3, y + 4))
        np.testing.assert_array_equal(row_counts, np.array([1, 3, 6, 7, 6, 3, 1]) * 27)
        np.testing.assert_array_equal(np.unique(points[image, :, 1]), np.arange(x - 3, x + 4))


def test_learned_points_follow_the_offsets(tiny_net, two_digits):
    learned, fixed = viz.layer_locations(tiny_net, two_digits, "cpu")
    for layer_learned, layer_fixed in zip(learned, fixed):
        np.testing.assert_array_equal(layer_learned, layer_fixed)  # zero-initialised offset branches
    shifted = MnistNet(deformable=True, seed=0, channels=(4, 4))
    for layer in shifted.deform_layers:
        layer.offset_conv.bias.data[0::2] = 1.0  # every tap moves one row down ...
        layer.offset_conv.bias.data[1::2] = -1.0  # ... and one column left
    learned, fixed = viz.layer_locations(shifted, two_digits, "cpu")
    units = np.array([[7, 7], [5, 9]])
    stride = shifted.deform_layers_input_stride
    moved = viz.traced_points(learned, units, stride)
    still = viz.traced_points(fixed, units, stride)
    # Each of the three layers adds (1, −1) feature cells, i.e. (2, −2) image pixels at stride 2.
    np.testing.assert_allclose(moved - still, np.broadcast_to([6.0, -6.0], moved.shape))


def test_figure_digits_show_each_digit_small_and_large():
    # Four blocks of ink 32, 64, 96 and 128 labelled 5, 1, 7, 2: the figure takes the digits
    # labelled 2, 5 and 7 (images 3, 0 and 2), each first small, then large.
    images = np.zeros((4, 1, 28, 28), dtype=np.float32)
    for index in range(4):
        images[index, 0, 6:10 + 4 * index, 10:18] = 1.0
    digits = Digits(images, np.array([5, 1, 7, 2]))
    shown = viz.figure_digits(digits)
    assert shown.shape == (6, 1, 28, 28)
    ink = shown.sum(axis=(1, 2, 3))
    small, large = viz.FIGURE_SCALES
    np.testing.assert_allclose(ink[0::2] / small**2, [128, 32, 96], rtol=0.25)
    np.testing.assert_allclose(ink[1::2] / large**2, [128, 32, 96], rtol=0.25)


def test_figures_are_written(tmp_path, tiny_net, two_digits):
    digits = Digits(np.repeat(two_digits, 2, axis=0), np.array([2, 5, 7, 9]))
    viz.plot_sampling_locations({"deformable": tiny_net}, digits, "cpu", tmp_path / "points.png")
    histories = {"regular": {"loss": list(np.linspace(2.3, 0.5, 30)), "test_accuracy": [0.5, 0.8]}}
    viz.plot_training_curves(histories, tmp_path / "curves.png")
    for name in ("points.png", "curves.png"):
        picture = imread(tmp_path / name)
        assert picture.ndim == 3 and min(picture.shape[:2]) > 100
        assert picture[..., :3].std() > 0.01  # something was drawn
