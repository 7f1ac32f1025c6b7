"""Sampling locations and their pictures: hand-computed grids, the panels of the paper's figure
(one digit small and large, units on and off it), and the figures written as readable images."""

import numpy as np
import pytest
from matplotlib.image import imread

from dcn_numba.apps.mnist import viz
from dcn_numba.data.mnist import Digits
from dcn_numba.ops.locations import sampling_locations
from dcn_numba.apps.mnist.models import MnistNet


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


@pytest.fixture(scope="module")
def tiny_net():
    return MnistNet(deformable=True, seed=0, channels=(4, 4))


def digit_blocks(labels):
    """One block of ink per label, each a different size, on 28×28 images."""
    images = np.zeros((len(labels), 1, 28, 28), dtype=np.float32)
    for index in range(len(labels)):
        images[index, 0, 8:12 + 2 * index, 10:18] = 1.0
    return Digits(images, np.array(labels))


def test_figure_panels_show_one_digit_small_and_large():
    digits = digit_blocks([5, viz.FIGURE_LABEL, 7])
    titles, images, kinds = viz.figure_panels(digits)
    assert kinds == ("background", "object", "object")
    assert images.shape == (3, 1, 48, 48)
    ink = images.sum(axis=(1, 2, 3))
    small, large = viz.FIGURE_SCALES
    # Image 1 (the block labelled FIGURE_LABEL): 6 rows × 8 columns = 48 pixels of ink.
    np.testing.assert_allclose(ink / np.array([small, small, large]) ** 2, 48, rtol=0.1)
    assert "×0.6" in titles[1] and "×1.8" in titles[2]


def test_panel_units_sit_on_the_digit_and_off_it(tiny_net):
    _, images, kinds = viz.figure_panels(digit_blocks([viz.FIGURE_LABEL]))
    units = viz.panel_units(tiny_net, images, kinds)
    stride = tiny_net.deform_layers_input_stride
    for (y, x), image, kind in zip(units, images, kinds):
        block = image[0, stride * y:stride * (y + 1), stride * x:stride * (x + 1)]
        if kind == "object":
            assert block.max() > 0
        else:
            assert image[0, max(0, stride * (y - 1)):stride * (y + 2), max(0, stride * (x - 1)):stride * (x + 2)].max() == 0


def test_figures_are_written(tmp_path, tiny_net):
    digits = digit_blocks([2, viz.FIGURE_LABEL])
    viz.plot_sampling_locations({"regular": MnistNet(seed=0, channels=(4, 4)), "deformable": tiny_net},
                                digits, "cpu", tmp_path / "points.png")
    histories = {"regular": {"loss": list(np.linspace(2.3, 0.5, 30)), "test_accuracy": [0.5, 0.8]}}
    viz.plot_training_curves(histories, tmp_path / "curves.png")
    for name in ("points.png", "curves.png"):
        picture = imread(tmp_path / name)
        assert picture.ndim == 3
        assert min(picture.shape[:2]) > 100
        assert picture[..., :3].std() > 0.01  # something was drawn
