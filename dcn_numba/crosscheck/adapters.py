"""The implementations the cross-check runs, and the one adapter of each library it compares with
(torchvision, OpenVINO, ONNX Runtime), which the benchmarks and the GPU check also use.

An `Implementation` offers, per op, a forward(**arrays, **parameters) and optionally a
backward(grad_output, **arrays, **parameters) returning the gradients in the order of dcn_numba's
*_backward functions; either raises NotApplicable for a call it cannot make. The library adapters
(`torchvision_deform_conv`, `openvino_deform_conv`, `onnxruntime_deform_conv`) build a library's
deformable convolution once for given arrays and return closures that run it, so that a benchmark
times the runs alone; each library is imported only when its adapter is called.
"""

import dataclasses
import importlib

import numba
import numpy as np

import dcn_numba
from dcn_numba.runtime.arrays import to_device

OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool")
BUILT_IN = ("reference", "cpu", "cuda", "torchvision", "openvino", "openvino-nopad", "onnxruntime")


class NotApplicable(Exception):
    """An implementation does not have this op, or not with these arguments (shown as n/a)."""


@dataclasses.dataclass
class Implementation:
    """What an implementation offers: per op a forward and optionally a backward (see above)."""

    name: str
    forward: dict
    backward: dict = dataclasses.field(default_factory=dict)


def pair(value):
    """(h, w) from an int or a pair."""
    return (value, value) if isinstance(value, int) else tuple(value)


def as_float32(array):
    """`array` as a C-contiguous float32 array, as OpenVINO and ONNX Runtime take their inputs."""
    return np.ascontiguousarray(array, dtype=np.float32)


def conv_groups(input, offset, weight):
    """(groups, offset_groups) of a deformable convolution's arrays."""
    return input.shape[1] // weight.shape[1], offset.shape[1] // (2 * weight.shape[2] * weight.shape[3])


# ---------------------------------------------------------------------------------------------
# The library adapters


def torchvision_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask, grad_output=None,
                            device="cpu"):
    """torchvision.ops.deform_conv2d on these arrays (NumPy, copied once into torch tensors on
    `device`): (forward, forward_backward) closures. forward() returns the output tensor, computed
    without a graph; forward_backward() runs the forward and backpropagates grad_output with
    torch's autograd, returning the gradients as tensors in dcn_numba's order (input, offset,
    weight, bias, mask), None for arguments that are None."""
    import torch
    import torchvision

    leaves = [None if a is None else torch.tensor(np.asarray(a), device=device, requires_grad=True)
              for a in (input, offset, weight, bias, mask)]
    x, offset, weight, bias, mask = leaves
    grad = None if grad_output is None else torch.tensor(np.asarray(grad_output), device=device)
    conv = dict(stride=pair(stride), padding=pair(padding), dilation=pair(dilation), mask=mask)

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(x, offset, weight, bias, **conv)

    def forward_backward():
        for leaf in leaves:
            if leaf is not None:
                leaf.grad = None
        torchvision.ops.deform_conv2d(x, offset, weight, bias, **conv).backward(grad)
        return [None if leaf is None else leaf.grad for leaf in leaves]

    return forward, forward_backward


def torchvision_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, grad_output=None):
    """torchvision.ops.roi_align(aligned=True), deform_roi_pool without offsets, on the CPU:
    (forward, forward_backward) closures as `torchvision_deform_conv`'s, the gradient that of the
    input alone."""
    import torch
    import torchvision

    x = torch.tensor(np.asarray(input), requires_grad=True)
    boxes = torch.tensor(np.asarray(rois))
    grad = None if grad_output is None else torch.tensor(np.asarray(grad_output))

    def forward():
        with torch.no_grad():
            return torchvision.ops.roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned=True)

    def forward_backward():
        x.grad = None
        torchvision.ops.roi_align(x, boxes, output_size, spatial_scale, sampling_ratio, aligned=True).backward(grad)
        return [x.grad]

    return forward, forward_backward


def openvino_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask,
                         bilinear_interpolation_pad=True, threads=None):
    """OpenVINO's DeformableConvolution (opset 8) with the given bilinear_interpolation_pad, then
    an Add of the bias, in one graph whose weight and bias are constants, compiled once for the
    CPU in f32 (with `threads` inference threads when given), for inputs shaped as these arrays:
    a forward() closure running one inference on them (in float32, shared with the runtime, not
    copied). The output it returns is the runtime's own array, overwritten by the next call."""
    import openvino
    import openvino.opset8 as ops

    inputs = [as_float32(a) for a in (input, offset, mask) if a is not None]
    parameters = [ops.parameter(a.shape, np.float32) for a in inputs]
    groups, offset_groups = conv_groups(input, offset, weight)
    padding = list(pair(padding))
    output = ops.deformable_convolution(
        parameters[0], parameters[1], ops.constant(as_float32(weight)), list(pair(stride)), padding, padding,
        list(pair(dilation)), mask=parameters[2] if mask is not None else None, group=groups,
        deformable_group=offset_groups, bilinear_interpolation_pad=bilinear_interpolation_pad)
    if bias is not None:
        output = ops.add(output, ops.constant(as_float32(bias).reshape(1, -1, 1, 1)))
    # f32 explicitly: on processors with bf16 units OpenVINO would otherwise compute in bf16.
    configuration = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads is not None:
        configuration["INFERENCE_NUM_THREADS"] = threads
    compiled = openvino.Core().compile_model(openvino.Model([output], parameters), "CPU", configuration)
    request = compiled.create_infer_request()

    def forward():
        return request.infer(inputs, share_inputs=True, share_outputs=True)[0]

    return forward


def openvino_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                        sample_per_part, trans_std):
    """OpenVINO's DeformablePSROIPooling (opset 1) on these arrays, built and run once on the CPU
    in float32: its output. It pools group_size × group_size bins only."""
    import openvino
    import openvino.opset1
    import openvino.opset8

    if pooled_size != group_size:
        raise NotApplicable("DeformablePSROIPooling pools group_size × group_size bins")
    inputs = [as_float32(a) for a in (input, rois, trans) if a is not None]
    parameters = [openvino.opset8.parameter(a.shape, np.float32) for a in inputs]
    output = openvino.opset1.deformable_psroi_pooling(
        parameters[0], parameters[1], output_dim, spatial_scale, group_size, "bilinear_deformable", sample_per_part,
        sample_per_part, trans_std if trans is not None else 0.0, part_size or pooled_size,
        offsets=parameters[2] if trans is not None else None)
    compiled = openvino.Core().compile_model(openvino.Model([output], parameters), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(inputs)[0]


def onnxruntime_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask, threads=None):
    """ONNX's DeformConv (opset 19) as a one-node model whose W and B are initializers, in one CPU
    session of ONNX Runtime (with `threads` intra-op threads when given), for inputs shaped as
    these arrays: a forward() closure running the session on them (in float32)."""
    import onnx
    import onnxruntime

    feeds = {name: as_float32(a) for name, a in (("X", input), ("offset", offset), ("mask", mask)) if a is not None}
    initializers = {name: as_float32(a) for name, a in (("W", weight), ("B", bias)) if a is not None}
    # Inputs are positional: a missing bias before a given mask is the empty name.
    order = [name if name in feeds or name in initializers else "" for name in ("X", "W", "offset", "B", "mask")]
    while order[-1] == "":
        order.pop()
    (pad_h, pad_w), kernel = pair(padding), list(weight.shape[2:])
    groups, offset_groups = conv_groups(input, offset, weight)
    node = onnx.helper.make_node("DeformConv", order, ["Y"], kernel_shape=kernel, strides=list(pair(stride)),
                                 pads=[pad_h, pad_w, pad_h, pad_w], dilations=list(pair(dilation)), group=groups,
                                 offset_group=offset_groups)
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        [node], "deform_conv",
        [onnx.helper.make_tensor_value_info(name, float32, a.shape) for name, a in feeds.items()],
        [onnx.helper.make_tensor_value_info("Y", float32, None)],
        initializer=[onnx.numpy_helper.from_array(a, name) for name, a in initializers.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)],
                                   ir_version=9)  # the IR of opset 19, which every runtime reads
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def forward():
        return session.run(None, feeds)[0]

    return forward


# ---------------------------------------------------------------------------------------------
# The implementations the command names


def dcn_numba_backend(backend):
    """dcn_numba's own ops on `backend`."""
    return Implementation(
        backend,
        forward={op: with_backend(getattr(dcn_numba, op), backend) for op in OPS},
        backward={op: with_backend(getattr(dcn_numba, op + "_backward"), backend) for op in OPS})


def with_backend(function, backend):
    """`function` on `backend`. On a GPU the "cuda" backend takes CuPy arrays (the simulator takes
    NumPy ones): the case's arrays go to the device, and the results come back as NumPy arrays."""
    if backend != "cuda" or numba.config.ENABLE_CUDASIM:
        return lambda *args, **kwargs: function(*args, **kwargs, backend=backend)

    def on_device(*args, **kwargs):
        to_gpu = lambda value: to_device(value, "cuda") if isinstance(value, np.ndarray) else value  # noqa: E731
        result = function(*map(to_gpu, args), **{k: to_gpu(v) for k, v in kwargs.items()}, backend=backend)
        to_host = lambda value: None if value is None else to_device(value, "cpu")  # noqa: E731
        return tuple(map(to_host, result)) if isinstance(result, tuple) else to_host(result)
    return on_device


def user_callable(spec):
    """The implementation named 'module:function' (see the package's docstring for its signature)."""
    module_name, _, attribute = spec.partition(":")
    function = getattr(importlib.import_module(module_name), attribute)

    def forward(input, offset, weight, bias, stride, padding, dilation, mask):
        return function(input, offset, weight, bias, pair(stride), pair(padding), pair(dilation), mask)

    def backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
        return tuple(function.backward(grad_output, input, offset, weight, bias, pair(stride), pair(padding),
                                       pair(dilation), mask))

    backwards = {"deform_conv2d": backward} if hasattr(function, "backward") else {}
    return Implementation(spec, {"deform_conv2d": forward}, backwards)


def torchvision_ops():
    """torchvision.ops.deform_conv2d, forward and gradients by torch's autograd, in float64;
    torchvision.ops.roi_align(aligned=True) as deform_roi_pool without offsets."""

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        forward, _ = torchvision_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask)
        return forward().numpy()

    def conv_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
        _, forward_backward = torchvision_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask,
                                                      grad_output)
        return tuple(None if grad is None else grad.numpy() for grad in forward_backward())

    def roi_align(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        if offset is not None:
            raise NotApplicable("roi_align has no offsets")
        forward, _ = torchvision_roi_align(input, rois, output_size, spatial_scale, sampling_ratio)
        return forward().numpy()

    def roi_align_backward(grad_output, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        if offset is not None:
            raise NotApplicable("roi_align has no offsets")
        _, forward_backward = torchvision_roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
                                                    grad_output)
        return forward_backward()[0].numpy(), None

    return Implementation("torchvision", forward={"deform_conv2d": conv, "deform_roi_pool": roi_align},
                          backward={"deform_conv2d": conv_backward, "deform_roi_pool": roi_align_backward})


def openvino_ops(name, bilinear_interpolation_pad):
    """OpenVINO's DeformableConvolution with the given bilinear_interpolation_pad and its
    DeformablePSROIPooling, in float32. Forward only."""

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        forward = openvino_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask,
                                       bilinear_interpolation_pad)
        return np.array(forward())

    return Implementation(name, forward={"deform_conv2d": conv, "deform_psroi_pool": openvino_psroi_pool})


def onnxruntime_ops():
    """ONNX Runtime's DeformConv in float32. Forward only."""

    def conv(input, offset, weight, bias, stride, padding, dilation, mask):
        return onnxruntime_deform_conv(input, offset, weight, bias, stride, padding, dilation, mask)()

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
