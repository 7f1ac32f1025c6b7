"""Position-sensitive deformable RoI pooling (docs/specification.md §2.2) in plain NumPy, with the rules of the
original R-FCN operator. Read it next to the specification; it is written for clarity, not speed.

A RoI is cut into P×P bins. Bin (ph, pw) of output channel ctop reads the score map of its
position, input channel (ctop·group_size + gh)·group_size + gw with gh = floor(ph·group_size/P),
and is shifted by a learned fraction of the RoI's size, read from trans at the part cell
(floor(ph·part_size/P), floor(pw·part_size/P)) of the class of ctop. It averages a
sample_per_part² grid of bilinear samples taken at sub-bin starts; samples more than half a
pixel outside the image are skipped, and a bin with no sample left is 0.

Shapes: input (B, C, H, W) with C = output_dim·group_size², rois (N, 5) rows
(batch_index, x1, y1, x2, y2), trans None or (N, 2·num_classes, part_size, part_size), stored x
first then y per class, output (N, output_dim, P, P). Everything is computed in float64 and
returned in the input's dtype.
"""

import math
from collections import namedtuple

import numpy as np

# One output element (n, ctop, ph, pw) and what it reads: batch index, input channel, trans cell
# (class_id, part_h, part_w), RoI size (roi_width, roi_height) and its kept sample positions (h, w).
Bin = namedtuple("Bin", "index batch channel cell roi_size kept")


def round_half_away(v):
    """C's round(), which the original uses: halves go away from zero (not to the even neighbour).
    NaN and ±Inf stay as they are, so that they propagate to the output."""
    if not math.isfinite(v):
        return v
    return math.copysign(math.floor(abs(v) + 0.5), v)


def roi_box(roi, spatial_scale):
    """(start_x, start_y, roi_width, roi_height) of one RoI row: corners rounded to whole input
    pixels, the far corner's pixel included, sizes at least 0.1."""
    _, x1, y1, x2, y2 = roi
    start_x = round_half_away(x1) * spatial_scale - 0.5
    start_y = round_half_away(y1) * spatial_scale - 0.5
    end_x = (round_half_away(x2) + 1) * spatial_scale - 0.5
    end_y = (round_half_away(y2) + 1) * spatial_scale - 0.5
    return start_x, start_y, max(end_x - start_x, 0.1), max(end_y - start_y, 0.1)


def is_skipped(h, w, H, W):
    """Samples more than half a pixel outside the image are dropped (non-finite ones are kept)."""
    finite = math.isfinite(h) and math.isfinite(w)
    return finite and (w < -0.5 or w > W - 0.5 or h < -0.5 or h > H - 0.5)


def clamp_axis(p, size):
    """One axis of a kept sample: clamp to [0, size−1], then the neighbours are floor(p) and
    ceil(p), one pixel when p is an integer. Returns (low, high, l = p − low)."""
    p = min(max(p, 0.0), size - 1.0)
    return math.floor(p), math.ceil(p), p - math.floor(p)


def bilinear(plane, h, w):
    """The original bilinear value of plane (H, W) at a kept (h, w); NaN at a non-finite one."""
    if not (math.isfinite(h) and math.isfinite(w)):
        return math.nan
    y_low, y_high, l_y = clamp_axis(h, plane.shape[0])
    x_low, x_high, l_x = clamp_axis(w, plane.shape[1])
    return ((1 - l_y) * (1 - l_x) * plane[y_low, x_low] + (1 - l_y) * l_x * plane[y_low, x_high]
            + l_y * (1 - l_x) * plane[y_high, x_low] + l_y * l_x * plane[y_high, x_high])


def bins(rois, trans, H, W, output_dim, group_size, pooled_size, part_size, sample_per_part,
         trans_std, spatial_scale):
    """Yield the Bin of every output element (n, ctop, ph, pw)."""
    P = pooled_size
    num_classes = 1 if trans is None else trans.shape[1] // 2
    channels_each_class = output_dim // num_classes
    for n, roi in enumerate(rois.astype(np.float64)):
        start_x, start_y, roi_width, roi_height = roi_box(roi, spatial_scale)
        bin_width, bin_height = roi_width / P, roi_height / P
        sub_bin_width, sub_bin_height = bin_width / sample_per_part, bin_height / sample_per_part
        for ctop in range(output_dim):
            class_id = ctop // channels_each_class
            for ph in range(P):
                for pw in range(P):
                    part_h, part_w = ph * part_size // P, pw * part_size // P
                    trans_x = trans_y = 0.0
                    if trans is not None:
                        trans_x = float(trans[n, 2 * class_id, part_h, part_w]) * trans_std
                        trans_y = float(trans[n, 2 * class_id + 1, part_h, part_w]) * trans_std
                    w_start = pw * bin_width + start_x + trans_x * roi_width
                    h_start = ph * bin_height + start_y + trans_y * roi_height
                    gh, gw = ph * group_size // P, pw * group_size // P
                    samples = [(h_start + ih * sub_bin_height, w_start + iw * sub_bin_width)
                               for ih in range(sample_per_part) for iw in range(sample_per_part)]
                    yield Bin(index=(n, ctop, ph, pw), batch=int(roi[0]),
                              channel=(ctop * group_size + gh) * group_size + gw,
                              cell=(class_id, part_h, part_w), roi_size=(roi_width, roi_height),
                              kept=[(h, w) for h, w in samples if not is_skipped(h, w, H, W)])


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size, sample_per_part, trans_std):
    """out (N, output_dim, P, P): the mean of the kept samples of every bin, 0 if none is kept."""
    batch = input.astype(np.float64)
    _, _, H, W = input.shape
    output = np.zeros((rois.shape[0], output_dim, pooled_size, pooled_size))
    for element in bins(rois, trans, H, W, output_dim, group_size, pooled_size, part_size,
                     sample_per_part, trans_std, spatial_scale):
        plane = batch[element.batch, element.channel]
        if element.kept:
            output[element.index] = np.mean([bilinear(plane, h, w) for h, w in element.kept])
    return output.astype(input.dtype)


def deform_psroi_pool_backward(grad_output, input, rois, trans, spatial_scale, output_dim,
                               group_size, pooled_size, part_size, sample_per_part, trans_std):
    """(grad_input (B, C, H, W), grad_trans like trans or None).

    Each kept sample contributes its bilinear value / count to the output, so with
    share = grad_output / count:
    * grad_input: each corner receives share · (its weight);
    * grad_trans: the sample moves by trans_std·roi_width per unit of trans x and by
      trans_std·roi_height per unit of trans y, giving trans_std·roi_width·share·∂/∂w and
      trans_std·roi_height·share·∂/∂h, where with U_ab the corner values (row a, column b)
      ∂/∂w = (1−l_y)(U01 − U00) + l_y(U11 − U10) and ∂/∂h = (1−l_x)(U10 − U00) + l_x(U11 − U01).
      At an integer (or clamped) coordinate both corners of that axis coincide: slope 0.
    """
    batch = input.astype(np.float64)
    grad_output = grad_output.astype(np.float64)
    _, _, H, W = input.shape
    grad_input = np.zeros(input.shape)
    grad_trans = None if trans is None else np.zeros(trans.shape)
    for element in bins(rois, trans, H, W, output_dim, group_size, pooled_size, part_size,
                     sample_per_part, trans_std, spatial_scale):
        if not element.kept:
            continue
        b, c, (n, _, _, _) = element.batch, element.channel, element.index
        share = grad_output[element.index] / len(element.kept)
        class_id, part_h, part_w = element.cell
        roi_width, roi_height = element.roi_size
        for h, w in element.kept:
            if not (math.isfinite(h) and math.isfinite(w)):
                if grad_trans is not None:  # a NaN position makes its trans's gradient NaN
                    grad_trans[n, 2 * class_id:2 * class_id + 2, part_h, part_w] = np.nan
                continue
            y_low, y_high, l_y = clamp_axis(h, H)
            x_low, x_high, l_x = clamp_axis(w, W)
            corners = [(y_low, x_low, (1 - l_y) * (1 - l_x)), (y_low, x_high, (1 - l_y) * l_x),
                       (y_high, x_low, l_y * (1 - l_x)), (y_high, x_high, l_y * l_x)]
            for row, column, weight in corners:
                grad_input[b, c, row, column] += share * weight
            if grad_trans is None:
                continue
            u00, u01 = batch[b, c, y_low, x_low], batch[b, c, y_low, x_high]
            u10, u11 = batch[b, c, y_high, x_low], batch[b, c, y_high, x_high]
            d_w = (1 - l_y) * (u01 - u00) + l_y * (u11 - u10)
            d_h = (1 - l_x) * (u10 - u00) + l_x * (u11 - u01)
            grad_trans[n, 2 * class_id, part_h, part_w] += trans_std * roi_width * share * d_w
            grad_trans[n, 2 * class_id + 1, part_h, part_w] += trans_std * roi_height * share * d_h
    return (grad_input.astype(input.dtype),
            None if grad_trans is None else grad_trans.astype(trans.dtype))
