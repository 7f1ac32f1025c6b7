"""DCNv3 and DCNv4 in the engine: the Functions against finite differences (the operators, LayerNorm,
GELU, softmax), the layers' state dicts with the published names and shapes, their forward against
an independent NumPy composition of the published layer, their gradients against finite
differences, and what a fresh layer computes."""

import math

import numpy as np
import pytest
import scipy.special

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.dcnv3 import (DCNv3, DCNv4, GELUFunction, LayerNormFunction, SoftmaxFunction,
                                    dcnv3 as dcnv3_function, dcnv4 as dcnv4_function)
from dcn_numba.reference import dcnv3 as reference
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from autograd_helpers import check_tensor_function
from dcnv3_helpers import packed, published_dcnv3_shapes, published_dcnv4_shapes, random_call

# ---------------------------------------------------------------------------------------------
# Functions


def test_layer_norm_value_and_gradients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5)) * 3 + 1
    weight, bias = rng.standard_normal(5), rng.standard_normal(5)
    out = check_tensor_function(lambda x, weight, bias: LayerNormFunction.apply(x, weight, bias, eps=1e-6),
                                dict(x=x, weight=weight, bias=bias))
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    assert_close(out.data, (x - mean) / np.sqrt(var + 1e-6) * weight + bias)


def test_gelu_value_and_gradient():
    x = np.linspace(-4, 4, 17)[None] + 0.01
    out = check_tensor_function(lambda x: GELUFunction.apply(x), dict(x=x))
    assert_close(out.data, x * 0.5 * (1 + scipy.special.erf(x / math.sqrt(2))))
    assert_close(GELUFunction.apply(Tensor(np.array([0.0, 30.0, -30.0]))).data, np.array([0.0, 30.0, 0.0]))


def test_softmax_value_and_gradient():
    x = np.random.default_rng(1).standard_normal((2, 3, 4))
    out = check_tensor_function(lambda x: SoftmaxFunction.apply(x, axis=1), dict(x=x))
    assert_close(out.data, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True))


OPERATOR = reference.Parameters(3, 3, 1, 1, 1, 1, 1, 1, 2, 2, 1.3, 1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_the_operator_functions_pass_the_operators_gradients(backend):
    call = random_call(np.random.default_rng(2), (1, 3, 4), OPERATOR._asdict())
    with F.backend(backend):
        check_tensor_function(lambda x, offset, mask: dcnv3_function(x, offset, mask, OPERATOR),
                              dict(x=call["input"], offset=call["offset"], mask=call["mask"]), mode="random")
        offset_mask = packed(call["offset"], call["mask"], OPERATOR.group, np.random.default_rng(3))
        check_tensor_function(lambda x, offset_mask: dcnv4_function(x, offset_mask, OPERATOR, softmax=True),
                              dict(x=call["input"], offset_mask=offset_mask), mode="random")


# ---------------------------------------------------------------------------------------------
# The published state dicts (their names and shapes: dcnv3_helpers)


def synthetic_state(shapes, rng, small=()):
    """Random values for a state dict; the names in `small` get values 10× smaller (offsets of a
    pixel or two)."""
    return {name: rng.standard_normal(shape) * (0.1 if name in small else 0.5) for name, shape in shapes.items()}


@pytest.mark.parametrize("options", [dict(), dict(center_feature_scale=True, remove_center=True, dw_kernel_size=5)])
def test_dcnv3_has_the_published_state_dict(options):
    layer = DCNv3(channels=8, group=2, rng=np.random.default_rng(0), **options)
    expected = published_dcnv3_shapes(8, 2, dk=options.get("dw_kernel_size", 3),
                                      remove_center=int(options.get("remove_center", False)),
                                      center_feature_scale=options.get("center_feature_scale", False))
    assert {name: tuple(a.shape) for name, a in layer.state_dict().items()} == expected
    layer.load_state_dict(synthetic_state(expected, np.random.default_rng(1)))


@pytest.mark.parametrize("options", [dict(), dict(center_feature_scale=True, dw_kernel_size=3, output_bias=False)])
def test_dcnv4_has_the_published_state_dict(options):
    layer = DCNv4(channels=8, group=2, rng=np.random.default_rng(0), **options)
    expected = published_dcnv4_shapes(8, 2, dk=options.get("dw_kernel_size"),
                                      center_feature_scale=options.get("center_feature_scale", False),
                                      output_bias=options.get("output_bias", True))
    assert {name: tuple(a.shape) for name, a in layer.state_dict().items()} == expected
    layer.load_state_dict(synthetic_state(expected, np.random.default_rng(1)))


# ---------------------------------------------------------------------------------------------
# The forward, against the published layer composed in NumPy from its state dict


def linear(x, state, name):
    return x @ state[f"{name}.weight"].T + state.get(f"{name}.bias", 0.0)


def depthwise(x, weight, bias):
    """A depthwise convolution of x (N, H, W, C) keeping its size: weight (C, 1, k, k)."""
    k = weight.shape[2]
    N, H, W, C = x.shape
    padded = np.pad(x, ((0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)))
    return sum(padded[:, i:i + H, j:j + W] * weight[:, 0, i, j] for i in range(k) for j in range(k)) + bias


def gelu(x):
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


def blend(y, x_proj, features, state, G):
    scale = 1 / (1 + np.exp(-(features @ state["center_feature_scale_proj_weight"].T
                              + state["center_feature_scale_proj_bias"])))
    scale = np.repeat(scale, y.shape[-1] // G, axis=-1)
    return y * (1 - scale) + x_proj * scale


def published_dcnv3(input, state, G, remove_center, center_feature_scale):
    N, H, W, C = input.shape
    x = linear(input, state, "input_proj")
    x1 = depthwise(input, state["dw_conv.0.weight"], state["dw_conv.0.bias"])
    x1 = (x1 - x1.mean(-1, keepdims=True)) / np.sqrt(x1.var(-1, keepdims=True) + 1e-6)
    x1 = gelu(x1 * state["dw_conv.1.1.weight"] + state["dw_conv.1.1.bias"])
    offset = linear(x1, state, "offset")
    logits = linear(x1, state, "mask").reshape(N, H, W, G, -1)
    mask = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(N, H, W, -1)
    y = reference.dcnv3(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, G, C // G, 1.0, remove_center)
    if center_feature_scale:
        y = blend(y, x, x1, state, G)
    return linear(y, state, "output_proj")


def published_dcnv4(input, state, G, H, W, dw, center_feature_scale):
    N, L, C = input.shape
    x = linear(input, state, "value_proj").reshape(N, H, W, C)
    features = input
    if dw:
        features = depthwise(input.reshape(N, H, W, C), state["offset_mask_dw.weight"],
                             state["offset_mask_dw.bias"]).reshape(N, L, C)
    offset_mask = linear(features, state, "offset_mask").reshape(N, H, W, -1)
    y = reference.dcnv4(x, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, G, C // G, 1.0, 0, False)
    if center_feature_scale:
        y = blend(y, x, y, state, G)  # DCNv4's λ comes from the operator's output
    return linear(y.reshape(N, L, C), state, "output_proj")


@pytest.mark.parametrize("remove_center, center_feature_scale", [(False, False), (True, True)])
def test_dcnv3_computes_the_published_layer_from_a_loaded_state(remove_center, center_feature_scale):
    rng = np.random.default_rng(4)
    layer = DCNv3(channels=8, group=2, remove_center=remove_center, center_feature_scale=center_feature_scale,
                  rng=rng).to(dtype=np.float64)
    state = synthetic_state(published_dcnv3_shapes(8, 2, remove_center=int(remove_center),
                                                   center_feature_scale=center_feature_scale),
                            rng, small=("offset.weight", "offset.bias"))
    layer.load_state_dict(state)
    input = rng.standard_normal((2, 5, 4, 8))
    with F.backend("reference"):
        output = layer(Tensor(input)).data
    assert_close(output, published_dcnv3(input, state, 2, int(remove_center), center_feature_scale),
                 rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dw, center_feature_scale", [(False, False), (True, True)])
def test_dcnv4_computes_the_published_layer_from_a_loaded_state(dw, center_feature_scale):
    rng = np.random.default_rng(5)
    layer = DCNv4(channels=8, group=2, dw_kernel_size=3 if dw else None, center_feature_scale=center_feature_scale,
                  rng=rng).to(dtype=np.float64)
    shapes = published_dcnv4_shapes(8, 2, dk=3 if dw else None, center_feature_scale=center_feature_scale)
    state = synthetic_state(shapes, rng, small=("offset_mask.weight", "offset_mask.bias"))
    layer.load_state_dict(state)
    input = rng.standard_normal((2, 5 * 4, 8))
    output = layer(Tensor(input), shape=(5, 4)).data
    assert_close(output, published_dcnv4(input, state, 2, 5, 4, dw, center_feature_scale), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Gradients of the layers, and fresh layers


def check_layer_gradients(layer, input, **call):
    """Every parameter's and the input's gradient against finite differences, in one random
    direction (float64)."""
    names = [name for name, _ in layer.named_parameters()]
    parameters = dict(layer.named_parameters())
    grad_output = np.random.default_rng(6).standard_normal(layer(Tensor(input), **call).shape)
    x = Tensor(input.copy(), requires_grad=True)
    layer.zero_grad()
    layer(x, **call).backward(grad_output)
    analytic = {name: parameters[name].grad for name in names}
    analytic["input"] = x.grad

    def evaluate(input, **values):
        for name, value in values.items():
            parameters[name].data[...] = value
        return layer(Tensor(input), **call).data

    arrays = {name: parameters[name].data.copy() for name in names}
    check_gradients(evaluate, dict(arrays, input=input), grad_output, analytic, mode="random")


def test_dcnv3_layer_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    layer = DCNv3(channels=4, group=2, center_feature_scale=True, rng=rng).to(dtype=np.float64)
    layer.load_state_dict(synthetic_state(published_dcnv3_shapes(4, 2, center_feature_scale=True), rng,
                                          small=("offset.weight", "offset.bias")))
    check_layer_gradients(layer, rng.standard_normal((1, 4, 3, 4)))


def test_dcnv4_layer_gradients_match_finite_differences():
    rng = np.random.default_rng(8)
    layer = DCNv4(channels=4, group=2, dw_kernel_size=3, center_feature_scale=True, rng=rng).to(dtype=np.float64)
    layer.load_state_dict(synthetic_state(published_dcnv4_shapes(4, 2, dk=3, center_feature_scale=True), rng,
                                          small=("offset_mask.weight", "offset_mask.bias")))
    check_layer_gradients(layer, rng.standard_normal((1, 12, 4)), shape=(4, 3))


def test_a_fresh_dcnv3_layer_averages_each_window():
    """Offset and mask start at zero: every tap at its grid point with m = 1/9, so the operator is a
    3×3 box average of the projected input (zeros beyond the border)."""
    layer = DCNv3(channels=4, group=2, rng=np.random.default_rng(9)).to(dtype=np.float64)
    input = np.random.default_rng(10).standard_normal((1, 4, 5, 4))
    state = layer.state_dict()
    box = depthwise(linear(input, state, "input_proj"), np.full((4, 1, 3, 3), 1 / 9), 0.0)
    assert_close(layer(Tensor(input)).data, linear(box, state, "output_proj"), rtol=1e-12, atol=1e-12)


def test_a_fresh_dcnv4_layer_gives_zero():
    """offset_mask starts at zero, so every m = 0 (no softmax), and the output projection's bias too."""
    layer = DCNv4(channels=16, group=2, rng=np.random.default_rng(11))
    assert np.array_equal(layer(Tensor(np.ones((1, 9, 16), dtype=np.float32))).data, np.zeros((1, 9, 16)))
