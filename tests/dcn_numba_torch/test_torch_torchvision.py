"""dcn_numba.torch held to what torchvision's own tests ask of its deformable convolution and
position-sensitive RoIAlign, written here for dcn_numba: values against
torchvision.ops.deform_conv2d, gradchecks in eager mode and through TorchScript, on batches of 0 and 33, contiguous or not, and
the layer compiled by TorchScript. Where the two differ by design (the offset gradient at exactly
p = −1, error classes; docs/torch.md) the tests say so.

Needs torch and torchvision, which dcn_numba does not require: without them the tests skip, saying
so (`make torch-check` runs them).
"""

import warnings
from typing import Tuple

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed "
                                                        "(pip install -e '.[torch]')")
dt = pytest.importorskip("dcn_numba.torch")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# torchvision's test geometry: 6 → 2 channels, 2 weight groups, 3 offset groups, a 3×2 kernel,
# stride (2, 1), padding (1, 0), dilation (2, 1) on 5×4 inputs: a 2×3 output
STRIDE, PADDING, DILATION = (2, 1), (1, 0), (2, 1)


def _conv_tensors(batch_size, contiguous, seed=0):
    """x, offset, mask, weight, bias in float64, needing gradients; contiguous=False gives the
    same values through permuted memory."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape, uniform=False):
        values = (torch.rand if uniform else torch.randn)(*shape, generator=generator,
                                                           dtype=torch.float64)
        return values.requires_grad_()

    x = tensor(batch_size, 6, 5, 4, uniform=True)
    offset = tensor(batch_size, 3 * 2 * 6, 2, 3)
    mask = tensor(batch_size, 3 * 6, 2, 3)
    weight = tensor(2, 3, 3, 2)
    bias = tensor(2)
    if not contiguous:
        def strided(t):
            return t.detach().permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2).requires_grad_()
        x, offset, mask, weight = (strided(t) for t in (x, offset, mask, weight))
        assert not weight.is_contiguous()
        assert batch_size == 0 or not x.is_contiguous()  # an empty tensor is contiguous
    return x, offset, mask, weight, bias


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch_size", [0, 33])
def test_layer_forward_and_gradients_equal_torchvision(batch_size, contiguous):
    x, offset, mask, weight, bias = _conv_tensors(batch_size, contiguous)
    layer = dt.DeformConv2d(6, 2, (3, 2), STRIDE, PADDING, DILATION, groups=2).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    for given_mask in (mask, None):
        ours = layer(x, offset, given_mask)
        theirs = torchvision.ops.deform_conv2d(x, offset, layer.weight, layer.bias, STRIDE,
                                               PADDING, DILATION, given_mask)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
        inputs = [t for t in (x, offset, given_mask, layer.weight, layer.bias) if t is not None]
        g = torch.randn(ours.shape, dtype=torch.float64)
        for mine, other in zip(torch.autograd.grad(ours, inputs, g),
                               torch.autograd.grad(theirs, inputs, g)):
            torch.testing.assert_close(mine, other, rtol=0, atol=1e-12)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch_size", [0, 33])
def test_gradcheck_with_and_without_mask(batch_size, contiguous):
    x, offset, mask, weight, bias = _conv_tensors(batch_size, contiguous)

    def with_mask(x, offset, mask, weight, bias):
        return dt.deform_conv2d(x, offset, weight, bias, STRIDE, PADDING, DILATION, mask)

    def without_mask(x, offset, weight, bias):
        return dt.deform_conv2d(x, offset, weight, bias, STRIDE, PADDING, DILATION, None)

    assert torch.autograd.gradcheck(with_mask, (x, offset, mask, weight, bias), fast_mode=True)
    assert torch.autograd.gradcheck(without_mask, (x, offset, weight, bias), fast_mode=True)


def _conv(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
          bias: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
          dilation: Tuple[int, int]) -> torch.Tensor:
    return dt.deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding,
                            dilation=dilation, mask=mask)


def _conv_without_mask(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, stride: Tuple[int, int], padding: Tuple[int, int],
                       dilation: Tuple[int, int]) -> torch.Tensor:
    return dt.deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding,
                            dilation=dilation, mask=None)


with warnings.catch_warnings():  # TorchScript is deprecated, and still what these tests check
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    _scripted_conv = torch.jit.script(_conv)
    _scripted_conv_without_mask = torch.jit.script(_conv_without_mask)
    _scripted_ps_pool = torch.jit.script(dt.deform_psroi_pool)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("batch_size", [0, 33])
def test_gradcheck_through_torchscript(batch_size, contiguous):
    x, offset, mask, weight, bias = _conv_tensors(batch_size, contiguous)
    assert torch.autograd.gradcheck(
        lambda *t: _scripted_conv(*t, STRIDE, PADDING, DILATION),
        (x, offset, mask, weight, bias), fast_mode=True)
    assert torch.autograd.gradcheck(
        lambda *t: _scripted_conv_without_mask(*t, STRIDE, PADDING, DILATION),
        (x, offset, weight, bias), fast_mode=True)
    torch.testing.assert_close(
        _scripted_conv(x, offset, mask, weight, bias, STRIDE, PADDING, DILATION),
        torchvision.ops.deform_conv2d(x, offset, weight, bias, STRIDE, PADDING, DILATION, mask),
        rtol=0, atol=1e-12)


def test_torchscript_compiles_the_layer_as_torchvisions():
    torch.manual_seed(1)
    theirs = torchvision.ops.DeformConv2d(in_channels=8, out_channels=8, kernel_size=3)
    ours = dt.DeformConv2d(in_channels=8, out_channels=8, kernel_size=3)
    ours.load_state_dict(theirs.state_dict())
    scripted = torch.jit.script(ours)
    x, offset = torch.randn(2, 8, 6, 5), torch.randn(2, 18, 4, 3)
    torch.testing.assert_close(scripted(x, offset), theirs(x, offset), rtol=1e-5, atol=1e-5)


def test_wrong_sizes_are_value_errors_naming_the_argument():
    """torchvision raises RuntimeError ("the shape of the offset", "mask.shape[1] is not valid");
    dcn_numba raises the ValueError of its NumPy API, naming the shape received and expected."""
    x, offset, mask, _, _ = _conv_tensors(10, True)
    layer = dt.DeformConv2d(6, 2, (3, 2), STRIDE, PADDING, DILATION, groups=2).double()
    with pytest.raises(ValueError, match=r"^offset has 6 channels, expected a positive multiple "
                                         r"of 2·kh·kw = 12"):
        layer(x, offset[:, :6])
    with pytest.raises(ValueError, match=r"^mask has shape \(10, 2, 2, 3\), expected "
                                         r"\(10, 18, 2, 3\)"):
        layer(x, offset, mask[:, :2])

# ---------------------------------------------------------------------------------------------
# Position-sensitive pooling, as torchvision's PSRoIAlign backward tests: dcn_numba's
# deform_psroi_pool with group_size = pooled_size and no trans is position-sensitive RoI pooling
# (its own rounding of the RoIs, so values are not comparable; gradients are checked)


POOLED = 2
ROIS = [[0, 0, 0, 4, 4], [0, 0, 2, 3, 4], [0, 2, 2, 4, 4]]  # (batch_index, x1, y1, x2, y2)


def _ps_pool(x, rois, trans=None):
    return dt.deform_psroi_pool(x, rois, trans, 1.0, 2, POOLED, POOLED, None, 1, 0.1)


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
@pytest.mark.parametrize("seed", range(10))
def test_position_sensitive_pooling_gradcheck_eager_and_scripted(seed, contiguous):
    torch.manual_seed(seed)
    x = torch.rand(1, 2 * POOLED ** 2, 5, 5, dtype=torch.float64)
    if not contiguous:
        x = x.permute(0, 1, 3, 2)
    x.requires_grad_()
    rois = torch.tensor(ROIS, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: _ps_pool(x, rois), (x,))
    assert torch.autograd.gradcheck(
        lambda x: _scripted_ps_pool(x, rois, None, 1.0, 2, POOLED, POOLED, None, 1, 0.1), (x,),
        fast_mode=True)
    assert torch.equal(_ps_pool(x, rois),
                       _scripted_ps_pool(x, rois, None, 1.0, 2, POOLED, POOLED, None, 1, 0.1))


@pytest.mark.parametrize("seed", range(3))
def test_deformable_position_sensitive_pooling_gradcheck_in_input_and_trans(seed):
    """With trans: the bins move by fractions of a pixel, away from the integer positions where
    the bilinear slope jumps."""
    torch.manual_seed(seed)
    x = torch.rand(1, 2 * POOLED ** 2, 5, 5, dtype=torch.float64, requires_grad=True)
    trans = (torch.rand(3, 2, POOLED, POOLED, dtype=torch.float64) * 0.6 - 0.3).requires_grad_()
    rois = torch.tensor(ROIS, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, trans: _ps_pool(x, rois, trans), (x, trans))
