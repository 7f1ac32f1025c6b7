"""The three ops of dcn_numba as PyTorch ops, dcn_numba::deform_conv2d, dcn_numba::deform_roi_pool
and dcn_numba::deform_psroi_pool, and the functions users call.

Each op is one block of the same steps (dcn_numba.torch.library explains them): the forward and
the backward as torch.library.custom_op over dcn_numba's own functions, their fake implementations
(the shapes of the results), the autograd formula and autocast, then the function users call,
which checks the arguments with dcn_numba's messages in plain Python calls (TorchScript,
torch.compile and torch.export check types themselves, and the op checks the rest, with the same
messages, when it runs) and calls the op.

The layouts, conventions and gradients are those of dcn_numba.deform_conv2d,
dcn_numba.deform_roi_pool and dcn_numba.deform_psroi_pool. float16 and bfloat16 tensors are
computed in float32 and returned in their dtype.
"""

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

import dcn_numba
from dcn_numba.ops import checks
from dcn_numba.ops.deform_conv import output_size
from dcn_numba.torch import bridge
from dcn_numba.torch import onnx as _onnx
from dcn_numba.torch.library import (autocast, check_tensor_arguments, differentiable,
                                     gradients_like, pair, present)

# ---------------------------------------------------------------------------------------------
# dcn_numba::deform_conv2d


@torch.library.custom_op("dcn_numba::deform_conv2d", mutates_args=())
def _deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor],
                   mask: Optional[Tensor], stride: List[int], padding: List[int],
                   dilation: List[int]) -> Tensor:
    """dcn_numba.deform_conv2d on tensors."""
    return bridge.call(dcn_numba.deform_conv2d, dict(
        input=input, offset=offset, weight=weight, bias=bias, mask=mask),
        stride=stride, padding=padding, dilation=dilation)


@torch.library.custom_op("dcn_numba::deform_conv2d_backward", mutates_args=())
def _deform_conv2d_backward(grad_output: Tensor, input: Tensor, offset: Tensor, weight: Tensor,
                            bias: Optional[Tensor], mask: Optional[Tensor], stride: List[int],
                            padding: List[int], dilation: List[int]) -> List[Tensor]:
    """dcn_numba.deform_conv2d_backward on tensors: the gradients of input, offset, weight, and
    of bias and mask when given."""
    return present(bridge.call(dcn_numba.deform_conv2d_backward, dict(
        grad_output=grad_output, input=input, offset=offset, weight=weight, bias=bias, mask=mask),
        stride=stride, padding=padding, dilation=dilation))


@_deform_conv2d.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):
    bridge.check_tensors([("input", input), ("offset", offset), ("weight", weight),
                          ("bias", bias), ("mask", mask)])
    (B, _, H, W), (C_out, _, kh, kw) = input.shape, weight.shape
    return input.new_empty((B, C_out, output_size(H, kh, stride[0], padding[0], dilation[0]),
                            output_size(W, kw, stride[1], padding[1], dilation[1])))


@_deform_conv2d_backward.register_fake
def _(grad_output, input, offset, weight, bias, mask, stride, padding, dilation):
    return gradients_like(input, offset, weight, bias, mask)


differentiable("dcn_numba::deform_conv2d", tensors=("input", "offset", "weight", "bias", "mask"))
autocast("dcn_numba::deform_conv2d")


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: Union[int, Tuple[int, int]] = 1,
                  padding: Union[int, Tuple[int, int]] = 0,
                  dilation: Union[int, Tuple[int, int]] = 1,
                  mask: Optional[Tensor] = None) -> Tensor:
    """Deformable convolution v1 (mask None) or v2 on torch tensors, differentiable in every
    tensor: dcn_numba.deform_conv2d, with the signature of torchvision.ops.deform_conv2d.
    Inside torch.onnx.export it is ONNX's DeformConv (dcn_numba.torch.onnx)."""
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            check_tensor_arguments([("input", input), ("offset", offset), ("weight", weight),
                                    ("bias", bias), ("mask", mask)])
            checks.as_pair(stride, "stride", 1)
            checks.as_pair(padding, "padding", 0)
            checks.as_pair(dilation, "dilation", 1)
        if torch.onnx.is_in_onnx_export():
            return _onnx.deform_conv(input, offset, weight, bias, pair(stride), pair(padding),
                                     pair(dilation), mask)
    return torch.ops.dcn_numba.deform_conv2d(input, offset, weight, bias, mask, pair(stride),
                                             pair(padding), pair(dilation))

# ---------------------------------------------------------------------------------------------
# dcn_numba::deform_roi_pool


@torch.library.custom_op("dcn_numba::deform_roi_pool", mutates_args=())
def _deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: List[int],
                     spatial_scale: float, sampling_ratio: int, gamma: float) -> Tensor:
    """dcn_numba.deform_roi_pool on tensors."""
    return bridge.call(dcn_numba.deform_roi_pool, dict(input=input, rois=rois, offset=offset),
                       output_size=output_size, spatial_scale=spatial_scale,
                       sampling_ratio=sampling_ratio, gamma=gamma)


@torch.library.custom_op("dcn_numba::deform_roi_pool_backward", mutates_args=())
def _deform_roi_pool_backward(grad_output: Tensor, input: Tensor, rois: Tensor,
                              offset: Optional[Tensor], output_size: List[int],
                              spatial_scale: float, sampling_ratio: int,
                              gamma: float) -> List[Tensor]:
    """dcn_numba.deform_roi_pool_backward on tensors: the gradients of input, and of offset when
    given."""
    return present(bridge.call(dcn_numba.deform_roi_pool_backward, dict(
        grad_output=grad_output, input=input, rois=rois, offset=offset),
        output_size=output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
        gamma=gamma))


@_deform_roi_pool.register_fake
def _(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
    bridge.check_tensors([("input", input), ("rois", rois), ("offset", offset)])
    if torch.onnx.is_in_onnx_export():  # every way torch.onnx.export traces a model comes here
        _onnx.refuse("deform_roi_pool")
    return input.new_empty((rois.shape[0], input.shape[1], *output_size))


@_deform_roi_pool_backward.register_fake
def _(grad_output, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
    return gradients_like(input, offset)


differentiable("dcn_numba::deform_roi_pool", tensors=("input", "rois", "offset"),
               constant=("rois",))
autocast("dcn_numba::deform_roi_pool")


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor] = None,
                    output_size: Union[int, Tuple[int, int]] = 7, spatial_scale: float = 1.0,
                    sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """Deformable RoI pooling on torch tensors, differentiable in input and offset:
    dcn_numba.deform_roi_pool (offset (N, 2, PH, PW), x first). ONNX has no such operator:
    torch.onnx.export refuses it, saying so."""
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            check_tensor_arguments([("input", input), ("rois", rois), ("offset", offset)])
            checks.as_pair(output_size, "output_size", 1)
            checks.as_real(spatial_scale, "spatial_scale", positive=True)
            checks.as_int(sampling_ratio, "sampling_ratio", maximum=checks.MAX_SAMPLES_PER_AXIS)
            checks.as_real(gamma, "gamma")
    return torch.ops.dcn_numba.deform_roi_pool(input, rois, offset, pair(output_size),
                                               float(spatial_scale), sampling_ratio, float(gamma))

# ---------------------------------------------------------------------------------------------
# dcn_numba::deform_psroi_pool


@torch.library.custom_op("dcn_numba::deform_psroi_pool", mutates_args=())
def _deform_psroi_pool(input: Tensor, rois: Tensor, trans: Optional[Tensor], spatial_scale: float,
                       output_dim: Optional[int], group_size: int, pooled_size: int,
                       part_size: Optional[int], sample_per_part: int,
                       trans_std: float) -> Tensor:
    """dcn_numba.deform_psroi_pool on tensors."""
    return bridge.call(dcn_numba.deform_psroi_pool, dict(input=input, rois=rois, trans=trans),
                       spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size,
                       pooled_size=pooled_size, part_size=part_size,
                       sample_per_part=sample_per_part, trans_std=trans_std)


@torch.library.custom_op("dcn_numba::deform_psroi_pool_backward", mutates_args=())
def _deform_psroi_pool_backward(grad_output: Tensor, input: Tensor, rois: Tensor,
                                trans: Optional[Tensor], spatial_scale: float,
                                output_dim: Optional[int], group_size: int, pooled_size: int,
                                part_size: Optional[int], sample_per_part: int,
                                trans_std: float) -> List[Tensor]:
    """dcn_numba.deform_psroi_pool_backward on tensors: the gradients of input, and of trans when
    given."""
    return present(bridge.call(dcn_numba.deform_psroi_pool_backward, dict(
        grad_output=grad_output, input=input, rois=rois, trans=trans),
        spatial_scale=spatial_scale, output_dim=output_dim, group_size=group_size,
        pooled_size=pooled_size, part_size=part_size, sample_per_part=sample_per_part,
        trans_std=trans_std))


@_deform_psroi_pool.register_fake
def _(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
      sample_per_part, trans_std):
    bridge.check_tensors([("input", input), ("rois", rois), ("trans", trans)])
    if torch.onnx.is_in_onnx_export():  # every way torch.onnx.export traces a model comes here
        _onnx.refuse("deform_psroi_pool")
    channels = input.shape[1] // group_size ** 2 if output_dim is None else output_dim
    return input.new_empty((rois.shape[0], channels, pooled_size, pooled_size))


@_deform_psroi_pool_backward.register_fake
def _(grad_output, input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
      part_size, sample_per_part, trans_std):
    return gradients_like(input, trans)


differentiable("dcn_numba::deform_psroi_pool", tensors=("input", "rois", "trans"),
               constant=("rois",))
autocast("dcn_numba::deform_psroi_pool")


def deform_psroi_pool(input: Tensor, rois: Tensor, trans: Optional[Tensor] = None,
                      spatial_scale: float = 1.0, output_dim: Optional[int] = None,
                      group_size: int = 1, pooled_size: int = 7, part_size: Optional[int] = None,
                      sample_per_part: int = 4, trans_std: float = 0.1) -> Tensor:
    """Position-sensitive deformable RoI pooling on torch tensors, differentiable in input and
    trans: dcn_numba.deform_psroi_pool (trans (N, 2·num_classes, part_size, part_size), x first).
    ONNX has no such operator: torch.onnx.export refuses it, saying so."""
    if not torch.jit.is_scripting():
        if not torch.compiler.is_compiling():
            check_tensor_arguments([("input", input), ("rois", rois), ("trans", trans)])
            checks.as_real(spatial_scale, "spatial_scale", positive=True)
            if output_dim is not None:
                checks.as_int(output_dim, "output_dim", 1)
            checks.as_int(group_size, "group_size", 1)
            checks.as_int(pooled_size, "pooled_size", 1)
            if part_size:  # None and 0 mean pooled_size
                checks.as_int(part_size, "part_size", 1)
            checks.as_int(sample_per_part, "sample_per_part", 1, checks.MAX_SAMPLES_PER_AXIS)
            checks.as_real(trans_std, "trans_std")
    return torch.ops.dcn_numba.deform_psroi_pool(input, rois, trans, float(spatial_scale),
                                                 output_dim, group_size, pooled_size, part_size,
                                                 sample_per_part, float(trans_std))
