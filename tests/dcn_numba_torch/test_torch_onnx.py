"""ONNX export: dcn_numba.torch.deform_conv2d becomes ONNX's standard DeformConv (opset 19), which
ONNX Runtime runs to the values of eager torch; the RoI pooling ops, which ONNX lacks, are refused
with the reason. The export example of docs/torch.md runs.

Needs torch, onnx, onnxscript (torch.onnx.export's translator) and onnxruntime, none of which
dcn_numba requires: without them the tests skip, saying so (`make torch-check` runs them).
"""

import pathlib
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e '.[bench]')")
pytest.importorskip("onnxscript", reason="onnxscript, which torch.onnx.export needs, is not "
                                         "installed (pip install -e '.[bench]')")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed "
                                                        "(pip install -e '.[bench]')")
dt = pytest.importorskip("dcn_numba.torch")

ROOT = pathlib.Path(__file__).resolve().parents[2]


class GivenOffsets(torch.nn.Module):
    """A DeformConv2d whose offsets (and mask) are inputs of the model."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, offset, mask=None):
        return self.layer(x, offset, mask)


def _export(model, inputs):
    """The ONNX model of torch.onnx.export, and ONNX Runtime's outputs for `inputs`."""
    program = torch.onnx.export(model, inputs, opset_version=19, verbose=False)
    proto = program.model_proto
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return proto, session.run(None, feeds)


def _deform_conv_node(proto):
    """The one node of `proto`, which must be ONNX's own DeformConv, with its attributes."""
    nodes = [n for n in proto.graph.node if n.op_type == "DeformConv"]
    assert len(nodes) == 1, [n.op_type for n in proto.graph.node]
    assert nodes[0].domain in ("", "ai.onnx")
    assert {o.domain: o.version for o in proto.opset_import}.get("", 0) >= 19
    return nodes[0], {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "v2 with mask"])
def test_deform_conv2d_exports_to_onnx_deform_conv_and_onnx_runtime_agrees(modulated):
    torch.manual_seed(0)
    # 2 weight groups, 2 offset groups, a 3×2 kernel, stride (2, 1), padding (1, 0), dilation (2, 1)
    layer = dt.DeformConv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1),
                            groups=2).eval()
    x = torch.randn(2, 4, 7, 6)
    offset = torch.rand(2, 2 * 2 * 6, 3, 5) * 4 - 2
    inputs = (x, offset, torch.rand(2, 2 * 6, 3, 5)) if modulated else (x, offset)
    proto, (result,) = _export(GivenOffsets(layer).eval(), inputs)
    node, attributes = _deform_conv_node(proto)
    assert attributes == dict(kernel_shape=[3, 2], strides=[2, 1], dilations=[2, 1],
                              pads=[1, 0, 1, 0], group=2, offset_group=2)
    assert len([name for name in node.input if name]) == (5 if modulated else 4)
    expected = layer(*inputs).detach().numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_a_layer_with_its_offset_branch_exports_without_bias():
    torch.manual_seed(1)
    layer = dt.DeformConv2d(3, 4, 3, padding=1, bias=False, offset_branch=True,
                            modulated=True).eval()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_mask.weight.normal_(0, 0.3)
    x = torch.randn(1, 3, 6, 5)
    proto, (result,) = _export(layer, (x,))
    node, attributes = _deform_conv_node(proto)
    assert list(node.input)[3] == ""  # no bias: the optional input left empty, the mask after it
    assert attributes["group"] == 1
    np.testing.assert_allclose(result, layer(x).detach().numpy(), rtol=1e-5, atol=1e-5)


class Pool(torch.nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool = pool

    def forward(self, x, rois):
        return self.pool(x, rois)


@pytest.mark.parametrize("name, pool", [
    ("deform_roi_pool", dt.DeformRoIPool(2, 1.0, 2)),
    ("deform_psroi_pool", dt.DeformPSRoIPool(1.0, 2, 1, 2)),
])
def test_the_roi_pooling_ops_are_refused_naming_the_reason(name, pool):
    inputs = (torch.randn(1, 2, 5, 5), torch.tensor([[0.0, 0, 0, 3, 3]]))
    with pytest.raises(Exception) as caught:
        torch.onnx.export(Pool(pool).eval(), inputs, opset_version=19, verbose=False)
    reason = (f"dcn_numba.torch.{name} cannot be exported to ONNX: ONNX has no deformable RoI "
              "pooling operator")
    assert reason in str(caught.value)
    assert isinstance(caught.value.__cause__, NotImplementedError)
    assert reason in str(caught.value.__cause__)


def test_the_export_example_of_the_docs_runs(tmp_path, monkeypatch):
    """The Python block under '## Exporting to ONNX' in docs/torch.md, run in a fresh folder:
    it writes the model and prints ONNX Runtime's largest difference from eager torch."""
    text = (ROOT / "docs" / "torch.md").read_text()
    section = text.split("## Exporting to ONNX", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    printed = []
    monkeypatch.setattr("builtins.print",
                        lambda *values: printed.append(" ".join(map(str, values))))
    exec(compile(example, "docs/torch.md", "exec"), {})
    assert (tmp_path / "deform.onnx").exists()
    difference = re.fullmatch(r"largest difference from torch: (\S+)", printed[-1])
    assert difference is not None, printed
    assert float(difference.group(1)) < 1e-5
