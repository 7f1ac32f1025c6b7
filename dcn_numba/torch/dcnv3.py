"""DCNv3 and DCNv4 as PyTorch ops, dcn_numba::dcnv3 and dcn_numba::dcnv4, and the functions users
call: the same four steps as the ops of dcn_numba.torch.ops (dcn_numba.torch.library explains
them), over dcn_numba.dcnv3 and dcn_numba.dcnv4 and their backward passes.

The layouts, conventions and gradients are those of dcn_numba.dcnv3 and dcn_numba.dcnv4
(docs/specification.md §3): channels-last input (N, H, W, C), offset (N, H_out, W_out, G·P·2)
with x-first pairs and column-major taps, mask (N, H_out, W_out, G·P), DCNv4's packed
offset_mask (N, H_out, W_out, pad8(3·G·P)). float16 and bfloat16 tensors are computed in float32
and returned in their dtype. ONNX has no operator for them: torch.onnx.export refuses them,
saying so.
"""

from typing import List, Optional

import torch
from torch import Tensor

import dcn_numba
from dcn_numba.ops import checks
from dcn_numba.ops.dcnv3 import as_flag
from dcn_numba.ops.deform_conv import output_size
from dcn_numba.torch import bridge
from dcn_numba.torch import onnx as _onnx
from dcn_numba.torch.library import autocast, check_tensor_arguments, differentiable, gradients_like


def _parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                group_channels, offset_scale, remove_center):
    """The keyword arguments of dcn_numba.dcnv3 and dcn_numba.dcnv4 after their arrays."""
    return dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w, pad_h=pad_h,
                pad_w=pad_w, dilation_h=dilation_h, dilation_w=dilation_w, group=group,
                group_channels=group_channels, offset_scale=offset_scale, remove_center=remove_center)


def _fake_output(name, input, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                 *other_parameters):
    """The empty output (N, H_out, W_out, C) of the op `name` on `input` (N, H, W, C)."""
    if torch.onnx.is_in_onnx_export():  # every way torch.onnx.export traces a model comes here
        _onnx.refuse(name, "DCNv3 or DCNv4 operator",
                     "keep these layers in PyTorch, or export the parts of the model around them")
    N, H, W, C = input.shape
    return input.new_empty((N, output_size(H, kernel_h, stride_h, pad_h, dilation_h),
                            output_size(W, kernel_w, stride_w, pad_w, dilation_w), C))


def _check_parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                      group_channels, offset_scale, remove_center):
    """dcn_numba's checks of the parameters that the op's schema would otherwise convert or
    refuse in words of its own; the op checks the rest (shapes) when it runs."""
    for name, value, minimum in (("kernel_h", kernel_h, 1), ("kernel_w", kernel_w, 1),
                                 ("stride_h", stride_h, 1), ("stride_w", stride_w, 1),
                                 ("pad_h", pad_h, 0), ("pad_w", pad_w, 0), ("dilation_h", dilation_h, 1),
                                 ("dilation_w", dilation_w, 1), ("group", group, 1)):
        checks.as_int(value, name, minimum)
    if group_channels is not None:
        checks.as_int(group_channels, "group_channels", 1)
    checks.as_real(offset_scale, "offset_scale")
    as_flag(remove_center, "remove_center")  # the published layers pass an int

# ---------------------------------------------------------------------------------------------
# dcn_numba::dcnv3


@torch.library.custom_op("dcn_numba::dcnv3", mutates_args=())
def _dcnv3(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int,
           stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
           group_channels: Optional[int], offset_scale: float, remove_center: bool) -> Tensor:
    """dcn_numba.dcnv3 on tensors."""
    return bridge.call(dcn_numba.dcnv3, dict(input=input, offset=offset, mask=mask), **_parameters(
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
        group_channels, offset_scale, remove_center))


@torch.library.custom_op("dcn_numba::dcnv3_backward", mutates_args=())
def _dcnv3_backward(grad_output: Tensor, input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int,
                    kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                    dilation_w: int, group: int, group_channels: Optional[int], offset_scale: float,
                    remove_center: bool) -> List[Tensor]:
    """dcn_numba.dcnv3_backward on tensors: [grad_input, grad_offset, grad_mask]."""
    return list(bridge.call(dcn_numba.dcnv3_backward, dict(
        grad_output=grad_output, input=input, offset=offset, mask=mask), **_parameters(
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
        group_channels, offset_scale, remove_center)))


@_dcnv3.register_fake
def _(input, offset, mask, *parameters):
    bridge.check_tensors([("input", input), ("offset", offset), ("mask", mask)])
    return _fake_output("dcnv3", input, *parameters)


@_dcnv3_backward.register_fake
def _(grad_output, input, offset, mask, *parameters):
    return gradients_like(input, offset, mask)


differentiable("dcn_numba::dcnv3", tensors=("input", "offset", "mask"))
autocast("dcn_numba::dcnv3")


def dcnv3(input: Tensor, offset: Tensor, mask: Tensor, kernel_h: int = 3, kernel_w: int = 3,
          stride_h: int = 1, stride_w: int = 1, pad_h: int = 1, pad_w: int = 1, dilation_h: int = 1,
          dilation_w: int = 1, group: int = 1, group_channels: Optional[int] = None,
          offset_scale: float = 1.0, remove_center: bool = False) -> Tensor:
    """DCNv3 (InternImage's operator) on torch tensors, differentiable in input, offset and mask:
    dcn_numba.dcnv3, with its arguments (those of the published operator without im2col_step)."""
    if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
        check_tensor_arguments([("input", input), ("offset", offset), ("mask", mask)])
        _check_parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                          group, group_channels, offset_scale, remove_center)
    return torch.ops.dcn_numba.dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                     pad_w, dilation_h, dilation_w, group, group_channels,
                                     float(offset_scale), bool(remove_center))

# ---------------------------------------------------------------------------------------------
# dcn_numba::dcnv4


@torch.library.custom_op("dcn_numba::dcnv4", mutates_args=())
def _dcnv4(input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int, stride_h: int, stride_w: int,
           pad_h: int, pad_w: int, dilation_h: int, dilation_w: int, group: int,
           group_channels: Optional[int], offset_scale: float, remove_center: bool,
           softmax: bool) -> Tensor:
    """dcn_numba.dcnv4 on tensors."""
    return bridge.call(dcn_numba.dcnv4, dict(input=input, offset_mask=offset_mask), softmax=softmax,
                       **_parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                                     dilation_w, group, group_channels, offset_scale, remove_center))


@torch.library.custom_op("dcn_numba::dcnv4_backward", mutates_args=())
def _dcnv4_backward(grad_output: Tensor, input: Tensor, offset_mask: Tensor, kernel_h: int, kernel_w: int,
                    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                    dilation_w: int, group: int, group_channels: Optional[int], offset_scale: float,
                    remove_center: bool, softmax: bool) -> List[Tensor]:
    """dcn_numba.dcnv4_backward on tensors: [grad_input, grad_offset_mask]."""
    return list(bridge.call(dcn_numba.dcnv4_backward, dict(
        grad_output=grad_output, input=input, offset_mask=offset_mask), softmax=softmax, **_parameters(
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
        group_channels, offset_scale, remove_center)))


@_dcnv4.register_fake
def _(input, offset_mask, *parameters):
    bridge.check_tensors([("input", input), ("offset_mask", offset_mask)])
    return _fake_output("dcnv4", input, *parameters)


@_dcnv4_backward.register_fake
def _(grad_output, input, offset_mask, *parameters):
    return gradients_like(input, offset_mask)


differentiable("dcn_numba::dcnv4", tensors=("input", "offset_mask"))
autocast("dcn_numba::dcnv4")


def dcnv4(input: Tensor, offset_mask: Tensor, kernel_h: int = 3, kernel_w: int = 3, stride_h: int = 1,
          stride_w: int = 1, pad_h: int = 1, pad_w: int = 1, dilation_h: int = 1, dilation_w: int = 1,
          group: int = 1, group_channels: Optional[int] = None, offset_scale: float = 1.0,
          remove_center: bool = False, softmax: bool = False) -> Tensor:
    """DCNv4 (FlashInternImage's operator) on torch tensors, differentiable in input and
    offset_mask: dcn_numba.dcnv4, with its arguments (those of the published operator without
    im2col_step, d_stride and block_thread)."""
    if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
        check_tensor_arguments([("input", input), ("offset_mask", offset_mask)])
        _check_parameters(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                          group, group_channels, offset_scale, remove_center)
        if not isinstance(softmax, bool):
            raise TypeError(f"softmax must be a bool, got {softmax!r}")
    return torch.ops.dcn_numba.dcnv4(input, offset_mask, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                     pad_w, dilation_h, dilation_w, group, group_channels,
                                     float(offset_scale), bool(remove_center), softmax)
