"""The receptive-field measurement: the spread formula on hand-made points, the 729-point trace of
a regular stack (whose spread is known in closed form), the units chosen on and off the digit,
and the DCNv2 gradient weights against finite differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba.apps.mnist import receptive_field as rf
from dcn_numba.engine.autograd import Tensor
from dcn_numba.ops.locations import level_points, trace_back, trace_back_levels
from dcn_numba.apps.mnist.models import MnistNet


def test_spread_of_hand_made_points():
    # Four corners of a 2×2 square around (1, 1): every point lies √2 from the centre.
    square = np.array([[0, 0], [0, 2], [2, 0], [2, 2]])
    assert rf.spread(square) == pytest.approx(np.sqrt(2))
    # Weight 0 drops a point; weight 3 counts one three times.
    with_outlier = np.vstack([square, [[40, 40]]])
    assert rf.spread(with_outlier, [1, 1, 1, 1, 0]) == pytest.approx(np.sqrt(2))
    tripled = np.vstack([square, [[2, 2]] * 2])
    assert rf.spread(square, [1, 1, 1, 3]) == pytest.approx(rf.spread(tripled))


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 40), st.floats(0.5, 5.0), st.floats(-20, 20), st.floats(-20, 20))
def test_spread_grows_with_the_scale_of_the_points_and_ignores_a_shift(count, scale, dy, dx):
    points = np.random.default_rng(count).standard_normal((count, 2))
    weights = np.random.default_rng(count + 1).random(count)
    moved = scale * points + [dy, dx]
    assert rf.spread(moved, weights) == pytest.approx(scale * rf.spread(points, weights), rel=1e-9, abs=1e-9)


def test_slope_and_ratio_of_a_line():
    slope, ratio = rf.slope_and_ratio([0.5, 1.0, 2.0], [3.0, 4.0, 6.0])
    assert slope == pytest.approx(2.0)
    assert ratio == pytest.approx(2.0)


def test_feature_and_image_coordinates():
    # On a stride-4 map, cell 1 summarises image pixels 4 to 7, centred at 5.5.
    np.testing.assert_allclose(rf.feature_to_image([[1, 2]], 4), [[5.5, 9.5]])
    points = np.array([[0.25, 7.0], [-1.0, 3.5]])
    np.testing.assert_allclose(rf.image_to_feature(rf.feature_to_image(points, 4), 4), points)


def test_ink_centre_of_two_pixels():
    images = np.zeros((1, 1, 5, 6))
    images[0, 0, 1, 2] = 1.0
    images[0, 0, 3, 5] = 3.0
    np.testing.assert_allclose(rf.ink_centre(images), [[(1 + 9) / 4, (2 + 15) / 4]])


def blob_images():
    """Two 48×48 images: a 6×6 block of ink at rows/columns 30–35, and one at 8–13."""
    images = np.zeros((2, 1, 48, 48), dtype=np.float32)
    images[0, 0, 30:36, 30:36] = 1.0
    images[1, 0, 8:14, 8:14] = 1.0
    return images


def test_object_unit_is_the_cell_of_the_ink_centre():
    # Ink centres 32.5 and 10.5; stride 4: cells (32.5 − 1.5)/4 = 7.75 → 8 and 2.25 → 2.
    np.testing.assert_array_equal(rf.object_units(blob_images(), 4, (12, 12)), [[8, 8], [2, 2]])


def test_background_unit_has_no_ink_near_it():
    images = blob_images()
    units = rf.background_units(images, 4, (12, 12))
    inked = rf.inked_cells(images, 4, (12, 12))
    for b, (y, x) in enumerate(units):
        assert not inked[b, y, x]
        # No ink within one cell of the unit's block of pixels [4y, 4y + 3]:
        assert images[b, 0, max(0, 4 * y - 4):4 * y + 8, max(0, 4 * x - 4):4 * x + 8].max() == 0
    # Halfway from ink centre (32.5, 32.5) to the corner is (16.25, 16.25): cell 3.69 → 4.
    np.testing.assert_array_equal(units[0], [4, 4])


def test_trace_back_levels_hold_9_81_and_729_samples():
    rng = np.random.default_rng(0)
    locations = [rng.uniform(0, 11, size=(1, 1, 9, 12, 12, 2)) for _ in range(3)]
    levels = trace_back_levels(locations, 0, 5, 6)
    assert [len(taps) for taps, _, _ in levels] == [729, 81, 9]
    points = level_points(locations, levels, 0)
    np.testing.assert_array_equal(points[0], trace_back(locations, 0, 5, 6))
    # The last level is the unit's own nine taps.
    np.testing.assert_array_equal(points[2], locations[2][0, 0, :, 5, 6])


def test_regular_stack_reads_a_7x7_block_of_cells_with_spread_8_pixels():
    # Three 3×3 layers of taps −1, 0, 1 per axis: the 729 points cover cells y−3 … y+3 with
    # multiplicities 1, 3, 6, 7, 6, 3, 1 (× 27 for the other axis); each axis is a sum of three
    # independent taps of variance 2/3 cells², so σ² = 2 axes · 3 · 2/3 · 4² px² = 64: σ = 8 px.
    net = MnistNet(seed=0, channels=(4, 4))
    images = blob_images()
    traces = rf.unit_traces(net, images, np.array([[6, 6], [5, 7]]), "cpu")
    for (levels, weights), (y, x) in zip(traces, [(6, 6), (5, 7)]):
        points = levels[0]
        assert points.shape == (729, 2)
        rows, counts = np.unique(points[:, 0], return_counts=True)
        np.testing.assert_array_equal(rows, rf.feature_to_image(np.arange(y - 3, y + 4), 4))
        np.testing.assert_array_equal(counts, np.array([1, 3, 6, 7, 6, 3, 1]) * 27)
        assert rf.spread(points) == pytest.approx(8.0)
        assert weights.shape == (729,)
        assert weights.min() >= 0


def test_learned_offsets_move_the_traced_points():
    net = MnistNet(deformable=True, seed=0, channels=(4, 4))
    for layer in net.deform_layers:
        layer.offset_conv.bias.data[0::2] = 1.0  # every tap moves one row down ...
        layer.offset_conv.bias.data[1::2] = -1.0  # ... and one column left
    still = rf.unit_traces(MnistNet(seed=0, channels=(4, 4)), blob_images(), np.array([[6, 6], [5, 7]]), "cpu")
    moved = rf.unit_traces(net, blob_images(), np.array([[6, 6], [5, 7]]), "cpu")
    for (moved_levels, _), (still_levels, _) in zip(moved, still):
        # Each of the three layers adds (1, −1) cells, (4, −4) image pixels at stride 4.
        np.testing.assert_allclose(moved_levels[0] - still_levels[0], np.broadcast_to([12.0, -12.0], (729, 2)))


def test_gradient_weights_match_finite_differences():
    """Σ over positions of ∂u/∂(offset of layer 1, channel c) against a finite difference of u
    when the bias of that offset channel moves. Layers 2 and 3 get constant offsets (zero
    weights, nonzero biases), so that only layer 1's offsets move."""
    net = MnistNet(deformable=True, seed=2, channels=(3, 4)).to(dtype=np.float64)
    rng = np.random.default_rng(3)
    for index, layer in enumerate(net.deform_layers):
        if index == 0:
            layer.offset_conv.weight.data[...] = 0.1 * rng.standard_normal(layer.offset_conv.weight.shape)
        layer.offset_conv.bias.data[...] = 0.3 + 0.2 * rng.standard_normal(layer.offset_conv.bias.shape)
    images = rng.random((2, 1, 24, 24))
    units = np.array([[3, 2], [1, 4]])
    net.eval()

    def responses():
        x = net.trunk(Tensor(images))
        response, leaves, _ = rf.stack_with_offset_leaves(net, x.detach())
        return response, leaves

    response, leaves = responses()
    selector = np.zeros(response.shape)
    selector[np.arange(2), :, units[:, 0], units[:, 1]] = 1
    response.backward(selector)
    analytic = leaves[0].grad.sum(axis=(2, 3))  # (B, 18): one sum per offset channel
    bias = net.deform_layers[0].offset_conv.bias.data
    step = 1e-6
    for channel in (0, 7, 13):
        bias[channel] += step
        up = (responses()[0].data * selector).sum(axis=(1, 2, 3))
        bias[channel] -= 2 * step
        down = (responses()[0].data * selector).sum(axis=(1, 2, 3))
        bias[channel] += step
        np.testing.assert_allclose(analytic[:, channel], (up - down) / (2 * step), rtol=1e-5, atol=1e-8)


def test_unit_spreads_of_a_regular_net():
    spreads = rf.unit_spreads(MnistNet(seed=0, channels=(4, 4)), blob_images(), "cpu")
    assert set(spreads) == {"object", "object_weighted", "background", "background_weighted"}
    # Units away from the border: the fixed grid's 8 px (test above), whatever the digit.
    np.testing.assert_allclose(spreads["object"], 8.0)
    # Gradient weights favour the central samples, which more paths share: a smaller spread.
    assert np.all(spreads["object_weighted"] < 8.0)
    assert np.all(spreads["object_weighted"] > 0.0)
