"""ONNX export: the deformable convolution as ONNX's own DeformConv (opset 19), and a clear refusal
for the RoI pooling ops and DCNv3/DCNv4, which ONNX lacks.

Inside torch.onnx.export (torch.onnx.is_in_onnx_export()), dcn_numba.torch.deform_conv2d returns
the node that deform_conv below makes instead of calling dcn_numba's kernels, so that

    torch.onnx.export(model, (x,), "model.onnx", opset_version=19)

writes a standard graph that any ONNX runtime can run, with no custom domain. ONNX's DeformConv has
dcn_numba's layouts: input (B, C_in, H, W), weight (C_out, C_in / group, kh, kw), offset
(B, 2·offset_group·kh·kw, H_out, W_out) with (dy, dx) pairs per tap, bias (C_out,), mask
(B, offset_group·kh·kw, H_out, W_out), and the DCNv2 sampling rule.
"""

import torch

from dcn_numba.ops.deform_conv import output_size

DEFORM_CONV_OPSET = 19  # the first opset with DeformConv


def deform_conv(input, offset, weight, bias, stride, padding, dilation, mask):
    """The ONNX DeformConv node of dcn_numba.torch.deform_conv2d(input, offset, weight, bias,
    stride, padding, dilation, mask), (h, w) pairs given; weight groups and offset groups are
    read from the shapes, as dcn_numba reads them."""
    (B, C_in, H, W), (C_out, group_channels, kh, kw) = input.shape, weight.shape
    shape = (B, C_out, output_size(H, kh, stride[0], padding[0], dilation[0]),
             output_size(W, kw, stride[1], padding[1], dilation[1]))
    attributes = dict(kernel_shape=[kh, kw], strides=list(stride), dilations=list(dilation),
                      pads=[padding[0], padding[1], padding[0], padding[1]],
                      group=int(C_in // group_channels),
                      offset_group=int(offset.shape[1] // (2 * kh * kw)))
    return torch.onnx.ops.symbolic("DeformConv", (input, weight, offset, bias, mask), attributes,
                                   dtype=input.dtype, shape=shape, version=DEFORM_CONV_OPSET)


def refuse(name, missing="deformable RoI pooling operator",
           advice="keep the RoI head in PyTorch, or export the part of the model before it"):
    """Raise the error that says why the op `name` cannot be exported: ONNX has no `missing`."""
    raise NotImplementedError(
        f"dcn_numba.torch.{name} cannot be exported to ONNX: ONNX has no {missing} (its only "
        "deformable operator is DeformConv, opset 19, which dcn_numba.torch.deform_conv2d exports "
        f"to); {advice}")
