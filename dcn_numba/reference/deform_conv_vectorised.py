"""The reference of deformable convolution (docs/specification.md §1) vectorised: the same numbers
as the loops of dcn_numba.reference.deform_conv, computed with array operations over the batch,
the offset groups, the taps and the output positions, fast enough for the tests (the "reference"
backend runs it; tests/reference/test_deform_conv_reference.py checks it equal to the loops). It
materialises every corner of every sample, so it is memory-hungry; everything is computed in
float64 and returned in the input's dtype. dcn_numba.kernels.deform_conv must match it.

Shapes (K = kh·kw taps, G weight groups, G_off offset groups):

    input   (B, C_in, H, W)               weight  (C_out, C_in/G, kh, kw)     bias (C_out,)
    offset  (B, 2·G_off·K, H_out, W_out)  mask    (B, G_off·K, H_out, W_out)  (None for v1)
    output  (B, C_out, H_out, W_out)

Inside, per-sample arrays have the shape (B, G_off, K, H_out, W_out) and per-channel arrays
(B, G_off, C_in/G_off, K, H_out, W_out): input channel c = g·(C_in/G_off) + c_local belongs to
offset group g. Arguments are already validated (dcn_numba.ops.deform_conv does that).
"""

from typing import NamedTuple

import numpy as np

from dcn_numba.reference.deform_conv import as_float64


class Bilinear(NamedTuple):
    """Where each sample falls between pixels, all (B, G_off, K, H_out, W_out).

    valid: −1 < p_y < H and −1 < p_x < W (the DCNv2 test); finite: both coordinates are numbers;
    y0, x0 = floor(p) (0 where not valid, so that they can index safely); l_y, l_x = p − floor(p).
    """

    valid: np.ndarray
    finite: np.ndarray
    y0: np.ndarray
    x0: np.ndarray
    l_y: np.ndarray
    l_x: np.ndarray


def regular_positions(kernel_size, output_size, stride, padding, dilation):
    """p0 + p_k for every tap k = ki·kw + kj and output (i, j), the grid of an ordinary convolution:

        y = i·stride_h − pad_h + ki·dil_h,   x = j·stride_w − pad_w + kj·dil_w

    Returns y (K, H_out, 1) and x (K, 1, W_out), integer arrays that broadcast to (K, H_out, W_out).
    """
    (kh, kw), (H_out, W_out) = kernel_size, output_size
    ki, kj = np.divmod(np.arange(kh * kw), kw)
    y = np.arange(H_out)[None, :, None] * stride[0] - padding[0] + ki[:, None, None] * dilation[0]
    x = np.arange(W_out)[None, None, :] * stride[1] - padding[1] + kj[:, None, None] * dilation[1]
    return y, x


def sampling_positions(offset, kernel_size, stride, padding, dilation):
    """p = p0 + p_k + Δp for every output (i, j) and tap k (`regular_positions` plus the offsets),
    with (Δy, Δx) = offset[b, g·2K + 2k + (0, 1)]. Returns p_y, p_x, each (B, G_off, K, H_out, W_out),
    in the offsets' dtype.
    """
    B, channels, H_out, W_out = offset.shape
    K = kernel_size[0] * kernel_size[1]
    delta = offset.reshape(B, channels // (2 * K), K, 2, H_out, W_out)
    regular_y, regular_x = regular_positions(kernel_size, (H_out, W_out), stride, padding, dilation)
    return regular_y.astype(offset.dtype) + delta[:, :, :, 0], regular_x.astype(offset.dtype) + delta[:, :, :, 1]


def bilinear_geometry(p_y, p_x, H, W):
    """The DCNv2 validity test and the floor/fraction split of every sampling position."""
    valid = (p_y > -1) & (p_y < H) & (p_x > -1) & (p_x < W)
    finite = np.isfinite(p_y) & np.isfinite(p_x)
    floor_y = np.floor(np.where(valid, p_y, 0))
    floor_x = np.floor(np.where(valid, p_x, 0))
    l_y = np.where(valid, p_y, 0) - floor_y
    l_x = np.where(valid, p_x, 0) - floor_x
    return Bilinear(valid, finite, floor_y.astype(np.int64), floor_x.astype(np.int64), l_y, l_x)


def corner_indices(bilinear, channels_per_group):
    """Where corners 00, 01, 10, 11 of every sample lie in the input zero-padded (`zero_padded`)
    and grouped by offset group, (B, G_off, C_in/G_off, H + 3, W + 3): four index tuples, each
    broadcasting to (B, G_off, C_in/G_off, K, H_out, W_out). The +1 steps over the padding."""
    B, offset_groups = bilinear.y0.shape[:2]
    b, g, c = np.ogrid[:B, :offset_groups, :channels_per_group]
    b, g, c = b[..., None, None, None], g[..., None, None, None], c[..., None, None, None]
    rows = bilinear.y0[:, :, None] + 1
    cols = bilinear.x0[:, :, None] + 1
    return [(b, g, c, rows + a, cols + d) for a, d in ((0, 0), (0, 1), (1, 0), (1, 1))]


def zero_padded(array):
    """(B, C, h, w) → (B, C, h + 3, w + 3): one row and column of zeros before, two after, so that
    the corners of every sample index in bounds, the stand-in (0, 0) of invalid samples included
    when the image is empty (H = 0 or W = 0)."""
    return np.pad(array, ((0, 0), (0, 0), (1, 2), (1, 2)))


def grouped(array, offset_groups):
    """(B, C_in, h, w) → (B, G_off, C_in/G_off, h, w): the channels of each offset group together."""
    B, C_in, h, w = array.shape
    return array.reshape(B, offset_groups, C_in // offset_groups, h, w)


def corner_values(input, bilinear):
    """v00, v01, v10, v11: the input at (y0|y0+1, x0|x0+1) for every channel and sample, read
    from the image zero-padded by one pixel, so that a corner outside the image reads 0.

    input (B, C_in, H, W) → four arrays (B, G_off, C_in/G_off, K, H_out, W_out).
    """
    offset_groups = bilinear.y0.shape[1]
    padded = grouped(zero_padded(input), offset_groups)
    return tuple(padded[index] for index in corner_indices(bilinear, padded.shape[2]))


def corner_weights(bilinear):
    """The bilinear weights of v00, v01, v10, v11: (1−l_y)(1−l_x), (1−l_y)l_x, l_y(1−l_x), l_y·l_x,
    each (B, G_off, 1, K, H_out, W_out) to broadcast over the channels."""
    l_y = bilinear.l_y[:, :, None]
    l_x = bilinear.l_x[:, :, None]
    return (1 - l_y) * (1 - l_x), (1 - l_y) * l_x, l_y * (1 - l_x), l_y * l_x


def outside_value(bilinear):
    """What an invalid sample contributes: 0, or NaN when its position is not a finite number
    (so that bad offsets propagate instead of vanishing). (B, G_off, 1, K, H_out, W_out)."""
    return np.where(bilinear.finite, 0.0, np.nan)[:, :, None]


def bilinear_samples(input, bilinear):
    """S(x_c, p_y, p_x) for every channel: the blend of the four corners, 0 for invalid samples.
    (B, G_off, C_in/G_off, K, H_out, W_out)."""
    blend = sum(w * v for w, v in zip(corner_weights(bilinear), corner_values(input, bilinear)))
    return np.where(bilinear.valid[:, :, None], blend, outside_value(bilinear))


def sample_gradients(input, bilinear):
    """(∂S/∂p_y, ∂S/∂p_x) for every channel, 0 for invalid samples (the DCNv2 rule):

        ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01),   ∂S/∂p_x = (1−l_y)(v01 − v00) + l_y(v11 − v10)
    """
    v00, v01, v10, v11 = corner_values(input, bilinear)
    l_y = bilinear.l_y[:, :, None]
    l_x = bilinear.l_x[:, :, None]
    valid = bilinear.valid[:, :, None]
    d_y = (1 - l_x) * (v10 - v00) + l_x * (v11 - v01)
    d_x = (1 - l_y) * (v01 - v00) + l_y * (v11 - v10)
    return (np.where(valid, d_y, outside_value(bilinear)),
            np.where(valid, d_x, outside_value(bilinear)))


def modulation(mask, bilinear):
    """m for every sample, shaped to broadcast over the channels: the mask (v2) or 1 (v1)."""
    if mask is None:
        return np.ones((1, 1, 1, 1, 1, 1), dtype=bilinear.l_y.dtype)
    return mask.reshape(bilinear.valid.shape)[:, :, None]


def sample_geometry(input, offset, weight, stride, padding, dilation):
    """The Bilinear of every sample of one call."""
    kernel_size = weight.shape[2:]
    p_y, p_x = sampling_positions(offset, kernel_size, stride, padding, dilation)
    return bilinear_geometry(p_y, p_x, input.shape[2], input.shape[3])


def weight_groups(weight, C_in):
    """weight (C_out, C_in/G, kh, kw) → (G, C_out/G, C_in/G·K): one GEMM matrix per weight group."""
    C_out, group_channels, kh, kw = weight.shape
    G = C_in // group_channels
    return weight.reshape(G, C_out // G, group_channels * kh * kw)


def columns(input, offset, weight, stride, padding, dilation, mask):
    """The column buffer col[b, c, k, i, j] = m · S(x_c, p_y, p_x), as (B, G, C_in/G·K, H_out·W_out)
    to meet the GEMM of each weight group."""
    bilinear = sample_geometry(input, offset, weight, stride, padding, dilation)
    col = modulation(mask, bilinear) * bilinear_samples(input, bilinear)
    B, C_in = input.shape[:2]
    G, _, group_taps = weight_groups(weight, C_in).shape
    return col.reshape(B, G, group_taps, offset.shape[2] * offset.shape[3])


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    """out[b, co, i, j] = bias[co] + Σ_{c in the group of co, k} weight[co, c_local, k] · col[b, c, k, i, j]."""
    dtype = input.dtype
    input, offset, weight, bias, mask = as_float64(input, offset, weight, bias, mask)
    B, C_in = input.shape[:2]
    H_out, W_out = offset.shape[2:]
    col = columns(input, offset, weight, stride, padding, dilation, mask)
    output = np.einsum("gok,bgkp->bgop", weight_groups(weight, C_in), col)
    output = output.reshape(B, weight.shape[0], H_out, W_out)
    if bias is not None:
        output = output + bias[None, :, None, None]
    return output.astype(dtype)


def scatter_to_corners(grad_sample, bilinear, input_shape):
    """grad_input: each valid sample adds grad_sample · w_ab to its corner (a, b), summed over all
    the samples that touch a pixel; what lands in the padding is dropped.
    grad_sample (B, G_off, C_in/G_off, K, H_out, W_out) → (B, C_in, H, W)."""
    B, C_in, H, W = input_shape
    offset_groups = bilinear.y0.shape[1]
    padded = grouped(zero_padded(np.zeros((B, C_in, H, W))), offset_groups)
    grad_sample = np.where(bilinear.valid[:, :, None], grad_sample, 0.0)
    for index, w in zip(corner_indices(bilinear, padded.shape[2]), corner_weights(bilinear)):
        np.add.at(padded, index, grad_sample * w)
    return padded.reshape(B, C_in, H + 3, W + 3)[:, :, 1:H + 1, 1:W + 1]


def deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) for ∂L/∂output = grad_output.

    The backward in words, with gcol = ∂L/∂col = weight_gᵀ · grad_out per weight group:
    * grad_bias[co] = Σ_{b,i,j} grad_out[b, co, i, j] (None without a bias);
    * grad_weight_g = Σ_b grad_out[b, g] · col[b, g]ᵀ (col includes the mask);
    * grad_input: every valid sample scatters m·gcol·w_ab into each of its four corners (the
      corners in the zero padding are dropped);
    * grad_offset[b, g·2K + 2k + d] = Σ_{c in offset group g} m·gcol·∂S/∂p_d, 0 for invalid samples;
    * grad_mask[b, g·K + k] = Σ_{c in offset group g} gcol·S (None for v1).
    """
    dtype = input.dtype
    grad_output, input, offset, weight, bias, mask = as_float64(grad_output, input, offset, weight, bias, mask)
    B, C_in, H, W = input.shape
    H_out, W_out = offset.shape[2:]
    weights = weight_groups(weight, C_in)
    G, group_outputs, group_taps = weights.shape
    grad_out = grad_output.reshape(B, G, group_outputs, H_out * W_out)
    bilinear = sample_geometry(input, offset, weight, stride, padding, dilation)
    offset_groups = bilinear.valid.shape[1]
    per_channel_shape = (B, offset_groups, C_in // offset_groups) + bilinear.valid.shape[2:]

    gcol = np.einsum("gok,bgop->bgkp", weights, grad_out).reshape(per_channel_shape)
    m = modulation(mask, bilinear)
    samples = bilinear_samples(input, bilinear)

    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3))
    col = (m * samples).reshape(B, G, group_taps, H_out * W_out)
    grad_weight = np.einsum("bgop,bgkp->gok", grad_out, col).reshape(weight.shape)

    grad_input = scatter_to_corners(m * gcol, bilinear, input.shape)

    d_y, d_x = sample_gradients(input, bilinear)
    grad_offset = np.stack([(m * gcol * d_y).sum(axis=2), (m * gcol * d_x).sum(axis=2)], axis=3)
    grad_offset = grad_offset.reshape(offset.shape)

    grad_mask = None if mask is None else (gcol * samples).sum(axis=2).reshape(mask.shape)
    return (grad_input.astype(dtype), grad_offset.astype(dtype), grad_weight.astype(dtype),
            None if grad_bias is None else grad_bias.astype(dtype),
            None if grad_mask is None else grad_mask.astype(dtype))
