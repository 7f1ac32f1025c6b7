"""Solutions to the exercises of notebook 10, From DCNv2 to DCNv3 and DCNv4."""

import dcn_numba

import numpy as np


def dcnv3_by_deform_conv2d(input, offset, mask, kernel_h, kernel_w, pad_h, pad_w, group):
    """Exercise 10.1: DCNv3 as a depthwise deform_conv2d with a weight of ones."""
    N, H_out, W_out = offset.shape[:3]
    C = input.shape[3]
    K = kernel_h * kernel_w
    # DCNv3's offset channel (g·P + p)·2 + d, p = i_x·kh + i_y, d = 0 for Δx: axes (g, i_x, i_y, d).
    pairs = offset.reshape(N, H_out, W_out, group, kernel_w, kernel_h, 2)
    # deform_conv2d's channel g·2K + 2k + d, k = i_y·kw + i_x, d = 0 for Δy: axes (g, i_y, i_x, d),
    # the pair reversed to put Δy first.
    pairs = pairs[..., ::-1].transpose(0, 3, 5, 4, 6, 1, 2)
    offset_v2 = np.ascontiguousarray(pairs).reshape(N, group * 2 * K, H_out, W_out)
    mask_v2 = mask.reshape(N, H_out, W_out, group, kernel_w, kernel_h).transpose(0, 3, 5, 4, 1, 2)
    mask_v2 = np.ascontiguousarray(mask_v2).reshape(N, group * K, H_out, W_out)
    ones = np.ones((C, 1, kernel_h, kernel_w), dtype=input.dtype)  # one weight group per channel
    out = dcn_numba.deform_conv2d(np.ascontiguousarray(input.transpose(0, 3, 1, 2)), offset_v2, ones,
                                  padding=(pad_h, pad_w), mask=mask_v2)
    return out.transpose(0, 2, 3, 1)


def softmax_over_taps(mask, group):
    """Exercise 10.2: the softmax over each group's P consecutive channels, its maximum subtracted."""
    grouped = mask.reshape(*mask.shape[:3], group, -1)
    exponentials = np.exp(grouped - grouped.max(axis=-1, keepdims=True))
    return (exponentials / exponentials.sum(axis=-1, keepdims=True)).reshape(mask.shape)


def unpack_offset_mask(offset_mask, group, P):
    """Exercise 10.3: each group's 3P channels, 2P offsets then P mask values; the padding dropped."""
    N, H_out, W_out = offset_mask.shape[:3]
    groups = offset_mask[..., :3 * group * P].reshape(N, H_out, W_out, group, 3 * P)
    offset = groups[..., :2 * P].reshape(N, H_out, W_out, group * 2 * P)
    mask = groups[..., 2 * P:].reshape(N, H_out, W_out, group * P)
    return offset, mask
