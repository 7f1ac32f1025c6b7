"""The formulas of position-sensitive deformable RoI pooling (docs/specification.md §2.2), the
original R-FCN operator's rules, shared by its CPU and CUDA kernels.

A RoI's corners are rounded to whole pixels as C rounds (`psroi_box`), its P × P bins move by
trans_std·(roi_width·Δx, roi_height·Δy) read from the part cell of their class (`psroi_bin`; a
bin starts like a RoIAlign bin, `deform_roi_pool_math.bin_start`), and each bin averages the
samples at its sub-bin starts that lie at most half a pixel outside the image. A kept sample is
clamped into the image and blends floor and ceil (`psroi_axis`) with `bilinear.corners_blend`.
`geometry` is a deform_psroi_pool.PSRoIGeometry.
"""

import math
from typing import NamedTuple

from dcn_numba.kernels._targets import shared
from dcn_numba.kernels.bilinear import corner_pixel, corner_weight, corners_blend, corners_slopes, is_finite_position
from dcn_numba.kernels.deform_roi_pool_math import bin_start


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
    operator uses (Python's and NumPy's round send halves to the even neighbour). NaN and ±Inf
    stay as they are, as in the reference, so that a non-finite RoI propagates alike everywhere."""
    if math.isnan(v) or math.isinf(v):
        return v
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
