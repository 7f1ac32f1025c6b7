"""dcn_numba.torch: the registered ops over the cpu backend, and the modules.

Needs torch (and torchvision for the comparisons), which dcn_numba does not require: without
them the tests skip, saying so. Install them with pip install -e ".[dev,torch]".
"""

import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
dt = pytest.importorskip("dcn_numba.torch")
from torch_helpers import random_rois, random_tensor  # noqa: E402

import dcn_numba  # noqa: E402
from dcn_numba.torch import bridge  # noqa: E402
from dcn_numba.ops.deform_conv import output_size  # noqa: E402
from dcn_numba.ops.locations import sampling_locations  # noqa: E402


def test_the_module_imports_the_real_torch():
    assert dt.torch is torch
    assert "dcn_numba" not in torch.__file__


# ---------------------------------------------------------------------------------------------
# Gradients: torch.autograd.gradcheck in float64, through dcn_numba's hand-written backward


@pytest.mark.parametrize("modulated", [False, True])
def test_gradcheck_deform_conv2d(modulated):
    rng = np.random.default_rng(1)
    # 2 weight groups, 2 offset groups, a 2×2 kernel; H_out, W_out = 4, 6 with padding 1, dilation (2, 1)
    x = random_tensor(rng, (2, 4, 4, 5))
    offset = random_tensor(rng, (2, 2 * 2 * 4, 4, 6), -1.5, 1.5)
    weight = random_tensor(rng, (4, 2, 2, 2))
    bias = random_tensor(rng, (4,))
    mask = random_tensor(rng, (2, 2 * 4, 4, 6), 0, 1) if modulated else None

    def conv(x, offset, weight, bias, mask):
        return dt.deform_conv2d(x, offset, weight, bias, stride=1, padding=1, dilation=(2, 1),
                                mask=mask)

    assert torch.autograd.gradcheck(conv, (x, offset, weight, bias, mask))


def test_gradcheck_deform_roi_pool():
    rng = np.random.default_rng(2)
    x = random_tensor(rng, (2, 3, 6, 7))
    rois = torch.tensor(random_rois(rng, 3, 2, 7, 6))
    offset = random_tensor(rng, (3, 2, 2, 3), -0.5, 0.5)

    def pool(x, offset):
        return dt.deform_roi_pool(x, rois, offset, output_size=(2, 3), sampling_ratio=2, gamma=0.1)

    assert torch.autograd.gradcheck(pool, (x, offset))


def test_gradcheck_deform_psroi_pool():
    rng = np.random.default_rng(3)
    x = random_tensor(rng, (2, 8, 6, 7))
    rois = torch.tensor(random_rois(rng, 3, 2, 7, 6))
    trans = random_tensor(rng, (3, 4, 2, 2), -0.5, 0.5)

    def pool(x, trans):
        return dt.deform_psroi_pool(x, rois, trans, output_dim=2, group_size=2, pooled_size=2,
                                    sample_per_part=2, trans_std=0.1)

    assert torch.autograd.gradcheck(pool, (x, trans))


# ---------------------------------------------------------------------------------------------
# Equal to torchvision.ops.deform_conv2d, forward and every gradient


@st.composite
def conv_configurations(draw):
    """A random deformable convolution: groups, offset groups, kernel, stride, padding,
    dilation, mask or not, bias or not; its sizes give an output of at least 1×1."""
    groups, offset_groups = draw(st.sampled_from([1, 2])), draw(st.sampled_from([1, 2]))
    C_in = math.lcm(groups, offset_groups) * draw(st.integers(1, 2))
    C_out = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride, padding, dilation = ((draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))
                                 for lo, hi in ((1, 2), (0, 2), (1, 2)))
    size = [(draw(st.integers(1, 3)) + dilation[d] * (kernel[d] - 1)) for d in range(2)]
    return dict(B=draw(st.integers(1, 2)), C_in=C_in, C_out=C_out, groups=groups,
                offset_groups=offset_groups, kernel=kernel, stride=stride, padding=padding,
                dilation=dilation, size=size, mask=draw(st.booleans()), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))


def _conv_tensors(config, offsets):
    """input, offset, weight, bias, mask of `config`; `offsets(rng, shape)` draws the offsets."""
    rng = np.random.default_rng(config["seed"])
    (kh, kw), (H, W) = config["kernel"], config["size"]
    H_out, W_out = (output_size(n, k, s, p, d) for n, k, s, p, d in zip(
        (H, W), (kh, kw), config["stride"], config["padding"], config["dilation"]))
    B, G_off, K = config["B"], config["offset_groups"], kh * kw
    x = random_tensor(rng, (B, config["C_in"], H, W))
    offset = torch.tensor(offsets(rng, (B, 2 * G_off * K, H_out, W_out)), requires_grad=True)
    weight = random_tensor(rng, (config["C_out"], config["C_in"] // config["groups"], kh, kw))
    bias = random_tensor(rng, (config["C_out"],)) if config["bias"] else None
    mask = random_tensor(rng, (B, G_off * K, H_out, W_out), 0, 1) if config["mask"] else None
    return x, offset, weight, bias, mask


def _forward_and_gradients(deform_conv2d, tensors, config):
    """The output and the gradients of (output · g).sum() for every tensor, g fixed random."""
    for t in tensors:
        if t is not None:
            t.grad = None
    out = deform_conv2d(*tensors[:4], config["stride"], config["padding"], config["dilation"],
                        tensors[4])
    out.backward(torch.tensor(np.random.default_rng(0).standard_normal(out.shape)))
    return out.detach(), [None if t is None else t.grad.clone() for t in tensors]


@settings(max_examples=15, deadline=None)
@given(conv_configurations())
def test_forward_and_gradients_equal_torchvision(config):
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    tensors = _conv_tensors(config, lambda rng, shape: rng.uniform(-2.5, 2.5, shape))
    ours, our_gradients = _forward_and_gradients(dt.deform_conv2d, tensors, config)
    theirs, their_gradients = _forward_and_gradients(torchvision.ops.deform_conv2d, tensors, config)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)
    for name, mine, other in zip(("input", "offset", "weight", "bias", "mask"), our_gradients,
                                 their_gradients):
        if mine is None:
            assert other is None, name
        else:
            torch.testing.assert_close(mine, other, rtol=0, atol=1e-11, msg=f"grad_{name}")


def _taps_on_minus_one(offset, config):
    """A boolean like `offset`: True on both channels of every tap whose sample lies exactly on
    p_y = −1 or p_x = −1, where the documented gradient convention applies."""
    locations = sampling_locations(offset.detach().numpy(), config["kernel"], config["stride"],
                                   config["padding"], config["dilation"])
    on = (locations == -1).any(axis=-1)                     # (B, G_off, K, H_out, W_out)
    both = np.repeat(on[:, :, :, None], 2, axis=3)          # (B, G_off, K, 2, H_out, W_out)
    return torch.tensor(both.reshape(offset.shape))


def test_integer_offsets_differ_from_torchvision_only_in_the_offset_gradient_at_minus_one():
    """At initialisation (zero offsets) with padding, the border taps sample exactly on −1, where
    the DCNv2 rule passes no offset gradient and torchvision's formula does (docstring of
    deform_conv2d_backward). Everything else must be equal."""
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    config = dict(B=2, C_in=2, C_out=3, groups=1, offset_groups=1, kernel=(3, 3), stride=(1, 1),
                  padding=(1, 1), dilation=(1, 1), size=(4, 5), mask=True, bias=True, seed=5)
    tensors = _conv_tensors(config, lambda rng, shape: rng.integers(-1, 2, shape).astype(float))
    ours, our_gradients = _forward_and_gradients(dt.deform_conv2d, tensors, config)
    theirs, their_gradients = _forward_and_gradients(torchvision.ops.deform_conv2d, tensors, config)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-11)
    for index in (0, 2, 3, 4):
        torch.testing.assert_close(our_gradients[index], their_gradients[index], rtol=0, atol=1e-11)
    boundary = _taps_on_minus_one(tensors[1], config)
    ours_offset, theirs_offset = our_gradients[1], their_gradients[1]
    torch.testing.assert_close(ours_offset[~boundary], theirs_offset[~boundary], rtol=0, atol=1e-11)
    assert torch.all(ours_offset[boundary] == 0)
    assert torch.any(theirs_offset[boundary] != 0)


# ---------------------------------------------------------------------------------------------
# No copies, no changes to the caller's tensors


def test_cpu_tensors_are_read_through_their_numpy_views():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    view = bridge.view(x)
    assert view.ctypes.data == x.data_ptr()
    result = bridge.as_tensor(view, x.device)
    assert result.data_ptr() == x.data_ptr()


def test_non_contiguous_tensors_give_the_result_of_their_contiguous_copies():
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((1, 2, 5, 4))).transpose(2, 3)  # (1, 2, 4, 5), strided
    offset = torch.tensor(rng.uniform(-1, 1, (1, 18, 4, 5)))
    weight = torch.tensor(rng.standard_normal((3, 2, 3, 3)))
    before = x.clone()
    out = dt.deform_conv2d(x, offset, weight, padding=1)
    expected = dcn_numba.deform_conv2d(x.contiguous().numpy(), offset.numpy(), weight.numpy(),
                                       padding=1, backend="reference")
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    assert torch.equal(x, before)


def test_pooling_modules_equal_the_numpy_api():
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_normal((2, 8, 6, 7)))
    rois = torch.tensor(random_rois(rng, 3, 2, 7, 6))
    offset = torch.tensor(rng.uniform(-1, 1, (3, 2, 2, 2)))
    trans = torch.tensor(rng.uniform(-1, 1, (3, 4, 2, 2)))
    roi = dt.DeformRoIPool(output_size=2, spatial_scale=1.0, sampling_ratio=2, gamma=0.2)
    ps = dt.DeformPSRoIPool(output_dim=2, group_size=2, pooled_size=2, sample_per_part=3)
    np.testing.assert_allclose(
        roi(x, rois, offset).numpy(),
        dcn_numba.deform_roi_pool(x.numpy(), rois.numpy(), offset.numpy(), 2, 1.0, 2, 0.2,
                                  backend="reference"), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        ps(x, rois, trans).numpy(),
        dcn_numba.deform_psroi_pool(x.numpy(), rois.numpy(), trans.numpy(), output_dim=2,
                                    group_size=2, pooled_size=2, sample_per_part=3,
                                    backend="reference"), rtol=0, atol=1e-12)


def test_deform_roi_pool_without_offsets_is_torchvision_roi_align():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    rng = np.random.default_rng(8)
    x = random_tensor(rng, (2, 3, 6, 7))
    rois = torch.tensor(random_rois(rng, 4, 2, 7, 6))
    ours = dt.DeformRoIPool(output_size=(2, 3), sampling_ratio=2)(x, rois)
    theirs = torchvision.ops.roi_align(x, rois, (2, 3), 1.0, 2, aligned=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g = torch.randn_like(ours)
    ours_grad, = torch.autograd.grad(ours, x, g)
    theirs_grad, = torch.autograd.grad(theirs, x, g)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The layer


def test_deform_conv2d_layer_loads_torchvision_state_and_gives_its_output():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    theirs = torchvision.ops.DeformConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    ours = dt.DeformConv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 4, 7, 6)
    offset = torch.rand(2, 18, 4, 3) * 4 - 2
    mask = torch.rand(2, 9, 4, 3)
    torch.testing.assert_close(ours(x, offset, mask), theirs(x, offset, mask), rtol=1e-5, atol=1e-5)


def test_deform_conv2d_layer_initialises_like_torchvision():
    torch.manual_seed(0)
    layer = dt.DeformConv2d(8, 16, 3)
    bound = 1 / math.sqrt(8 * 9)  # kaiming_uniform with a = √5 gives ±1/√fan_in
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.9 * bound
    assert layer.bias.abs().max() <= bound


def test_offset_branch_starts_as_an_ordinary_convolution():
    torch.manual_seed(1)
    layer = dt.DeformConv2d(3, 4, 3, padding=1, offset_branch=True, modulated=True)
    x = torch.randn(2, 3, 5, 5)
    ordinary = torch.nn.functional.conv2d(x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x), 0.5 * (ordinary - layer.bias[:, None, None])
                               + layer.bias[:, None, None], rtol=1e-5, atol=1e-5)


def test_a_small_model_trains_a_step():
    """One SGD step on a fixed batch lowers the loss and moves the offset branch."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
        dt.DeformConv2d(4, 4, 3, padding=1, offset_branch=True, modulated=True), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    offset_branch = model[2].conv_offset.weight
    assert offset_branch.grad.abs().sum() > 0
    before = offset_branch.detach().clone()
    optimiser.step()
    assert not torch.equal(offset_branch.detach(), before)
    assert torch.nn.functional.cross_entropy(model(x), y) < loss


# ---------------------------------------------------------------------------------------------
# Bad input: the NumPy API's errors, and the two that only tensors can have


def _conv_arguments():
    rng = np.random.default_rng(9)
    return dict(input=rng.standard_normal((1, 2, 4, 4)), offset=rng.standard_normal((1, 18, 4, 4)),
                weight=rng.standard_normal((3, 2, 3, 3)), padding=1)


CONV_MISTAKES = {
    "offset channels": lambda a: dict(a, offset=a["offset"][:, :10]),
    "mixed dtypes": lambda a: dict(a, weight=a["weight"].astype(np.float32)),
    "mask shape": lambda a: dict(a, mask=np.ones((1, 8, 4, 4))),
    "stride 0": lambda a: dict(a, stride=0),
    "3-D input": lambda a: dict(a, input=a["input"][0]),
    "stride (1, 2, 3)": lambda a: dict(a, stride=(1, 2, 3)),
    "padding -1": lambda a: dict(a, padding=-1),
    "dilation 1.5": lambda a: dict(a, dilation=1.5),
}


def _error(call, **arguments):
    with pytest.raises((TypeError, ValueError)) as caught:
        call(**arguments)
    return caught.type, str(caught.value)


@pytest.mark.parametrize("mistake", sorted(CONV_MISTAKES))
def test_bad_convolution_arguments_give_the_numpy_api_errors(mistake):
    arguments = CONV_MISTAKES[mistake](_conv_arguments())
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in arguments.items()}
    assert _error(dt.deform_conv2d, **tensors) == _error(dcn_numba.deform_conv2d, **arguments)


def test_a_dtype_neither_float_nor_half_is_refused_naming_what_is_accepted():
    """The one message that differs from the NumPy API's: torch tensors may also be float16 or
    bfloat16, and the message says so."""
    arguments = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in _conv_arguments().items()}
    for dtype in (torch.int64, torch.float8_e4m3fn, torch.complex64):
        with pytest.raises(TypeError, match=re.escape(
                "input must be float32 or float64 (float16 and bfloat16 are computed in float32), "
                f"got {str(dtype).removeprefix('torch.')}")):
            dt.deform_conv2d(**dict(arguments, input=arguments["input"].to(dtype)))


def test_pooling_parameters_give_the_numpy_api_errors():
    x, rois = np.zeros((1, 8, 5, 5)), np.array([[0.0, 0, 0, 3, 3]])
    tensors = dict(input=torch.from_numpy(x), rois=torch.from_numpy(rois))
    arrays = dict(input=x, rois=rois)
    for mistake in (dict(output_size=0), dict(spatial_scale=0), dict(spatial_scale="1"),
                    dict(sampling_ratio=True), dict(gamma=float("nan"))):
        assert _error(dt.deform_roi_pool, **tensors, **mistake) == \
            _error(dcn_numba.deform_roi_pool, **arrays, **mistake), mistake
    for mistake in (dict(group_size=0), dict(pooled_size=2.0), dict(output_dim=3),
                    dict(part_size=-1), dict(sample_per_part=1000), dict(trans_std=None)):
        assert _error(dt.deform_psroi_pool, **tensors, **mistake) == \
            _error(dcn_numba.deform_psroi_pool, **arrays, **mistake), mistake


def test_bad_rois_give_the_numpy_api_errors():
    x, rois = np.zeros((2, 4, 5, 5)), np.array([[2.0, 0, 0, 3, 3]])
    assert _error(dt.deform_roi_pool, input=torch.from_numpy(x), rois=torch.from_numpy(rois)) == \
        _error(dcn_numba.deform_roi_pool, input=x, rois=rois)
    trans = np.zeros((1, 3, 1, 1))
    rois[0, 0] = 1
    assert _error(dt.deform_psroi_pool, input=torch.from_numpy(x), rois=torch.from_numpy(rois),
                  trans=torch.from_numpy(trans), pooled_size=1) == \
        _error(dcn_numba.deform_psroi_pool, input=x, rois=rois, trans=trans, pooled_size=1)


def test_an_argument_that_is_not_a_tensor_is_named():
    arguments = _conv_arguments()
    with pytest.raises(TypeError, match="offset must be a torch.Tensor, got ndarray"):
        dt.deform_conv2d(torch.from_numpy(arguments["input"]), arguments["offset"],
                         torch.from_numpy(arguments["weight"]))


def test_tensors_on_two_devices_are_refused_naming_both():
    arguments = {k: torch.from_numpy(v) for k, v in _conv_arguments().items() if k != "padding"}
    with pytest.raises(TypeError, match="weight is on meta but input is on cpu"):
        dt.deform_conv2d(arguments["input"], arguments["offset"], arguments["weight"].to("meta"))



def test_cuda_tensors_without_cupy_are_refused_saying_what_to_install(monkeypatch):
    monkeypatch.setattr(dcn_numba.runtime.arrays, "cupy", None)
    with pytest.raises(TypeError, match=r"needs CuPy: pip install 'dcn_numba\[cuda\]'"):
        bridge.backend(torch.device("cuda", 0))

# ---------------------------------------------------------------------------------------------
# The DistributedDataParallel example of docs/torch.md


def _example_script():
    """The Python block under '## Training on several processes' in docs/torch.md."""
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "torch.md").read_text()
    section = text.split("## Training on several processes", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_two_process_ddp_example_trains_and_keeps_the_processes_equal(tmp_path):
    script = tmp_path / "ddp_example.py"
    script.write_text(_example_script())
    root = pathlib.Path(__file__).resolve().parents[2]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600, env=environment)
    assert run.returncode == 0, run.stderr
    losses = re.search(r"mean loss over the processes: ([\d.]+) -> ([\d.]+)", run.stdout)
    assert losses is not None, run.stdout
    assert float(losses.group(2)) < float(losses.group(1))
    difference = re.search(r"largest weight difference between processes: (\S+)", run.stdout)
    assert difference is not None, run.stdout
    assert float(difference.group(1)) == 0.0
