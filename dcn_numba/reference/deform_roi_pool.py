"""Deformable RoI pooling (docs/specification.md §2.1) in plain NumPy: RoIAlign (aligned) plus a learned shift
per bin. Read it next to the specification; it is written for clarity, not speed.

For RoI n with batch index b and bin (ph, pw), every channel c averages a grid of bilinear samples:

    out[n, c, ph, pw] = Σ_{iy, ix} B(x[b, c], y, x) / max(grid_h·grid_w, 1)
    y = start_y + ph·bin_height + γ·roi_height·offset[n, 1, ph, pw] + (iy + 0.5)·bin_height/grid_h
    x = start_x + pw·bin_width  + γ·roi_width ·offset[n, 0, ph, pw] + (ix + 0.5)·bin_width /grid_w

which is the seed paper's y(i, j) = Σ_{p ∈ bin(i, j)} x(p0 + p + Δp_ij) / n_ij with
Δp_ij = γ·Δp̂_ij ∘ (w, h). Offsets are stored x first, then y.

Shapes: input (B, C, H, W), rois (N, 5) rows (batch_index, x1, y1, x2, y2), offset None or
(N, 2, PH, PW), output (N, C, PH, PW). Everything is computed in float64 and returned in the
input's dtype.
"""

import math

import numpy as np


def roi_box(roi, spatial_scale):
    """(start_x, start_y, roi_width, roi_height) of one RoI row on the feature map: aligned (pixel
    centres at integers), neither rounded nor clamped, so a degenerate RoI has a negative size."""
    _, x1, y1, x2, y2 = roi
    start_x = x1 * spatial_scale - 0.5
    start_y = y1 * spatial_scale - 0.5
    return start_x, start_y, x2 * spatial_scale - 0.5 - start_x, y2 * spatial_scale - 0.5 - start_y


def samples_per_bin(roi_extent, bins, sampling_ratio):
    """sampling_ratio if > 0, else ceil(roi_extent / bins); 0 for a degenerate RoI (empty bins),
    1 for a non-finite extent (its NaN then reaches the output)."""
    if sampling_ratio > 0:
        return sampling_ratio
    if not math.isfinite(roi_extent):
        return 1
    return max(math.ceil(roi_extent / bins), 0)


def bin_samples(roi, bin_offset, output_size, spatial_scale, sampling_ratio, gamma):
    """Yield (ph, pw, positions) for every bin of one RoI, positions being the (y, x) of its
    samples; bin_offset is offset[n] (2, PH, PW) or None."""
    PH, PW = output_size
    start_x, start_y, roi_width, roi_height = roi_box(roi, spatial_scale)
    bin_height, bin_width = roi_height / PH, roi_width / PW
    grid_h = samples_per_bin(roi_height, PH, sampling_ratio)
    grid_w = samples_per_bin(roi_width, PW, sampling_ratio)
    for ph in range(PH):
        for pw in range(PW):
            shift_x = shift_y = 0.0
            if bin_offset is not None:
                shift_x = gamma * roi_width * bin_offset[0, ph, pw]
                shift_y = gamma * roi_height * bin_offset[1, ph, pw]
            bin_y = start_y + ph * bin_height + shift_y
            bin_x = start_x + pw * bin_width + shift_x
            positions = [(bin_y + (iy + 0.5) * bin_height / grid_h,
                          bin_x + (ix + 0.5) * bin_width / grid_w)
                         for iy in range(grid_h) for ix in range(grid_w)]
            yield ph, pw, positions


def clamp_axis(p, size):
    """The RoIAlign rule on one axis of a valid position: p ≤ 0 reads as 0; once floor(p) ≥ size−1
    both neighbours are the last pixel. Returns (low, high, l, slope): neighbours, weight of
    `high`, and d(clamped p)/dp (0 where the clamp holds the position still)."""
    if p <= 0:
        p, slope = 0.0, 0.0
    else:
        slope = 1.0
    low = math.floor(p)
    if low >= size - 1:
        return size - 1, size - 1, 0.0, 0.0
    return low, low + 1, p - low, slope


def is_valid(y, x, H, W):
    """A sample reads the image when −1 ≤ y ≤ H and −1 ≤ x ≤ W."""
    return -1 <= y <= H and -1 <= x <= W


def bilinear(image, y, x):
    """B(x_c, y, x) for every channel of image (C, H, W) at once: shape (C,). 0 outside the valid
    range, NaN at a non-finite position."""
    C, H, W = image.shape
    if not (math.isfinite(y) and math.isfinite(x)):
        return np.full(C, np.nan)
    if not is_valid(y, x, H, W):
        return np.zeros(C)
    y_low, y_high, l_y, _ = clamp_axis(y, H)
    x_low, x_high, l_x, _ = clamp_axis(x, W)
    return ((1 - l_y) * (1 - l_x) * image[:, y_low, x_low] + (1 - l_y) * l_x * image[:, y_low, x_high]
            + l_y * (1 - l_x) * image[:, y_high, x_low] + l_y * l_x * image[:, y_high, x_high])


def deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
    """out (N, C, PH, PW): the average of the bilinear samples of every bin (module docstring)."""
    batch = input.astype(np.float64)
    N, (PH, PW) = rois.shape[0], output_size
    output = np.zeros((N, input.shape[1], PH, PW))
    for n, roi in enumerate(rois.astype(np.float64)):
        image = batch[int(roi[0])]
        bin_offset = None if offset is None else offset[n].astype(np.float64)
        for ph, pw, positions in bin_samples(roi, bin_offset, output_size, spatial_scale,
                                             sampling_ratio, gamma):
            total = sum((bilinear(image, y, x) for y, x in positions), np.zeros(image.shape[0]))
            output[n, :, ph, pw] = total / max(len(positions), 1)
    return output.astype(input.dtype)


def deform_roi_pool_backward(grad_output, input, rois, offset, output_size, spatial_scale,
                             sampling_ratio, gamma):
    """(grad_input (B, C, H, W), grad_offset (N, 2, PH, PW) or None), the exact derivative of
    `deform_roi_pool`.

    Each sample of bin (ph, pw) contributes B/count to the output, so with
    share = grad_output[n, :, ph, pw] / count:
    * grad_input: every corner the sample reads receives share · (its bilinear weight);
    * grad_offset: the sample moves by γ·roi_width per unit of offset[n, 0, ph, pw] (x) and by
      γ·roi_height per unit of offset[n, 1, ph, pw] (y), so those receive
      γ·roi_width·Σ_c share_c·∂B_c/∂x and γ·roi_height·Σ_c share_c·∂B_c/∂y.
    ∂B/∂y = slope_y·[(1−l_x)(v10 − v00) + l_x(v11 − v01)], ∂B/∂x = slope_x·[(1−l_y)(v01 − v00)
    + l_y(v11 − v10)], v_ab the corner values (row a, column b), slope 0 on a clamped axis.
    """
    batch = input.astype(np.float64)
    grad_output = grad_output.astype(np.float64)
    grad_input = np.zeros(input.shape)
    grad_offset = None if offset is None else np.zeros(offset.shape)
    _, _, H, W = input.shape
    for n, roi in enumerate(rois.astype(np.float64)):
        b = int(roi[0])
        _, _, roi_width, roi_height = roi_box(roi, spatial_scale)
        bin_offset = None if offset is None else offset[n].astype(np.float64)
        for ph, pw, positions in bin_samples(roi, bin_offset, output_size, spatial_scale,
                                             sampling_ratio, gamma):
            share = grad_output[n, :, ph, pw] / max(len(positions), 1)
            for y, x in positions:
                if not (math.isfinite(y) and math.isfinite(x)):
                    if grad_offset is not None:  # a NaN position makes its offset's gradient NaN
                        grad_offset[n, :, ph, pw] = np.nan
                    continue
                if not is_valid(y, x, H, W):
                    continue
                y_low, y_high, l_y, slope_y = clamp_axis(y, H)
                x_low, x_high, l_x, slope_x = clamp_axis(x, W)
                corners = [(y_low, x_low, (1 - l_y) * (1 - l_x)), (y_low, x_high, (1 - l_y) * l_x),
                           (y_high, x_low, l_y * (1 - l_x)), (y_high, x_high, l_y * l_x)]
                for row, column, weight in corners:
                    grad_input[b, :, row, column] += share * weight
                if grad_offset is None:
                    continue
                v00, v01 = batch[b, :, y_low, x_low], batch[b, :, y_low, x_high]
                v10, v11 = batch[b, :, y_high, x_low], batch[b, :, y_high, x_high]
                d_y = slope_y * ((1 - l_x) * (v10 - v00) + l_x * (v11 - v01))
                d_x = slope_x * ((1 - l_y) * (v01 - v00) + l_y * (v11 - v10))
                grad_offset[n, 0, ph, pw] += gamma * roi_width * np.sum(share * d_x)
                grad_offset[n, 1, ph, pw] += gamma * roi_height * np.sum(share * d_y)
    return (grad_input.astype(input.dtype),
            None if grad_offset is None else grad_offset.astype(offset.dtype))
