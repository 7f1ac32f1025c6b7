"""DCNv3 and DCNv4 in the autograd engine: the operators as Functions, the few Functions their
layers need that the rest of the engine does not (LayerNorm, GELU, a softmax over one axis), and
the two published layers, with the published parameter names, so that their state dicts load
(docs/specification.md §3.7).

Layers take channels-last Tensors: DCNv3 (N, H, W, C), DCNv4 (N, L = H·W, C) with shape=(H, W).
"""

import math

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.engine import nn
from dcn_numba.engine.autograd import Function, Tensor
from dcn_numba.engine.mode import mode
from dcn_numba.ops.checks import as_int
from dcn_numba.ops.dcnv3 import (Parameters, dcnv3 as dcnv3_forward, dcnv3_backward, dcnv4 as dcnv4_forward,
                                 dcnv4_backward, pad8, softmax_over_axis, softmax_over_axis_backward)
from dcn_numba.runtime.arrays import is_cupy

# ---------------------------------------------------------------------------------------------
# The operators
# ---------------------------------------------------------------------------------------------


class DCNv3Function(Function):
    """DCNv3 (§3): `dcnv3` forward, `dcnv3_backward` for the gradients of input, offset and mask.
    Runs on the backend of `functional.backend(...)`, or the one the arrays imply."""

    def forward(self, x, offset, mask, parameters):
        self.parameters, self.backend = parameters, mode().backend
        return dcnv3_forward(x, offset, mask, *parameters, backend=self.backend)

    def backward(self, grad_output):
        x, offset, mask = (t.data for t in self.inputs)
        return dcnv3_backward(grad_output, x, offset, mask, *self.parameters, backend=self.backend)


class DCNv4Function(Function):
    """DCNv4 (§3): `dcnv4` forward, `dcnv4_backward` for the gradients of input and offset_mask."""

    def forward(self, x, offset_mask, parameters, softmax):
        self.parameters, self.softmax, self.backend = parameters, softmax, mode().backend
        return dcnv4_forward(x, offset_mask, *parameters, softmax, backend=self.backend)

    def backward(self, grad_output):
        x, offset_mask = (t.data for t in self.inputs)
        return dcnv4_backward(grad_output, x, offset_mask, *self.parameters, self.softmax,
                              backend=self.backend)


def dcnv3(x, offset, mask, parameters):
    """DCNv3 of x (N, H, W, C) with offset (N, H_out, W_out, G·P·2) and mask (N, H_out, W_out, G·P);
    parameters: a reference.dcnv3.Parameters."""
    return DCNv3Function.apply(x, offset, mask, parameters=parameters)


def dcnv4(x, offset_mask, parameters, softmax=False):
    """DCNv4 of x (N, H, W, C) with offset_mask (N, H_out, W_out, pad8(3·G·P))."""
    return DCNv4Function.apply(x, offset_mask, parameters=parameters, softmax=softmax)


# ---------------------------------------------------------------------------------------------
# LayerNorm, GELU, softmax
# ---------------------------------------------------------------------------------------------


class LayerNormFunction(Function):
    """Over the last axis of x (..., C): x̂ = (x − μ) / sqrt(σ² + eps), out = weight·x̂ + bias, with
    the mean μ and the biased variance σ² of each row. Backward, with g = ∂L/∂out and gw = g·weight:
    ∂L/∂weight = Σ g·x̂ and ∂L/∂bias = Σ g over the rows, and, since μ and σ² depend on the row,
    ∂L/∂x = (gw − mean(gw) − x̂·mean(gw·x̂)) / sqrt(σ² + eps), the means over the row."""

    def forward(self, x, weight, bias, eps):
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        self.inverse_std = 1 / self.xp.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
        self.normalised, self.weight = centred * self.inverse_std, weight
        return self.normalised * weight + bias

    def backward(self, grad_output):
        rows = tuple(range(grad_output.ndim - 1))
        weighted = grad_output * self.weight
        grad_x = self.inverse_std * (weighted - weighted.mean(axis=-1, keepdims=True)
                                     - self.normalised * (weighted * self.normalised).mean(axis=-1, keepdims=True))
        return grad_x, (grad_output * self.normalised).sum(axis=rows), grad_output.sum(axis=rows)


def erf(x):
    """The error function of a NumPy or CuPy array (SciPy's, or CuPy's own)."""
    if is_cupy(x):
        import cupyx.scipy.special
        return cupyx.scipy.special.erf(x)
    import scipy.special
    return scipy.special.erf(x)


class GELUFunction(Function):
    """out = x·Φ(x), Φ(x) = (1 + erf(x/√2)) / 2 the standard normal distribution function (the
    exact GELU); ∂L/∂x = ∂L/∂out · (Φ(x) + x·φ(x)), φ(x) = exp(−x²/2)/√(2π) its density."""

    def forward(self, x):
        self.x, self.cdf = x, 0.5 * (1 + erf(x / math.sqrt(2)))
        return x * self.cdf

    def backward(self, grad_output):
        density = self.xp.exp(-0.5 * self.x * self.x) / math.sqrt(2 * math.pi)
        return (grad_output * (self.cdf + self.x * density),)


class SoftmaxFunction(Function):
    """m = softmax(a) along `axis` (reference.dcnv3.softmax); ∂L/∂a = m·(∂L/∂m − Σ m·∂L/∂m)."""

    def forward(self, logits, axis):
        self.probabilities, self.axis = softmax_over_axis(logits, axis), axis
        return self.probabilities

    def backward(self, grad_output):
        return (softmax_over_axis_backward(grad_output, self.probabilities, self.axis),)


class LayerNorm(nn.Module):
    """Layer normalisation over the last axis, with a learned scale (ones) and shift (zeros)."""

    def __init__(self, normalized_shape, eps=1e-5):
        self.weight = Tensor(np.ones(normalized_shape, dtype=np.float32), requires_grad=True)
        self.bias = nn.zeros(normalized_shape)
        self.eps = eps

    def forward(self, x):
        return LayerNormFunction.apply(x, self.weight, self.bias, eps=self.eps)


class GELU(nn.Module):
    def forward(self, x):
        return GELUFunction.apply(x)


class ToChannelsLast(nn.Module):
    """(N, C, H, W) → (N, H, W, C)."""

    def forward(self, x):
        return x.transpose(0, 2, 3, 1)


class Stack(nn.Sequential):
    """A Sequential whose layers are named by their index, '0', '1', ..., as in a PyTorch state
    dict ('dw_conv.1.1.weight'), rather than 'layers.0'."""

    def named_children(self):
        for index, layer in enumerate(self.layers):
            yield str(index), layer


# ---------------------------------------------------------------------------------------------
# The layers
# ---------------------------------------------------------------------------------------------


def projection(in_features, out_features, rng, bias=True):
    """A Linear layer with Xavier-uniform weights, U(±sqrt(6 / (in + out))), and a zero bias."""
    layer = nn.Linear(in_features, out_features, bias=bias, rng=rng)
    bound = math.sqrt(6.0 / (in_features + out_features))
    layer.weight.data[...] = rng.uniform(-bound, bound, layer.weight.shape)
    return layer


def zero_linear(in_features, out_features, rng):
    """A Linear layer whose weight and bias start at zero (the offset and mask branches)."""
    layer = nn.Linear(in_features, out_features, rng=rng)
    layer.weight.data[...] = 0
    return layer


def depthwise(channels, kernel_size, rng):
    """A depthwise kernel_size² convolution that keeps the spatial size, weight (C, 1, k, k)."""
    return nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels, rng=rng)


def center_feature_blend(layer, features, y, x_proj):
    """The optional blend of both layers: y·(1 − λ) + x_proj·λ with one λ = sigmoid(features ·
    center_feature_scale_proj_weightᵀ + center_feature_scale_proj_bias) per group (λ = 1/2 at the
    start, both being zero)."""
    *leading, C = y.shape
    scale = layer.sigmoid(layer.linear(features, layer.center_feature_scale_proj_weight,
                                       layer.center_feature_scale_proj_bias))
    scale = scale.reshape(*leading, layer.group, 1)
    grouped = (*leading, layer.group, C // layer.group)
    return (y.reshape(grouped) * (1 - scale) + x_proj.reshape(grouped) * scale).reshape(*leading, C)


class DCNv3Flow:
    """The DCNv3 layer's data flow, written once for this engine's layer and dcn_numba.torch's:
    x = input_proj(input); x1 = dw_conv(input) (GELU(LayerNorm(depthwise conv))); offset =
    offset(x1); mask = softmax over each group's P taps of mask(x1); y = dcnv3(x, offset, mask)
    (optionally blended with x, `center_feature_scale`); out = output_proj(y). A framework's layer
    brings those sublayers and its primitives: channels_first, softmax (over the last axis),
    sigmoid, linear, and sample (its dcnv3 operator with the layer's parameters)."""

    def forward(self, input):
        """input (N, H, W, C) → (N, H_out, W_out, C)."""
        N, H, W, _ = input.shape
        x = self.input_proj(input)
        x1 = self.dw_conv(self.channels_first(input))
        offset = self.offset(x1)
        mask = self.softmax(self.mask(x1).reshape(N, H, W, self.group, -1)).reshape(N, H, W, -1)
        y = self.sample(x, offset, mask)
        if self.center_feature_scale:
            y = center_feature_blend(self, x1, y, x)
        return self.output_proj(y)


class DCNv4Flow:
    """The DCNv4 layer's data flow, written once for this engine's layer and dcn_numba.torch's:
    x = value_proj(input); offset_mask = offset_mask(input), or of a depthwise convolution of the
    input (`offset_mask_dw`) when there is one; y = dcnv4(x, offset_mask), no softmax (optionally
    blended with x, its λ computed from y); out = output_proj(y); without_pointwise drops
    value_proj and output_proj. Primitives as DCNv3Flow's, plus channels_last; sample is dcnv4."""

    def forward(self, input, shape=None):
        """input (N, L, C) with shape = (H, W), a square H = W = √L when None → (N, L, C)."""
        N, L, C = input.shape
        H, W = shape if shape is not None else (math.isqrt(L), math.isqrt(L))
        x = input if self.without_pointwise else self.value_proj(input)
        x = x.reshape(N, H, W, C)
        features = input
        if self.offset_mask_dw is not None:
            features = self.offset_mask_dw(self.channels_first(input.reshape(N, H, W, C)))
            features = self.channels_last(features).reshape(N, L, C)
        offset_mask = self.offset_mask(features).reshape(N, H, W, -1)
        y = self.sample(x, offset_mask)
        if self.center_feature_scale:
            y = center_feature_blend(self, y, y, x)
        y = y.reshape(N, L, C)
        return y if self.without_pointwise else self.output_proj(y)


class EnginePrimitives:
    """The primitives of the layers' flows in this engine."""

    @staticmethod
    def channels_first(x):
        """(N, H, W, C) → (N, C, H, W)."""
        return x.transpose(0, 3, 1, 2)

    @staticmethod
    def channels_last(x):
        """(N, C, H, W) → (N, H, W, C)."""
        return x.transpose(0, 2, 3, 1)

    @staticmethod
    def softmax(logits):
        return SoftmaxFunction.apply(logits, axis=-1)

    sigmoid, linear = staticmethod(F.sigmoid), staticmethod(F.linear)


def add_center_feature_scale(layer, group, channels):
    """The blend's parameters, zero, under their published names (attributes of the layer)."""
    layer.center_feature_scale_proj_weight = nn.zeros((group, channels))
    layer.center_feature_scale_proj_bias = nn.zeros(group)


def check_channels(layer, channels, group):
    for name, value in (("channels", channels), ("group", group)):
        as_int(value, f"{layer}: {name}", 1)
    if channels % group:
        raise ValueError(f"{layer}: channels must be divisible by group, got {channels} and {group}")


class DCNv3(EnginePrimitives, DCNv3Flow, nn.Module):
    """InternImage's DCNv3 layer on (N, H, W, C), its forward DCNv3Flow's. offset and mask start
    at zero: the first forward averages the kernel's window with weights 1/P. Only the published
    defaults act_layer='GELU', norm_layer='LN'."""

    def __init__(self, channels=64, kernel_size=3, dw_kernel_size=None, stride=1, pad=1, dilation=1,
                 group=4, offset_scale=1.0, act_layer="GELU", norm_layer="LN", center_feature_scale=False,
                 remove_center=False, rng=None):
        check_channels("DCNv3", channels, group)
        if (act_layer, norm_layer) != ("GELU", "LN"):
            raise ValueError(f"DCNv3: act_layer and norm_layer must be 'GELU' and 'LN', got "
                             f"{act_layer!r} and {norm_layer!r}")
        rng = rng or np.random.default_rng()
        self.channels, self.group, self.group_channels = channels, group, channels // group
        self.center_feature_scale = center_feature_scale
        dw_kernel_size = kernel_size if dw_kernel_size is None else dw_kernel_size
        self.operator_parameters = Parameters(kernel_size, kernel_size, stride, stride, pad, pad, dilation, dilation,
                                           group, channels // group, float(offset_scale), int(remove_center))
        taps = kernel_size * kernel_size - int(remove_center)
        self.dw_conv = Stack(depthwise(channels, dw_kernel_size, rng),
                             Stack(ToChannelsLast(), LayerNorm(channels, eps=1e-6)), GELU())
        self.offset = zero_linear(channels, group * taps * 2, rng)
        self.mask = zero_linear(channels, group * taps, rng)
        self.input_proj = projection(channels, channels, rng)
        self.output_proj = projection(channels, channels, rng)
        if center_feature_scale:
            add_center_feature_scale(self, group, channels)

    def sample(self, x, offset, mask):
        return dcnv3(x, offset, mask, self.operator_parameters)


class DCNv4(EnginePrimitives, DCNv4Flow, nn.Module):
    """FlashInternImage's DCNv4 layer on (N, L, C), its forward DCNv4Flow's. offset_mask starts at
    zero, so every mask value m does: the first forward's dcnv4 gives 0."""

    def __init__(self, channels=64, kernel_size=3, stride=1, pad=1, dilation=1, group=4, offset_scale=1.0,
                 dw_kernel_size=None, center_feature_scale=False, remove_center=False, output_bias=True,
                 without_pointwise=False, rng=None):
        check_channels("DCNv4", channels, group)
        rng = rng or np.random.default_rng()
        self.channels, self.group = channels, group
        self.center_feature_scale, self.without_pointwise = center_feature_scale, without_pointwise
        self.operator_parameters = Parameters(kernel_size, kernel_size, stride, stride, pad, pad, dilation, dilation,
                                           group, channels // group, float(offset_scale), int(remove_center))
        self.K = group * (kernel_size * kernel_size - int(remove_center))
        self.offset_mask_dw = None if dw_kernel_size is None else depthwise(channels, dw_kernel_size, rng)
        self.offset_mask = zero_linear(channels, pad8(3 * self.K), rng)
        self.value_proj = None if without_pointwise else projection(channels, channels, rng)
        self.output_proj = None if without_pointwise else projection(channels, channels, rng, bias=output_bias)
        if center_feature_scale:
            add_center_feature_scale(self, group, channels)

    def sample(self, x, offset_mask):
        return dcnv4(x, offset_mask, self.operator_parameters)
