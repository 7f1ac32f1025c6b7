"""dcn_numba from PyTorch: the three ops as torch.autograd.Functions, and drop-in modules.

    import dcn_numba.torch as dt
    out = dt.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

Each op hands torch tensors to dcn_numba's own hand-written forward and backward, without
copying them: a CPU tensor is read through its NumPy view (the "cpu" backend), a CUDA tensor
through DLPack as a CuPy array (the "cuda" backend), launched on torch's current CUDA stream so
that the kernels stay ordered with torch's work. Tensors are detached (dcn_numba computes the
gradients itself) and made contiguous, which copies only a tensor that is not contiguous.

Arguments are checked by dcn_numba's NumPy API, so bad input gets the same errors; only what
that API cannot see (tensors on different devices, something that is not a tensor) is checked
here. The layouts, conventions and gradients are those of dcn_numba.deform_conv2d,
dcn_numba.deform_roi_pool and dcn_numba.ops.deform_psroi_pool.

This module needs PyTorch, which dcn_numba itself does not: pip install "dcn_numba[torch]".
"""

import contextlib
import math

try:
    import torch
except ImportError as error:  # torch is optional for dcn_numba, required by this module
    raise ImportError(
        "dcn_numba.torch needs PyTorch, which is not installed: pip install 'dcn_numba[torch]'"
    ) from error
from torch.autograd.function import once_differentiable

import dcn_numba
from dcn_numba.runtime import arrays as _arrays

__all__ = ["deform_conv2d", "deform_roi_pool", "deform_psroi_pool",
           "DeformConv2d", "DeformRoIPool", "DeformPSRoIPool"]


def _check_tensors(named):
    """Every argument given is a torch.Tensor, all on one device; returns that device."""
    present = [(name, t) for name, t in named if t is not None]
    for name, tensor in present:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    first_name, first = present[0]
    for name, tensor in present[1:]:
        if tensor.device != first.device:
            raise TypeError(
                f"{name} is on {tensor.device} but {first_name} is on {first.device}; "
                "all tensors of one call must be on one device (move them with .to(device))"
            )
    return first.device


def _backend(device):
    """The dcn_numba backend that runs tensors of `device`: 'cpu' or 'cuda'."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if _arrays.cupy is None:
            raise TypeError(f"tensors on {device} run on dcn_numba's cuda backend, which needs "
                            "CuPy: pip install 'dcn_numba[cuda]' (CUDA 13) or '[cuda12]'")
        return "cuda"
    raise TypeError(f"tensors must be on a CPU or CUDA device, got {device}")


def _view(tensor):
    """The array dcn_numba reads `tensor` through, sharing its memory: a NumPy array for a CPU
    tensor, a CuPy array (DLPack) for a CUDA tensor. Detached and contiguous first."""
    if tensor is None:
        return None
    tensor = tensor.detach().contiguous()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    import cupy

    return cupy.from_dlpack(tensor)


def _tensor(array, device):
    """A torch tensor sharing the memory of a result of dcn_numba (None stays None)."""
    if array is None:
        return None
    if device.type == "cpu":
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


@contextlib.contextmanager
def _on_device(device):
    """Run dcn_numba's CUDA kernels on `device` and on torch's current stream there.

    dcn_numba launches on CuPy's current stream (dcn_numba.runtime.arrays.cuda_stream); making torch's
    stream CuPy's current one orders the kernels after the torch work that produced the inputs
    and before the torch work that reads the outputs. A CPU device needs nothing."""
    if device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


def _call(function, tensors, **parameters):
    """dcn_numba's `function` on the views of `tensors` (a dict: argument name -> tensor or None),
    on their device's backend and stream; the results (an array or a tuple) come back as tensors."""
    device = _check_tensors(tensors.items())
    backend = _backend(device)
    with _on_device(device):  # DLPack hand-overs on that stream too: no synchronisation needed
        views = {name: _view(t) for name, t in tensors.items()}
        result = function(**views, **parameters, backend=backend)
        if isinstance(result, tuple):
            return tuple(_tensor(r, device) for r in result)
        return _tensor(result, device)


def _forward(ctx, function, tensors, parameters):
    """The forward of an autograd Function: dcn_numba's `function` on `tensors` (a dict in the
    order of its arguments), keeping them and the `parameters` for the backward."""
    ctx.names, ctx.parameters = tuple(tensors), parameters
    ctx.save_for_backward(*tensors.values())
    return _call(function, tensors, **parameters)


def _backward(ctx, function, grad_output):
    """The backward of an autograd Function: dcn_numba's backward `function` on grad_output and
    the tensors and parameters the forward kept; returns its gradients."""
    tensors = dict(zip(ctx.names, ctx.saved_tensors))
    return _call(function, dict(grad_output=grad_output, **tensors), **ctx.parameters)


class DeformConv2dFunction(torch.autograd.Function):
    """dcn_numba.deform_conv2d and its backward: gradients for input, offset, weight, bias, mask."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):
        return _forward(ctx, dcn_numba.deform_conv2d,
                        dict(input=input, offset=offset, weight=weight, bias=bias, mask=mask),
                        dict(stride=stride, padding=padding, dilation=dilation))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        return (*_backward(ctx, dcn_numba.deform_conv2d_backward, grad_output), None, None, None)


class DeformRoIPoolFunction(torch.autograd.Function):
    """dcn_numba.deform_roi_pool and its backward: gradients for input and offset (not the RoIs)."""

    @staticmethod
    def forward(ctx, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        return _forward(ctx, dcn_numba.deform_roi_pool, dict(input=input, rois=rois, offset=offset),
                        dict(output_size=output_size, spatial_scale=spatial_scale,
                             sampling_ratio=sampling_ratio, gamma=gamma))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_input, grad_offset = _backward(ctx, dcn_numba.deform_roi_pool_backward, grad_output)
        return grad_input, None, grad_offset, None, None, None, None


class DeformPSRoIPoolFunction(torch.autograd.Function):
    """dcn_numba.deform_psroi_pool and its backward: gradients for input and trans (not the RoIs)."""

    @staticmethod
    def forward(ctx, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                part_size, sample_per_part, trans_std):
        return _forward(ctx, dcn_numba.deform_psroi_pool, dict(input=input, rois=rois, trans=trans),
                        dict(spatial_scale=spatial_scale, output_dim=output_dim,
                             group_size=group_size, pooled_size=pooled_size, part_size=part_size,
                             sample_per_part=sample_per_part, trans_std=trans_std))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_input, grad_trans = _backward(ctx, dcn_numba.deform_psroi_pool_backward, grad_output)
        return (grad_input, None, grad_trans, *[None] * 7)


def deform_conv2d(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution v1 (mask None) or v2 on torch tensors, differentiable in every
    tensor: dcn_numba.deform_conv2d, with the signature of torchvision.ops.deform_conv2d."""
    return DeformConv2dFunction.apply(input, offset, weight, bias, mask, stride, padding, dilation)


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1):
    """Deformable RoI pooling on torch tensors, differentiable in input and offset:
    dcn_numba.deform_roi_pool (offset (N, 2, PH, PW), x first)."""
    return DeformRoIPoolFunction.apply(input, rois, offset, output_size, spatial_scale,
                                       sampling_ratio, gamma)


def deform_psroi_pool(input, rois, trans=None, spatial_scale=1.0, output_dim=None, group_size=1,
                      pooled_size=7, part_size=None, sample_per_part=4, trans_std=0.1):
    """Position-sensitive deformable RoI pooling on torch tensors, differentiable in input and
    trans: dcn_numba.deform_psroi_pool (trans (N, 2·num_classes, part_size, part_size), x first)."""
    return DeformPSRoIPoolFunction.apply(input, rois, trans, spatial_scale, output_dim, group_size,
                                         pooled_size, part_size, sample_per_part, trans_std)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


class DeformConv2d(torch.nn.Module):
    """torchvision.ops.DeformConv2d on dcn_numba's kernels, with the same constructor, parameters
    (`weight`, `bias`: state dicts load either way) and initialisation; forward(input, offset,
    mask=None).

    offset_branch=True adds the layer's own offset branch (Dai et al. 2017, §2.1): an ordinary
    convolution `conv_offset` over the same input, with this layer's kernel size, stride, padding
    and dilation, giving a (dy, dx) pair per tap and offset group, initialised at zero so that
    training starts from an ordinary convolution. modulated=True (DCNv2) adds `conv_mask`, whose
    sigmoid, 0.5 at the start, scales each sample. Then forward(input) takes no offset.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, offset_branch=False, modulated=False, offset_groups=1):
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(f"in_channels = {in_channels} and out_channels = {out_channels} must "
                             f"both be divisible by groups = {groups}")
        if modulated and not offset_branch:
            raise ValueError("modulated=True needs offset_branch=True: without the branch, pass "
                             "the mask to forward(input, offset, mask)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.weight = torch.nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = torch.nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        K = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = self._branch(2 * offset_groups * K) if offset_branch else None
        self.conv_mask = self._branch(offset_groups * K) if modulated else None

    def reset_parameters(self):
        """torchvision's initialisation: Kaiming-uniform weight (a = √5), bias uniform in
        ±1/√fan_in."""
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            torch.nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def _branch(self, channels):
        """A zero-initialised convolution with this layer's geometry, giving `channels` maps."""
        conv = torch.nn.Conv2d(self.in_channels, channels, self.kernel_size, self.stride,
                               self.padding, self.dilation)
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
        return conv

    def forward(self, input, offset=None, mask=None):
        if self.conv_offset is not None:
            if offset is not None or mask is not None:
                raise TypeError("this DeformConv2d predicts its own offsets (offset_branch=True): "
                                "call it as layer(input), without offset or mask")
            offset = self.conv_offset(input)
            mask = None if self.conv_mask is None else torch.sigmoid(self.conv_mask(input))
        elif offset is None:
            raise TypeError("DeformConv2d.forward(input, offset, mask=None) needs an offset "
                            "(or build the layer with offset_branch=True)")
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, "
                f"offset_branch={self.conv_offset is not None}, modulated={self.conv_mask is not None}")


class DeformRoIPool(torch.nn.Module):
    """Deformable RoI pooling as a module: forward(input, rois, offset=None) (dcn_numba.deform_roi_pool)."""

    def __init__(self, output_size=7, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.gamma = sampling_ratio, gamma

    def forward(self, input, rois, offset=None):
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)


class DeformPSRoIPool(torch.nn.Module):
    """Position-sensitive deformable RoI pooling as a module: forward(input, rois, trans=None)
    (dcn_numba.deform_psroi_pool)."""

    def __init__(self, spatial_scale=1.0, output_dim=None, group_size=1, pooled_size=7,
                 part_size=None, sample_per_part=4, trans_std=0.1):
        super().__init__()
        self.spatial_scale, self.output_dim, self.group_size = spatial_scale, output_dim, group_size
        self.pooled_size, self.part_size = pooled_size, part_size
        self.sample_per_part, self.trans_std = sample_per_part, trans_std

    def forward(self, input, rois, trans=None):
        return deform_psroi_pool(input, rois, trans, self.spatial_scale, self.output_dim,
                                 self.group_size, self.pooled_size, self.part_size,
                                 self.sample_per_part, self.trans_std)
