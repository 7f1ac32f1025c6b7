"""Check an implementation of the deformable ops against dcn_numba's NumPy reference.

    python -m dcn_numba.crosscheck IMPLEMENTATION [IMPLEMENTATION ...]

IMPLEMENTATION is one of dcn_numba's backends ("reference", "cpu", "cuda"), "torchvision",
"openvino" (DeformableConvolution v8 with bilinear_interpolation_pad=true, and
DeformablePSROIPooling), "openvino-nopad" (the same with bilinear_interpolation_pad=false),
"onnxruntime" (the ONNX DeformConv operator, opset 19), or "module:function", a user's
deformable convolution with the signature

    function(input, offset, weight, bias, stride, padding, dilation, mask) -> output

over NumPy float64 arrays in dcn_numba.deform_conv2d's layouts (bias and mask may be None;
stride, padding and dilation are (h, w) pairs), returning the (B, C_out, H_out, W_out) output as
a NumPy array (float32 results are compared at float32 tolerance). When `function.backward`
exists, with the signature

    function.backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask)
        -> (grad_input, grad_offset, grad_weight, grad_bias, grad_mask)

(None for the gradients of None arguments), the gradients are checked too.

Every case of the battery runs each op an implementation has; the forward result and every
gradient are compared with the reference (with the hand-computed values where a case has them)
and the largest absolute error is printed. A difference is explained when the implementation
agrees, instead, with one of the documented conventions (CONVENTIONS) that the reference does not
follow; the table names it. The exit status is 0 when every difference is explained, 1 when any
result differs without an explanation or an implementation fails on a case.
"""

import argparse
import dataclasses
import importlib
import sys

import numpy as np
import numba

import dcn_numba
from dcn_numba.ops.locations import regular_grid, sampling_locations
from dcn_numba.runtime.arrays import to_device

OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool")
BUILT_IN = ("reference", "cpu", "cuda", "torchvision", "openvino", "openvino-nopad", "onnxruntime")
TOLERANCE = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-4}
"""Largest absolute error accepted, relative to max(1, largest |expected| value), by the
dtype an implementation returns."""


class NotApplicable(Exception):
    """An implementation does not have this op, or not with these arguments (shown as n/a)."""


@dataclasses.dataclass
class Case:
    """One call of an op: its tensors (float64 NumPy arrays), its other arguments, and, for the
    hand-computed cases, the forward output worked out by hand."""

    name: str
    op: str
    arrays: dict
    parameters: dict
    hand: np.ndarray = None


@dataclasses.dataclass
class Implementation:
    """What an implementation offers: per op a forward(**arrays, **parameters) and optionally a
    backward(grad_output, **arrays, **parameters) returning the gradients in the order of
    dcn_numba's *_backward functions. Either raises NotApplicable for a call it cannot make."""

    name: str
    forward: dict
    backward: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The battery


def _conv_case(name, rng, input_shape, weight_shape, *, stride=1, padding=0, dilation=1,
               offset_groups=1, offsets=(-2.0, 2.0), integer_offsets=False, mask=False,
               bias=True):
    """A deformable convolution case with random input and weight, and offsets drawn uniformly
    from `offsets` (whole numbers when `integer_offsets`)."""
    B, C_in, H, W = input_shape
    C_out, _, kh, kw = weight_shape
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    H_out = dcn_numba.ops.deform_conv.output_size(H, kh, sh, ph, dh)
    W_out = dcn_numba.ops.deform_conv.output_size(W, kw, sw, pw, dw)
    K = kh * kw
    low, high = offsets
    offset_shape = (B, 2 * offset_groups * K, H_out, W_out)
    offset = (rng.integers(low, high + 1, offset_shape).astype(np.float64) if integer_offsets
              else rng.uniform(low, high, offset_shape))
    arrays = dict(input=rng.standard_normal(input_shape), offset=offset,
                  weight=rng.standard_normal(weight_shape),
                  bias=rng.standard_normal(C_out) if bias else None,
                  mask=rng.uniform(0, 1, (B, offset_groups * K, H_out, W_out)) if mask else None)
    return Case(name, "deform_conv2d", arrays, dict(stride=stride, padding=padding, dilation=dilation))


def _hand_cases():
    """Two 1×1 deformable convolutions on x = [[0, 1, 2], [3, 4, 5], [6, 7, 8]] whose outputs are
    worked out by hand. Offset (0.5, 0.5): each output is the mean of a 2×2 block, the pixels
    beyond the last row and column reading 0. Offset (−0.5, 0) with mask 0.5: half the mean of a
    pixel and the one above it, row −1 reading 0."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    weight = np.ones((1, 1, 1, 1))
    half = np.full((1, 2, 3, 3), 0.5)
    up = np.concatenate([np.full((1, 1, 3, 3), -0.5), np.zeros((1, 1, 3, 3))], axis=1)
    unit = dict(stride=1, padding=0, dilation=1)
    return [
        Case("hand: 2x2 means, zero beyond the edge", "deform_conv2d",
             dict(input=x, offset=half, weight=weight, bias=None, mask=None), unit,
             hand=np.array([[[[2.0, 3.0, 1.75], [5.0, 6.0, 3.25], [3.25, 3.75, 2.0]]]])),
        Case("hand: half-pixel up, mask 0.5", "deform_conv2d",
             dict(input=x, offset=up, weight=weight, bias=None, mask=np.full((1, 1, 3, 3), 0.5)),
             unit, hand=np.array([[[[0.0, 0.25, 0.5], [0.75, 1.25, 1.75], [2.25, 2.75, 3.25]]]])),
    ]


def _rois(rng, count, batch_size, width, height, *, outside=0.0, degenerate=False):
    """(count, 5) RoIs (batch_index, x1, y1, x2, y2) of images `width`×`height`; corners may lie
    up to `outside` pixels beyond the image; degenerate ones have x2 < x1 or zero height."""
    x = np.sort(rng.uniform(-outside, width - 1 + outside, (count, 2)), axis=1)
    y = np.sort(rng.uniform(-outside, height - 1 + outside, (count, 2)), axis=1)
    if degenerate:
        x = x[:, ::-1]
        y[:, 1] = y[:, 0]
    batch_index = rng.integers(0, batch_size, count).astype(np.float64)
    return np.stack([batch_index, x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def battery():
    """The cases, the same on every run (fixed seeds): hand-computed values, samples exactly on
    −1 and H, samples in (−1, 0) and (H − 1, H), offset and weight groups, stride, padding and
    dilation, masks, non-contiguous inputs, RoIs partly outside the image, degenerate RoIs."""
    rng = np.random.default_rng(2017)
    cases = _hand_cases()
    cases.append(_conv_case("samples exactly on -1 and H", rng, (1, 2, 4, 4), (2, 2, 3, 3),
                            padding=1, offsets=(-1, 1), integer_offsets=True, mask=True))
    cases.append(_conv_case("samples in (-1, 0) and (H-1, H)", rng, (1, 2, 4, 5), (2, 2, 3, 3),
                            padding=1, offsets=(-0.9, 0.9)))
    cases.append(_conv_case("offset groups 2, weight groups 2", rng, (2, 4, 5, 5), (4, 2, 3, 3),
                            padding=1, offset_groups=2, mask=True))
    cases.append(_conv_case("stride (2, 1), padding (1, 2), dilation (2, 1)", rng, (1, 2, 7, 6),
                            (3, 2, 3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                            bias=False))
    cases.append(_conv_case("modulated, offsets up to 3 pixels", rng, (2, 3, 5, 4), (2, 3, 2, 3),
                            offsets=(-3, 3), mask=True))
    strided = _conv_case("non-contiguous inputs", rng, (1, 2, 5, 6), (2, 2, 3, 3), padding=1,
                         mask=True)
    strided.arrays = {name: None if a is None else np.asfortranarray(a)  # C-contiguous: no
                      for name, a in strided.arrays.items()}
    strided.arrays["input"] = np.swapaxes(strided.arrays["input"].swapaxes(2, 3).copy(), 2, 3)
    cases.append(strided)

    input = rng.standard_normal((2, 3, 6, 7))
    roi = dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=2, gamma=0.1)
    rois = _rois(rng, 4, 2, 7, 6, outside=2.0)
    cases.append(Case("RoIAlign: no offset, RoIs partly outside", "deform_roi_pool",
                      dict(input=input, rois=rois, offset=None), roi))
    cases.append(Case("deformable bins, RoIs partly outside", "deform_roi_pool",
                      dict(input=input, rois=rois, offset=rng.uniform(-1, 1, (4, 2, 2, 3))), roi))
    cases.append(Case("deformable bins, adaptive sampling, scale 0.5", "deform_roi_pool",
                      dict(input=input, rois=_rois(rng, 3, 2, 14, 12),
                           offset=rng.uniform(-1, 1, (3, 2, 2, 2))),
                      dict(output_size=2, spatial_scale=0.5, sampling_ratio=0, gamma=0.2)))
    cases.append(Case("degenerate RoIs", "deform_roi_pool",
                      dict(input=input, rois=_rois(rng, 3, 2, 7, 6, degenerate=True),
                           offset=rng.uniform(-1, 1, (3, 2, 2, 3))), roi))

    scores = rng.standard_normal((2, 8, 6, 7))
    ps = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2, part_size=2,
              sample_per_part=2, trans_std=0.1)
    cases.append(Case("position-sensitive, no trans", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 3, 2, 7, 6), trans=None), ps))
    cases.append(Case("position-sensitive parts, RoIs partly outside", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 4, 2, 7, 6, outside=2.0),
                           trans=rng.uniform(-1, 1, (4, 4, 2, 2))), ps))
    cases.append(Case("deformable parts, one class, degenerate RoIs", "deform_psroi_pool",
                      dict(input=rng.standard_normal((2, 9, 6, 7)),
                           rois=_rois(rng, 3, 2, 7, 6, degenerate=True),
                           trans=rng.uniform(-1, 1, (3, 2, 3, 3))),
                      dict(ps, group_size=3, output_dim=1, pooled_size=3, part_size=3)))
    cases.append(Case("deformable RoI pooling, original conventions", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 3, 2, 7, 6, outside=1.0),
                           trans=rng.uniform(-1, 1, (3, 2, 3, 3))),
                      dict(ps, group_size=1, output_dim=8, pooled_size=3, part_size=3,
                           sample_per_part=3)))
    return cases


# ---------------------------------------------------------------------------------------------
# What the reference computes, and the documented conventions it does not follow


def reference_forward(case):
    """The forward output the implementations are held to: the hand-computed one where the case
    has it, dcn_numba's NumPy reference otherwise."""
    if case.hand is not None:
        return case.hand
    return getattr(dcn_numba, case.op)(**case.arrays, **case.parameters, backend="reference")


def grad_output_for(case, output):
    """The ∂L/∂output every implementation's backward gets for `case`: fixed random values."""
    return np.random.default_rng(0).standard_normal(output.shape)


def reference_backward(case, grad_output):
    """dcn_numba's reference gradients of `case` for `grad_output`."""
    return getattr(dcn_numba, case.op + "_backward")(grad_output, **case.arrays, **case.parameters,
                                                     backend="reference")


def _moved_samples(case, move):
    """`case` with every deformable convolution sample moved: `move(coordinate, size)` gives the
    new coordinate along an axis of that size (rows: H, columns: W); returns the new arrays."""
    arrays, parameters = case.arrays, case.parameters
    kernel_size = arrays["weight"].shape[2:]
    offset = arrays["offset"]
    locations = sampling_locations(offset, kernel_size, **parameters)
    H, W = arrays["input"].shape[2:]
    moved = np.stack([move(locations[..., 0], H), move(locations[..., 1], W)], axis=-1)
    grid = regular_grid(kernel_size, offset.shape[2:], **parameters)
    new_offset = (moved - grid).transpose(0, 1, 2, 5, 3, 4).reshape(offset.shape)
    return dict(arrays, offset=new_offset)


def dcnv1_forward(case):
    """The MXNet DCNv1 rule: a sample is read only if 0 ≤ p ≤ size − 1 after clamping to the last
    row (column), with no zero padding. It is the DCNv2 rule at a moved point: a coordinate in
    (−1, 0) moves to −1 (reads 0) and one in (size − 1, size) to size − 1 (the last row)."""
    def move(p, size):
        return np.where((p > -1) & (p < 0), -1.0, np.where((p > size - 1) & (p < size), size - 1.0, p))

    arrays = _moved_samples(case, move)
    return dcn_numba.deform_conv2d(**arrays, **case.parameters, backend="reference")


def gradient_at_minus_one(case, grad_output):
    """Offset gradients of samples exactly on p = −1 taken from the inside: the derivative formula
    without the validity test, as torchvision computes it (the DCNv2 rule gives 0 there). Since
    ∂S/∂p_y depends on l_x only, it is the reference's gradient at −1 + 1e−9."""
    def move(p, size):
        return np.where(p == -1.0, -1.0 + 1e-9, p)

    arrays = _moved_samples(case, move)
    return dcn_numba.deform_conv2d_backward(grad_output, **arrays, **case.parameters,
                                            backend="reference")


@dataclasses.dataclass
class Convention:
    """A documented rule another implementation follows where dcn_numba follows another one:
    `expected(case)` (forward) or `expected(case, grad_output)` (backward) is what that rule
    gives, `about` says what it is."""

    name: str
    op: str
    quantity: str
    expected: callable
    about: str


CONVENTIONS = [
    Convention("MXNet DCNv1 rule", "deform_conv2d", "forward", dcnv1_forward,
               "samples in (-1, 0) read 0 and samples in (size-1, size) read the last row or "
               "column (no zero padding); dcn_numba follows the zero-padded DCNv2 rule, where "
               "both blend with zero pixels beyond the edge"),
    Convention("gradient at exactly -1", "deform_conv2d", "backward", gradient_at_minus_one,
               "samples exactly on p = -1 get the offset gradient of the bilinear formula "
               "without the validity test; dcn_numba follows the DCNv2 rule: an invalid sample "
               "(p <= -1) passes no offset or mask gradient"),
]


# ---------------------------------------------------------------------------------------------
# Comparing


def max_error(result, expected):
    """max |result − expected| (inf when the shapes differ or one is None and the other not)."""
    if result is None or expected is None:
        return 0.0 if result is None and expected is None else np.inf
    result = np.asarray(result)
    if result.shape != np.shape(expected):
        return np.inf
    return float(np.max(np.abs(result - expected), initial=0.0))


def within_tolerance(results, expecteds):
    """True when every result matches its expected array at the tolerance of its dtype."""
    for result, expected in zip(results, expecteds):
        error = max_error(result, expected)
        dtype = np.asarray(result).dtype if result is not None else np.dtype(np.float64)
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0))) if expected is not None else 1.0
        if not error <= TOLERANCE.get(dtype, TOLERANCE[np.dtype(np.float32)]) * scale:
            return False
    return True


def judge(case, quantity, results, expecteds, convention_input):
    """'agrees', the name of the convention the results follow instead, or 'MISMATCH'."""
    if within_tolerance(results, expecteds):
        return "agrees"
    for convention in CONVENTIONS:
        if convention.op == case.op and convention.quantity == quantity:
            expected = convention.expected(case, *convention_input)
            expected = expected if isinstance(expected, tuple) else (expected,)
            if within_tolerance(results, expected):
                return convention.name
    return "MISMATCH"


@dataclasses.dataclass
class Row:
    """One line of the table: a case run by an implementation."""

    implementation: str
    case: str
    op: str
    forward_error: float = None
    gradient_error: float = None
    forward: str = "n/a"
    gradients: str = "n/a"
    failure: str = None

    @property
    def explained(self):
        return self.failure is None and "MISMATCH" not in (self.forward, self.gradients)


def _first_line(error, limit=160):
    """The start of an exception's message, for one line of the table."""
    text = str(error).strip().splitlines()
    return text[0][:limit] if text else ""


def run_case(implementation, case):
    """Run `case` on `implementation`; compare with the reference and the conventions."""
    row = Row(implementation.name, case.name, case.op)
    forward = implementation.forward.get(case.op)
    if forward is None:
        return row
    expected = reference_forward(case)
    try:
        output = forward(**case.arrays, **case.parameters)
    except NotApplicable:
        return row
    except Exception as error:  # reported in the table with the case's name, then exit 1
        row.failure = f"forward raised {type(error).__name__}: {_first_line(error)}"
        return row
    row.forward_error = max_error(output, expected)
    row.forward = judge(case, "forward", [output], [expected], ())
    backward = implementation.backward.get(case.op)
    if backward is None:
        return row
    grad_output = grad_output_for(case, expected)
    try:
        gradients = backward(grad_output, **case.arrays, **case.parameters)
    except NotApplicable:
        return row
    except Exception as error:  # reported in the table with the case's name, then exit 1
        row.failure = f"backward raised {type(error).__name__}: {_first_line(error)}"
        return row
    expected_gradients = reference_backward(case, grad_output)
    if len(gradients) != len(expected_gradients):
        row.failure = f"backward returned {len(gradients)} gradients, expected {len(expected_gradients)}"
        return row
    row.gradient_error = max(max_error(g, e) for g, e in zip(gradients, expected_gradients))
    row.gradients = judge(case, "backward", list(gradients), list(expected_gradients), (grad_output,))
    return row


# ---------------------------------------------------------------------------------------------
# The implementations


def dcn_numba_backend(backend):
    """dcn_numba's own ops on `backend`."""
    ops = {op: getattr(dcn_numba, op) for op in OPS}
    return Implementation(
        backend,
        forward={op: _with_backend(f, backend) for op, f in ops.items()},
        backward={op: _with_backend(getattr(dcn_numba, op + "_backward"), backend) for op in OPS})


def _with_backend(function, backend):
    """`function` on `backend`. On a GPU the "cuda" backend takes CuPy arrays (the simulator takes
    NumPy ones): the case's arrays go to the device, and the results come back as NumPy arrays."""
    if backend != "cuda" or numba.config.ENABLE_CUDASIM:
        return lambda *args, **kwargs: function(*args, **kwargs, backend=backend)

    def on_device(*args, **kwargs):
        to_gpu = lambda value: to_device(value, "cuda") if isinstance(value, np.ndarray) else value
        result = function(*map(to_gpu, args), **{k: to_gpu(v) for k, v in kwargs.items()}, backend=backend)
        to_host = lambda value: None if value is None else to_device(value, "cpu")
        return tuple(map(to_host, result)) if isinstance(result, tuple) else to_host(result)
    return on_device


def user_callable(spec):
    """The implementation named 'module:function' (see the module docstring for its signature)."""
    module_name, _, attribute = spec.partition(":")
    function = getattr(importlib.import_module(module_name), attribute)

    def forward(input, offset, weight, bias, stride, padding, dilation, mask):
        return function(input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation),
                        mask)

    def backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
        return tuple(function.backward(grad_output, input, offset, weight, bias, _pair(stride),
                                       _pair(padding), _pair(dilation), mask))

    backwards = {"deform_conv2d": backward} if hasattr(function, "backward") else {}
    return Implementation(spec, {"deform_conv2d": forward}, backwards)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def torchvision_ops():
    """torchvision.ops.deform_conv2d, forward and gradients by torch's autograd, in float64;
    torchvision.ops.roi_align(aligned=True) as deform_roi_pool without offsets."""
    import torch
    import torchvision

    def tensors(arrays):
        return {name: None if a is None else torch.tensor(a, requires_grad=True)
                for name, a in arrays.items()}

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        return torchvision.ops.deform_conv2d(input, offset, weight, bias, stride, padding, dilation,
                                             mask)

    def roi_align(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        if offset is not None:
            raise NotApplicable("roi_align has no offsets")
        return torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
                                         aligned=True)

    def forward(op, order):
        def run(**arguments):
            given = tensors({name: arguments.pop(name) for name in order})
            return op(**given, **arguments).detach().numpy()
        return run

    def backward(op, order):
        def run(grad_output, **arguments):
            given = tensors({name: arguments.pop(name) for name in order})
            op(**given, **arguments).backward(torch.tensor(grad_output))
            return tuple(None if t is None or name == "rois" else t.grad.numpy()
                         for name, t in given.items())
        return run

    conv_order = ("input", "offset", "weight", "bias", "mask")
    roi_order = ("input", "rois", "offset")
    return Implementation(
        "torchvision",
        forward={"deform_conv2d": forward(conv, conv_order),
                 "deform_roi_pool": forward(roi_align, roi_order)},
        backward={"deform_conv2d": backward(conv, conv_order),
                  "deform_roi_pool": _without_rois(backward(roi_align, roi_order))})


def _without_rois(backward):
    """A backward returning (grad_input, grad_rois, grad_offset) as dcn_numba's (grad_input,
    grad_offset)."""
    def run(grad_output, **arguments):
        grad_input, _, grad_offset = backward(grad_output, **arguments)
        return grad_input, grad_offset
    return run


def _float32(array):
    """`array` as a C-contiguous float32 array, as the runtimes below take their inputs."""
    return np.ascontiguousarray(array, dtype=np.float32)


def openvino_ops(name, bilinear_interpolation_pad):
    """OpenVINO's DeformableConvolution (opset 8) with the given bilinear_interpolation_pad and
    its DeformablePSROIPooling (opset 1), each built as a one-op graph and run on the CPU in
    float32. Forward only. DeformablePSROIPooling's output is group_size × group_size, so it
    runs the cases whose pooled_size equals group_size."""
    import openvino
    import openvino.opset1
    import openvino.opset8

    def run(inputs, build):
        parameters = [openvino.opset8.parameter(a.shape, np.float32) for a in inputs]
        model = openvino.Model([build(*parameters)], parameters)
        compiled = openvino.Core().compile_model(model, "CPU")
        return compiled(list(inputs))[0]

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        groups = input.shape[1] // weight.shape[1]
        offset_groups = offset.shape[1] // (2 * weight.shape[2] * weight.shape[3])
        inputs = [_float32(a) for a in (input, offset, weight, mask) if a is not None]
        padding = list(_pair(padding))
        output = run(inputs, lambda x, o, w, *m: openvino.opset8.deformable_convolution(
            x, o, w, list(_pair(stride)), padding, padding, list(_pair(dilation)),
            mask=m[0] if m else None, group=groups, deformable_group=offset_groups,
            bilinear_interpolation_pad=bilinear_interpolation_pad))
        return output if bias is None else output + _float32(bias)[:, None, None]

    def psroi(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
              sample_per_part, trans_std):
        if pooled_size != group_size:
            raise NotApplicable("DeformablePSROIPooling pools group_size × group_size bins")
        inputs = [_float32(a) for a in (input, rois, trans) if a is not None]
        return run(inputs, lambda x, r, *t: openvino.opset1.deformable_psroi_pooling(
            x, r, output_dim, spatial_scale, group_size, "bilinear_deformable", sample_per_part,
            sample_per_part, trans_std if t else 0.0, part_size or pooled_size,
            offsets=t[0] if t else None))

    return Implementation(name, forward={"deform_conv2d": conv, "deform_psroi_pool": psroi})


def onnxruntime_ops():
    """ONNX's DeformConv (opset 19) built as a one-node model and run by ONNX Runtime on the CPU
    in float32. Forward only."""
    import onnx
    import onnxruntime

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        named = {"X": input, "W": weight, "offset": offset, "B": bias, "mask": mask}
        given = {k: _float32(v) for k, v in named.items() if v is not None}
        # Inputs are positional: a missing bias before a given mask is the empty name.
        order = [k if k in given else "" for k in ("X", "W", "offset", "B", "mask")]
        while order[-1] == "":
            order.pop()
        (ph, pw), kernel = _pair(padding), list(weight.shape[2:])
        node = onnx.helper.make_node(
            "DeformConv", order, ["Y"], kernel_shape=kernel, strides=list(_pair(stride)),
            pads=[ph, pw, ph, pw], dilations=list(_pair(dilation)),
            group=input.shape[1] // weight.shape[1],
            offset_group=offset.shape[1] // (2 * kernel[0] * kernel[1]))
        float32 = onnx.TensorProto.FLOAT
        graph = onnx.helper.make_graph(
            [node], "deform_conv",
            [onnx.helper.make_tensor_value_info(k, float32, v.shape) for k, v in given.items()],
            [onnx.helper.make_tensor_value_info("Y", float32, None)])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)],
                                       ir_version=9)  # the IR of opset 19, which every runtime reads
        session = onnxruntime.InferenceSession(model.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        return session.run(None, given)[0]

    return Implementation("onnxruntime", forward={"deform_conv2d": conv})


def implementation(name):
    """The Implementation called `name` on the command line."""
    if name in ("reference", "cpu", "cuda"):
        return dcn_numba_backend(name)
    if ":" in name:
        return user_callable(name)
    if name == "torchvision":
        return torchvision_ops()
    if name in ("openvino", "openvino-nopad"):
        return openvino_ops(name, bilinear_interpolation_pad=name == "openvino")
    if name == "onnxruntime":
        return onnxruntime_ops()
    raise ValueError(f"unknown implementation {name!r}: expected one of {', '.join(BUILT_IN)} "
                     "or module:function")


# ---------------------------------------------------------------------------------------------
# The command


def _error_text(error):
    return "—" if error is None else f"{error:.1e}"


def table(rows):
    """The rows as a text table, one line per case, then the conventions named and the failures."""
    header = ("implementation", "case", "op", "forward", "gradients", "result")
    lines = [(r.implementation, r.case, r.op, _error_text(r.forward_error),
              _error_text(r.gradient_error), _result_text(r)) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
            for line in [header, *lines]]
    named = sorted({v for r in rows for v in (r.forward, r.gradients)}
                   & {c.name for c in CONVENTIONS})
    if named:
        text.append("")
        text += [f"{c.name}: {c.about}" for c in CONVENTIONS if c.name in named]
    return "\n".join(text)


def _result_text(row):
    if row.failure is not None:
        return "FAILED: " + row.failure
    verdicts = []
    for quantity, verdict in (("forward", row.forward), ("gradients", row.gradients)):
        if verdict == "MISMATCH":
            verdicts.append(f"MISMATCH ({quantity})")
        elif verdict not in ("agrees", "n/a"):
            verdicts.append(f"convention: {verdict} ({quantity})")
    if verdicts:
        return "; ".join(verdicts)
    return "n/a" if row.forward == "n/a" else "agrees"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.crosscheck",
        description="Check implementations of the deformable ops against dcn_numba's reference.")
    parser.add_argument("implementations", nargs="+", metavar="IMPLEMENTATION",
                        help=f"{', '.join(BUILT_IN)}, or module:function (a deform_conv2d with "
                             "dcn_numba's signature over NumPy arrays; optional .backward)")
    arguments = parser.parse_args(argv)
    cases = battery()
    rows = []
    try:
        chosen = [implementation(name) for name in arguments.implementations]
    except (ValueError, ImportError, AttributeError) as error:
        parser.error(str(error))
    for each in chosen:
        rows += [run_case(each, case) for case in cases]
    print(table(rows))
    unexplained = [r for r in rows if not r.explained]
    ran = [r for r in rows if r.forward != "n/a" or r.failure is not None]
    print(f"\n{len(ran)} cases run, {len(unexplained)} unexplained")
    return 1 if unexplained else 0


