"""The receptive field a network learned: where a unit of the last stacked layer reads the image,
and how widely.

A unit (y, x) of the last of `MnistNet.deform_layers` reads K points of the layer below, each of
which reads K points of the one below that: K^L = 9³ = 729 points of the stack's input for three
3×3 layers (`locations.trace_back_levels`), drawn in image pixels (`feature_to_image`). Their
spread is the weighted root-mean-square distance from their weighted centre,

    σ = sqrt(Σ_n w_n ‖p_n − p̄‖² / Σ_n w_n),   p̄ = Σ_n w_n p_n / Σ_n w_n,

with w_n = 1 (the sampling locations themselves), or, as DCNv2 weighs its effective sampling
locations (Zhu et al. 2019, §2), w_n = ‖∂u/∂p_n‖, the gradient of the unit's response u with
respect to the sampling location p_n of the first layer, holding the offsets fixed: the backward
pass of the deformable convolution computes it as the gradient of its offset input. The response
u is the sum over channels of the last layer's batch-normalised output at the unit, before the
ReLU, so that no unit is silent. A regular layer is measured the same way, as a deformable one
with zero offsets.

Two units per digit: one on the object, the cell nearest to the centre of its ink, and one on the
background, among the cells with no ink within one cell of their own block of input pixels and
at least `unclipped_margin` cells from the map's border, the one nearest to the point halfway
from the ink centre to the top-left corner of the canvas. The margin keeps the measurement off
the border: `trace_back_levels` rounds every intermediate point to a cell and clips it into the
map, so a regular grid traced from a unit near the border shrinks though nothing was learned. A
digit so large that no cell qualifies has no background unit (NaN).
"""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.runtime.arrays import array_module, to_device
from dcn_numba.engine.autograd import Tensor
from dcn_numba.ops.locations import (feature_to_image, image_to_feature, level_points, sampling_locations, spread,
                                     trace_back_levels)
from dcn_numba.engine.nn import DeformConv2d


def ink_centre(images):
    """The centre of mass (y, x) of each image's ink: images (B, 1, H, W) → (B, 2)."""
    ink = images[:, 0].astype(np.float64)
    total = np.maximum(ink.sum(axis=(1, 2)), 1e-12)
    rows, cols = np.arange(ink.shape[1]), np.arange(ink.shape[2])
    return np.stack([(ink.sum(axis=2) @ rows) / total, (ink.sum(axis=1) @ cols) / total], axis=1)


def object_units(images, stride, map_size):
    """Per image, the cell (y, x) of a map of stride `stride` and size `map_size` nearest to the
    centre of its ink: (B, 2) integers."""
    cells = np.rint(image_to_feature(ink_centre(images), stride)).astype(int)
    return np.clip(cells, 0, np.asarray(map_size) - 1)


def inked_cells(images, stride, map_size):
    """(B, H_map, W_map) booleans: whether the image holds ink within one cell (`stride` pixels)
    of the block of pixels that the cell summarises."""
    H_map, W_map = map_size
    ink = images[:, 0] > 0
    height, width = ink.shape[1:]
    inked = np.zeros((len(images), H_map, W_map), dtype=bool)
    for i in range(H_map):
        for j in range(W_map):
            top, left = max(0, (i - 1) * stride), max(0, (j - 1) * stride)
            bottom, right = min(height, (i + 2) * stride), min(width, (j + 2) * stride)
            inked[:, i, j] = ink[:, top:bottom, left:right].any(axis=(1, 2))
    return inked


def unclipped_margin(net):
    """How far from the border, in cells, a unit's traced regular grid stays inside the map: the
    reach of every stacked layer above the first, Σ_{l ≥ 2} dilation_l · (k_l − 1)/2 (2 cells for
    three 3×3 layers of dilation 1)."""
    return sum(conv.dilation * (conv.kernel_size[0] // 2) for conv in net.deform_layers[1:])


def interior(units, map_size, margin):
    """(B,) booleans: whether each unit (y, x) of units (B, 2) lies at least `margin` cells from
    every border of a map of size `map_size`."""
    units = np.asarray(units)
    return ((units >= margin) & (units < np.asarray(map_size) - margin)).all(axis=1)


def background_units(images, stride, map_size, margin=0):
    """Per image, of the cells with no ink near them (`inked_cells`) and at least `margin` cells
    from the map's border, the one nearest to the point halfway from the ink centre to the
    canvas's top-left corner: (B, 2) integers (the corner cell (0, 0) where no cell qualifies)."""
    target = image_to_feature(ink_centre(images) / 2, stride)
    grid = np.stack(np.meshgrid(np.arange(map_size[0]), np.arange(map_size[1]), indexing="ij"), axis=-1)
    distance = np.linalg.norm(grid[None] - target[:, None, None], axis=-1)
    distance[inked_cells(images, stride, map_size)] = np.inf
    distance[:, ~interior(grid.reshape(-1, 2), map_size, margin).reshape(map_size)] = np.inf
    nearest = np.where(np.isinf(distance).reshape(len(images), -1).all(axis=1), 0,
                       distance.reshape(len(images), -1).argmin(axis=1))
    return np.stack(np.unravel_index(nearest, map_size), axis=1)


def stack_with_offset_leaves(net, x):
    """Run the `deform_layers` of `net` on x (their input), every layer as a deformable
    convolution whose offsets (zero for a regular layer) are leaves of the graph.

    Returns the last layer's batch-normalised output before its ReLU, the offset leaves (first
    layer first) and their sampling locations (NumPy arrays (B, 1, K, H, W, 2)).
    """
    leaves, locations = [], []
    for index, (conv, norm) in enumerate(zip(net.deform_layers, net.norms)):
        K = conv.kernel_size[0] * conv.kernel_size[1]
        if isinstance(conv, DeformConv2d):
            offset = conv.offset_conv(x).data
            mask = None if conv.mask_conv is None else F.sigmoid(conv.mask_conv(x))
        else:
            offset = array_module(x.data).zeros((x.shape[0], 2 * K, *x.shape[2:]), dtype=x.dtype)
            mask = None
        leaf = Tensor(offset, requires_grad=True)
        x = norm(F.deform_conv2d(x, leaf, conv.weight, conv.bias, conv.stride, conv.padding,
                                 conv.dilation, mask))
        leaves.append(leaf)
        locations.append(sampling_locations(offset, conv.kernel_size, conv.stride, conv.padding,
                                            conv.dilation))
        if index < len(net.deform_layers) - 1:
            x = F.relu(x)
    return x, leaves, locations


def traced_unit(locations, first_offset_grad, b, unit, stride):
    """For unit (y, x) of image b: its points per level in image pixels (first layer first) and
    the gradient norm ‖∂u/∂p_n‖ of each first-layer point."""
    levels = trace_back_levels(locations, b, int(unit[0]), int(unit[1]))
    points = [feature_to_image(p, stride) for p in level_points(locations, levels, b)]
    taps, rows, columns = levels[0]
    K = locations[0].shape[2]
    grad = first_offset_grad[b].reshape(K, 2, *first_offset_grad.shape[2:])
    weights = np.linalg.norm(grad[taps, :, rows, columns], axis=1)
    return points, weights


def unit_traces(net, images, units, device):
    """For each image b and its unit units[b] of the last stacked layer: (points per level in
    image pixels, gradient weights of the first-layer points), a list over images."""
    net.eval()
    x = net.trunk(Tensor(to_device(images, device)))
    response, leaves, locations = stack_with_offset_leaves(net, x.detach())
    selector = np.zeros(response.shape, dtype=response.dtype)
    selector[np.arange(len(images)), :, units[:, 0], units[:, 1]] = 1
    response.backward(to_device(selector, device))
    net.zero_grad()
    first_offset_grad = to_device(leaves[0].grad, "cpu")
    stride = net.deform_layers_input_stride
    return [traced_unit(locations, first_offset_grad, b, unit, stride) for b, unit in enumerate(units)]


def unit_spreads(net, images, device):
    """Per image: the spread of the 729 points of its object unit and of its background unit,
    unweighted and gradient-weighted: {"object", "object_weighted", "background",
    "background_weighted"} → (B,) arrays, in input pixels; NaN for an image without a background
    unit away from the border (`background_units` with `unclipped_margin`)."""
    stride = net.deform_layers_input_stride
    map_size = tuple(int(n) // stride for n in images.shape[2:])  # two 2×2 max-pools floor the size
    margin = unclipped_margin(net)
    background = background_units(images, stride, map_size, margin)
    spreads = {}
    for kind, units, measured in (("object", object_units(images, stride, map_size), True),
                                  ("background", background, interior(background, map_size, margin))):
        traces = unit_traces(net, images, units, device)
        spreads[kind] = np.where(measured, [spread(points[0]) for points, _ in traces], np.nan)
        spreads[f"{kind}_weighted"] = np.where(measured, [spread(points[0], weights) for points, weights in traces],
                                               np.nan)
    return spreads


def slope_and_ratio(factors, spreads):
    """The least-squares slope of spread against scale factor (pixels per unit of factor) and
    the ratio of the spread at the largest factor to that at the smallest."""
    factors, spreads = np.asarray(factors, dtype=np.float64), np.asarray(spreads, dtype=np.float64)
    slope = np.polyfit(factors, spreads, 1)[0]
    return float(slope), float(spreads[factors.argmax()] / spreads[factors.argmin()])
