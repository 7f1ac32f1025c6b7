"""DCNv3 and DCNv4: the public functions (docs/specification.md §3).

    dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
          dilation_w, group, group_channels, offset_scale, remove_center)
    dcnv4(input, offset_mask, <the same parameters>, softmax=False)

take the arguments of InternImage's and DCNv4's published operators, in their order, without the
launch-tuning ones (im2col_step, d_stride, block_thread). These functions validate the arguments,
pick the backend and hand the arrays to dcn_numba.reference.dcnv3 ("reference") or
dcn_numba.kernels.dcnv3 ("cpu", "cuda"). DCNv4 runs on DCNv3's kernels: its packed offset_mask is
unpacked (and its mask normalised when softmax) by `reference.dcnv3.dcnv4_through`, on NumPy or
CuPy arrays.
"""

import numbers

from dcn_numba.kernels import dcnv3 as kernels
from dcn_numba.ops.checks import (as_int, as_real, check_float_dtypes, check_grad_output, check_ndim,
                                  check_output_bytes, check_shape, prepare)
from dcn_numba.ops.deform_conv import output_size
from dcn_numba.reference import dcnv3 as reference
# What the layers above need of the specification besides the operators: the parameters' tuple,
# DCNv4's row width and the softmax of a group's taps (one definition each, in the reference).
from dcn_numba.reference.dcnv3 import (Parameters, pad8, softmax as softmax_over_axis,  # noqa: F401
                                       softmax_backward as softmax_over_axis_backward)
from dcn_numba.runtime.arrays import array_module

INPUT_LAYOUT = "(N, H, W, C), channels last"
OUTPUT_LAYOUT = "(N, H_out, W_out, C)"


def as_flag(value, name):
    """A bool, or the int 0 or 1 (the published operators pass remove_center as an int), as 0 or 1."""
    if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return int(value)
    raise TypeError(f"{name} must be a bool (or the int 0 or 1), got {value!r}")


def _parameters(input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                group, group_channels, offset_scale, remove_center):
    """The validated parameters (reference.dcnv3.Parameters) and (H_out, W_out) of a call on
    `input` (N, H, W, C)."""
    check_ndim(input, "input", 4, INPUT_LAYOUT)
    kernel_h, kernel_w = as_int(kernel_h, "kernel_h", 1), as_int(kernel_w, "kernel_w", 1)
    stride_h, stride_w = as_int(stride_h, "stride_h", 1), as_int(stride_w, "stride_w", 1)
    pad_h, pad_w = as_int(pad_h, "pad_h", 0), as_int(pad_w, "pad_w", 0)
    dilation_h, dilation_w = as_int(dilation_h, "dilation_h", 1), as_int(dilation_w, "dilation_w", 1)
    group = as_int(group, "group", 1)
    offset_scale = as_real(offset_scale, "offset_scale")
    remove_center = as_flag(remove_center, "remove_center")
    N, H, W, C = input.shape
    if group_channels is None:
        if C % group:
            raise ValueError(f"input has C = {C} channels, which group = {group} does not divide; "
                             "expected C = group·group_channels")
        group_channels = C // group
    group_channels = as_int(group_channels, "group_channels", 1)
    if C != group * group_channels:
        raise ValueError(f"input has C = {C} channels (shape {tuple(input.shape)}), expected "
                         f"group·group_channels = {group}·{group_channels} = {group * group_channels}")
    if remove_center and (kernel_h % 2 == 0 or kernel_w % 2 == 0 or kernel_h * kernel_w == 1):
        raise ValueError(f"remove_center needs odd kernel_h and kernel_w and more than one tap, so that "
                         f"the kernel has a centre to remove; got a {kernel_h}×{kernel_w} kernel")
    H_out = output_size(H, kernel_h, stride_h, pad_h, dilation_h)
    W_out = output_size(W, kernel_w, stride_w, pad_w, dilation_w)
    if H_out < 1 or W_out < 1:
        raise ValueError(
            f"input of size {H}×{W} gives an empty output of size {H_out}×{W_out} for a "
            f"{kernel_h}×{kernel_w} kernel with stride ({stride_h}, {stride_w}), pad ({pad_h}, {pad_w}) "
            f"and dilation ({dilation_h}, {dilation_w}); expected at least 1×1")
    check_output_bytes((N, H_out, W_out, C), input.itemsize, "the output",
                       "input's batch, size and channels, kernel size, stride, pad and dilation")
    parameters = Parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                      dilation_w, group, group_channels, offset_scale, remove_center)
    return parameters, (H_out, W_out)


def _sizes(input, parameters, output_shape):
    """The text that explains the expected shapes of a call's other arrays."""
    P = reference.taps_of(parameters)
    return (f"N = {input.shape[0]}, H_out×W_out = {output_shape[0]}×{output_shape[1]}, "
            f"group = {parameters.group}, P = kernel_h·kernel_w − remove_center = {P}")


def _check_grad_output(grad_output, input, output_shape):
    check_ndim(grad_output, "grad_output", 4, OUTPUT_LAYOUT)
    check_shape(grad_output, "grad_output", (input.shape[0], *output_shape, input.shape[3]),
                "N, H_out, W_out, C: the shape of the output")


def _validate_dcnv3(input, offset, mask, parameter_values, grad_output=None):
    """Check a DCNv3 call against docs/specification.md §3.1; return the array module and the
    parameters."""
    parameters, output_shape = _parameters(input, *parameter_values)
    check_ndim(offset, "offset", 4, "(N, H_out, W_out, group·P·2), (Δx, Δy) pairs")
    check_ndim(mask, "mask", 4, "(N, H_out, W_out, group·P)")
    named = [("input", input), ("offset", offset), ("mask", mask)]
    if grad_output is not None:
        _check_grad_output(grad_output, input, output_shape)
        named.append(("grad_output", grad_output))
    xp = array_module(*(array for _, array in named))
    check_float_dtypes(named)
    GP = parameters.group * reference.taps_of(parameters)
    sizes = _sizes(input, parameters, output_shape)
    check_shape(offset, "offset", (input.shape[0], *output_shape, 2 * GP), f"N, H_out, W_out, group·P·2 with {sizes}")
    check_shape(mask, "mask", (input.shape[0], *output_shape, GP), f"N, H_out, W_out, group·P with {sizes}")
    return xp, parameters


def _validate_dcnv4(input, offset_mask, parameter_values, softmax, grad_output=None):
    """Check a DCNv4 call against docs/specification.md §3.1; return the array module and the
    parameters."""
    parameters, output_shape = _parameters(input, *parameter_values)
    if not isinstance(softmax, bool):
        raise TypeError(f"softmax must be a bool, got {softmax!r}")
    check_ndim(offset_mask, "offset_mask", 4, "(N, H_out, W_out, pad8(3·group·P))")
    named = [("input", input), ("offset_mask", offset_mask)]
    if grad_output is not None:
        _check_grad_output(grad_output, input, output_shape)
        named.append(("grad_output", grad_output))
    xp = array_module(*(array for _, array in named))
    check_float_dtypes(named)
    width = pad8(3 * parameters.group * reference.taps_of(parameters))
    check_shape(offset_mask, "offset_mask", (input.shape[0], *output_shape, width),
                f"N, H_out, W_out, pad8(3·group·P), 3·group·P rounded up to a multiple of 8, with "
                f"{_sizes(input, parameters, output_shape)}")
    return xp, parameters


def _kernels(backend):
    """DCNv3's forward and backward on the kernels of `backend`, with the reference's signatures."""
    def forward(input, offset, mask, *parameters):
        return kernels.dcnv3(input, offset, mask, *parameters, backend=backend)

    def backward(grad_output, input, offset, mask, *parameters):
        return kernels.dcnv3_backward(grad_output, input, offset, mask, *parameters, backend=backend)

    return forward, backward


def dcnv3(input, offset, mask, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
          dilation_h=1, dilation_w=1, group=1, group_channels=None, offset_scale=1.0,
          remove_center=False, *, backend=None):
    """DCNv3 (InternImage's operator): for each output (h, w) and channel c = g·D + d of group g,

        out[n, h, w, c] = Σ_p m[n, h, w, g·P + p] · S(x[n, :, :, c], p_y, p_x)
        p_y = p0_y + s·(i_y·dilation_h − c_y + Δy),  p0_y = c_y − pad_h + h·stride_h,
        c_y = floor(dilation_h·(kernel_h − 1) / 2)                    (p_x likewise, with Δx)

    with s = offset_scale (it scales the kernel's grid as well as the offsets) and S the bilinear
    sample of the DCNv2 rule. No weight: the layers project channels before and after.

    Shapes (G = group, D = group_channels, C = G·D, P = kernel_h·kernel_w − remove_center):
        input  (N, H, W, C), channels last
        offset (N, H_out, W_out, G·P·2): channel (g·P + p)·2 holds Δx, + 1 holds Δy, **x first**,
               taps numbered **column-major**, p = i_x·kernel_h + i_y (the centre removed when
               remove_center, and the later taps numbered one lower)
        mask   (N, H_out, W_out, G·P), used as given (InternImage's layer applies a softmax over
               each group's P taps before)
        output (N, H_out, W_out, C), H_out = floor((H + 2·pad_h − dilation_h·(kernel_h − 1) − 1) / stride_h) + 1

    group_channels=None means C / group. remove_center needs an odd kernel. NaN or infinite offsets
    give NaN outputs. backend: "reference", "cpu" or "cuda"; None picks "cuda" for CuPy arrays and
    "cpu" for NumPy ones. Float32 or float64, all arrays of one kind and dtype.
    """
    values = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
              group_channels, offset_scale, remove_center)
    xp, parameters = _validate_dcnv3(input, offset, mask, values)
    backend, (input, offset, mask) = prepare(backend, xp, input, offset, mask)
    if backend == "reference":
        return reference.dcnv3(input, offset, mask, *parameters)
    return kernels.dcnv3(input, offset, mask, *parameters, backend=backend)


def dcnv3_backward(grad_output, input, offset, mask, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1,
                   pad_h=1, pad_w=1, dilation_h=1, dilation_w=1, group=1, group_channels=None,
                   offset_scale=1.0, remove_center=False, *, backend=None):
    """Gradients of `dcnv3`: (grad_input, grad_offset, grad_mask), each of its argument's shape.

    grad_output is ∂L/∂output (N, H_out, W_out, C), go; the other arguments are the forward's.

        grad_input : every valid sample adds m · go · w_ab to each corner (a, b) inside the image
        grad_offset: (g·P + p)·2 + 0 is s · Σ_d m · go_d · ∂S_d/∂p_x, + 1 the same with ∂S/∂p_y
        grad_mask  : g·P + p is Σ_d go_d · S_d

    the sums running over the D channels of group g. An invalid sample (outside −1 < p < size)
    gets no offset or mask gradient, the DCNv2 rule. grad_output may be non-contiguous.
    """
    values = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
              group_channels, offset_scale, remove_center)
    check_grad_output(grad_output, OUTPUT_LAYOUT)
    xp, parameters = _validate_dcnv3(input, offset, mask, values, grad_output)
    backend, (grad_output, input, offset, mask) = prepare(backend, xp, grad_output, input, offset, mask)
    if backend == "reference":
        return reference.dcnv3_backward(grad_output, input, offset, mask, *parameters)
    return kernels.dcnv3_backward(grad_output, input, offset, mask, *parameters, backend=backend)


def dcnv4(input, offset_mask, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
          dilation_h=1, dilation_w=1, group=1, group_channels=None, offset_scale=1.0,
          remove_center=False, softmax=False, *, backend=None):
    """DCNv4 (FlashInternImage's operator): `dcnv3` with its offsets and mask packed in one array,

        offset_mask (N, H_out, W_out, pad8(3·G·P)): group g's 3P channels from g·3P hold its 2P
                    offsets (channel g·3P + 2p + d, the same x-first pairs and column-major taps
                    as dcnv3), then its P mask values (channel g·3P + 2P + p); the rows are
                    padded to a multiple of 8 channels, which are never read.

    softmax=True first normalises each group's P mask values with a softmax (as InternImage's DCNv3
    layer does; DCNv4's published layer passes False, the default). The other arguments, the
    shapes and the result are those of `dcnv3`. Published DCNv4 supports 3×3 kernels only; this
    one takes any.
    """
    values = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
              group_channels, offset_scale, remove_center)
    xp, parameters = _validate_dcnv4(input, offset_mask, values, softmax)
    backend, (input, offset_mask) = prepare(backend, xp, input, offset_mask)
    if backend == "reference":
        return reference.dcnv4(input, offset_mask, *parameters, softmax)
    forward, _ = _kernels(backend)
    return reference.dcnv4_through(forward, input, offset_mask, parameters, softmax)


def dcnv4_backward(grad_output, input, offset_mask, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1,
                   pad_h=1, pad_w=1, dilation_h=1, dilation_w=1, group=1, group_channels=None,
                   offset_scale=1.0, remove_center=False, softmax=False, *, backend=None):
    """Gradients of `dcnv4`: (grad_input, grad_offset_mask), each of its argument's shape.

    grad_offset_mask holds dcnv3_backward's grad_offset and grad_mask at the places of
    offset_mask, and 0 in the padding channels. With softmax, the mask's gradient is taken back
    through the softmax: ∂L/∂a_p = m_p·(∂L/∂m_p − Σ_q m_q·∂L/∂m_q) for the raw values a.
    """
    values = (kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
              group_channels, offset_scale, remove_center)
    check_grad_output(grad_output, OUTPUT_LAYOUT)
    xp, parameters = _validate_dcnv4(input, offset_mask, values, softmax, grad_output)
    backend, (grad_output, input, offset_mask) = prepare(backend, xp, grad_output, input, offset_mask)
    if backend == "reference":
        return reference.dcnv4_backward(grad_output, input, offset_mask, *parameters, softmax)
    _, backward = _kernels(backend)
    return reference.dcnv4_backward_through(backward, grad_output, input, offset_mask, parameters, softmax)
