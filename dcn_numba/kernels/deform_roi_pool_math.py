"""The formulas of deformable RoI pooling (docs/specification.md §2.1), shared by its CPU and CUDA
kernels: RoIAlign (aligned) with a learned shift per bin.

A RoI (x1, y1, x2, y2) is cut into PH × PW bins, each moved by γ·(roi_width·Δx, roi_height·Δy)
(`roi_align_bin`) and averaging a grid of samples at its sub-bin centres. A sample reads four
corners with the RoIAlign rule (`roi_align_axis`: valid when −1 ≤ p ≤ size, clamped to ≥ 0, both
corners the last pixel from the last row or column on), blended and differentiated by
`bilinear.corners_blend` and `corners_slopes`; the slope of a coordinate a clamp holds still is 0.
`geometry` is a deform_roi_pool.RoIAlignGeometry.
"""

import math
from typing import NamedTuple

from dcn_numba.kernels._targets import shared
from dcn_numba.kernels.bilinear import (corner_pixel, corner_weight, corner_weight_gradient, corners_blend,
                                        corners_slopes, is_finite_position)


@shared
def bin_start(roi_start, bin_index, bin_size, shift):
    """Where bin `bin_index` of a RoI begins along one axis: roi_start + bin_index·bin_size + shift,
    shift being the learned offset of the bin in pixels (γ·Δ·roi_extent in §2a,
    trans_std·Δ·roi_extent in §2b; 0 without offsets)."""
    return roi_start + bin_index * bin_size + shift


class RoIAlignBin(NamedTuple):
    """Where the grid_h × grid_w samples of one bin (ph, pw) of RoI n lie: the bin starts at
    (y_start, x_start), offset included, and measures bin_height × bin_width; the RoI measures
    roi_height × roi_width (the offsets' unit) and reads image `batch`."""

    batch: int
    y_start: float
    x_start: float
    bin_height: float
    bin_width: float
    grid_h: int
    grid_w: int
    roi_height: float
    roi_width: float


@shared
def roi_align_box(x1, y1, x2, y2, spatial_scale):
    """The RoI on the feature map, pixel centres at integers, neither rounded nor clamped:
    start_x = x1·s − 0.5, start_y = y1·s − 0.5, roi_width = x2·s − 0.5 − start_x,
    roi_height = y2·s − 0.5 − start_y (negative for a degenerate RoI, x2 < x1 or y2 < y1).
    Returns (start_x, start_y, roi_width, roi_height)."""
    start_x = x1 * spatial_scale - 0.5
    start_y = y1 * spatial_scale - 0.5
    return start_x, start_y, x2 * spatial_scale - 0.5 - start_x, y2 * spatial_scale - 0.5 - start_y


@shared
def roi_align_grid(roi_extent, bins, sampling_ratio):
    """Samples per bin along one axis: sampling_ratio when > 0, else ceil(roi_extent / bins)
    (adaptive), never below 0, so that the bins of a degenerate RoI are empty. A non-finite extent
    gets one sample, whose position is non-finite too, so that the NaN reaches the output."""
    if sampling_ratio > 0:
        return sampling_ratio
    if math.isnan(roi_extent) or math.isinf(roi_extent):
        return 1
    return max(int(math.ceil(roi_extent / bins)), 0)


@shared
def roi_align_bin_index(roi_bin, geometry):
    """(n, ph, pw) of bin number roi_bin = (n·PH + ph)·PW + pw."""
    bins_per_roi = geometry.PH * geometry.PW
    return roi_bin // bins_per_roi, roi_bin % bins_per_roi // geometry.PW, roi_bin % geometry.PW


@shared
def roi_align_output_index(index, geometry):
    """(n, c, ph, pw) of output element index = ((n·C + c)·PH + ph)·PW + pw."""
    bins_per_roi = geometry.PH * geometry.PW
    n, roi_bin = index // (bins_per_roi * geometry.C), index % bins_per_roi
    return n, index // bins_per_roi % geometry.C, roi_bin // geometry.PW, roi_bin % geometry.PW


@shared
def roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry):
    """The RoIAlignBin of bin (ph, pw) of RoI n. rois (N, 5) rows (batch_index, x1, y1, x2, y2);
    offset (N, 2, PH, PW), x first then y, moves the bin by γ·(roi_width·Δx, roi_height·Δy);
    `geometry` holds PH, PW, spatial_scale, sampling_ratio and gamma."""
    start_x, start_y, roi_width, roi_height = roi_align_box(
        rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4], geometry.spatial_scale)
    bin_height = roi_height / geometry.PH
    bin_width = roi_width / geometry.PW
    shift_x = geometry.gamma * roi_width * offset[n, 0, ph, pw] if has_offset else 0.0
    shift_y = geometry.gamma * roi_height * offset[n, 1, ph, pw] if has_offset else 0.0
    return RoIAlignBin(int(rois[n, 0]),
                       bin_start(start_y, ph, bin_height, shift_y),
                       bin_start(start_x, pw, bin_width, shift_x),
                       bin_height, bin_width,
                       roi_align_grid(roi_height, geometry.PH, geometry.sampling_ratio),
                       roi_align_grid(roi_width, geometry.PW, geometry.sampling_ratio),
                       roi_height, roi_width)


@shared
def roi_align_plane(bin_, c, geometry):
    """Flat index of pixel (0, 0) of the plane of channel c that a bin reads, in the input
    (B, C, H, W)."""
    return (bin_.batch * geometry.C + c) * geometry.H * geometry.W


@shared
def roi_align_sample_position(bin_, iy, ix):
    """(y, x) of sample (iy, ix) of a bin, at a sub-bin centre:
    y = y_start + (iy + 0.5)·bin_height/grid_h, x = x_start + (ix + 0.5)·bin_width/grid_w."""
    return (bin_.y_start + (iy + 0.5) * bin_.bin_height / bin_.grid_h,
            bin_.x_start + (ix + 0.5) * bin_.bin_width / bin_.grid_w)


@shared
def roi_align_count(bin_):
    """n_ij, the divisor of a bin's average: max(grid_h·grid_w, 1), so an empty bin gives 0."""
    return max(bin_.grid_h * bin_.grid_w, 1)


@shared
def roi_align_is_valid(y, x, H, W):
    """The RoIAlign validity test: −1 ≤ y ≤ H and −1 ≤ x ≤ W (False for NaN positions)."""
    return y >= -1.0 and y <= H and x >= -1.0 and x <= W


@shared
def roi_align_axis(p, size):
    """One axis of the RoIAlign rule, for a valid p: p ≤ 0 reads as 0, and once floor(p) ≥ size−1
    both neighbours are the last pixel. Returns (low, high, l, slope): the neighbouring pixels, the
    weight l of `high`, and d(clamped p)/dp, which is 0 where a clamp holds the position still."""
    slope = 1.0
    if p <= 0.0:
        p = 0.0
        slope = 0.0
    low = int(p)  # p ≥ 0 here, so truncation is floor
    if low >= size - 1:
        return size - 1, size - 1, 0.0, 0.0
    return low, low + 1, p - low, slope


@shared
def roi_align_corner(plane, H, W, y, x, corner):
    """(flat index, bilinear weight) of corner 0..3 of a valid position under the RoIAlign rule."""
    y_low, y_high, l_y, _ = roi_align_axis(y, H)
    x_low, x_high, l_x, _ = roi_align_axis(x, W)
    return (corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner),
            corner_weight(l_y, l_x, corner))


@shared
def roi_align_outside_value(y, x):
    """What a sample at an invalid position contributes (its value, and each slope): 0, or NaN at
    a NaN or infinite position, so that bad offsets propagate instead of vanishing."""
    return 0.0 if is_finite_position(y, x) else math.nan


@shared
def roi_align_sample(data, plane, H, W, y, x):
    """B(x_c, y, x): the RoIAlign bilinear value at (y, x); 0 for an invalid position, NaN for a
    NaN or infinite one (so that bad offsets propagate instead of vanishing)."""
    if not roi_align_is_valid(y, x, H, W):
        return roi_align_outside_value(y, x)
    y_low, y_high, l_y, _ = roi_align_axis(y, H)
    x_low, x_high, l_x, _ = roi_align_axis(x, W)
    return corners_blend(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x)


@shared
def roi_align_corner_gradient(plane, H, W, y, x, corner):
    """(flat index, ∂w/∂y, ∂w/∂x) of corner 0..3 of a valid position under the RoIAlign rule: the
    derivatives of its bilinear weight w with respect to the unclamped position, slope·∂w/∂l,
    which are 0 along an axis that a clamp holds still."""
    y_low, y_high, l_y, slope_y = roi_align_axis(y, H)
    x_low, x_high, l_x, slope_x = roi_align_axis(x, W)
    weight_d_y, weight_d_x = corner_weight_gradient(l_y, l_x, corner)
    return (corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner),
            slope_y * weight_d_y, slope_x * weight_d_x)


@shared
def roi_align_sample_gradient(data, plane, H, W, y, x):
    """(∂B/∂y, ∂B/∂x), the exact derivative of `roi_align_sample`: with v_ab the corner values
    (row a, column b), ∂B/∂y = slope_y·[(1−l_x)(v10 − v00) + l_x(v11 − v01)] and
    ∂B/∂x = slope_x·[(1−l_y)(v01 − v00) + l_y(v11 − v10)], slope 0 on an axis a clamp holds
    still. (0, 0) for an invalid position, NaN for a non-finite one."""
    if not roi_align_is_valid(y, x, H, W):
        outside = roi_align_outside_value(y, x)
        return outside, outside
    y_low, y_high, l_y, slope_y = roi_align_axis(y, H)
    x_low, x_high, l_x, slope_x = roi_align_axis(x, W)
    d_y, d_x = corners_slopes(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x)
    return slope_y * d_y, slope_x * d_x


@shared
def roi_align_average(data, plane, H, W, bin_):
    """out = Σ_{iy, ix} B(x_c, y, x) / n_ij over the samples of a bin, for the plane of x_c."""
    total = 0.0
    for iy in range(bin_.grid_h):
        for ix in range(bin_.grid_w):
            y, x = roi_align_sample_position(bin_, iy, ix)
            total += roi_align_sample(data, plane, H, W, y, x)
    return total / roi_align_count(bin_)


@shared
def roi_align_average_gradient(data, plane, H, W, bin_):
    """(∂out/∂y_start, ∂out/∂x_start) = Σ_{iy, ix} (∂B/∂y, ∂B/∂x) / n_ij: every sample of a bin
    moves with the bin's start."""
    d_y = 0.0
    d_x = 0.0
    for iy in range(bin_.grid_h):
        for ix in range(bin_.grid_w):
            y, x = roi_align_sample_position(bin_, iy, ix)
            sample_d_y, sample_d_x = roi_align_sample_gradient(data, plane, H, W, y, x)
            d_y += sample_d_y
            d_x += sample_d_x
    count = roi_align_count(bin_)
    return d_y / count, d_x / count


@shared
def roi_align_offset_from_start(bin_, gamma, grad_x_start, grad_y_start):
    """(∂L/∂offset x, ∂L/∂offset y) of a bin from (∂L/∂x_start, ∂L/∂y_start): the bin moves by
    γ·roi_width per unit of offset x and by γ·roi_height per unit of offset y."""
    return gamma * bin_.roi_width * grad_x_start, gamma * bin_.roi_height * grad_y_start


@shared
def roi_align_offset_gradient(input, rois, offset, grad_output, n, ph, pw, geometry):
    """(grad_offset[n, 0, ph, pw], grad_offset[n, 1, ph, pw]) = γ·(roi_width, roi_height) ·
    Σ_c grad_out[n, c, ph, pw] · ∂out[n, c, ph, pw]/∂(x_start, y_start), summed in float64 over
    the C channels of the input (B, C, H, W), flat."""
    bin_ = roi_align_bin(rois, offset, True, n, ph, pw, geometry)
    grad_x = 0.0
    grad_y = 0.0
    for c in range(geometry.C):
        d_y, d_x = roi_align_average_gradient(input, roi_align_plane(bin_, c, geometry), geometry.H, geometry.W,
                                              bin_)
        grad_x += grad_output[n, c, ph, pw] * d_x
        grad_y += grad_output[n, c, ph, pw] * d_y
    return roi_align_offset_from_start(bin_, geometry.gamma, grad_x, grad_y)
