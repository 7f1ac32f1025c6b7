"""Where a deformable convolution samples: absolute input coordinates, for plotting.

Output position (i, j), tap k = ki·kw + kj of offset group g samples the input at

    p = p0 + p_k + Δp_k,   p0 + p_k = (i·stride_h − pad_h + ki·dil_h,  j·stride_w − pad_w + kj·dil_w)

(docs/specification.md §1), with Δp_k = (offset[b, g·2K + 2k], offset[b, g·2K + 2k + 1]), y first. With zero
offsets this is the regular (dilated) grid of an ordinary convolution. The positions are those
the reference computes (`dcn_numba.reference.deform_conv_vectorised.sampling_positions`), in the
layout a plot wants. A stack of such layers reads, through all of them, the points
`trace_back_levels` finds; `feature_to_image` draws them in image pixels, and `spread` measures
how widely they lie (the applications' receptive-field measurements share these).
"""

import numpy as np

from dcn_numba.runtime.arrays import to_device
from dcn_numba.ops.checks import as_pair
from dcn_numba.kernels.deform_psroi_pool import PSRoIGeometry
from dcn_numba.kernels.deform_psroi_pool_math import psroi_bin
from dcn_numba.reference.deform_conv_vectorised import regular_positions, sampling_positions


def regular_grid(kernel_size, output_size, stride=1, padding=0, dilation=1):
    """p0 + p_k for every tap and output position: (kh·kw, H_out, W_out, 2) of (y, x)."""
    pairs = (as_pair(kernel_size, "kernel_size", 1), output_size, as_pair(stride, "stride", 1),
             as_pair(padding, "padding", 0), as_pair(dilation, "dilation", 1))
    return np.stack(np.broadcast_arrays(*regular_positions(*pairs)), axis=-1)


def sampling_locations(offset, kernel_size, stride=1, padding=0, dilation=1):
    """p0 + p_k + Δp_k as a NumPy array (B, G_off, kh·kw, H_out, W_out, 2) of (y, x) input
    coordinates, from offset (B, 2·G_off·kh·kw, H_out, W_out) (NumPy or CuPy)."""
    offset = to_device(offset, "cpu")
    kh, kw = as_pair(kernel_size, "kernel_size", 1)
    K = kh * kw
    if offset.ndim != 4 or offset.shape[1] == 0 or offset.shape[1] % (2 * K):
        raise ValueError(f"offset has shape {tuple(offset.shape)}, expected (B, 2·G_off·kh·kw, "
                         f"H_out, W_out) with a positive multiple of 2·kh·kw = {2 * K} channels")
    p_y, p_x = sampling_positions(offset, (kh, kw), as_pair(stride, "stride", 1), as_pair(padding, "padding", 0),
                                  as_pair(dilation, "dilation", 1))
    return np.stack([p_y, p_x], axis=-1)


def trace_back_levels(locations, batch_index, y, x, group=0):
    """Which samples of each layer of a stack of deformable layers output (y, x) of the last one
    depends on: the paper's picture of 9, 81 and 729 points for three 3×3 layers.

    `locations` holds, first layer first, the `sampling_locations` arrays (B, G_off, K, H_out,
    W_out, 2) of layers that feed each other (each layer's output is the next one's input). From
    the last layer down, every point is rounded to the nearest output position of the layer below
    (and clipped into its map) and replaced by the K points that position samples. Returns, first
    layer first, one (taps, rows, columns) triple of index arrays (K^(L−l),) per layer l: the
    samples taps[n] of output positions (rows[n], columns[n]) of that layer.
    """
    levels = []
    points = np.array([[y, x]])
    for layer in reversed(locations):
        taps = layer[batch_index, group]
        K, H_out, W_out = taps.shape[:3]
        rows = np.repeat(np.clip(np.rint(points[:, 0]).astype(int), 0, H_out - 1), K)
        columns = np.repeat(np.clip(np.rint(points[:, 1]).astype(int), 0, W_out - 1), K)
        tap = np.tile(np.arange(K), len(points))
        levels.append((tap, rows, columns))
        points = taps[tap, rows, columns]
    return levels[::-1]


def level_points(locations, levels, batch_index, group=0):
    """The (y, x) sampling points (n, 2) of each level of `trace_back_levels`, first layer first,
    each in the coordinates of its layer's input."""
    return [layer[batch_index, group][taps, rows, columns]
            for layer, (taps, rows, columns) in zip(locations, levels)]


def trace_back(locations, batch_index, y, x, group=0):
    """The K^L points (K^L, 2) of the first layer's input that output (y, x) of the last of a
    stack of L deformable layers reads, through every layer (`trace_back_levels`)."""
    levels = trace_back_levels(locations, batch_index, y, x, group)
    return level_points(locations, levels[:1], batch_index, group)[0]


def feature_to_image(points, stride):
    """Feature-map coordinates (..., 2) to input-image coordinates of the same (y, x) points.

    A feature cell of a map of stride s summarises the s×s block of image pixels
    [s·i, s·i + s − 1], whose centre is s·i + (s − 1)/2.
    """
    return np.asarray(points) * stride + (stride - 1) / 2


def image_to_feature(points, stride):
    """The inverse of `feature_to_image`."""
    return (np.asarray(points) - (stride - 1) / 2) / stride


def spread(points, weights=None):
    """σ = sqrt(Σ w ‖p − p̄‖² / Σ w) of points (N, 2), p̄ their weighted mean (w = 1 by default)."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = weights @ points / weights.sum()
    return float(np.sqrt(weights @ ((points - centre) ** 2).sum(axis=1) / weights.sum()))


def psroi_bin_boxes(roi, trans, pooled_size, trans_std, spatial_scale):
    """Where deform_psroi_pool puts the P×P bins of one RoI on the feature map, each moved by its
    offset: boxes (P, P, 4) of (x_start, y_start, x_end, y_end), from the operator's own bin
    geometry (`psroi_bin`: corners rounded as C rounds, halves away from zero). roi (x1, y1, x2,
    y2) are the operator's corners (the far ones the last pixel's); trans (2, part_size,
    part_size), x first, normalised as the operator's (zeros give the unmoved bins)."""
    trans = np.asarray(trans, dtype=np.float64)[None]
    geometry = PSRoIGeometry(C=1, H=1, W=1, output_dim=1, group_size=1, pooled_size=pooled_size,
                             part_size=trans.shape[-1], sample_per_part=1, channels_each_class=1,
                             spatial_scale=np.float64(spatial_scale), trans_std=np.float64(trans_std))
    rois = np.array([[0.0, *roi]])
    boxes = np.empty((pooled_size, pooled_size, 4))
    for ph in range(pooled_size):
        for pw in range(pooled_size):
            bin_ = psroi_bin(rois, trans, True, 0, 0, ph, pw, geometry)
            # With one sample per part, a sub-bin is the whole bin.
            boxes[ph, pw] = (bin_.w_start, bin_.h_start, bin_.w_start + bin_.sub_bin_width,
                             bin_.h_start + bin_.sub_bin_height)
    return boxes
