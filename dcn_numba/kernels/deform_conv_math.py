"""The formulas of deformable convolution (docs/specification.md §1), shared by its CPU and CUDA
kernels.

Sample (b, g, k), tap k of offset group g of image b, reads the input at output position (i, j)
at p = p0 + p_k + Δp (`dcn_tap_position`), scaled by its mask m in v2 (`dcn_modulation`):

    forward    col = m · S                                          (`dcn_column_from_corners`)
    backward   grad_input  += m · gcol · w_ab at each corner         (`dcn_input_gradient_term`)
               grad_offset  = Σ_{c in offset group} m · gcol · ∂S/∂p  (`dcn_offset_mask_terms`)
               grad_mask    = Σ_{c in offset group} gcol · S

S, ∂S/∂p and w_ab are `bilinear`'s; where the kernels keep each value is `deform_conv_layout`'s.
`geometry` is a deform_conv_layout.DeformConvGeometry.
"""

from dcn_numba.kernels._targets import shared
from dcn_numba.kernels.bilinear import ONE, bilinear_blend, bilinear_slopes, corner_weight, dcn_located_or_not


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
    `geometry` is a deform_conv_layout.DeformConvGeometry."""
    k = sample % (geometry.kh * geometry.kw)
    HW_out = geometry.H_out * geometry.W_out
    delta_y = offset[2 * sample * HW_out + i * geometry.W_out + j]
    delta_x = offset[(2 * sample + 1) * HW_out + i * geometry.W_out + j]
    p_y = dcn_position(i, geometry.stride_h, geometry.pad_h, k // geometry.kw, geometry.dil_h, delta_y)
    p_x = dcn_position(j, geometry.stride_w, geometry.pad_w, k % geometry.kw, geometry.dil_w, delta_x)
    return p_y, p_x


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


@shared
def dcn_column_value(blended, top_left, m):
    """col = m · S, S being `blended` for a sample that reads pixels and 0 (NaN) for one that does
    not. The mask multiplies in every case, so that a NaN or infinite mask makes col NaN even where
    S = 0, as m · 0 does in the formula."""
    return m * dcn_located_or_not(blended, top_left)


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
def dcn_offset_gradient_term(grad_sample, m, slope, top_left):
    """One channel's term of ∂L/∂Δp_d = Σ_c m · gcol · ∂S/∂p_d, in the formula's order (m · gcol
    first), so that an infinite m times a zero slope is NaN on every backend."""
    return m * grad_sample * dcn_located_or_not(slope, top_left)


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
