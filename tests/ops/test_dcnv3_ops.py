"""The public dcnv3, dcnv4 and their backward functions: every backend agrees with the reference
(DCNv4 through DCNv3's kernels, softmax on and off), non-contiguous arrays are accepted and left
unchanged, non-finite values give the same result everywhere, and bad arguments get errors that
name the argument, the value received and the value expected."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcn_numba import dcnv3, dcnv3_backward, dcnv4, dcnv4_backward
from dcnv3_helpers import geometries, packed, random_call
from helpers import KERNEL_BACKENDS, ON_GPU, assert_op_matches_reference, to_backend, to_numpy

PARAMETERS = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                  dilation_w=1, group=2, group_channels=2, offset_scale=1.0, remove_center=False)
SIMULATED_SIZES = dict(max_size=3, max_group=2, max_channels=2)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dcnv4_on_the_kernels_matches_the_reference(backend, dtype):
    simulated = backend == "cuda" and not ON_GPU

    @settings(max_examples=4 if simulated else 15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(geometry=geometries(**(SIMULATED_SIZES if simulated else {})), softmax=st.booleans(),
           seed=st.integers(0, 2**32 - 1))
    def check(geometry, softmax, seed):
        shape, parameters = geometry
        rng = np.random.default_rng(seed)
        call = random_call(rng, shape, parameters)
        arrays = dict(input=call["input"], offset_mask=packed(call["offset"], call["mask"], parameters["group"], rng),
                      grad_output=call["grad_output"])
        arrays = {name: a.astype(dtype) for name, a in arrays.items()}
        assert_op_matches_reference(backend, dcnv4, dcnv4_backward, arrays, dict(parameters, softmax=softmax),
                                    ("grad_input", "grad_offset_mask"), 1e-10 if dtype == np.float64 else 2e-4)

    check()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_dcnv3_through_the_public_function_matches_the_reference(backend):
    call = random_call(np.random.default_rng(2), (1, 3, 3), PARAMETERS)
    assert_op_matches_reference(backend, dcnv3, dcnv3_backward, call, PARAMETERS,
                                ("grad_input", "grad_offset", "grad_mask"), 1e-10)


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
def test_non_contiguous_arrays_are_accepted_and_left_unchanged(backend):
    """Transposed views and the stride-0 broadcast of a sum's gradient give the results of their
    contiguous copies, and no caller's array changes."""
    call = random_call(np.random.default_rng(3), (1, 3, 3), PARAMETERS)
    views = {name: np.asfortranarray(a) for name, a in call.items()}
    views["grad_output"] = np.broadcast_to(np.float64(1.0), call["grad_output"].shape)
    before = {name: a.copy() for name, a in views.items()}
    moved = {name: to_backend(backend, a) for name, a in views.items()}
    output = dcnv3(moved["input"], moved["offset"], moved["mask"], **PARAMETERS, backend=backend)
    gradients = dcnv3_backward(moved["grad_output"], moved["input"], moved["offset"], moved["mask"],
                               **PARAMETERS, backend=backend)
    contiguous = {name: np.ascontiguousarray(a) for name, a in views.items()}
    expected = dcnv3(contiguous["input"], contiguous["offset"], contiguous["mask"], **PARAMETERS, backend="reference")
    np.testing.assert_allclose(to_numpy(output), expected, rtol=1e-10, atol=1e-10)
    expected = dcnv3_backward(contiguous["grad_output"], contiguous["input"], contiguous["offset"],
                              contiguous["mask"], **PARAMETERS, backend="reference")
    for got, wanted in zip(gradients, expected):
        np.testing.assert_allclose(to_numpy(got), wanted, rtol=1e-10, atol=1e-10)
    for name, array in views.items():
        assert np.array_equal(array, before[name]), f"{name} changed"


BAD_VALUES = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("spoiled", ["input", "offset", "mask", "grad_output"])
def test_non_finite_values_give_the_same_result_on_every_backend(spoiled):
    """NaN where the reference has NaN, the same infinities, equal values elsewhere, including a
    NaN mask at a sample outside the image (m · 0 = NaN)."""
    rng = np.random.default_rng(4)
    call = random_call(rng, (1, 3, 3), PARAMETERS)
    bad = call[spoiled].copy()
    where = rng.random(bad.shape) < 0.2
    bad[where] = rng.choice(BAD_VALUES, size=int(where.sum()))
    call[spoiled] = bad
    expected = [dcnv3(call["input"], call["offset"], call["mask"], **PARAMETERS, backend="reference"),
                *dcnv3_backward(call["grad_output"], call["input"], call["offset"], call["mask"], **PARAMETERS,
                                backend="reference")]
    for backend in KERNEL_BACKENDS:
        moved = {name: to_backend(backend, a) for name, a in call.items()}
        actual = [dcnv3(moved["input"], moved["offset"], moved["mask"], **PARAMETERS, backend=backend),
                  *dcnv3_backward(moved["grad_output"], moved["input"], moved["offset"], moved["mask"],
                                  **PARAMETERS, backend=backend)]
        for name, got, wanted in zip(("output", "grad_input", "grad_offset", "grad_mask"), actual, expected):
            got = to_numpy(got)
            assert np.array_equal(np.isnan(got), np.isnan(wanted)), f"{backend} {name}: NaN pattern"
            assert np.array_equal(np.isposinf(got), np.isposinf(wanted)), f"{backend} {name}: +inf"
            finite = np.isfinite(wanted)
            np.testing.assert_allclose(got[finite], wanted[finite], rtol=1e-9, atol=1e-9, err_msg=f"{backend} {name}")


def valid_call():
    return random_call(np.random.default_rng(5), (2, 4, 5), PARAMETERS)


def run_dcnv3(**changes):
    arguments = dict(valid_call(), **PARAMETERS)
    del arguments["grad_output"]
    arguments.update(changes)
    return dcnv3(**arguments)


def test_the_valid_calls_run():
    assert run_dcnv3().shape == (2, 4, 5, 4)
    call = valid_call()
    assert dcnv4(call["input"], packed(call["offset"], call["mask"], 2), **PARAMETERS).shape == (2, 4, 5, 4)


@pytest.mark.parametrize("changes, error, message", [
    (dict(input=np.zeros((4, 5, 4))), ValueError,
     r"input must have 4 dimensions \(N, H, W, C\), channels last, got shape \(4, 5, 4\)"),
    (dict(input=np.zeros((2, 4, 5, 5))), ValueError,
     r"input has C = 5 channels .*expected group·group_channels = 2·2 = 4"),
    (dict(group_channels=None, input=np.zeros((2, 4, 5, 5))), ValueError,
     r"C = 5 channels, which group = 2 does not divide"),
    (dict(offset=np.zeros((2, 4, 5, 35))), ValueError,
     r"offset has shape \(2, 4, 5, 35\), expected \(2, 4, 5, 36\) \(N, H_out, W_out, group·P·2 with N = 2, "
     r"H_out×W_out = 4×5, group = 2, P = kernel_h·kernel_w − remove_center = 9\)"),
    (dict(mask=np.zeros((2, 4, 5, 9))), ValueError, r"mask has shape \(2, 4, 5, 9\), expected \(2, 4, 5, 18\)"),
    (dict(remove_center=True), ValueError, r"offset has shape \(2, 4, 5, 36\), expected \(2, 4, 5, 32\) .*P = .* = 8"),
    (dict(kernel_h=2, remove_center=True), ValueError,
     r"remove_center needs odd kernel_h and kernel_w .*got a 2×3 kernel"),
    (dict(remove_center=2), TypeError, r"remove_center must be a bool \(or the int 0 or 1\), got 2"),
    (dict(kernel_w=0), ValueError, r"kernel_w must be >= 1, got 0"),
    (dict(stride_h=1.5), TypeError, r"stride_h must be an int, got 1.5"),
    (dict(pad_w=-1), ValueError, r"pad_w must be >= 0, got -1"),
    (dict(offset_scale=float("nan")), ValueError, r"offset_scale must be a finite number, got nan"),
    (dict(pad_h=0, kernel_h=7), ValueError,
     r"input of size 4×5 gives an empty output of size -2×5 for a 7×3 kernel"),
    (dict(mask=np.zeros((2, 4, 5, 18), dtype=np.float32)), TypeError, r"mask has dtype float32 but input has float64"),
    (dict(offset=[[0.0]]), TypeError, r"offset must be a NumPy or CuPy array"),
    (dict(backend="gpu"), ValueError, r"backend must be one of"),
])
def test_bad_dcnv3_arguments_are_named(changes, error, message):
    with pytest.raises(error, match=message):
        run_dcnv3(**changes)


def test_bad_dcnv4_and_backward_arguments_are_named():
    call = valid_call()
    offset_mask = packed(call["offset"], call["mask"], 2)
    assert offset_mask.shape[3] == 56  # 3·2·9 = 54, rounded up to a multiple of 8
    with pytest.raises(ValueError, match=r"offset_mask has shape \(2, 4, 5, 54\), expected \(2, 4, 5, 56\) "
                                         r"\(N, H_out, W_out, pad8\(3·group·P\), 3·group·P rounded up"):
        dcnv4(call["input"], offset_mask[..., :54], **PARAMETERS)
    with pytest.raises(TypeError, match=r"softmax must be a bool, got 1"):
        dcnv4(call["input"], offset_mask, **PARAMETERS, softmax=1)
    with pytest.raises(TypeError, match=r"grad_output must be a NumPy or CuPy array \(N, H_out, W_out, C\)"):
        dcnv4_backward(None, call["input"], offset_mask, **PARAMETERS)
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 4, 5, 3\), expected \(2, 4, 5, 4\)"):
        dcnv3_backward(call["grad_output"][..., :3], call["input"], call["offset"], call["mask"], **PARAMETERS)


def test_an_empty_batch_gives_empty_results_on_every_backend():
    call = {name: a[:0] for name, a in valid_call().items()}
    for backend in ["reference", *KERNEL_BACKENDS]:
        moved = {name: to_backend(backend, a) for name, a in call.items()}
        output = dcnv3(moved["input"], moved["offset"], moved["mask"], **PARAMETERS, backend=backend)
        assert output.shape == (0, 4, 5, 4)
        gradients = dcnv3_backward(moved["grad_output"], moved["input"], moved["offset"], moved["mask"],
                                   **PARAMETERS, backend=backend)
        assert [g.shape for g in gradients] == [(0, 4, 5, 4), (0, 4, 5, 36), (0, 4, 5, 18)]
