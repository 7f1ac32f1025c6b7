"""The ops as torch.nn.Modules: DeformConv2d (a drop-in for torchvision.ops.DeformConv2d, with an
optional offset branch of its own), DeformRoIPool and DeformPSRoIPool. Their forwards are
TorchScript-compatible, so that torch.jit.script compiles models holding them."""

import math
from typing import Optional

import torch
from torch import Tensor

from dcn_numba.ops import checks
from dcn_numba.torch.library import pair
from dcn_numba.torch.ops import deform_conv2d, deform_psroi_pool, deform_roi_pool


def _pair(value):
    """A tuple (h, w) from an int or a pair: TorchScript types a tuple attribute, not a list."""
    return tuple(pair(value))


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

    def forward(self, input: Tensor, offset: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        if self.conv_offset is not None:
            # Tensors, not just "not None": torch.fx traces the defaults as placeholders too
            if isinstance(offset, torch.Tensor) or isinstance(mask, torch.Tensor):
                raise TypeError("this DeformConv2d predicts its own offsets (offset_branch=True): "
                                "call it as layer(input), without offset or mask")
            offset = self.conv_offset(input)
            if self.conv_mask is not None:
                mask = torch.sigmoid(self.conv_mask(input))
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
    """Deformable RoI pooling as a module: forward(input, rois, offset=None) (dcn_numba.deform_roi_pool).
    The real-valued arguments are checked (and made floats, for TorchScript) when it is built."""

    def __init__(self, output_size=7, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = checks.as_real(spatial_scale, "spatial_scale", positive=True)
        self.sampling_ratio, self.gamma = sampling_ratio, checks.as_real(gamma, "gamma")

    def forward(self, input: Tensor, rois: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)


class DeformPSRoIPool(torch.nn.Module):
    """Position-sensitive deformable RoI pooling as a module: forward(input, rois, trans=None)
    (dcn_numba.deform_psroi_pool). The real-valued arguments are checked (and made floats, for
    TorchScript) when it is built."""

    output_dim: Optional[int]
    part_size: Optional[int]

    def __init__(self, spatial_scale=1.0, output_dim=None, group_size=1, pooled_size=7,
                 part_size=None, sample_per_part=4, trans_std=0.1):
        super().__init__()
        self.spatial_scale = checks.as_real(spatial_scale, "spatial_scale", positive=True)
        self.output_dim, self.group_size = output_dim, group_size
        self.pooled_size, self.part_size = pooled_size, part_size
        self.sample_per_part, self.trans_std = sample_per_part, checks.as_real(trans_std, "trans_std")

    def forward(self, input: Tensor, rois: Tensor, trans: Optional[Tensor] = None) -> Tensor:
        return deform_psroi_pool(input, rois, trans, self.spatial_scale, self.output_dim,
                                 self.group_size, self.pooled_size, self.part_size,
                                 self.sample_per_part, self.trans_std)
