"""DCNv3 and DCNv4 from PyTorch (dcn_numba.torch.dcnv3, dcn_numba.torch.dcnv3_modules): the ops
compute dcn_numba's reference forward and backward, pass torch.autograd.gradcheck and
torch.library.opcheck, run under torch.compile(fullgraph=True) and torch.export, refuse a second
derivative and an ONNX export, and the layers load the published state dicts and compute the
engine's layers.

Needs torch, which dcn_numba does not require: without it the tests skip, saying so
(`make torch-check` runs them).
"""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
dt = pytest.importorskip("dcn_numba.torch")

import dcn_numba  # noqa: E402
from dcn_numba.engine import dcnv3 as engine  # noqa: E402
from dcn_numba.engine.autograd import Tensor  # noqa: E402
from dcnv3_helpers import (geometries, packed, published_dcnv3_shapes, published_dcnv4_shapes,  # noqa: E402
                           random_call)

# Two groups of two channels, a 3×3 kernel, stride (1, 2), unequal pads, offset_scale ≠ 1: every
# convention of §3 that a call can get wrong shows in the values.
PARAMETERS = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=2, pad_h=1, pad_w=2, dilation_h=1,
                  dilation_w=1, group=2, group_channels=2, offset_scale=0.8, remove_center=0)
SHAPE = (1, 4, 5)


def _tensors(arrays, grad=True, dtype=torch.float64):
    return {name: torch.tensor(a, dtype=dtype, requires_grad=grad) for name, a in arrays.items()}


def _dcnv3_call(seed=0, parameters=PARAMETERS, shape=SHAPE):
    """{input, offset, mask, grad_output} as float64 NumPy arrays, samples off the pixel grid."""
    return random_call(np.random.default_rng(seed), shape, parameters)


def _dcnv4_call(seed=0, parameters=PARAMETERS, shape=SHAPE):
    """{input, offset_mask, grad_output}: a DCNv3 call packed, the padding channels random."""
    rng = np.random.default_rng(seed)
    call = random_call(rng, shape, parameters)
    return dict(input=call["input"], offset_mask=packed(call["offset"], call["mask"], parameters["group"], rng),
                grad_output=call["grad_output"])


def _gradients(output, tensors, grad_output):
    return torch.autograd.grad(output, list(tensors), torch.tensor(grad_output, dtype=output.dtype))

# ---------------------------------------------------------------------------------------------
# Values: the reference's forward and backward


@settings(max_examples=10, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2 ** 16))
def test_dcnv3_forward_and_gradients_are_the_references(geometry, seed):
    shape, parameters = geometry
    call = random_call(np.random.default_rng(seed), shape, parameters)
    tensors = _tensors({name: call[name] for name in ("input", "offset", "mask")})
    output = dt.dcnv3(*tensors.values(), **parameters)
    arrays = [call[name] for name in ("input", "offset", "mask")]
    expected = dcn_numba.dcnv3(*arrays, **parameters, backend="reference")
    np.testing.assert_allclose(output.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    expected_gradients = dcn_numba.dcnv3_backward(call["grad_output"], *arrays, **parameters, backend="reference")
    for name, got, wanted in zip(tensors, _gradients(output, tensors.values(), call["grad_output"]),
                                 expected_gradients):
        np.testing.assert_allclose(got.numpy(), wanted, rtol=1e-12, atol=1e-12, err_msg=name)


@settings(max_examples=10, deadline=None)
@given(geometry=geometries(), softmax=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_dcnv4_forward_and_gradients_are_the_references(geometry, softmax, seed):
    shape, parameters = geometry
    call = _dcnv4_call(seed, parameters, shape)
    tensors = _tensors({name: call[name] for name in ("input", "offset_mask")})
    output = dt.dcnv4(*tensors.values(), **parameters, softmax=softmax)
    arrays = [call["input"], call["offset_mask"]]
    expected = dcn_numba.dcnv4(*arrays, **parameters, softmax=softmax, backend="reference")
    np.testing.assert_allclose(output.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    expected_gradients = dcn_numba.dcnv4_backward(call["grad_output"], *arrays, **parameters, softmax=softmax,
                                                  backend="reference")
    for name, got, wanted in zip(tensors, _gradients(output, tensors.values(), call["grad_output"]),
                                 expected_gradients):
        np.testing.assert_allclose(got.numpy(), wanted, rtol=1e-12, atol=1e-12, err_msg=name)


def test_float32_tensors_give_float32_results_close_to_the_float64_reference():
    call = _dcnv3_call(1)
    tensors = _tensors({name: call[name] for name in ("input", "offset", "mask")}, dtype=torch.float32)
    output = dt.dcnv3(*tensors.values(), **PARAMETERS)
    gradients = _gradients(output, tensors.values(), call["grad_output"])
    arrays = [call[name] for name in ("input", "offset", "mask")]
    expected = (dcn_numba.dcnv3(*arrays, **PARAMETERS, backend="reference"),
                *dcn_numba.dcnv3_backward(call["grad_output"], *arrays, **PARAMETERS, backend="reference"))
    for got, wanted in zip((output.detach(), *gradients), expected):
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), wanted, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_gradcheck_in_float64(op):
    """torch's own finite differences of the registered op, every element (samples off the grid,
    where bilinear interpolation is smooth)."""
    tiny = (1, 3, 3)  # H_out×W_out = 3×3: about 500 elements to perturb
    if op == "dcnv3":
        call = _dcnv3_call(2, shape=tiny)
        inputs = tuple(_tensors({name: call[name] for name in ("input", "offset", "mask")}).values())
        function = lambda *tensors: dt.dcnv3(*tensors, **PARAMETERS)  # noqa: E731
    else:
        call = _dcnv4_call(2, shape=tiny)
        inputs = tuple(_tensors({name: call[name] for name in ("input", "offset_mask")}).values())
        function = lambda *tensors: dt.dcnv4(*tensors, **PARAMETERS, softmax=True)  # noqa: E731
    assert torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def _op_arguments(op, seed=3):
    """The arguments of torch.ops.dcn_numba.<op>, in its schema's order."""
    values = list(PARAMETERS.values())
    values[-2:] = [float(values[-2]), bool(values[-1])]
    if op == "dcnv3":
        call = _dcnv3_call(seed)
        return (*_tensors({name: call[name] for name in ("input", "offset", "mask")}).values(), *values)
    call = _dcnv4_call(seed)
    return (*_tensors({name: call[name] for name in ("input", "offset_mask")}).values(), *values, True)


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_opcheck_passes_for_the_op_and_its_backward(op):
    arguments = _op_arguments(op)
    result = torch.library.opcheck(getattr(torch.ops.dcn_numba, op).default, arguments)
    assert set(result.values()) == {"SUCCESS"}, result
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in arguments]
    grad_output = torch.randn(getattr(torch.ops.dcn_numba, op)(*detached).shape, dtype=torch.float64)
    result = torch.library.opcheck(getattr(torch.ops.dcn_numba, f"{op}_backward").default,
                                   (grad_output, *detached), test_utils=("test_schema", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("op", ["dcnv3", "dcnv4"])
def test_double_backward_is_refused_saying_why(op):
    arguments = _op_arguments(op)
    output = getattr(torch.ops.dcn_numba, op)(*arguments)
    first, = torch.autograd.grad(output.square().sum(), arguments[0], create_graph=True)
    with pytest.raises(RuntimeError, match=f"double backward through dcn_numba::{op} is not supported"):
        first.sum().backward()


def test_bad_arguments_are_refused_with_dcn_numbas_messages():
    call = _dcnv3_call(4)
    tensors = _tensors({name: call[name] for name in ("input", "offset", "mask")}, grad=False)
    with pytest.raises(ValueError, match="stride_h"):
        dt.dcnv3(*tensors.values(), **dict(PARAMETERS, stride_h=0))
    with pytest.raises(TypeError, match="remove_center must be a bool"):
        dt.dcnv3(*tensors.values(), **dict(PARAMETERS, remove_center=2))
    with pytest.raises(ValueError, match="offset has shape"):
        dt.dcnv3(tensors["input"], tensors["offset"][..., :-2], tensors["mask"], **PARAMETERS)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        dt.dcnv3(tensors["input"], tensors["offset"], call["mask"], **PARAMETERS)

# ---------------------------------------------------------------------------------------------
# The layers: the published state dicts, and the engine's layers








def synthetic_state(shapes, seed, small=()):
    """Random float64 values for a state dict; those named in `small` 10× smaller (offsets of a
    pixel or two)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape) * (0.1 if name in small else 0.5) for name, shape in shapes.items()}


DCNV3_OPTIONS = [dict(), dict(center_feature_scale=True, remove_center=True, dw_kernel_size=5)]
DCNV4_OPTIONS = [dict(), dict(center_feature_scale=True, dw_kernel_size=3, output_bias=False)]


def _dcnv3_shapes(options):
    return published_dcnv3_shapes(8, 2, dk=options.get("dw_kernel_size", 3),
                                  remove_center=int(options.get("remove_center", False)),
                                  center_feature_scale=options.get("center_feature_scale", False))


def _dcnv4_shapes(options):
    return published_dcnv4_shapes(8, 2, dk=options.get("dw_kernel_size"),
                                  center_feature_scale=options.get("center_feature_scale", False),
                                  output_bias=options.get("output_bias", True))


def _loaded(layer, state):
    """`layer` in float64 with the NumPy state dict `state` loaded strictly."""
    layer = layer.double()
    layer.load_state_dict({name: torch.tensor(value) for name, value in state.items()}, strict=True)
    return layer


@pytest.mark.parametrize("options", DCNV3_OPTIONS)
def test_dcnv3_loads_the_published_state_dict_and_computes_the_engines_layer(options):
    state = synthetic_state(_dcnv3_shapes(options), 0, small=("offset.weight", "offset.bias"))
    layer = _loaded(dt.DCNv3(channels=8, group=2, **options), state)
    assert {name: tuple(t.shape) for name, t in layer.state_dict().items()} == _dcnv3_shapes(options)
    reference_layer = engine.DCNv3(channels=8, group=2, rng=np.random.default_rng(0), **options).to(dtype=np.float64)
    reference_layer.load_state_dict(state)
    input = np.random.default_rng(1).standard_normal((2, 5, 4, 8))
    np.testing.assert_allclose(layer(torch.tensor(input)).detach().numpy(), reference_layer(Tensor(input)).data,
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("options", DCNV4_OPTIONS)
def test_dcnv4_loads_the_published_state_dict_and_computes_the_engines_layer(options):
    state = synthetic_state(_dcnv4_shapes(options), 0, small=("offset_mask.weight", "offset_mask.bias"))
    layer = _loaded(dt.DCNv4(channels=8, group=2, **options), state)
    assert {name: tuple(t.shape) for name, t in layer.state_dict().items()} == _dcnv4_shapes(options)
    reference_layer = engine.DCNv4(channels=8, group=2, rng=np.random.default_rng(0), **options).to(dtype=np.float64)
    reference_layer.load_state_dict(state)
    input = np.random.default_rng(1).standard_normal((2, 5 * 4, 8))
    np.testing.assert_allclose(layer(torch.tensor(input), shape=(5, 4)).detach().numpy(),
                               reference_layer(Tensor(input), shape=(5, 4)).data, rtol=1e-10, atol=1e-10)


def test_fresh_layers_start_as_published():
    """Offsets and mask start at zero: a fresh DCNv3 averages each 3×3 window with weights 1/9
    (the softmax of zeros) before output_proj; a fresh DCNv4 gives 0 before output_proj."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 8, dtype=torch.float64)
    layer = dt.DCNv3(channels=8, group=2).double()
    projected = layer.input_proj(x).permute(0, 3, 1, 2)
    window_mean = torch.nn.functional.avg_pool2d(projected, 3, 1, 1, count_include_pad=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(layer(x), layer.output_proj(window_mean), rtol=1e-12, atol=1e-12)
    layer4 = dt.DCNv4(channels=8, group=2).double()
    torch.testing.assert_close(layer4(x.reshape(1, 20, 8), shape=(4, 5)),
                               layer4.output_proj(torch.zeros(1, 20, 8, dtype=torch.float64)), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# torch.compile, torch.export, ONNX


class TwoLayers(torch.nn.Module):
    """A DCNv3 layer then a DCNv4 layer on (N, H, W, C), their offsets and masks non-zero."""

    def __init__(self):
        super().__init__()
        self.v3 = _loaded(dt.DCNv3(channels=8, group=2, center_feature_scale=True),
                          synthetic_state(_dcnv3_shapes(dict(center_feature_scale=True)), 5,
                                          small=("offset.weight", "offset.bias")))
        self.v4 = _loaded(dt.DCNv4(channels=8, group=2, dw_kernel_size=3),
                          synthetic_state(_dcnv4_shapes(dict(dw_kernel_size=3)), 6,
                                          small=("offset_mask.weight", "offset_mask.bias")))

    def forward(self, x):
        N, H, W, C = x.shape
        return self.v4(self.v3(x).reshape(N, H * W, C), shape=(H, W))


def _output_and_gradient(model, x):
    output = model(x)
    gradient, = torch.autograd.grad(output, x, torch.ones_like(output))
    return output.detach(), gradient


def test_compiled_layers_equal_eager_forward_and_backward():
    """The ops are the same in both; the layers' LayerNorm, GELU and projections are inductor's
    own code when compiled: equal to rounding."""
    model = TwoLayers()
    x = torch.randn(2, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    eager = _output_and_gradient(model, x)
    compiled = _output_and_gradient(torch.compile(model, fullgraph=True), x)
    for expected, got in zip(eager, compiled):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_export_keeps_each_op_one_node_and_agrees():
    model = TwoLayers()
    x = torch.randn(2, 4, 5, 8, dtype=torch.float64)
    program = torch.export.export(model, (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert [t for t in targets if t.startswith("dcn_numba.")] == ["dcn_numba.dcnv3.default",
                                                                  "dcn_numba.dcnv4.default"]
    assert torch.equal(program.module()(x), model(x))


def test_onnx_export_is_refused_naming_the_reason():
    pytest.importorskip("onnxscript", reason="onnxscript, which torch.onnx.export needs, is not installed")
    layer = dt.DCNv3(channels=4, group=2).eval()
    with pytest.raises(Exception) as caught:
        torch.onnx.export(layer, (torch.randn(1, 3, 3, 4),), opset_version=19, verbose=False)
    reason = "dcn_numba.torch.dcnv3 cannot be exported to ONNX: ONNX has no DCNv3 or DCNv4 operator"
    assert reason in str(caught.value)
