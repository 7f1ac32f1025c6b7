"""DCNv3 and DCNv4 (docs/specification.md §3) in NumPy, forward and backward: the specification
transcribed one tap of one group at a time, each step an array operation over every image, output
position and channel of the group. Everything is computed in float64 and returned in the input's
dtype; dcn_numba.kernels.dcnv3 must match it.

Shapes (G = group, D = group_channels, P = kh·kw − remove_center taps):

    input        (N, H, W, G·D)                 channels last; channel g·D + d is in group g
    offset       (N, H_out, W_out, G·P·2)       channel (g·P + p)·2 + 0 is Δx, + 1 is Δy: x first
    mask         (N, H_out, W_out, G·P)         channel g·P + p
    offset_mask  (N, H_out, W_out, pad8(3·G·P)) DCNv4: per group 2P offsets then P mask values
    output       (N, H_out, W_out, G·D)

Taps are numbered column-major, p = i_x·kh + i_y (`taps`). The functions that DCNv4's packed layout
and the softmax need (`unpack_offset_mask`, `pack_offset_mask`, `softmax`, `softmax_backward`)
work on NumPy or CuPy arrays alike: the public ops apply them around the kernels too. Arguments are
already validated (dcn_numba.ops.dcnv3 does that).
"""

from typing import NamedTuple

import numpy as np

from dcn_numba.reference.deform_conv import as_float64
from dcn_numba.reference.deform_conv_vectorised import bilinear_geometry
from dcn_numba.runtime.arrays import array_module


class Parameters(NamedTuple):
    """The operator's integer and scalar arguments, in the published order."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    group_channels: int
    offset_scale: float
    remove_center: int


# ---------------------------------------------------------------------------------------------
# Taps and sampling locations (§3.2, §3.3)


def taps(kernel_h, kernel_w, remove_center):
    """The taps (i_x, i_y) in the order of their number p: column-major, p = i_x·kh + i_y, without
    the centre (kw // 2, kh // 2) when remove_center (the taps after it move down by one)."""
    return [(i_x, i_y) for i_x in range(kernel_w) for i_y in range(kernel_h)
            if not (remove_center and (i_x, i_y) == (kernel_w // 2, kernel_h // 2))]


def kernel_centre(kernel, dilation):
    """c = floor(dil·(k − 1) / 2): the kernel's centre, in pixels from its first tap."""
    return dilation * (kernel - 1) // 2


def sampling_location(out, stride, pad, kernel, dilation, tap, delta, offset_scale):
    """One coordinate of a sample: p = p0 − c·s + (tap·dil + Δ)·s with p0 = c − pad + out·stride,
    the input point under the kernel's centre; s = offset_scale scales the grid and the offset."""
    centre = kernel_centre(kernel, dilation)
    p0 = centre - pad + out * stride
    return p0 - centre * offset_scale + (tap * dilation + delta) * offset_scale


def tap_locations(offset, g, p, tap, parameters):
    """(p_y, p_x) of tap p = tap = (i_x, i_y) of group g at every output, each (N, H_out, W_out)."""
    N, H_out, W_out = offset.shape[:3]
    P = offset.shape[3] // (2 * parameters.group)
    delta = offset.reshape(N, H_out, W_out, parameters.group, P, 2)[:, :, :, g, p]
    i_x, i_y = tap
    h = np.arange(H_out)[:, None]
    w = np.arange(W_out)[None, :]
    p_y = sampling_location(h, parameters.stride_h, parameters.pad_h, parameters.kernel_h,
                            parameters.dilation_h, i_y, delta[..., 1], parameters.offset_scale)
    p_x = sampling_location(w, parameters.stride_w, parameters.pad_w, parameters.kernel_w,
                            parameters.dilation_w, i_x, delta[..., 0], parameters.offset_scale)
    return p_y, p_x


# ---------------------------------------------------------------------------------------------
# Bilinear sampling of a group's channels (the DCNv2 rule of §1.4), channels last


def zero_padded(input):
    """(N, H, W, C) → (N, H + 3, W + 3, C): one row and column of zeros before, two after, so that
    the corners of every sample index in bounds (the stand-in corner (0, 0) of invalid samples
    included when the image is empty)."""
    return np.pad(input, ((0, 0), (1, 2), (1, 2), (0, 0)))


def corner_index(bilinear, corner, channels):
    """Where corner 0..3 = (y0|y0+1, x0|x0+1) of every sample lies in the zero-padded input, for
    the channels `channels` (a slice): an index tuple giving (N, H_out, W_out, D)."""
    n = np.arange(bilinear.y0.shape[0])[:, None, None]
    return (n, bilinear.y0 + 1 + corner // 2, bilinear.x0 + 1 + corner % 2, channels)


def corner_weights(bilinear):
    """(1−l_y)(1−l_x), (1−l_y)·l_x, l_y·(1−l_x), l_y·l_x, each (N, H_out, W_out, 1)."""
    l_y = bilinear.l_y[..., None]
    l_x = bilinear.l_x[..., None]
    return (1 - l_y) * (1 - l_x), (1 - l_y) * l_x, l_y * (1 - l_x), l_y * l_x


def outside(bilinear, array):
    """`array` where a sample is valid; elsewhere 0, or NaN at a non-finite position."""
    value = np.where(bilinear.finite, 0.0, np.nan)[..., None]
    return np.where(bilinear.valid[..., None], array, value)


def samples(padded, bilinear, channels):
    """S for every sample and channel of the group: the blend of its four corners (§1.4)."""
    values = [padded[corner_index(bilinear, corner, channels)] for corner in range(4)]
    return outside(bilinear, sum(w * v for w, v in zip(corner_weights(bilinear), values)))


def slopes(padded, bilinear, channels):
    """(∂S/∂p_y, ∂S/∂p_x) for every sample and channel of the group (§1.6):
    (1−l_x)(v10 − v00) + l_x(v11 − v01) and (1−l_y)(v01 − v00) + l_y(v11 − v10)."""
    v00, v01, v10, v11 = (padded[corner_index(bilinear, corner, channels)] for corner in range(4))
    l_y = bilinear.l_y[..., None]
    l_x = bilinear.l_x[..., None]
    return (outside(bilinear, (1 - l_x) * (v10 - v00) + l_x * (v11 - v01)),
            outside(bilinear, (1 - l_y) * (v01 - v00) + l_y * (v11 - v10)))


# ---------------------------------------------------------------------------------------------
# DCNv3 (§3.4, §3.5)


def each_sample(input, offset, parameters):
    """For every group g and tap p: (g, p, its channels as a slice, the Bilinear of its samples)."""
    H, W = input.shape[1:3]
    D = parameters.group_channels
    for g in range(parameters.group):
        for p, tap in enumerate(taps(parameters.kernel_h, parameters.kernel_w,
                                     parameters.remove_center)):
            p_y, p_x = tap_locations(offset, g, p, tap, parameters)
            yield g, p, slice(g * D, (g + 1) * D), bilinear_geometry(p_y, p_x, H, W)


def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
          dilation_w, group, group_channels, offset_scale, remove_center):
    """out[n, h, w, g·D + d] = Σ_p m[n, h, w, g·P + p] · S(x[n, :, :, g·D + d], p_y, p_x)."""
    parameters = Parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center)
    dtype = input.dtype
    input, offset, mask = as_float64(input, offset, mask)
    N, H_out, W_out = offset.shape[:3]
    P = mask.shape[3] // group
    m = mask.reshape(N, H_out, W_out, group, P)
    padded = zero_padded(input)
    output = np.zeros((N, H_out, W_out, input.shape[3]))
    for g, p, channels, bilinear in each_sample(input, offset, parameters):
        output[..., channels] += m[..., g, p, None] * samples(padded, bilinear, channels)
    return output.astype(dtype)


def dcnv3_backward(grad_output, input, offset, mask, kernel_h, kernel_w, stride_h, stride_w,
                   pad_h, pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                   remove_center):
    """(grad_input, grad_offset, grad_mask) for ∂L/∂output = grad_output (go), §3.5:

    * grad_input: every valid sample adds m · go · w_ab to each corner (a, b) of each channel
      (corners in the zero padding are dropped);
    * grad_mask[g·P + p] = Σ_d go_d · S_d over the group's channels;
    * grad_offset[(g·P + p)·2 + 0] = s · Σ_d m · go_d · ∂S_d/∂p_x, and + 1 the same with ∂S/∂p_y:
      ∂p/∂Δ = s = offset_scale. Invalid samples have S = ∂S/∂p = 0, so no gradient.
    """
    parameters = Parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center)
    dtype = input.dtype
    grad_output, input, offset, mask = as_float64(grad_output, input, offset, mask)
    N, H, W, C = input.shape
    H_out, W_out = offset.shape[1:3]
    P = mask.shape[3] // group
    m = mask.reshape(N, H_out, W_out, group, P)
    padded = zero_padded(input)
    grad_padded = np.zeros_like(padded)
    grad_offset = np.zeros((N, H_out, W_out, group, P, 2))
    grad_mask = np.zeros((N, H_out, W_out, group, P))
    for g, p, channels, bilinear in each_sample(input, offset, parameters):
        go = grad_output[..., channels]
        m_go = m[..., g, p, None] * go
        grad_mask[..., g, p] = (go * samples(padded, bilinear, channels)).sum(axis=-1)
        d_y, d_x = slopes(padded, bilinear, channels)
        grad_offset[..., g, p, 0] = offset_scale * (m_go * d_x).sum(axis=-1)
        grad_offset[..., g, p, 1] = offset_scale * (m_go * d_y).sum(axis=-1)
        scattered = np.where(bilinear.valid[..., None], m_go, 0.0)
        for corner, weight in enumerate(corner_weights(bilinear)):
            np.add.at(grad_padded, corner_index(bilinear, corner, channels), scattered * weight)
    grad_input = grad_padded[:, 1:H + 1, 1:W + 1]
    return (grad_input.astype(dtype), grad_offset.reshape(offset.shape).astype(dtype),
            grad_mask.reshape(mask.shape).astype(dtype))


# ---------------------------------------------------------------------------------------------
# DCNv4: the packed offset_mask and the optional softmax (§3.2, §3.4, §3.5), on NumPy or CuPy


def pad8(n):
    """n rounded up to a multiple of 8: the width of DCNv4's offset_mask rows."""
    return -(-n // 8) * 8


def unpack_offset_mask(offset_mask, group, P):
    """offset_mask (N, H_out, W_out, pad8(3·G·P)) → (offset (N, H_out, W_out, G·P·2),
    mask (N, H_out, W_out, G·P)), C-contiguous: group g's 3P channels from g·3P hold its 2P
    x-first offsets, then its P mask values; the padding is not read."""
    N, H_out, W_out = offset_mask.shape[:3]
    xp = array_module(offset_mask)
    groups = offset_mask[..., :3 * group * P].reshape(N, H_out, W_out, group, 3 * P)
    offset = xp.ascontiguousarray(groups[..., :2 * P]).reshape(N, H_out, W_out, group * P * 2)
    mask = xp.ascontiguousarray(groups[..., 2 * P:]).reshape(N, H_out, W_out, group * P)
    return offset, mask


def pack_offset_mask(grad_offset, grad_mask, group, width):
    """The inverse of `unpack_offset_mask` for gradients: rows of `width` channels, the padding 0."""
    N, H_out, W_out, GP = grad_mask.shape
    xp = array_module(grad_offset)
    P = GP // group
    groups = xp.concatenate([grad_offset.reshape(N, H_out, W_out, group, 2 * P),
                             grad_mask.reshape(N, H_out, W_out, group, P)], axis=-1)
    padding = xp.zeros((N, H_out, W_out, width - 3 * GP), dtype=grad_mask.dtype)
    return xp.concatenate([groups.reshape(N, H_out, W_out, 3 * GP), padding], axis=-1)


def softmax(logits, axis=-1):
    """m_p = exp(a_p − max a) / Σ_q exp(a_q − max a) along `axis` (the max keeps exp from
    overflowing)."""
    xp = array_module(logits)
    exponentials = xp.exp(logits - logits.max(axis=axis, keepdims=True))
    return exponentials / exponentials.sum(axis=axis, keepdims=True)


def softmax_backward(grad, probabilities, axis=-1):
    """∂L/∂a_p = m_p · (∂L/∂m_p − Σ_q m_q · ∂L/∂m_q), for m = softmax(a) along `axis`."""
    return probabilities * (grad - (probabilities * grad).sum(axis=axis, keepdims=True))


def grouped_softmax(mask, group):
    """softmax over each group's P taps of a mask (N, H_out, W_out, G·P)."""
    N, H_out, W_out, GP = mask.shape
    return softmax(mask.reshape(N, H_out, W_out, group, GP // group)).reshape(mask.shape)


def grouped_softmax_backward(grad_mask, probabilities, group):
    """`softmax_backward` over each group's P taps, for masks (N, H_out, W_out, G·P)."""
    N, H_out, W_out, GP = grad_mask.shape
    shape = (N, H_out, W_out, group, GP // group)
    return softmax_backward(grad_mask.reshape(shape), probabilities.reshape(shape)).reshape(grad_mask.shape)


def dcnv4_through(dcnv3_function, input, offset_mask, parameters, softmax):
    """DCNv4 computed by any implementation of DCNv3, `dcnv3_function(input, offset, mask,
    *parameters)`: DCNv3 on the unpacked offset_mask, its mask first normalised over each
    group's taps when softmax. The reference below and the kernels' path share it."""
    offset, mask = unpack_offset_mask(offset_mask, parameters.group, taps_of(parameters))
    if softmax:
        mask = grouped_softmax(mask, parameters.group)
    return dcnv3_function(input, offset, mask, *parameters)


def dcnv4_backward_through(dcnv3_backward_function, grad_output, input, offset_mask, parameters,
                           softmax):
    """(grad_input, grad_offset_mask) of DCNv4 from any implementation of DCNv3's backward:
    DCNv3's gradients packed like offset_mask (the padding 0), the mask's gradient taken back
    through the softmax when softmax."""
    offset, mask = unpack_offset_mask(offset_mask, parameters.group, taps_of(parameters))
    if softmax:
        mask = grouped_softmax(mask, parameters.group)
    grad_input, grad_offset, grad_mask = dcnv3_backward_function(grad_output, input, offset, mask,
                                                                 *parameters)
    if softmax:
        grad_mask = grouped_softmax_backward(grad_mask, mask, parameters.group)
    return grad_input, pack_offset_mask(grad_offset, grad_mask, parameters.group, offset_mask.shape[3])


def taps_of(parameters):
    """P = kh·kw − remove_center."""
    return parameters.kernel_h * parameters.kernel_w - parameters.remove_center


def dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
          dilation_w, group, group_channels, offset_scale, remove_center, softmax):
    """DCNv4's forward (§3.4), in float64: `dcnv4_through` the reference DCNv3."""
    parameters = Parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center)
    input64, offset_mask = as_float64(input, offset_mask)
    return dcnv4_through(dcnv3, input64, offset_mask, parameters, softmax).astype(input.dtype)


def dcnv4_backward(grad_output, input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                   pad_w, dilation_h, dilation_w, group, group_channels, offset_scale,
                   remove_center, softmax):
    """(grad_input, grad_offset_mask) of DCNv4 (§3.5), in float64: `dcnv4_backward_through` the
    reference DCNv3."""
    parameters = Parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                            dilation_w, group, group_channels, offset_scale, remove_center)
    grad_output64, input64, offset_mask = as_float64(grad_output, input, offset_mask)
    grad_input, grad_offset_mask = dcnv4_backward_through(dcnv3_backward, grad_output64, input64,
                                                          offset_mask, parameters, softmax)
    return grad_input.astype(input.dtype), grad_offset_mask.astype(input.dtype)
