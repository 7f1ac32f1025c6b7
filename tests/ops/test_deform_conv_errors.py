"""Bad input to deform_conv2d gets a clear error naming the argument, what was received and
what was expected; NaN and infinite offsets propagate as NaN, and huge ones read nothing, on every
backend, without crashing."""

import numpy as np
import pytest

from dcn_numba import deform_conv2d, deform_conv2d_backward
from helpers import BACKENDS, ON_GPU, to_backend, to_numpy

B, C_in, C_out, H, W = 2, 4, 6, 5, 5


def valid_arrays():
    """A valid v2 call: 3×3 kernel, padding 1 (so H_out = H), 2 weight groups, 2 offset groups."""
    rng = np.random.default_rng(0)
    return dict(
        input=rng.standard_normal((B, C_in, H, W)),
        offset=rng.standard_normal((B, 2 * 2 * 9, H, W)),
        weight=rng.standard_normal((C_out, C_in // 2, 3, 3)),
        bias=rng.standard_normal(C_out),
        mask=rng.random((B, 2 * 9, H, W)),
    )


def call(**changes):
    arguments = dict(valid_arrays(), padding=1)
    arguments.update(changes)
    return deform_conv2d(**arguments)


def test_the_valid_call_runs():
    assert call().shape == (B, C_out, H, W)


@pytest.mark.parametrize("name, array, message", [
    ("input", np.zeros((C_in, H, W)), r"input must have 4 dimensions \(B, C_in, H, W\), got shape \(4, 5, 5\)"),
    ("offset", np.zeros((B, 36, H)), r"offset must have 4 dimensions .*got shape \(2, 36, 5\)"),
    ("weight", np.zeros((C_out, 2, 3)), r"weight must have 4 dimensions .*got shape \(6, 2, 3\)"),
    ("bias", np.zeros((C_out, 1)), r"bias must have 1 dimensions \(C_out,\), got shape \(6, 1\)"),
    ("mask", np.zeros((B, 18, H)), r"mask must have 4 dimensions .*got shape \(2, 18, 5\)"),
])
def test_wrong_ranks(name, array, message):
    with pytest.raises(ValueError, match=message):
        call(**{name: array})


@pytest.mark.parametrize("changes, message", [
    (dict(offset=np.zeros((B, 35, H, W))),
     r"offset has 35 channels, expected a positive multiple of 2·kh·kw = 18"),
    (dict(offset=np.zeros((B, 0, H, W))), r"offset has 0 channels"),
    (dict(offset=np.zeros((B, 36, H, W + 1))),
     r"offset has shape \(2, 36, 5, 6\), expected \(2, 36, 5, 5\) \(B, 2·offset_groups·kh·kw, H_out, W_out "
     r"with offset_groups = 2, kh·kw = 9, H_out×W_out = 5×5\)"),
    (dict(offset=np.zeros((B + 1, 36, H, W))), r"offset has shape \(3, 36, 5, 5\), expected \(2, 36, 5, 5\)"),
    (dict(offset=np.zeros((B, 3 * 18, H, W))), r"offset_groups = 3, which does not divide C_in = 4"),
    (dict(mask=np.zeros((B, 9, H, W))),
     r"mask has shape \(2, 9, 5, 5\), expected \(2, 18, 5, 5\) .*offset_groups = 2"),
    (dict(mask=np.zeros((B, 18, H - 1, W))), r"mask has shape \(2, 18, 4, 5\), expected \(2, 18, 5, 5\)"),
    (dict(weight=np.zeros((C_out, 3, 3, 3))), r"weight has shape \(6, 3, 3, 3\), expected \(C_out, C_in / groups, kh, kw\)"),
    (dict(weight=np.zeros((C_out, 0, 3, 3))), r"weight has shape \(6, 0, 3, 3\)"),
    (dict(weight=np.zeros((5, 2, 3, 3))), r"weight has C_out = 5 output channels, expected a multiple of groups = 2"),
    (dict(bias=np.zeros(C_out + 1)), r"bias has shape \(7,\), expected \(6,\)"),
    (dict(input=np.zeros((B, C_in, 1, 1)), padding=0),
     r"input of size 1×1 gives an empty output of size -1×-1 for a 3×3 kernel"),
])
def test_inconsistent_shapes(changes, message):
    with pytest.raises(ValueError, match=message):
        call(**changes)


@pytest.mark.parametrize("changes, error, message", [
    (dict(padding=-1), ValueError, r"padding must be >= 0 in both directions, got -1"),
    (dict(padding=(1, -2)), ValueError, r"padding must be >= 0 in both directions, got \(1, -2\)"),
    (dict(stride=0), ValueError, r"stride must be >= 1 in both directions, got 0"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be >= 1 in both directions, got \(1, 0\)"),
    (dict(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    (dict(stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair of ints"),
])
def test_bad_stride_padding_dilation(changes, error, message):
    with pytest.raises(error, match=message):
        call(**changes)


def test_mixed_dtypes_are_a_type_error():
    arrays = valid_arrays()
    with pytest.raises(TypeError, match=r"offset has dtype float32 but input has float64"):
        call(offset=arrays["offset"].astype(np.float32))
    with pytest.raises(TypeError, match=r"mask has dtype float32 but input has float64"):
        call(mask=arrays["mask"].astype(np.float32))


def test_integer_arrays_and_non_arrays_are_type_errors():
    with pytest.raises(TypeError, match=r"input must be float32 or float64, got int64"):
        call(**{name: a.astype(np.int64) for name, a in valid_arrays().items()})
    with pytest.raises(TypeError, match=r"input must be a NumPy or CuPy array \(B, C_in, H, W\), got list"):
        call(input=[[[[1.0]]]])


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('reference', 'cpu', 'cuda'\) or None, got 'gpu'"):
        call(backend="gpu")


@pytest.mark.skipif(not ON_GPU, reason="mixing NumPy and CuPy arrays needs CuPy and a GPU")
def test_mixed_numpy_and_cupy_arrays_are_a_type_error():
    import cupy

    arrays = valid_arrays()
    with pytest.raises(TypeError, match=r"all be NumPy arrays or all be CuPy arrays"):
        call(offset=cupy.asarray(arrays["offset"]))
    with pytest.raises(TypeError, match=r"backend='cpu' runs on NumPy arrays, got CuPy arrays"):
        call(**{name: cupy.asarray(a) for name, a in arrays.items()}, backend="cpu")


def test_backward_checks_grad_output():
    arrays = valid_arrays()
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 6, 5, 4\), expected \(2, 6, 5, 5\)"):
        deform_conv2d_backward(np.zeros((B, C_out, H, W - 1)), **arrays, padding=1)
    with pytest.raises(ValueError, match=r"grad_output must have 4 dimensions"):
        deform_conv2d_backward(np.zeros((B, C_out, H)), **arrays, padding=1)
    with pytest.raises(TypeError, match=r"grad_output has dtype float32 but input has float64"):
        deform_conv2d_backward(np.zeros((B, C_out, H, W), dtype=np.float32), **arrays, padding=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_offsets_give_nan_without_crashing(backend, bad):
    arrays = valid_arrays()
    arrays["offset"][0, 0, 2, 3] = bad  # Δy of tap 0, offset group 0, at output (2, 3) of image 0
    arrays["offset"][1, 2 * 9 + 1, 0, 0] = bad  # Δx of tap 0, offset group 1, at output (0, 0) of image 1
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    output = to_numpy(deform_conv2d(**moved, padding=1, backend=backend))
    poisoned = np.zeros(output.shape, dtype=bool)
    poisoned[0, :C_out // 2, 2, 3] = True  # offset group 0 = weight group 0 feeds output channels 0..2
    poisoned[1, C_out // 2:, 0, 0] = True  # offset group 1 = weight group 1 feeds output channels 3..5
    assert np.isnan(output[poisoned]).all()
    assert np.isfinite(output[~poisoned]).all()

    grad_output = to_backend(backend, np.ones(output.shape))
    gradients = deform_conv2d_backward(grad_output, **moved, padding=1, backend=backend)
    grad_input, grad_offset, grad_weight, grad_bias, grad_mask = (to_numpy(g) for g in gradients)
    assert np.isnan(grad_offset[0, 0:2, 2, 3]).all() and np.isnan(grad_offset[1, 18:20, 0, 0]).all()
    assert np.isnan(grad_mask[0, 0, 2, 3]) and np.isnan(grad_mask[1, 9, 0, 0])
    assert np.isfinite(grad_offset[0, 2:]).all() and np.isfinite(grad_input).all()
    assert np.isnan(grad_weight).any() and np.isfinite(grad_bias).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_offsets_read_nothing_on_every_backend(backend):
    """Finite offsets far beyond the image (too big for an integer pixel index) give the bias."""
    arrays = valid_arrays()
    arrays["offset"] = np.where(arrays["offset"] > 0, 1e30, -1e30)
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    output = to_numpy(deform_conv2d(**moved, padding=1, backend=backend))
    np.testing.assert_array_equal(output, np.broadcast_to(arrays["bias"][None, :, None, None], output.shape))
    gradients = deform_conv2d_backward(to_backend(backend, np.ones(output.shape)), **moved, padding=1,
                                       backend=backend)
    for name, gradient in zip(["grad_input", "grad_offset", "grad_weight", "grad_mask"],
                              [gradients[0], gradients[1], gradients[2], gradients[4]]):
        assert not to_numpy(gradient).any(), f"{name} should be zero when no sample reads a pixel"
