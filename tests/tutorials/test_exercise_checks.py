"""Every exercise's check tests its lesson: it passes the worked solution and fails plausible mistakes.

The notebooks call each check as `check(name, checks.some_check)` (tutorials/checks.py). Here each
check runs on its exercise's solution, which must pass, and on wrong answers a learner could write,
each of which must come back "not right yet". The wrong answers are the solution with one mistake
in it, named after the mistake. The CUDA kernels run in the Numba CUDA simulator (tests/conftest.py
switches it on when there is no GPU).
"""

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import cuda

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import checks  # noqa: E402  (the tutorials' own modules, found in tutorials/)
import exercises  # noqa: E402

import dcn_numba  # noqa: E402
from dcn_numba.engine import functional as F  # noqa: E402
from dcn_numba.engine.autograd import Tensor  # noqa: E402
from dcn_numba.reference import deform_roi_pool as roi_reference  # noqa: E402


def checked_exercises():
    """{exercise: (notebook, check name)} from every `check(exercise, checks.name)` of the notebooks."""
    found = {}
    for source in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        for name, check_name in re.findall(r"^check\((\w+), checks\.(\w+)\)", source.read_text(), re.MULTILINE):
            found[name] = (source.stem, check_name)
    return found


EXERCISES = checked_exercises()


def solution(exercise):
    return getattr(exercises.solutions_of(EXERCISES[exercise][0]), exercise)


def check_of(exercise):
    return getattr(checks, EXERCISES[exercise][1])


# Wrong answers, grouped by exercise -------------------------------------------------------------

def padded_bilinear(image, p_y, p_x):
    """Bilinear interpolation of a padded image at (p_y, p_x), its four corners inside."""
    y0, x0 = int(np.floor(p_y)), int(np.floor(p_x))
    l_y, l_x = p_y - y0, p_x - x0
    return ((1 - l_y) * (1 - l_x) * image[y0, x0] + (1 - l_y) * l_x * image[y0, x0 + 1]
            + l_y * (1 - l_x) * image[y0 + 1, x0] + l_y * l_x * image[y0 + 1, x0 + 1])


def sample_without_the_shift(image, p_y, p_x):
    H, W = image.shape
    if not (-1 < p_y < H and -1 < p_x < W):
        return 0.0
    return padded_bilinear(np.pad(image, 1), p_y, p_x)  # p, not p + 1, on the padded image


def sample_with_the_border_repeated(image, p_y, p_x):
    H, W = image.shape
    if not (-1 < p_y < H and -1 < p_x < W):
        return 0.0
    return padded_bilinear(np.pad(image, 1, mode="edge"), p_y + 1, p_x + 1)


def sample_without_the_validity_test(image, p_y, p_x):
    return padded_bilinear(np.pad(image, 1), p_y + 1, p_x + 1)


def taps(kh, kw):
    return np.divmod(np.arange(kh * kw), kw)


def offsets_x_first(s, kh, kw):
    tap_y, tap_x = taps(kh, kw)
    return np.stack([(s - 1) * (tap_x - (kw - 1) / 2), (s - 1) * (tap_y - (kh - 1) / 2)], axis=1).ravel()


def offsets_of_s_not_s_minus_1(s, kh, kw):
    tap_y, tap_x = taps(kh, kw)
    return np.stack([s * (tap_y - (kh - 1) / 2), s * (tap_x - (kw - 1) / 2)], axis=1).ravel()


def offsets_not_centred(s, kh, kw):
    tap_y, tap_x = taps(kh, kw)
    return np.stack([(s - 1) * tap_y, (s - 1) * tap_x], axis=1).ravel().astype(float)


def gemm_without_bias(weight, col, bias):
    groups, C_out = col.shape[1], weight.shape[0]
    out = np.einsum("gok,bgkp->bgop", weight.reshape(groups, C_out // groups, -1), col)
    return out.reshape(col.shape[0], C_out, -1)


def gemm_ignoring_groups(weight, col, bias):
    return np.einsum("ok,bkp->bop", weight.reshape(weight.shape[0], -1), col[:, 0]) + bias[:, None]


def gemm_every_group_reading_group_0(weight, col, bias):
    groups, C_out = col.shape[1], weight.shape[0]
    per_group = weight.reshape(groups, C_out // groups, -1)
    out = np.einsum("gok,bkp->bgop", per_group, col[:, 0])
    return out.reshape(col.shape[0], C_out, -1) + bias[:, None]


def mask_gradient_averaged(gcol, S):
    return (gcol * S).mean(axis=1)


def mask_gradient_summed_over_taps(gcol, S):
    return (gcol * S).sum(axis=2)


def mask_gradient_without_S(gcol, S):
    return gcol.sum(axis=1)


def offset_gradient_in_two_blocks(gcol, m, dS_dpy, dS_dpx):
    """All the Δy first, then all the Δx: not the (Δy, Δx) pairs of the offset layout."""
    return np.concatenate([(gcol * m * dS_dpy).sum(axis=1), (gcol * m * dS_dpx).sum(axis=1)], axis=1)


def offset_gradient_without_the_mask(gcol, m, dS_dpy, dS_dpx):
    return solution("offset_gradient")(gcol, np.ones_like(m), dS_dpy, dS_dpx)


def offset_gradient_x_first(gcol, m, dS_dpy, dS_dpx):
    return solution("offset_gradient")(gcol, m, dS_dpx, dS_dpy)


def topological_preorder(tensor):
    order, visited = [], set()

    def visit(t):
        if id(t) in visited:
            return
        visited.add(id(t))
        order.append(t)  # before its inputs
        for parent in (t.creator.inputs if t.creator is not None else ()):
            visit(parent)

    visit(tensor)
    return order


def topological_without_visited(tensor):
    order = []

    def visit(t):
        for parent in (t.creator.inputs if t.creator is not None else ()):
            visit(parent)
        order.append(t)  # once per use

    visit(tensor)
    return order


def topological_reversed(tensor):
    return solution("topological_order")(tensor)[::-1]


def unbroadcast_leading_axes_only(grad, shape):
    return grad.sum(axis=tuple(range(grad.ndim - len(shape))))


def unbroadcast_length_1_axes_only(grad, shape):
    leading = grad.ndim - len(shape)
    repeated = tuple(leading + axis for axis, length in enumerate(shape) if length == 1)
    return grad.sum(axis=repeated, keepdims=True)


def unbroadcast_one_leading_axis(grad, shape):
    if grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    repeated = tuple(axis for axis, length in enumerate(shape) if length == 1)
    return grad.sum(axis=repeated, keepdims=True)


# The CUDA notebook's solutions hold the shared sampler as kernels see it (`gpu`) and the index
# arithmetic of exercise 5.1; the wrong kernels below reuse both and change one thing.
CUDA_SOLUTIONS = exercises.solutions_of(EXERCISES["naive_im2col"][0])
gpu = CUDA_SOLUTIONS.gpu
channel_and_position = CUDA_SOLUTIONS.channel_and_position


def im2col_taps_outermost(n_items, x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    """Unpacks index as ((k·C_in + c)·H_out + i)·W_out + j: the taps outermost."""
    C_in = n_items // (kh * kw * H_out * W_out)
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        k, c = index // (H_out * W_out) // C_in, index // (H_out * W_out) % C_in
        i, j = index // W_out % H_out, index % W_out
        p_y = i - padding + k // kw + offset[2 * k * H_out * W_out + i * W_out + j]
        p_x = j - padding + k % kw + offset[(2 * k + 1) * H_out * W_out + i * W_out + j]
        col[index] = gpu.dcn_sample(x, c * H * W, H, W, p_y, p_x)


def im2col_offsets_x_first(n_items, x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    K, HW_out = kh * kw, H_out * W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, k, i, j = index // HW_out // K, index // HW_out % K, index // W_out % H_out, index % W_out
        p_y = i - padding + k // kw + offset[(2 * k + 1) * HW_out + i * W_out + j]
        p_x = j - padding + k % kw + offset[2 * k * HW_out + i * W_out + j]
        col[index] = gpu.dcn_sample(x, c * H * W, H, W, p_y, p_x)


def im2col_without_padding(n_items, x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    K, HW_out = kh * kw, H_out * W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, k, i, j = index // HW_out // K, index // HW_out % K, index // W_out % H_out, index % W_out
        p_y = i + k // kw + offset[2 * k * HW_out + i * W_out + j]
        p_x = j + k % kw + offset[(2 * k + 1) * HW_out + i * W_out + j]
        col[index] = gpu.dcn_sample(x, c * H * W, H, W, p_y, p_x)


def col2im_without_atomics(n_items, gcol, offset, H, W, kh, kw, padding, H_out, W_out, grad_x):
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, p_y, p_x = channel_and_position(index, offset, kh, kw, padding, H_out, W_out)
        if not gpu.dcn_is_valid(p_y, p_x, H, W):
            continue
        l_y, l_x = gpu.fractional_part(p_y), gpu.fractional_part(p_x)
        y0, x0 = math.floor(p_y), math.floor(p_x)
        for corner in range(4):
            row, column = y0 + corner // 2, x0 + corner % 2
            if 0 <= row < H and 0 <= column < W:
                grad_x[c * H * W + row * W + column] += gcol[index] * gpu.corner_weight(l_y, l_x, corner)


def col2im_mirrored_corner_weights(n_items, gcol, offset, H, W, kh, kw, padding, H_out, W_out, grad_x):
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, p_y, p_x = channel_and_position(index, offset, kh, kw, padding, H_out, W_out)
        if not gpu.dcn_is_valid(p_y, p_x, H, W):
            continue
        l_y, l_x = gpu.fractional_part(p_y), gpu.fractional_part(p_x)
        y0, x0 = math.floor(p_y), math.floor(p_x)
        for corner in range(4):
            row, column = y0 + corner // 2, x0 + corner % 2
            if 0 <= row < H and 0 <= column < W:
                cuda.atomic.add(grad_x, c * H * W + row * W + column,
                                gcol[index] * gpu.corner_weight(l_y, l_x, 3 - corner))


def col2im_without_the_mask_of_corners(n_items, gcol, offset, H, W, kh, kw, padding, H_out, W_out, grad_x):
    """Adds every corner, in the image or not: a corner outside lands in a neighbouring row or channel."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, p_y, p_x = channel_and_position(index, offset, kh, kw, padding, H_out, W_out)
        if not gpu.dcn_is_valid(p_y, p_x, H, W):
            continue
        l_y, l_x = gpu.fractional_part(p_y), gpu.fractional_part(p_x)
        y0, x0 = math.floor(p_y), math.floor(p_x)
        for corner in range(4):
            flat = c * H * W + (y0 + corner // 2) * W + x0 + corner % 2
            if 0 <= flat < grad_x.size:
                cuda.atomic.add(grad_x, flat, gcol[index] * gpu.corner_weight(l_y, l_x, corner))


def roi_pool_with(image, roi, offset, output_size, sampling_ratio, gamma, *, half_pixel=0.5,
                  sample_at=0.5, x_channel=0, scale_by_size=True):
    """The RoIAlign bins of one RoI, with one of the parts that can go wrong chosen by keyword."""
    x1, y1, x2, y2 = roi
    roi_width, roi_height = x2 - x1, y2 - y1
    bin_width, bin_height = roi_width / output_size, roi_height / output_size
    out = np.zeros((image.shape[0], output_size, output_size))
    for ph in range(output_size):
        for pw in range(output_size):
            shift_x = shift_y = 0.0
            if offset is not None:
                shift_x = gamma * (roi_width if scale_by_size else 1) * offset[x_channel, ph, pw]
                shift_y = gamma * (roi_height if scale_by_size else 1) * offset[1 - x_channel, ph, pw]
            samples = [roi_reference.bilinear(
                image, y1 - half_pixel + ph * bin_height + shift_y + (iy + sample_at) * bin_height / sampling_ratio,
                x1 - half_pixel + pw * bin_width + shift_x + (ix + sample_at) * bin_width / sampling_ratio)
                for iy in range(sampling_ratio) for ix in range(sampling_ratio)]
            out[:, ph, pw] = np.mean(samples, axis=0)
    return out


def roi_pool_without_the_half_pixel(*args):
    return roi_pool_with(*args, half_pixel=0.0)


def roi_pool_sampling_sub_bin_corners(*args):
    return roi_pool_with(*args, sample_at=0.0)


def roi_pool_offsets_y_first(*args):
    return roi_pool_with(*args, x_channel=1)


def roi_pool_offsets_not_scaled_by_the_roi(*args):
    return roi_pool_with(*args, scale_by_size=False)


def bin_gradient_y_first(image, positions, roi_width, roi_height, gamma):
    return solution("bin_offset_gradient")(image, positions, roi_height, roi_width, gamma)[::-1]


def bin_gradient_summed_not_averaged(image, positions, roi_width, roi_height, gamma):
    return len(positions) * solution("bin_offset_gradient")(image, positions, roi_width, roi_height, gamma)


def bin_gradient_without_the_roi_size(image, positions, roi_width, roi_height, gamma):
    return solution("bin_offset_gradient")(image, positions, 1.0, 1.0, gamma)


def score_map_rows_and_columns_swapped(ctop, ph, pw, group_size, pooled_size):
    return solution("score_map_channel")(ctop, pw, ph, group_size, pooled_size)


def score_map_of_the_bin_itself(ctop, ph, pw, group_size, pooled_size):
    return (ctop * group_size + min(ph, group_size - 1)) * group_size + min(pw, group_size - 1)


def score_map_without_the_class(ctop, ph, pw, group_size, pooled_size):
    return solution("score_map_channel")(0, ph, pw, group_size, pooled_size)


def step_without_zero_grad(net, optimizer, images, labels):
    loss = F.cross_entropy(net(Tensor(images)), labels)
    loss.backward()  # adds to the gradients of the step before
    optimizer.step()
    return loss.item()


def step_without_the_update(net, optimizer, images, labels):
    loss = F.cross_entropy(net(Tensor(images)), labels)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def step_updating_before_backward(net, optimizer, images, labels):
    loss = F.cross_entropy(net(Tensor(images)), labels)
    optimizer.zero_grad()
    optimizer.step()
    loss.backward()
    return loss.item()


def spread_about_the_unweighted_centre(points, weights=None):
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    distances = ((points - points.mean(axis=0)) ** 2).sum(axis=1)
    return float(np.sqrt(weights @ distances / weights.sum()))


def spread_as_mean_distance(points, weights=None):
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = weights @ points / weights.sum()
    return float(weights @ np.linalg.norm(points - centre, axis=1) / weights.sum())


def spread_divided_by_the_count(points, weights=None):
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = weights @ points / weights.sum()
    return float(np.sqrt(weights @ ((points - centre) ** 2).sum(axis=1) / len(points)))


def iou_over_the_sum_of_areas(box_a, box_b):
    width = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
    height = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
    areas = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return width * height / areas


def iou_of_inclusive_pixel_boxes(box_a, box_b):
    return solution("iou")([box_a[0], box_a[1], box_a[2] + 1, box_a[3] + 1],
                           [box_b[0], box_b[1], box_b[2] + 1, box_b[3] + 1])


def iou_without_clamping_the_overlap(box_a, box_b):
    width = min(box_a[2], box_b[2]) - max(box_a[0], box_b[0])
    height = min(box_a[3], box_b[3]) - max(box_a[1], box_b[1])
    shared = width * height  # two negative extents of boxes apart make a positive area
    area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
    area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return shared / (area_a + area_b - shared)



def miou_as_mean_recall(confusion):
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1)  # the true pixels of each class only: recall, not IoU
    return float(np.mean(np.diag(confusion)[rows > 0] / rows[rows > 0]))


def miou_counting_absent_classes_as_0(confusion):
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - hits
    return float(np.mean(np.where(union > 0, hits / np.maximum(union, 1), 0.0)))


def miou_over_the_sum_without_the_overlap(confusion):
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    total = confusion.sum(axis=1) + confusion.sum(axis=0)  # the hits counted twice
    return float(np.mean(hits[total > 0] / total[total > 0]))


def miou_of_pooled_pixels(confusion):
    confusion = np.asarray(confusion, dtype=np.float64)
    return float(np.trace(confusion) / confusion.sum())  # pixel accuracy


def dcnv3_with(input, offset, mask, kernel_h, kernel_w, pad_h, pad_w, group, *, x_first=True, column_major=True,
               depthwise=True):
    """DCNv3 by deform_conv2d, the layouts converted or not as the flags say."""
    N, H_out, W_out = offset.shape[:3]
    C = input.shape[3]
    K = kernel_h * kernel_w
    taps = (kernel_w, kernel_h) if column_major else (kernel_h, kernel_w)
    pairs = offset.reshape(N, H_out, W_out, group, *taps, 2)
    pairs = pairs[..., ::-1] if x_first else pairs
    pairs = pairs.transpose(0, 3, 5, 4, 6, 1, 2) if column_major else pairs.transpose(0, 3, 4, 5, 6, 1, 2)
    offset_v2 = np.ascontiguousarray(pairs).reshape(N, group * 2 * K, H_out, W_out)
    m = mask.reshape(N, H_out, W_out, group, *taps)
    m = m.transpose(0, 3, 5, 4, 1, 2) if column_major else m.transpose(0, 3, 4, 5, 1, 2)
    mask_v2 = np.ascontiguousarray(m).reshape(N, group * K, H_out, W_out)
    in_group = 1 if depthwise else C // group
    weight = np.ones((C, in_group, kernel_h, kernel_w))
    out = dcn_numba.deform_conv2d(np.ascontiguousarray(input.transpose(0, 3, 1, 2)), offset_v2, weight,
                                  padding=(pad_h, pad_w), mask=mask_v2)
    return out.transpose(0, 2, 3, 1)


def dcnv3_with_y_first_pairs(*args):
    return dcnv3_with(*args, x_first=False)


def dcnv3_with_row_major_taps(*args):
    return dcnv3_with(*args, column_major=False)


def dcnv3_summing_the_group_channels(*args):
    return dcnv3_with(*args, depthwise=False)


def softmax_over_every_channel(mask, group):
    exponentials = np.exp(mask - mask.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def softmax_across_the_groups(mask, group):
    grouped = mask.reshape(*mask.shape[:3], group, -1)
    exponentials = np.exp(grouped - grouped.max(axis=-2, keepdims=True))
    return (exponentials / exponentials.sum(axis=-2, keepdims=True)).reshape(mask.shape)


def softmax_without_the_maximum(mask, group):
    grouped = mask.reshape(*mask.shape[:3], group, -1)
    with np.errstate(over="ignore", invalid="ignore"):
        exponentials = np.exp(grouped)
        return (exponentials / exponentials.sum(axis=-1, keepdims=True)).reshape(mask.shape)


def unpack_every_offset_first(offset_mask, group, P):
    offset = offset_mask[..., :2 * group * P]  # as if all groups' offsets came before all masks
    mask = offset_mask[..., 2 * group * P:3 * group * P]
    return offset, mask


def unpack_mask_before_offsets(offset_mask, group, P):
    N, H_out, W_out = offset_mask.shape[:3]
    groups = offset_mask[..., :3 * group * P].reshape(N, H_out, W_out, group, 3 * P)
    return (groups[..., P:].reshape(N, H_out, W_out, group * 2 * P),
            groups[..., :P].reshape(N, H_out, W_out, group * P))


def unpack_with_the_padding(offset_mask, group, P):
    N, H_out, W_out, width = offset_mask.shape
    offset = offset_mask[..., :3 * group * P].reshape(N, H_out, W_out, group, 3 * P)[..., :2 * P]
    return offset.reshape(N, H_out, W_out, group * 2 * P), offset_mask[..., 2 * group * P:]

WRONG_ANSWERS = {
    "sample_zero_padded": [sample_without_the_shift, sample_with_the_border_repeated,
                           sample_without_the_validity_test],
    "scale_offsets": [offsets_x_first, offsets_of_s_not_s_minus_1, offsets_not_centred],
    "forward_by_gemm": [gemm_without_bias, gemm_ignoring_groups, gemm_every_group_reading_group_0],
    "mask_gradient": [mask_gradient_averaged, mask_gradient_summed_over_taps, mask_gradient_without_S],
    "offset_gradient": [offset_gradient_in_two_blocks, offset_gradient_without_the_mask, offset_gradient_x_first],
    "topological_order": [topological_preorder, topological_without_visited, topological_reversed],
    "unbroadcast_mine": [unbroadcast_leading_axes_only, unbroadcast_length_1_axes_only,
                         unbroadcast_one_leading_axis],
    "naive_im2col": [im2col_taps_outermost, im2col_offsets_x_first, im2col_without_padding],
    "naive_col2im": [col2im_without_atomics, col2im_mirrored_corner_weights, col2im_without_the_mask_of_corners],
    "roi_align_pool": [roi_pool_without_the_half_pixel, roi_pool_sampling_sub_bin_corners,
                       roi_pool_offsets_y_first, roi_pool_offsets_not_scaled_by_the_roi],
    "bin_offset_gradient": [bin_gradient_y_first, bin_gradient_summed_not_averaged,
                            bin_gradient_without_the_roi_size],
    "score_map_channel": [score_map_rows_and_columns_swapped, score_map_of_the_bin_itself,
                          score_map_without_the_class],
    "training_step": [step_without_zero_grad, step_without_the_update, step_updating_before_backward],
    "spread": [spread_about_the_unweighted_centre, spread_as_mean_distance, spread_divided_by_the_count],
    "iou": [iou_over_the_sum_of_areas, iou_of_inclusive_pixel_boxes, iou_without_clamping_the_overlap],
    "mean_iou_by_hand": [miou_as_mean_recall, miou_counting_absent_classes_as_0, miou_over_the_sum_without_the_overlap,
                         miou_of_pooled_pixels],
    "dcnv3_by_deform_conv2d": [dcnv3_with_y_first_pairs, dcnv3_with_row_major_taps, dcnv3_summing_the_group_channels],
    "softmax_over_taps": [softmax_over_every_channel, softmax_across_the_groups, softmax_without_the_maximum],
    "unpack_offset_mask": [unpack_every_offset_first, unpack_mask_before_offsets, unpack_with_the_padding],
}
CASES = [(exercise, wrong) for exercise, answers in WRONG_ANSWERS.items() for wrong in answers]


def test_every_exercise_has_a_check_from_checks_py_and_wrong_answers():
    for source in sorted(TUTORIALS.glob("[0-9][0-9]_*.py")):
        written = re.findall(r"^@exercise\ndef (\w+)\(", source.read_text(), re.MULTILINE)
        for name in written:
            assert name in EXERCISES, f"{source.name}: exercise {name} is not checked as check({name}, checks.…)"
    assert set(WRONG_ANSWERS) == set(EXERCISES), \
        f"wrong answers for {sorted(WRONG_ANSWERS)}, exercises {sorted(EXERCISES)}"


@pytest.mark.parametrize("exercise", sorted(WRONG_ANSWERS))
def test_the_check_passes_the_solution(exercise, capsys):
    exercises.check(solution(exercise), check_of(exercise))
    assert capsys.readouterr().out.strip().endswith(": right")


@pytest.mark.parametrize("exercise, wrong", CASES, ids=[wrong.__name__ for _, wrong in CASES])
def test_the_check_fails_a_wrong_answer(exercise, wrong):
    with pytest.raises(AssertionError, match=rf"^{wrong.__name__} is not right yet: "):
        exercises.check(wrong, check_of(exercise))
