"""The ops as registered PyTorch ops: torch.library.opcheck, torch.compile, torch.export, torch.fx,
TorchScript, and the refusal of second derivatives.

Needs torch, which dcn_numba does not require: without it the tests skip, saying so
(`make torch-check` runs them).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
dt = pytest.importorskip("dcn_numba.torch")
from torch_helpers import random_rois, random_tensor  # noqa: E402

import dcn_numba  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool")


def _op_arguments(name, optional=True, seed=0):
    """The arguments of torch.ops.dcn_numba.<name>, in its schema's order: float64 tensors that
    need gradients, then the parameters. optional=False leaves out the optional tensors."""
    rng = np.random.default_rng(seed)
    if name == "deform_conv2d":
        # 2 weight groups, 2 offset groups, a 2×2 kernel: H_out, W_out = 5, 7
        x, offset = random_tensor(rng, (2, 4, 5, 6)), random_tensor(rng, (2, 16, 5, 7), -1.5, 1.5)
        weight = random_tensor(rng, (4, 2, 2, 2))
        bias, mask = random_tensor(rng, (4,)), random_tensor(rng, (2, 8, 5, 7), 0, 1)
        if not optional:
            bias = mask = None
        return (x, offset, weight, bias, mask, [1, 1], [1, 1], [2, 1])
    x, rois = random_tensor(rng, (2, 8, 6, 7)), torch.tensor(random_rois(rng, 3, 2, 7, 6))
    if name == "deform_roi_pool":
        offset = random_tensor(rng, (3, 2, 2, 3), -0.5, 0.5) if optional else None
        return (x, rois, offset, [2, 3], 1.0, 2, 0.1)
    trans = random_tensor(rng, (3, 4, 2, 2), -0.5, 0.5) if optional else None
    return (x, rois, trans, 1.0, 2, 2, 2, None, 2, 0.1)


def _call(name, arguments):
    """The op through the function users call (dcn_numba.torch.<name>)."""
    if name == "deform_conv2d":
        x, offset, weight, bias, mask, stride, padding, dilation = arguments
        return dt.deform_conv2d(x, offset, weight, bias, tuple(stride), tuple(padding),
                                tuple(dilation), mask)
    if name == "deform_roi_pool":
        x, rois, offset, output_size, spatial_scale, sampling_ratio, gamma = arguments
        return dt.deform_roi_pool(x, rois, offset, tuple(output_size), spatial_scale,
                                  sampling_ratio, gamma)
    return dt.deform_psroi_pool(*arguments)


class ThreeOps(torch.nn.Module):
    """A model that uses each op once, on inputs of its own, so that every gradient comes from
    one op's backward alone."""

    def forward(self, conv_input, offset, weight, bias, mask, roi_input, rois, roi_offset,
                ps_input, ps_rois, trans):
        return (dt.deform_conv2d(conv_input, offset, weight, bias, (1, 1), (1, 1), (2, 1), mask),
                dt.deform_roi_pool(roi_input, rois, roi_offset, (2, 3), 1.0, 2, 0.1),
                dt.deform_psroi_pool(ps_input, ps_rois, trans, 1.0, 2, 2, 2, None, 2, 0.1))


def _three_ops_inputs():
    conv = _op_arguments("deform_conv2d", seed=1)[:5]
    roi = _op_arguments("deform_roi_pool", seed=2)[:3]
    ps = _op_arguments("deform_psroi_pool", seed=3)[:3]
    return (*conv, *roi, *ps)


def _outputs_and_gradients(model, inputs):
    """The outputs of `model`, and the gradients of Σ outputs·g (g fixed random) for every input
    that needs one."""
    outputs = model(*inputs)
    rng = np.random.default_rng(4)
    weights = [torch.tensor(rng.standard_normal(tuple(o.shape))) for o in outputs]
    leaves = [t for t in inputs if t.requires_grad]
    gradients = torch.autograd.grad(outputs, leaves, weights)
    return [o.detach() for o in outputs], list(gradients)


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck: schema, fake tensors, autograd registration, AOT dispatch


@pytest.mark.parametrize("optional", [True, False], ids=["all tensors", "no optional tensors"])
@pytest.mark.parametrize("name", OPS)
def test_opcheck_passes_for_each_op(name, optional):
    op = getattr(torch.ops.dcn_numba, name).default
    result = torch.library.opcheck(op, _op_arguments(name, optional))
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("name", OPS)
def test_opcheck_passes_for_each_backward_op(name):
    arguments = [t.detach() if isinstance(t, torch.Tensor) else t for t in _op_arguments(name)]
    grad_output = torch.randn(_call(name, arguments).shape, dtype=torch.float64)
    op = getattr(torch.ops.dcn_numba, f"{name}_backward").default
    result = torch.library.opcheck(op, (grad_output, *arguments),
                                   test_utils=("test_schema", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}, result


def test_the_ops_compute_dcn_numbas_functions():
    """The registered op is dcn_numba's function, not an approximation of it."""
    for name in OPS:
        arguments = _op_arguments(name)
        numpy_arguments = [t.detach().numpy() if isinstance(t, torch.Tensor) else t
                           for t in arguments]
        if name == "deform_conv2d":
            x, offset, weight, bias, mask, *parameters = numpy_arguments
            expected = dcn_numba.deform_conv2d(x, offset, weight, bias, *parameters, mask,
                                               backend="reference")
        else:
            expected = getattr(dcn_numba, name)(*numpy_arguments, backend="reference")
        np.testing.assert_allclose(getattr(torch.ops.dcn_numba, name)(*arguments).detach().numpy(),
                                   expected, rtol=0, atol=1e-12, err_msg=name)


# ---------------------------------------------------------------------------------------------
# torch.compile, torch.export, torch.fx, TorchScript


def test_compiled_model_with_the_three_ops_equals_eager_forward_and_backward():
    inputs = _three_ops_inputs()
    eager = _outputs_and_gradients(ThreeOps(), inputs)
    compiled = _outputs_and_gradients(torch.compile(ThreeOps(), fullgraph=True), inputs)
    for expected, got in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        assert torch.equal(expected, got)


def test_compiled_layer_with_its_offset_branch_equals_eager():
    """DeformConv2d with its offset and mask branches. The op is the same in both, but the
    branches (convolution, sigmoid) are inductor's own code when compiled, and the input's
    gradient adds three paths in an order compiled code may change: equal to rounding."""
    torch.manual_seed(5)
    layer = dt.DeformConv2d(4, 3, 3, padding=1, offset_branch=True, modulated=True).double()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_mask.weight.normal_(0, 0.3)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-13, atol=1e-13)
    eager_gradient, = torch.autograd.grad(layer(x).sum(), x)
    compiled_gradient, = torch.autograd.grad(compiled(x).sum(), x)
    torch.testing.assert_close(compiled_gradient, eager_gradient, rtol=1e-13, atol=1e-13)


def _op_nodes(graph):
    """The call_function nodes of `graph` that call an op of dcn_numba, by op name."""
    found = {}
    for node in graph.nodes:
        name = str(node.target)
        if node.op == "call_function" and name.startswith("dcn_numba."):
            found.setdefault(name.split(".")[1], []).append(node)
    return found


def test_export_gives_a_graph_holding_the_three_ops():
    inputs = _three_ops_inputs()
    program = torch.export.export(ThreeOps(), tuple(t.detach() for t in inputs))
    nodes = _op_nodes(program.graph)
    assert {name: len(calls) for name, calls in nodes.items()} == {name: 1 for name in OPS}
    for expected, got in zip(ThreeOps()(*inputs), program.module()(*inputs)):
        assert torch.equal(expected, got)


def test_fx_symbolic_trace_keeps_each_op_a_single_node():
    model = torch.nn.ModuleDict(dict(
        conv=dt.DeformConv2d(8, 3, 3, padding=1, offset_branch=True, modulated=True),
        roi=dt.DeformRoIPool((2, 3), 1.0, 2), ps=dt.DeformPSRoIPool(1.0, 2, 2, 2)))

    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.parts = model

        def forward(self, x, rois, offset, trans):
            features = self.parts["conv"](x)
            return self.parts["roi"](features, rois, offset), self.parts["ps"](x, rois, trans)

    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((2, 8, 6, 7)), dtype=torch.float32)
    rois = torch.tensor(random_rois(rng, 3, 2, 7, 6)).float()
    offset = torch.tensor(rng.uniform(-0.5, 0.5, (3, 2, 2, 3)), dtype=torch.float32)
    trans = torch.tensor(rng.uniform(-0.5, 0.5, (3, 2, 2, 2)), dtype=torch.float32)
    traced = torch.fx.symbolic_trace(Detector())
    nodes = _op_nodes(traced.graph)
    assert {name: len(calls) for name, calls in nodes.items()} == {name: 1 for name in OPS}
    for expected, got in zip(Detector()(x, rois, offset, trans), traced(x, rois, offset, trans)):
        assert torch.equal(expected, got)


def test_torchscript_compiles_a_model_of_the_three_modules_and_equals_eager():
    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = dt.DeformConv2d(4, 3, 3, padding=1, offset_branch=True, modulated=True)
            self.plain = dt.DeformConv2d(4, 8, 3, padding=1)
            self.roi = dt.DeformRoIPool((2, 3), 1.0, 2)
            self.ps = dt.DeformPSRoIPool(1.0, 2, 2, 2, sample_per_part=2)

        def forward(self, x, offset, rois, roi_offset, trans):
            features = self.conv(x)
            return (self.roi(features, rois, roi_offset),
                    self.ps(self.plain(x, offset), rois, trans))

    torch.manual_seed(7)
    model = Detector()
    with torch.no_grad():
        model.conv.conv_offset.weight.normal_(0, 0.3)
    rng = np.random.default_rng(7)
    inputs = (torch.randn(2, 4, 6, 7, requires_grad=True),
              torch.tensor(rng.uniform(-1, 1, (2, 18, 6, 7)), dtype=torch.float32),
              torch.tensor(random_rois(rng, 3, 2, 7, 6)).float(),
              torch.tensor(rng.uniform(-0.5, 0.5, (3, 2, 2, 3)), dtype=torch.float32),
              torch.tensor(rng.uniform(-0.5, 0.5, (3, 2, 2, 2)), dtype=torch.float32))
    scripted = torch.jit.script(model)
    for expected, got in zip(model(*inputs), scripted(*inputs)):
        assert torch.equal(expected, got)
    eager_gradient, = torch.autograd.grad(sum(o.sum() for o in model(*inputs)), inputs[0])
    scripted_gradient, = torch.autograd.grad(sum(o.sum() for o in scripted(*inputs)), inputs[0])
    assert torch.equal(eager_gradient, scripted_gradient)


def test_torchscript_calls_the_ops_as_torch_ops_dcn_numba():
    @torch.jit.script
    def pool(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return torch.ops.dcn_numba.deform_roi_pool(x, rois, None, [2, 2], 0.5, 2, 0.1)

    assert "dcn_numba::deform_roi_pool" in str(pool.graph)
    arguments = _op_arguments("deform_roi_pool")
    x, rois = arguments[0].detach(), arguments[1]
    assert torch.equal(pool(x, rois), dt.deform_roi_pool(x, rois, None, 2, 0.5, 2, 0.1))


# ---------------------------------------------------------------------------------------------
# Second derivatives: refused, never zeros


@pytest.mark.parametrize("name", OPS)
def test_double_backward_raises_a_clear_error(name):
    arguments = _op_arguments(name)
    output = _call(name, arguments)
    leaves = [t for t in arguments if isinstance(t, torch.Tensor) and t.requires_grad]
    gradients = torch.autograd.grad((output ** 2).sum(), leaves, create_graph=True)
    first_order = torch.autograd.grad((_call(name, arguments) ** 2).sum(), leaves)
    for with_graph, without in zip(gradients, first_order):  # the first derivative is intact
        assert torch.equal(with_graph, without)
    with pytest.raises(RuntimeError, match=f"double backward through dcn_numba::{name} is not "
                                           "supported"):
        sum(g.sum() for g in gradients).backward()


@pytest.mark.parametrize("name", OPS)
def test_hessian_raises_instead_of_returning_zeros(name):
    arguments = list(_op_arguments(name))
    x = arguments[0]

    def loss(x):
        return (_call(name, [x] + arguments[1:]) ** 2).sum()

    with pytest.raises(RuntimeError, match=f"double backward through dcn_numba::{name}"):
        torch.autograd.functional.hessian(loss, x)
