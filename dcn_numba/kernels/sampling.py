"""Scalar sampling mathematics shared by the CPU and CUDA kernels (docs/specification.md §1 and §2).

Each function is one formula, compiled once by `shared` for both targets. Images are read
from flat arrays: `plane` is the flat index of pixel (0, 0) of one (H, W) channel plane, so
pixel (y, x) lives at `plane + y·W + x`. Flat 64-bit indices keep big tensors addressable.

The precision rule, for every op and both targets: a sum that one kernel iteration or thread
owns (a bin's average over its samples, a gradient summed over channels or samples) accumulates
in float64, from 0.0, and is rounded to the data's dtype once, when stored. Sums spread over
iterations or threads (gradients scattered into input planes, CUDA atomics) add in the dtype of
the array they add into. The convolution's bilinear sample, one blend feeding a GEMM in the data's
dtype, is computed in that dtype (the typed constants below).
"""

import math
from typing import NamedTuple

import numpy as np

from dcn_numba.kernels._targets import shared

# ---------------------------------------------------------------------------------------------
# Deformable convolution (docs/specification.md §1): bilinear interpolation on an image zero-padded by one pixel
# ---------------------------------------------------------------------------------------------
#
# A sample at p = (p_y, p_x) blends the four pixels around it, v00 = x(y0, x0), v01 = x(y0, x0+1),
# v10 = x(y0+1, x0), v11 = x(y0+1, x0+1) with y0 = floor(p_y), x0 = floor(p_x), where pixels
# outside the image read 0. `dcn_sample` says it for one position of an unpadded plane. The
# kernels locate each sample once (`dcn_locate`, shared by every channel of its offset group) and
# then read an input that is actually zero-padded by one pixel, (H+2)×(W+2) pixels, so that the
# four corners need no bounds checks; both paths blend with the same `bilinear_blend`. The
# kernels' padded input is channels last, (B, H+2, W+2, C_in): the channels of one pixel lie side
# by side, so that the channels sharing a sample read their corners from contiguous memory.

# Constants typed float32, so that arithmetic keeps the precision of the data: float32 with float32
# data (a float64 literal would promote every product to float64 and halve the SIMD width of the
# CPU loops), float64 with float64 data.
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
NAN = np.float32(np.nan)


@shared
def dcn_position(i, stride, padding, ki, dilation, delta):
    """One coordinate of a sampling position, p = p0 + p_k + Δp = i·stride − pad + ki·dil + Δ
    (output row i, tap row ki, learned offset Δ; the same for columns)."""
    return i * stride - padding + ki * dilation + delta


@shared
def dcn_tap_position(offset, sample, i, j, geometry):
    """(p_y, p_x) of one sample: output (i, j), tap k of offset group g of image b, where
    `sample` = (b·G_off + g)·K + k numbers the (Δy, Δx) pairs of a flat offset array
    (B, 2·G_off·K, H_out, W_out): Δy is channel 2·sample of it, Δx channel 2·sample + 1.
    `geometry` is a kernels.deform_conv.DeformConvGeometry."""
    k = sample % (geometry.kh * geometry.kw)
    HW_out = geometry.H_out * geometry.W_out
    delta_y = offset[2 * sample * HW_out + i * geometry.W_out + j]
    delta_x = offset[(2 * sample + 1) * HW_out + i * geometry.W_out + j]
    p_y = dcn_position(i, geometry.stride_h, geometry.pad_h, k // geometry.kw, geometry.dil_h, delta_y)
    p_x = dcn_position(j, geometry.stride_w, geometry.pad_w, k % geometry.kw, geometry.dil_w, delta_x)
    return p_y, p_x


@shared
def dcn_is_valid(p_y, p_x, H, W):
    """The DCNv2 validity test: -1 < p_y < H and -1 < p_x < W (False for NaN positions)."""
    return p_y > -1.0 and p_y < H and p_x > -1.0 and p_x < W


@shared
def is_finite_position(p_y, p_x):
    """Both coordinates are finite numbers."""
    return not (math.isnan(p_y) or math.isnan(p_x) or math.isinf(p_y) or math.isinf(p_x))


@shared
def fractional_part(p):
    """l = p − floor(p), the interpolation weight toward the higher corner."""
    return p - math.floor(p)


@shared
def corner_weight(l_y, l_x, corner):
    """Bilinear weight of corner 0..3 = (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
    (1−l_y)(1−l_x), (1−l_y)·l_x, l_y·(1−l_x), l_y·l_x, with l = p − floor(p)."""
    w_y = l_y if corner >= 2 else ONE - l_y
    w_x = l_x if corner % 2 == 1 else ONE - l_x
    return w_y * w_x


@shared
def bilinear_blend(v00, v01, v10, v11, l_y, l_x):
    """S = Σ_corner corner_weight · v = (1−l_y)(1−l_x)·v00 + (1−l_y)l_x·v01 + l_y(1−l_x)·v10 + l_y·l_x·v11."""
    return (corner_weight(l_y, l_x, 0) * v00 + corner_weight(l_y, l_x, 1) * v01
            + corner_weight(l_y, l_x, 2) * v10 + corner_weight(l_y, l_x, 3) * v11)


@shared
def bilinear_slopes(v00, v01, v10, v11, l_y, l_x):
    """(∂S/∂p_y, ∂S/∂p_x) of `bilinear_blend` (∂l/∂p = 1):
    ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01),  ∂S/∂p_x = (1−l_y)(v01 − v00) + l_y(v11 − v10).
    floor() makes this the right-sided derivative at integer coordinates."""
    return ((ONE - l_x) * (v10 - v00) + l_x * (v11 - v01),
            (ONE - l_y) * (v01 - v00) + l_y * (v11 - v10))


@shared
def dcn_pixel(data, plane, H, W, y, x):
    """x_c(y, x) at integer coordinates, 0 outside the image (the zero padding of the rule)."""
    if y >= 0 and y < H and x >= 0 and x < W:
        return data[plane + y * W + x]
    return 0.0


@shared
def dcn_corners(data, plane, H, W, p_y, p_x):
    """(v00, v01, v10, v11, l_y, l_x) of a valid position on an unpadded (H, W) plane."""
    y0 = int(math.floor(p_y))
    x0 = int(math.floor(p_x))
    return (dcn_pixel(data, plane, H, W, y0, x0), dcn_pixel(data, plane, H, W, y0, x0 + 1),
            dcn_pixel(data, plane, H, W, y0 + 1, x0), dcn_pixel(data, plane, H, W, y0 + 1, x0 + 1),
            fractional_part(p_y), fractional_part(p_x))


@shared
def dcn_sample(data, plane, H, W, p_y, p_x):
    """S(x_c, p_y, p_x): bilinear blend of the four corners around (p_y, p_x), corners outside
    the image reading 0; 0 for an invalid position, NaN for a NaN or infinite one (so that bad
    offsets propagate instead of vanishing)."""
    if not dcn_is_valid(p_y, p_x, H, W):
        return 0.0 if is_finite_position(p_y, p_x) else math.nan
    v00, v01, v10, v11, l_y, l_x = dcn_corners(data, plane, H, W, p_y, p_x)
    return bilinear_blend(v00, v01, v10, v11, l_y, l_x)


@shared
def dcn_sample_gradient(data, plane, H, W, p_y, p_x):
    """(∂S/∂p_y, ∂S/∂p_x) (see `bilinear_slopes`) with corner values 0 outside the image;
    (0, 0) for an invalid position (the convention of the original DCNv2 operator), NaN for a
    non-finite one."""
    if not dcn_is_valid(p_y, p_x, H, W):
        if is_finite_position(p_y, p_x):
            return 0.0, 0.0
        return math.nan, math.nan
    v00, v01, v10, v11, l_y, l_x = dcn_corners(data, plane, H, W, p_y, p_x)
    return bilinear_slopes(v00, v01, v10, v11, l_y, l_x)


@shared
def dcn_sample_number(b, g, k, geometry):
    """s = (b·G_off + g)·K + k, the sample (tap k of offset group g of image b) whose (Δy, Δx) are
    channels 2s, 2s + 1 of the flat offset array and whose m is channel s of the flat mask."""
    return (b * geometry.offset_groups + g) * geometry.kh * geometry.kw + k


@shared
def dcn_modulation(mask, use_mask, s, position, HW_out):
    """m of sample s at one output position: channel s of the flat mask (B, G_off·K, H_out, W_out)
    in v2 (use_mask), 1 in v1."""
    return mask[s * HW_out + position] if use_mask else ONE


# Where the kernels keep things, as flat indices (every array is flat and C-contiguous inside a
# kernel); `geometry` is a kernels.deform_conv.DeformConvGeometry.

@shared
def dcn_table_index(b, position, g, k, geometry):
    """Index of sample (b, g, k) at output position = i·W_out + j in the located tables, laid out
    (B, H_out·W_out, G_off, K): the samples of one output position side by side."""
    return ((b * geometry.H_out * geometry.W_out + position) * geometry.offset_groups + g) \
        * geometry.kh * geometry.kw + k


@shared
def dcn_table_coordinates(here, geometry):
    """(b, position, g, k) of entry `here` of the located tables, the inverse of `dcn_table_index`."""
    K = geometry.kh * geometry.kw
    k = here % K
    g = here // K % geometry.offset_groups
    position = here // (K * geometry.offset_groups) % (geometry.H_out * geometry.W_out)
    b = here // (K * geometry.offset_groups * geometry.H_out * geometry.W_out)
    return b, position, g, k


@shared
def dcn_column_index(b, group, position, k, channel_in_group, positions, geometry):
    """Index of col[b, group, position, k, c'] in a column buffer (B, G, positions, K, C_in/G):
    for each weight group, one row per output position holding its K taps × C_in/G channels
    (channel c = group·C_in/G + c'), so that out[b, group] = weight_group · rowsᵀ. positions is
    H_out·W_out for whole images (a GPU chunk), or a CPU tile's count (b = 0, position counted
    from the tile's first)."""
    channels_per_group = geometry.C_in // geometry.groups
    return (((b * geometry.groups + group) * positions + position)
            * geometry.kh * geometry.kw + k) * channels_per_group + channel_in_group


@shared
def dcn_column_coordinates(index, geometry):
    """(b, group, position, k, c', c, g) of col element `index`, the inverse of `dcn_column_index`:
    image, weight group, output position, tap, channel within the group, channel, offset group."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.groups
    channel_in_group = index % channels_per_group
    k = index // channels_per_group % K
    position = index // (channels_per_group * K) % HW_out
    group = index // (channels_per_group * K * HW_out) % geometry.groups
    b = index // (channels_per_group * K * HW_out * geometry.groups)
    c = group * channels_per_group + channel_in_group
    return b, group, position, k, channel_in_group, c, c // (geometry.C_in // geometry.offset_groups)


@shared
def dcn_padded_image(b, geometry):
    """Flat index of image b's first value in the channels-last padded input (B, H+2, W+2, C_in)."""
    return b * (geometry.H + 2) * (geometry.W + 2) * geometry.C_in


@shared
def dcn_padded_pixel(y, x, W):
    """Flat index, within a padded (H+2)×(W+2) image, of input pixel (y, x)."""
    return (y + 1) * (W + 2) + x + 1


# Where a sample falls on the padded image: `top_left` ≥ 0 is the flat pixel index of its corner
# (y0, x0) within a padded (H+2)×(W+2) image (times C_in on the channels-last input); these two
# negative values mark samples that read no pixel.
OUTSIDE = -1  # an invalid sample: S = 0, no gradient
NOT_A_NUMBER = -2  # a sample at a NaN or infinite position: S = NaN


@shared
def dcn_locate(p_y, p_x, H, W):
    """(top_left, l_y, l_x) of position p on the image zero-padded by one pixel:
    top_left = (y0 + 1)·(W + 2) + (x0 + 1) with y0 = floor(p_y), x0 = floor(p_x), and
    l = p − floor(p); for an invalid position top_left is OUTSIDE (NOT_A_NUMBER if p is not
    finite) and l = 0."""
    if not dcn_is_valid(p_y, p_x, H, W):
        return (OUTSIDE if is_finite_position(p_y, p_x) else NOT_A_NUMBER), 0.0, 0.0
    y0 = math.floor(p_y)
    x0 = math.floor(p_x)
    return (int(y0) + 1) * (W + 2) + int(x0) + 1, p_y - y0, p_x - x0


@shared
def dcn_unlocated_value(top_left):
    """S (and each slope) of a sample that reads no pixel: 0, or NaN at a non-finite position."""
    return NAN if top_left == NOT_A_NUMBER else ZERO


@shared
def dcn_located_or_not(located_value, top_left):
    """S or a slope of S of one sample: `located_value`, computed from its corners, when it reads
    pixels (top_left ≥ 0), else `dcn_unlocated_value`."""
    return located_value if top_left >= 0 else dcn_unlocated_value(top_left)


@shared
def dcn_column_value(blended, top_left, m):
    """col = m · S, S being `blended` for a sample that reads pixels and 0 (NaN) for one that does
    not. The mask multiplies in every case, so that a NaN or infinite mask makes col NaN even where
    S = 0, as m · 0 does in the formula."""
    return m * dcn_located_or_not(blended, top_left)


@shared
def dcn_offset_gradient_term(grad_sample, m, slope, top_left):
    """One channel's term of ∂L/∂Δp_d = Σ_c m · gcol · ∂S/∂p_d, in the formula's order (m · gcol
    first), so that an infinite m times a zero slope is NaN on every backend."""
    return m * grad_sample * dcn_located_or_not(slope, top_left)


@shared
def padded_corner(top_left, W, corner):
    """Index, within a padded image of width W + 2, of corner 0..3 (y0|y0+1, x0|x0+1)."""
    return top_left + (corner // 2) * (W + 2) + corner % 2


@shared
def padded_corners(padded, base, top_left, W, pixel_stride):
    """(v00, v01, v10, v11) of a padded image whose pixel q lives at base + q·pixel_stride: base is
    the image's first value of the channel read and pixel_stride its number of channels on a
    channels-last image (1 on a single plane).

    A sample that reads no pixel (top_left < 0) reads the image's first corners instead, in
    bounds and meaningless: kernels blend every sample, then keep `dcn_unlocated_value` for
    those. Reading unconditionally leaves the CPU loops without branches, so that they vectorise.
    """
    top_left = max(top_left, 0)
    return (padded[base + padded_corner(top_left, W, 0) * pixel_stride],
            padded[base + padded_corner(top_left, W, 1) * pixel_stride],
            padded[base + padded_corner(top_left, W, 2) * pixel_stride],
            padded[base + padded_corner(top_left, W, 3) * pixel_stride])


@shared
def dcn_column_from_corners(v00, v01, v10, v11, l_y, l_x, top_left, m):
    """col = m · S of one channel of a located sample (top_left, l_y, l_x) from its four corner
    values: the one formula of the deformable im2col, which every kernel computing col calls."""
    return dcn_column_value(bilinear_blend(v00, v01, v10, v11, l_y, l_x), top_left, m)


@shared
def dcn_input_gradient_term(grad_sample, m, l_y, l_x, corner):
    """What one col element adds to corner 0..3 of its sample: ∂L/∂x = m · gcol · w_corner
    (0 for a sample that reads no pixel, which the kernels skip)."""
    return m * grad_sample * corner_weight(l_y, l_x, corner)


@shared
def dcn_offset_mask_terms(v00, v01, v10, v11, l_y, l_x, top_left, m, grad_sample):
    """One channel's terms of the offset and mask gradients of a located sample, from its four
    corner values and gcol: (m · gcol · ∂S/∂p_y, m · gcol · ∂S/∂p_x, gcol · S), whose sums over
    the channels of the sample's offset group are ∂L/∂Δp_y, ∂L/∂Δp_x and ∂L/∂m."""
    d_y, d_x = bilinear_slopes(v00, v01, v10, v11, l_y, l_x)
    value = bilinear_blend(v00, v01, v10, v11, l_y, l_x)
    return (dcn_offset_gradient_term(grad_sample, m, d_y, top_left),
            dcn_offset_gradient_term(grad_sample, m, d_x, top_left),
            grad_sample * dcn_located_or_not(value, top_left))


@shared
def dcn_store_sample_gradient(grad_offset, grad_mask, use_mask, s, position, HW_out, grad_p_y, grad_p_x, grad_m):
    """Store sample s's gradients at one output position: ∂L/∂Δp_y and ∂L/∂Δp_x in channels 2s and
    2s + 1 of the flat offset gradient, ∂L/∂m in channel s of the flat mask gradient (v2 only)."""
    grad_offset[2 * s * HW_out + position] = grad_p_y
    grad_offset[(2 * s + 1) * HW_out + position] = grad_p_x
    if use_mask:
        grad_mask[s * HW_out + position] = grad_m


# ---------------------------------------------------------------------------------------------
# Deformable RoI pooling (docs/specification.md §2): bin geometry, and the two bilinear rules of the RoI ops
# ---------------------------------------------------------------------------------------------
#
# Both ops average samples of (H, W) planes over the bins of a RoI and read four corners
# (y_low|y_high, x_low|x_high) with the weights of `corner_weight`; they differ in where a bin's
# samples lie and in how a position near the border picks its corners (`roi_align_axis`,
# `psroi_axis`). The derivative of a blend with respect to the position is
# Σ_corner value · ∂corner_weight/∂l (`corner_weight_gradient`), times the derivative of the
# clamped coordinate with respect to the unclamped one (0 where a clamp holds it still).


@shared
def corner_weight_gradient(l_y, l_x, corner):
    """(∂w/∂l_y, ∂w/∂l_x) for the bilinear weight w of corner 0..3 (see `corner_weight`):
    ∓(1−l_x or l_x) and ∓(1−l_y or l_y), positive toward the high corner."""
    w_y = l_y if corner >= 2 else 1.0 - l_y
    w_x = l_x if corner % 2 == 1 else 1.0 - l_x
    sign_y = 1.0 if corner >= 2 else -1.0
    sign_x = 1.0 if corner % 2 == 1 else -1.0
    return sign_y * w_x, sign_x * w_y


@shared
def corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner):
    """Flat index of corner 0..3 = (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)."""
    row = y_high if corner >= 2 else y_low
    column = x_high if corner % 2 == 1 else x_low
    return plane + row * W + column


@shared
def corners_blend(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x):
    """Σ_corner corner_weight · value over the four corners (y_low|y_high, x_low|x_high) that a
    RoI rule chose for a position, l being the weights toward the high corners."""
    value = 0.0
    for corner in range(4):
        weight = corner_weight(l_y, l_x, corner)
        value += weight * data[corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner)]
    return value


@shared
def corners_slopes(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x):
    """(∂/∂l_y, ∂/∂l_x) of `corners_blend`: Σ_corner (∂w/∂l_y, ∂w/∂l_x) · value
    (`corner_weight_gradient`), which the RoI kernels also apply corner by corner."""
    d_y = 0.0
    d_x = 0.0
    for corner in range(4):
        value = data[corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner)]
        weight_d_y, weight_d_x = corner_weight_gradient(l_y, l_x, corner)
        d_y += weight_d_y * value
        d_x += weight_d_x * value
    return d_y, d_x


@shared
def bin_start(roi_start, bin_index, bin_size, shift):
    """Where bin `bin_index` of a RoI begins along one axis: roi_start + bin_index·bin_size + shift,
    shift being the learned offset of the bin in pixels (γ·Δ·roi_extent in §2a,
    trans_std·Δ·roi_extent in §2b; 0 without offsets)."""
    return roi_start + bin_index * bin_size + shift


# §2a deform_roi_pool: RoIAlign (aligned) with a learned shift per bin.


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


# §2b deform_psroi_pool: position-sensitive deformable RoI pooling, the original R-FCN rules.


class PSRoIBin(NamedTuple):
    """Where the sample_per_part² samples of output element (n, ctop, ph, pw) lie: from
    (h_start, w_start), offset included, in steps of sub_bin_height × sub_bin_width, on plane
    `channel` of image `batch`. The RoI measures roi_height × roi_width (the offsets' unit), and the
    bin's offset is trans cell (class_id, part_h, part_w)."""

    batch: int
    channel: int
    h_start: float
    w_start: float
    sub_bin_height: float
    sub_bin_width: float
    roi_height: float
    roi_width: float
    class_id: int
    part_h: int
    part_w: int


@shared
def round_half_away(v):
    """v rounded to the nearest integer, halves away from zero, as C's round() that the original
    operator uses (Python's and NumPy's round send halves to the even neighbour)."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


@shared
def psroi_box(x1, y1, x2, y2, spatial_scale):
    """The RoI on the feature map with the original's rounding: start_x = round(x1)·s − 0.5,
    start_y = round(y1)·s − 0.5, end_x = (round(x2) + 1)·s − 0.5, end_y likewise,
    roi_width = max(end_x − start_x, 0.1), roi_height likewise (too small RoIs get 0.1).
    Returns (start_x, start_y, roi_width, roi_height)."""
    start_x = round_half_away(x1) * spatial_scale - 0.5
    start_y = round_half_away(y1) * spatial_scale - 0.5
    end_x = (round_half_away(x2) + 1.0) * spatial_scale - 0.5
    end_y = (round_half_away(y2) + 1.0) * spatial_scale - 0.5
    return start_x, start_y, max(end_x - start_x, 0.1), max(end_y - start_y, 0.1)


@shared
def bin_cell(bin_index, pooled_size, cells):
    """The cell, of `cells` equal cells laid over the RoI's P = pooled_size bins, that bin
    `bin_index` falls in: floor(bin_index/P · cells), in exact integer arithmetic. It picks the
    trans cell of a bin (cells = part_size) and its score map (cells = group_size); as
    bin_index < P the result is always below `cells`, so the original's clamp never acts."""
    return bin_index * cells // pooled_size


@shared
def psroi_output_index(index, geometry):
    """(n, ctop, ph, pw) of output element index = ((n·output_dim + ctop)·P + ph)·P + pw."""
    P = geometry.pooled_size
    return (index // (P * P * geometry.output_dim), index // (P * P) % geometry.output_dim,
            index // P % P, index % P)


@shared
def psroi_bin(rois, trans, has_trans, n, ctop, ph, pw, geometry):
    """The PSRoIBin of output element (n, ctop, ph, pw). rois (N, 5) rows
    (batch_index, x1, y1, x2, y2); trans (N, 2·num_classes, part_size, part_size), x then y per
    class, moves the bin by trans_std·(roi_width·Δx, roi_height·Δy); `geometry` holds
    pooled_size, part_size, group_size, sample_per_part, channels_each_class, spatial_scale
    and trans_std. The plane read is channel (ctop·group_size + gh)·group_size + gw."""
    P = geometry.pooled_size
    start_x, start_y, roi_width, roi_height = psroi_box(
        rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4], geometry.spatial_scale)
    bin_height = roi_height / P
    bin_width = roi_width / P
    class_id = ctop // geometry.channels_each_class
    part_h = bin_cell(ph, P, geometry.part_size)
    part_w = bin_cell(pw, P, geometry.part_size)
    shift_x = 0.0
    shift_y = 0.0
    if has_trans:
        shift_x = trans[n, 2 * class_id, part_h, part_w] * geometry.trans_std * roi_width
        shift_y = trans[n, 2 * class_id + 1, part_h, part_w] * geometry.trans_std * roi_height
    gh = bin_cell(ph, P, geometry.group_size)
    gw = bin_cell(pw, P, geometry.group_size)
    return PSRoIBin(int(rois[n, 0]), (ctop * geometry.group_size + gh) * geometry.group_size + gw,
                    bin_start(start_y, ph, bin_height, shift_y),
                    bin_start(start_x, pw, bin_width, shift_x),
                    bin_height / geometry.sample_per_part, bin_width / geometry.sample_per_part,
                    roi_height, roi_width, class_id, part_h, part_w)


@shared
def psroi_plane(bin_, geometry):
    """Flat index of pixel (0, 0) of the score map a bin reads, in the input (B, C, H, W)."""
    return (bin_.batch * geometry.C + bin_.channel) * geometry.H * geometry.W


@shared
def psroi_sample_position(bin_, ih, iw):
    """(h, w) of sample (ih, iw) of a bin, at a sub-bin start: h_start + ih·sub_bin_height,
    w_start + iw·sub_bin_width."""
    return bin_.h_start + ih * bin_.sub_bin_height, bin_.w_start + iw * bin_.sub_bin_width


@shared
def psroi_is_skipped(h, w, H, W):
    """The original rule drops a sample more than half a pixel outside the image:
    w < −0.5 or w > W − 0.5 or h < −0.5 or h > H − 0.5. Non-finite positions are kept (and read
    as NaN), so that bad offsets propagate instead of vanishing."""
    return is_finite_position(h, w) and (w < -0.5 or w > W - 0.5 or h < -0.5 or h > H - 0.5)


@shared
def psroi_axis(p, size):
    """One axis of the original rule, for a kept p: clamp to [0, size−1], then the neighbours are
    floor(p) and ceil(p) (one pixel when p is an integer). Returns (low, high, l = p − low)."""
    p = min(max(p, 0.0), size - 1.0)
    low = math.floor(p)
    return int(low), int(math.ceil(p)), p - low


@shared
def psroi_corner(plane, H, W, h, w, corner):
    """(flat index, bilinear weight) of corner 0..3 of a kept, finite position under the original rule."""
    y_low, y_high, l_y = psroi_axis(h, H)
    x_low, x_high, l_x = psroi_axis(w, W)
    return (corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner),
            corner_weight(l_y, l_x, corner))


@shared
def psroi_sample(data, plane, H, W, h, w):
    """The bilinear value at a kept sample (h, w) under the original rule; NaN for a non-finite one."""
    if not is_finite_position(h, w):
        return math.nan
    y_low, y_high, l_y = psroi_axis(h, H)
    x_low, x_high, l_x = psroi_axis(w, W)
    return corners_blend(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x)


@shared
def psroi_sample_gradient(data, plane, H, W, h, w):
    """(∂/∂h, ∂/∂w) of `psroi_sample`: with U_ab the corner values (row a, column b),
    ∂/∂h = (1−l_x)(U10 − U00) + l_x(U11 − U01) and ∂/∂w = (1−l_y)(U01 − U00) + l_y(U11 − U10).
    At an integer coordinate floor = ceil, so both corners of that axis coincide and its slope is
    0 (the original behaviour); a clamped coordinate is an integer, so it gets 0 too, as it must.
    NaN for a non-finite position."""
    if not is_finite_position(h, w):
        return math.nan, math.nan
    y_low, y_high, l_y = psroi_axis(h, H)
    x_low, x_high, l_x = psroi_axis(w, W)
    return corners_slopes(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x)


@shared
def psroi_count(bin_, H, W, sample_per_part):
    """How many samples of a bin are kept: the divisor of its average (0: the bin is 0)."""
    count = 0
    for ih in range(sample_per_part):
        for iw in range(sample_per_part):
            h, w = psroi_sample_position(bin_, ih, iw)
            if not psroi_is_skipped(h, w, H, W):
                count += 1
    return count


@shared
def psroi_average(data, plane, H, W, bin_, sample_per_part):
    """out = Σ_kept value / count over the kept samples of a bin, 0 when none is kept."""
    total = 0.0
    for ih in range(sample_per_part):
        for iw in range(sample_per_part):
            h, w = psroi_sample_position(bin_, ih, iw)
            if not psroi_is_skipped(h, w, H, W):
                total += psroi_sample(data, plane, H, W, h, w)
    count = psroi_count(bin_, H, W, sample_per_part)
    return total / count if count > 0 else 0.0


@shared
def psroi_average_gradient(data, plane, H, W, bin_, sample_per_part):
    """(∂out/∂h_start, ∂out/∂w_start) = Σ_kept (∂/∂h, ∂/∂w) / count (0, 0 when none is kept):
    every sample of a bin moves with the bin's start."""
    d_h = 0.0
    d_w = 0.0
    for ih in range(sample_per_part):
        for iw in range(sample_per_part):
            h, w = psroi_sample_position(bin_, ih, iw)
            if not psroi_is_skipped(h, w, H, W):
                sample_d_h, sample_d_w = psroi_sample_gradient(data, plane, H, W, h, w)
                d_h += sample_d_h
                d_w += sample_d_w
    count = psroi_count(bin_, H, W, sample_per_part)
    if count == 0:
        return 0.0, 0.0
    return d_h / count, d_w / count


@shared
def psroi_trans_gradient(input, bin_, grad_out, geometry):
    """What one output element, of gradient grad_out and bin `bin_`, adds to the gradient of the
    bin's trans cell (class_id, part_h, part_w): (trans_std·grad_out·roi_width·∂out/∂w_start,
    trans_std·grad_out·roi_height·∂out/∂h_start), x then y, as the bin moves by trans_std·roi_width
    per unit of trans x and by trans_std·roi_height per unit of trans y."""
    d_h, d_w = psroi_average_gradient(input, psroi_plane(bin_, geometry), geometry.H, geometry.W, bin_,
                                      geometry.sample_per_part)
    share = geometry.trans_std * grad_out
    return share * bin_.roi_width * d_w, share * bin_.roi_height * d_h
