"""Deformable convolution v1 and v2 (modulated): the public functions (docs/specification.md §1).

    deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None)

has the signature and layouts of torchvision.ops.deform_conv2d, so that the two can be swapped.
These functions validate the arguments, pick the backend and hand the arrays to
dcn_numba.reference.deform_conv_vectorised ("reference": the loops of reference.deform_conv,
vectorised) or dcn_numba.kernels.deform_conv ("cpu", "cuda").
"""

from dcn_numba.ops.checks import (MAX_DISTANCE, as_pair, check_arrays, check_grad_output, check_output_bytes,
                                  check_shape, prepare)
from dcn_numba.kernels import deform_conv as kernels
from dcn_numba.reference import deform_conv_vectorised


def output_size(size, kernel, stride, padding, dilation):
    """floor((size + 2·padding − dilation·(kernel − 1) − 1) / stride) + 1, the ordinary convolution's."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _validate(input, offset, weight, bias, stride, padding, dilation, mask, grad_output=None):
    """Check every argument against docs/specification.md §1; return the array module and the (h, w) pairs."""
    xp = check_arrays([("input", input, 4, "(B, C_in, H, W)"),
                       ("offset", offset, 4, "(B, 2·offset_groups·kh·kw, H_out, W_out)"),
                       ("weight", weight, 4, "(C_out, C_in / groups, kh, kw)")],
                      [("bias", bias, 1, "(C_out,)"), ("mask", mask, 4, "(B, offset_groups·kh·kw, H_out, W_out)"),
                       ("grad_output", grad_output, 4, "(B, C_out, H_out, W_out)")])
    stride = as_pair(stride, "stride", 1, MAX_DISTANCE)
    padding = as_pair(padding, "padding", 0, MAX_DISTANCE)
    dilation = as_pair(dilation, "dilation", 1, MAX_DISTANCE)

    B, C_in, H, W = input.shape
    C_out, group_channels, kh, kw = weight.shape
    if min(group_channels, kh, kw) < 1 or C_in % group_channels != 0 or C_in == 0:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}, expected (C_out, C_in / groups, kh, kw) with "
            f"kh, kw >= 1 and C_in / groups dividing C_in = {C_in} (input has shape {tuple(input.shape)})"
        )
    groups = C_in // group_channels
    if C_out % groups != 0:
        raise ValueError(
            f"weight has C_out = {C_out} output channels, expected a multiple of groups = {groups} "
            f"(groups = C_in / weight.shape[1] = {C_in} / {group_channels})"
        )
    H_out = output_size(H, kh, stride[0], padding[0], dilation[0])
    W_out = output_size(W, kw, stride[1], padding[1], dilation[1])
    if H_out < 1 or W_out < 1:
        raise ValueError(
            f"input of size {H}×{W} gives an empty output of size {H_out}×{W_out} for a {kh}×{kw} kernel "
            f"with stride {stride}, padding {padding} and dilation {dilation}; expected at least 1×1"
        )
    check_output_bytes((B, C_out, H_out, W_out), input.itemsize, "the output",
                       "input's batch and size, weight's C_out, stride, padding and dilation")
    K = kh * kw
    offset_channels = offset.shape[1]
    if offset_channels == 0 or offset_channels % (2 * K) != 0:
        raise ValueError(
            f"offset has {offset_channels} channels, expected a positive multiple of 2·kh·kw = {2 * K} "
            "(2·offset_groups·kh·kw: one (dy, dx) pair per tap and offset group)"
        )
    offset_groups = offset_channels // (2 * K)
    if C_in % offset_groups != 0:
        raise ValueError(
            f"offset has {offset_channels} channels, i.e. offset_groups = {offset_groups}, which does not "
            f"divide C_in = {C_in}; expected offset_groups dividing C_in"
        )
    sizes = f"offset_groups = {offset_groups}, kh·kw = {K}, H_out×W_out = {H_out}×{W_out}"
    check_shape(offset, "offset", (B, 2 * offset_groups * K, H_out, W_out),
                f"B, 2·offset_groups·kh·kw, H_out, W_out with {sizes}")
    if mask is not None:
        check_shape(mask, "mask", (B, offset_groups * K, H_out, W_out),
                    f"B, offset_groups·kh·kw, H_out, W_out with {sizes}; offset_groups comes from offset")
    if bias is not None:
        check_shape(bias, "bias", (C_out,), "C_out = weight.shape[0]")
    if grad_output is not None:
        check_shape(grad_output, "grad_output", (B, C_out, H_out, W_out),
                    "B, C_out, H_out, W_out: the shape of the output")
    return xp, stride, padding, dilation


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None, *,
                  backend=None):
    """Deformable convolution: v1 (mask=None) or v2, modulated (Dai et al. 2017; Zhu et al. 2019).

        out[b, co, i, j] = bias[co] + Σ_{c in the group of co} Σ_k weight[co, c_local, ki, kj] · m · S(x[b, c], p)

    with p = p0 + p_k + Δp, i.e. p_y = i·stride_h − pad_h + ki·dil_h + Δy and likewise for x, and
    S the bilinear sample of the DCNv2 rule: 0 unless −1 < p_y < H and −1 < p_x < W, corners
    outside the image read 0 (bilinear interpolation on an image zero-padded by one pixel).
    m = mask[b, g·K + k, i, j] for v2 (used as given: apply the sigmoid before), 1 for v1.

    Shapes (K = kh·kw, G = C_in / weight.shape[1] weight groups, G_off offset groups):
        input  (B, C_in, H, W)
        offset (B, 2·G_off·K, H_out, W_out): channel g·2K + 2k + d holds Δy (d = 0) or Δx (d = 1)
               of tap k = ki·kw + kj in offset group g, pairs (dy, dx), y first; input channel c
               belongs to offset group c // (C_in / G_off)
        weight (C_out, C_in / G, kh, kw)       bias (C_out,) or None
        mask   (B, G_off·K, H_out, W_out) or None
        output (B, C_out, H_out, W_out), H_out = floor((H + 2·pad_h − dil_h·(kh − 1) − 1) / stride_h) + 1

    stride, padding, dilation: an int or an (h, w) pair. NaN or infinite offsets give NaN outputs.
    backend: "reference", "cpu" or "cuda"; None picks "cuda" for CuPy arrays and "cpu" for NumPy ones.
    Float32 or float64, all arrays of one kind and dtype; the output is of that kind and dtype.
    Read-only NumPy arrays are copied once before the kernels run (`checks.prepare`).
    """
    xp, stride, padding, dilation = _validate(input, offset, weight, bias, stride, padding, dilation, mask)
    backend, (input, offset, weight, bias, mask) = prepare(
        backend, xp, input, offset, weight, bias, mask)
    if backend == "reference":
        return deform_conv_vectorised.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    return kernels.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, backend)


def deform_conv2d_backward(grad_output, input, offset, weight, bias=None, stride=1, padding=0,
                           dilation=1, mask=None, *, backend=None):
    """Gradients of a deformable convolution: (grad_input, grad_offset, grad_weight, grad_bias, grad_mask).

    grad_output is ∂L/∂output (B, C_out, H_out, W_out); the other arguments are those of the
    forward call. Each gradient has the shape of its argument; grad_bias is None when bias is None
    and grad_mask is None when mask is None. With gcol = ∂L/∂col = weight_gᵀ · grad_output per
    weight group:

        grad_bias   = Σ_{b,i,j} grad_output
        grad_weight = grad_output · colᵀ, col[b, c, k, i, j] = m · S(x[b, c], p)
        grad_input  : every valid sample adds m · gcol · w_ab to each in-image corner (a, b)
        grad_offset = Σ_{c in the offset group} m · gcol · ∂S/∂p, with corner values v_ab (0 outside):
                      ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01), ∂S/∂p_x = (1−l_y)(v01 − v00) + l_y(v11 − v10)
        grad_mask   = Σ_{c in the offset group} gcol · S

    l = p − floor(p), so at integer coordinates ∂S/∂p is the right-sided derivative. For an invalid
    sample (p_y ≤ −1, p_y ≥ H, p_x ≤ −1 or p_x ≥ W) the offset and mask gradients are 0, the
    DCNv2 rule; torchvision omits that test, so the two differ for samples exactly on p = −1,
    which happens at padded border taps when offsets are integers (e.g. all zero at initialisation).
    grad_output may be non-contiguous, such as the stride-0 broadcast of the gradient of a sum.
    """
    check_grad_output(grad_output, "(B, C_out, H_out, W_out)")
    xp, stride, padding, dilation = _validate(input, offset, weight, bias, stride, padding, dilation,
                                              mask, grad_output)
    backend, (grad_output, input, offset, weight, bias, mask) = prepare(
        backend, xp, grad_output, input, offset, weight, bias, mask)
    arguments = (grad_output, input, offset, weight, bias, stride, padding, dilation, mask)
    if backend == "reference":
        return deform_conv_vectorised.deform_conv2d_backward(*arguments)
    return kernels.deform_conv2d_backward(*arguments, backend)
