"""Half precision through dcn_numba.torch: float16 and bfloat16 tensors are computed in float32 and
returned in their own dtype; autocast runs the ops in float32; every other dtype gets dcn_numba's
own error.

Needs torch, which dcn_numba does not require: without it the tests skip, saying so
(`make torch-check` runs them).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
dt = pytest.importorskip("dcn_numba.torch")
from torch_helpers import random_rois  # noqa: E402

HALF = [torch.float16, torch.bfloat16]


def _calls(seed=0):
    """Each op as (name, function of its tensors, float32 tensors): a convolution with bias and
    mask, and the two RoI poolings with offsets; the RoIs are always the second tensor of a
    pooling."""
    rng = np.random.default_rng(seed)

    def tensor(shape, low=-1.0, high=1.0, step=None):
        """Uniform values, on a grid of `step` when given."""
        values = rng.uniform(low, high, shape)
        return torch.tensor(values if step is None else np.round(values / step) * step,
                            dtype=torch.float32)

    # Offsets and RoIs on grids that float16 and bfloat16 hold exactly (8 significant bits), so
    # that every precision samples at the same positions: a position moved by rounding could
    # cross an integer, where bilinear interpolation has a kink and the offset gradient a jump.
    conv = (tensor((2, 4, 6, 5)), tensor((2, 18, 6, 5), -2, 2, 2 ** -6), tensor((3, 4, 3, 3)),
            tensor((3,)), tensor((2, 9, 6, 5), 0, 1))
    rois = torch.tensor(np.round(random_rois(rng, 3, 2, 5, 6) * 16) / 16, dtype=torch.float32)
    roi = (tensor((2, 8, 6, 5)), rois, tensor((3, 2, 2, 2), -0.5, 0.5, 2 ** -8))
    ps = (tensor((2, 8, 6, 5)), rois, tensor((3, 2, 2, 2), -0.5, 0.5, 2 ** -8))
    return [
        ("deform_conv2d", lambda x, o, w, b, m: dt.deform_conv2d(x, o, w, b, padding=1, mask=m),
         conv),
        ("deform_roi_pool", lambda x, r, o: dt.deform_roi_pool(x, r, o, 2, 1.0, 2), roi),
        ("deform_psroi_pool", lambda x, r, t: dt.deform_psroi_pool(
            x, r, t, output_dim=2, group_size=2, pooled_size=2, sample_per_part=2), ps),
    ]


def _output_and_gradients(function, tensors):
    """function(*tensors) and the gradients of its sum for every tensor but the RoIs (the
    second tensor of a pooling, which has three)."""
    rois = 1 if len(tensors) == 3 else None
    tensors = [t.detach().requires_grad_(i != rois) for i, t in enumerate(tensors)]
    output = function(*tensors)
    output.backward(torch.ones_like(output))
    return output.detach(), [t.grad for t in tensors if t.requires_grad]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("call", range(3), ids=["deform_conv2d", "deform_roi_pool",
                                                 "deform_psroi_pool"])
def test_half_tensors_are_float32_results_rounded_to_their_dtype(call, dtype):
    """The same values as float32 on the same (half-precision) inputs, rounded once: exactly."""
    name, function, tensors = _calls()[call]
    half = [t.to(dtype) for t in tensors]
    output, gradients = _output_and_gradients(function, half)
    assert output.dtype == dtype
    assert [g.dtype for g in gradients] == [dtype] * len(gradients)
    in_float32 = [t.float() for t in half]
    expected_output, expected_gradients = _output_and_gradients(function, in_float32)
    assert torch.equal(output, expected_output.to(dtype)), name
    for got, expected in zip(gradients, expected_gradients):
        assert torch.equal(got, expected.to(dtype)), name


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("call", range(3), ids=["deform_conv2d", "deform_roi_pool",
                                                 "deform_psroi_pool"])
def test_half_results_are_within_half_precision_of_float32(call, dtype):
    """Against float32 on the unrounded inputs: the rounding of the inputs and of the result (half
    an ulp each: 2⁻¹¹ for float16, 2⁻⁸ for bfloat16), carried through sums of a few dozen terms,
    stays within 2 ulps of the largest magnitude (the offsets and RoIs are exact in both; this
    seed's largest is half an ulp)."""
    name, function, tensors = _calls(seed=1)[call]
    output, gradients = _output_and_gradients(function, [t.to(dtype) for t in tensors])
    expected_output, expected_gradients = _output_and_gradients(function, tensors)
    eps = torch.finfo(dtype).eps
    for got, expected in zip([output] + gradients, [expected_output] + expected_gradients):
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.float(), expected, rtol=2 * eps, atol=2 * eps * scale,
                                   msg=name)


def test_autocast_runs_a_model_in_float32_through_the_ops():
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        dt.DeformConv2d(8, 8, 3, padding=1, offset_branch=True, modulated=True))
    with torch.no_grad():
        model[1].conv_offset.weight.normal_(0, 0.1)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x)
    assert output.dtype == torch.float32  # the op ran in float32 on the bfloat16 offsets
    # the convolutions ran in bfloat16: within 4 of its ulps of the largest magnitude (this seed
    # is at about half an ulp)
    eps = torch.finfo(torch.bfloat16).eps
    scale = expected.abs().max().item()
    torch.testing.assert_close(output, expected, rtol=0, atol=4 * eps * scale)
    output.sum().backward()
    assert torch.isfinite(model[1].weight.grad).all()
    assert model[1].conv_offset.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.int64, torch.float8_e5m2, torch.complex64, torch.bool],
                         ids=str)
def test_other_dtypes_get_dcn_numbas_error(dtype):
    x, offset, weight = (t.to(dtype) for t in _calls()[0][2][:3])
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(TypeError, match=rf"input must be float32 or float64 \(float16 and bfloat16 "
                                        rf"are computed in float32\), got {name}$"):
        dt.deform_conv2d(x, offset, weight, padding=1)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_tensors_mixed_with_other_dtypes_are_refused_naming_both(dtype):
    x, offset, weight = _calls()[0][2][:3]
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(TypeError, match=f"weight has dtype float32 but input has {name}; all "
                                        "arrays of one call must share a dtype"):
        dt.deform_conv2d(x.to(dtype), offset.to(dtype), weight, padding=1)
    with pytest.raises(TypeError, match=f"offset has dtype {name} but input has float32"):
        dt.deform_roi_pool(*(t.to(dtype) if i == 2 else t for i, t in enumerate(_calls()[1][2])))
