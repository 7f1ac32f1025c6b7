"""InternImage's DCNv3 layer and FlashInternImage's DCNv4 layer as torch.nn.Modules on the ops of
dcn_numba.torch.dcnv3, with the published module structure, parameter names and initialisation,
so that a state dict of a published block loads with load_state_dict(strict=True). They are the
layers of dcn_numba.engine.dcnv3 (docs/specification.md §3.7), with torch's own Linear, Conv2d,
LayerNorm and GELU; their forward is the engine's DCNv3Flow and DCNv4Flow, written once for both.

    DCNv3  on (N, H, W, C), channels last
    DCNv4  on (N, L = H·W, C), forward(input, shape=(H, W))
"""

import math

import torch
from torch import Tensor

from dcn_numba.engine.dcnv3 import DCNv3Flow, DCNv4Flow
from dcn_numba.torch.dcnv3 import dcnv3, dcnv4


def _check_channels(layer, channels, group):
    if not (isinstance(channels, int) and isinstance(group, int) and channels >= 1 and group >= 1):
        raise ValueError(f"{layer}: channels and group must be positive ints, got {channels!r} and {group!r}")
    if channels % group:
        raise ValueError(f"{layer}: channels must be divisible by group, got {channels} and {group}")


def _projection(in_features, out_features, bias=True):
    """A Linear layer with Xavier-uniform weights and a zero bias (the published input and output
    projections)."""
    layer = torch.nn.Linear(in_features, out_features, bias=bias)
    torch.nn.init.xavier_uniform_(layer.weight)
    if bias:
        torch.nn.init.zeros_(layer.bias)
    return layer


def _zero_linear(in_features, out_features):
    """A Linear layer whose weight and bias start at zero (the offset and mask branches)."""
    layer = torch.nn.Linear(in_features, out_features)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer


def _depthwise(channels, kernel_size):
    """A depthwise kernel_size² convolution that keeps the spatial size, weight (C, 1, k, k)."""
    return torch.nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels)


class ToChannelsLast(torch.nn.Module):
    """(N, C, H, W) → (N, H, W, C)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


def _add_center_feature_scale(layer, group, channels):
    """The blend's parameters, zero, under their published names."""
    layer.center_feature_scale_proj_weight = torch.nn.Parameter(torch.zeros(group, channels))
    layer.center_feature_scale_proj_bias = torch.nn.Parameter(torch.zeros(group))


class TorchPrimitives:
    """The primitives of the layers' flows (dcn_numba.engine.dcnv3.DCNv3Flow, DCNv4Flow) in torch."""

    @staticmethod
    def channels_first(x: Tensor) -> Tensor:
        """(N, H, W, C) → (N, C, H, W)."""
        return x.permute(0, 3, 1, 2)

    @staticmethod
    def channels_last(x: Tensor) -> Tensor:
        """(N, C, H, W) → (N, H, W, C)."""
        return x.permute(0, 2, 3, 1)

    @staticmethod
    def softmax(logits: Tensor) -> Tensor:
        return torch.softmax(logits, dim=-1)

    sigmoid, linear = staticmethod(torch.sigmoid), staticmethod(torch.nn.functional.linear)


class DCNv3(TorchPrimitives, DCNv3Flow, torch.nn.Module):
    """dcn_numba.engine.dcnv3.DCNv3 as a torch.nn.Module: the same sublayers, parameter names and
    initialisation, the same forward (DCNv3Flow), this module's dcnv3 operator."""

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1,
                 group=4, offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False):
        super().__init__()
        _check_channels("DCNv3", channels, group)
        if (act_layer, norm_layer) != ("GELU", "LN"):
            raise ValueError(f"DCNv3: act_layer and norm_layer must be 'GELU' and 'LN', got "
                             f"{act_layer!r} and {norm_layer!r}")
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.kernel_size, self.stride, self.pad, self.dilation = kernel_size, stride, pad, dilation
        self.offset_scale, self.remove_center = float(offset_scale), int(remove_center)
        self.center_feature_scale = center_feature_scale
        taps = kernel_size * kernel_size - self.remove_center
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.dw_conv = torch.nn.Sequential(
            _depthwise(channels, dw_kernel_size),
            torch.nn.Sequential(ToChannelsLast(), torch.nn.LayerNorm(channels, eps=1e-6)),
            torch.nn.GELU())
        self.offset = _zero_linear(channels, group * taps * 2)
        self.mask = _zero_linear(channels, group * taps)
        self.input_proj = _projection(channels, channels)
        self.output_proj = _projection(channels, channels)
        if center_feature_scale:
            _add_center_feature_scale(self, group, channels)

    def sample(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return dcnv3(x, offset, mask, self.kernel_size, self.kernel_size, self.stride, self.stride, self.pad,
                     self.pad, self.dilation, self.dilation, self.group, self.group_channels, self.offset_scale,
                     bool(self.remove_center))


class DCNv4(TorchPrimitives, DCNv4Flow, torch.nn.Module):
    """dcn_numba.engine.dcnv3.DCNv4 as a torch.nn.Module: the same sublayers, parameter names and
    initialisation, the same forward (DCNv4Flow), this module's dcnv4 operator."""

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False):
        super().__init__()
        _check_channels("DCNv4", channels, group)
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.kernel_size, self.stride, self.pad, self.dilation = kernel_size, stride, pad, dilation
        self.offset_scale, self.remove_center = float(offset_scale), int(remove_center)
        self.center_feature_scale, self.without_pointwise = center_feature_scale, without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)
        self.offset_mask_dw = None if dw_kernel_size is None else _depthwise(channels, dw_kernel_size)
        self.offset_mask = _zero_linear(channels, math.ceil(3 * self.K / 8) * 8)  # pad8(3·K)
        self.value_proj = None if without_pointwise else _projection(channels, channels)
        self.output_proj = None if without_pointwise else _projection(channels, channels, bias=output_bias)
        if center_feature_scale:
            _add_center_feature_scale(self, group, channels)

    def sample(self, x: Tensor, offset_mask: Tensor) -> Tensor:
        return dcnv4(x, offset_mask, self.kernel_size, self.kernel_size, self.stride, self.stride, self.pad,
                     self.pad, self.dilation, self.dilation, self.group, self.group_channels, self.offset_scale,
                     bool(self.remove_center))
