"""Where a deformable convolution samples: absolute input coordinates, for plotting.

Output position (i, j), tap k = ki·kw + kj of offset group g samples the input at

    p = p0 + p_k + Δp_k,   p0 + p_k = (i·stride_h − pad_h + ki·dil_h,  j·stride_w − pad_w + kj·dil_w)

(docs/specification.md §1), with Δp_k = (offset[b, g·2K + 2k], offset[b, g·2K + 2k + 1]), y first. With zero
offsets this is the regular (dilated) grid of an ordinary convolution. A stack of such layers
reads, through all of them, the points `trace_back_levels` finds; `feature_to_image` draws them in
image pixels, and `spread` measures how widely they lie (the applications' receptive-field
measurements share these).
"""

import numpy as np

from dcn_numba.runtime.arrays import to_device
from dcn_numba.ops.checks import as_pair


def regular_grid(kernel_size, output_size, stride=1, padding=0, dilation=1):
    """p0 + p_k for every tap and output position: (kh·kw, H_out, W_out, 2) of (y, x)."""
    (kh, kw), (stride_h, stride_w) = as_pair(kernel_size, "kernel_size", 1), as_pair(stride, "stride", 1)
    (pad_h, pad_w), (dil_h, dil_w) = as_pair(padding, "padding", 0), as_pair(dilation, "dilation", 1)
    H_out, W_out = output_size
    ki, kj = np.divmod(np.arange(kh * kw), kw)
    p_y = np.arange(H_out)[None, :, None] * stride_h - pad_h + ki[:, None, None] * dil_h
    p_x = np.arange(W_out)[None, None, :] * stride_w - pad_w + kj[:, None, None] * dil_w
    return np.stack(np.broadcast_arrays(p_y, p_x), axis=-1)


def sampling_locations(offset, kernel_size, stride=1, padding=0, dilation=1):
    """p0 + p_k + Δp_k as a NumPy array (B, G_off, kh·kw, H_out, W_out, 2) of (y, x) input
    coordinates, from offset (B, 2·G_off·kh·kw, H_out, W_out) (NumPy or CuPy)."""
    offset = to_device(offset, "cpu")
    kh, kw = as_pair(kernel_size, "kernel_size", 1)
    K = kh * kw
    if offset.ndim != 4 or offset.shape[1] == 0 or offset.shape[1] % (2 * K):
        raise ValueError(f"offset has shape {tuple(offset.shape)}, expected (B, 2·G_off·kh·kw, "
                         f"H_out, W_out) with a positive multiple of 2·kh·kw = {2 * K} channels")
    B, channels, H_out, W_out = offset.shape
    deltas = offset.reshape(B, channels // (2 * K), K, 2, H_out, W_out).transpose(0, 1, 2, 4, 5, 3)
    grid = regular_grid((kh, kw), (H_out, W_out), stride, padding, dilation)
    return grid.astype(offset.dtype) + deltas


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
