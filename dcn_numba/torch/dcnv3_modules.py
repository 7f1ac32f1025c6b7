"""InternImage's DCNv3 layer and FlashInternImage's DCNv4 layer as torch.nn.Modules on the ops of
dcn_numba.torch.dcnv3, with the published module structure, parameter names and initialisation,
so that a state dict of a published block loads with load_state_dict(strict=True). They are the
layers of dcn_numba.engine.dcnv3 (docs/specification.md §3.7), written with torch's own Linear,
Conv2d, LayerNorm and GELU.

    DCNv3  on (N, H, W, C), channels last
    DCNv4  on (N, L = H·W, C), forward(input, shape=(H, W))
"""

import math

import torch
from torch import Tensor

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


def _center_feature_blend(layer, features, y, x_proj):
    """y·(1 − λ) + x_proj·λ with one λ = sigmoid(features · center_feature_scale_proj_weightᵀ +
    center_feature_scale_proj_bias) per group (λ = 1/2 at the start, both being zero)."""
    scale = torch.sigmoid(torch.nn.functional.linear(
        features, layer.center_feature_scale_proj_weight, layer.center_feature_scale_proj_bias))
    scale = scale.repeat_interleave(layer.channels // layer.group, dim=-1)
    return y * (1 - scale) + x_proj * scale


class DCNv3(torch.nn.Module):
    """InternImage's DCNv3 layer, on (N, H, W, C): x = input_proj(input); x1 = GELU(LayerNorm(
    depthwise conv of input)) (`dw_conv`); offset = offset(x1); mask = softmax over each group's P
    taps of mask(x1); y = dcnv3(x, offset, mask) (optionally blended with x, `center_feature_scale`);
    out = output_proj(y). offset and mask start at zero: the first forward averages the kernel's
    window with weights 1/P. Only the published defaults act_layer='GELU', norm_layer='LN'."""

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

    def forward(self, input: Tensor) -> Tensor:
        """input (N, H, W, C) → (N, H_out, W_out, C)."""
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x1 = self.dw_conv(input.permute(0, 3, 1, 2))
        offset = self.offset(x1)
        mask = torch.softmax(self.mask(x1).reshape(N, H, W, self.group, -1), dim=-1).reshape(N, H, W, -1)
        y = dcnv3(x, offset, mask, self.kernel_size, self.kernel_size, self.stride, self.stride, self.pad,
                  self.pad, self.dilation, self.dilation, self.group, self.group_channels, self.offset_scale,
                  bool(self.remove_center))
        if self.center_feature_scale:
            y = _center_feature_blend(self, x1, y, x)
        return self.output_proj(y)


class DCNv4(torch.nn.Module):
    """FlashInternImage's DCNv4 layer, on (N, L, C) with shape = (H, W) (a square H = W = √L when
    None): x = value_proj(input); offset_mask = offset_mask(input), or of a depthwise convolution
    of the input (`offset_mask_dw`) when dw_kernel_size is given; y = dcnv4(x, offset_mask), no
    softmax (optionally blended with x, its λ computed from y); out = output_proj(y).
    without_pointwise drops value_proj and output_proj. offset_mask starts at zero, so every
    mask value m does: the first forward's dcnv4 gives 0."""

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

    def forward(self, input: Tensor, shape=None) -> Tensor:
        """input (N, L, C) → (N, L, C)."""
        N, L, C = input.shape
        H, W = shape if shape is not None else (math.isqrt(L), math.isqrt(L))
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(N, H, W, C)
        features = input
        if self.offset_mask_dw is not None:
            features = self.offset_mask_dw(input.reshape(N, H, W, C).permute(0, 3, 1, 2))
            features = features.permute(0, 2, 3, 1).reshape(N, L, C)
        offset_mask = self.offset_mask(features).reshape(N, H, W, -1)
        y = dcnv4(x, offset_mask, self.kernel_size, self.kernel_size, self.stride, self.stride, self.pad,
                  self.pad, self.dilation, self.dilation, self.group, self.group_channels, self.offset_scale,
                  bool(self.remove_center))
        if self.center_feature_scale:
            y = _center_feature_blend(self, y, y, x)
        y = y.reshape(N, L, C)
        return y if self.without_pointwise else self.output_proj(y)
