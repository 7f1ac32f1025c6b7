"""The arrays real code hands the ops: read-only ones (memory-mapped files, broadcast views, arrays
marked writeable=False) run on every backend and are never written; huge strides that make a
valid call are accepted; the memory cap names the arguments that set the output; NaN or infinite
RoI coordinates give the reference's result on every backend."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba import (deform_conv2d, deform_conv2d_backward, deform_psroi_pool, deform_psroi_pool_backward,
                       deform_roi_pool, deform_roi_pool_backward)
from dcn_numba.ops.checks import MAX_DISTANCE
from helpers import BACKENDS, to_backend, to_numpy
from ops.test_non_finite import run_everywhere


def conv_case(rng):
    arrays = dict(grad_output=rng.standard_normal((1, 3, 4, 4)), input=rng.standard_normal((1, 2, 4, 4)),
                  offset=0.7 * rng.standard_normal((1, 18, 4, 4)), weight=rng.standard_normal((3, 2, 3, 3)),
                  bias=rng.standard_normal(3), mask=rng.random((1, 9, 4, 4)))
    return deform_conv2d, deform_conv2d_backward, arrays, dict(padding=1)


def roi_case(rng):
    arrays = dict(grad_output=rng.standard_normal((2, 2, 2, 2)), input=rng.standard_normal((1, 2, 5, 5)),
                  rois=np.array([[0, 0.5, 0.5, 4.0, 3.5], [0, -1.0, 1.0, 6.0, 4.0]]),
                  offset=rng.standard_normal((2, 2, 2, 2)))
    return deform_roi_pool, deform_roi_pool_backward, arrays, dict(output_size=2, sampling_ratio=2)


def psroi_case(rng):
    arrays = dict(grad_output=rng.standard_normal((2, 2, 2, 2)), input=rng.standard_normal((1, 8, 5, 5)),
                  rois=np.array([[0, 0.0, 0.0, 4.0, 3.0], [0, 1.0, 1.0, 6.0, 4.0]]),
                  trans=rng.standard_normal((2, 2, 2, 2)))
    return (deform_psroi_pool, deform_psroi_pool_backward, arrays,
            dict(output_dim=2, group_size=2, pooled_size=2, sample_per_part=2))


CASES = {"deform_conv2d": conv_case, "deform_roi_pool": roi_case, "deform_psroi_pool": psroi_case}


def call(forward, backward, arrays, parameters, backend):
    """(output, *gradients) of one forward and backward call on `backend`, as NumPy arrays."""
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    inputs = {name: a for name, a in moved.items() if name != "grad_output"}
    results = [forward(**inputs, **parameters, backend=backend)]
    results += backward(**moved, **parameters, backend=backend)
    return [to_numpy(r) for r in results]


def read_only(kind, array, folder):
    """`array` as code meets it read-only: memory-mapped from a .npy file, a stride-0 broadcast of
    one row, or an ordinary array marked writeable=False. Each holds the same values."""
    if kind == "memory-mapped":
        path = folder / f"{array.size}_{abs(hash(array.tobytes()))}.npy"
        np.save(path, array)
        return np.load(path, mmap_mode="r")
    if kind == "broadcast":
        # Values equal along the first axis, so that the broadcast view holds them.
        return np.broadcast_to(array[:1], array.shape)
    frozen = array.copy()
    frozen.flags.writeable = False
    return frozen


@pytest.mark.parametrize("op", list(CASES))
@pytest.mark.parametrize("kind", ["memory-mapped", "broadcast", "writeable=False"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_inputs_give_the_results_of_writeable_ones(op, kind, backend, tmp_path):
    forward, backward, arrays, parameters = CASES[op](np.random.default_rng(1))
    if kind == "broadcast":  # a broadcast view repeats its first row: the writeable twin does too
        arrays = {name: np.repeat(a[:1], len(a), axis=0) for name, a in arrays.items()}
    frozen = {name: read_only(kind, a, tmp_path) for name, a in arrays.items()}
    assert not any(a.flags.writeable for a in frozen.values())
    expected = call(forward, backward, arrays, parameters, "reference")
    for got, wanted in zip(call(forward, backward, frozen, parameters, backend), expected):
        if wanted is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, wanted, rtol=1e-9, atol=1e-9)
    for name, a in arrays.items():  # the read-only arrays still hold what they were made from
        np.testing.assert_array_equal(frozen[name], a)


@pytest.mark.parametrize("op", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_backend_writes_its_inputs(op, backend):
    forward, backward, arrays, parameters = CASES[op](np.random.default_rng(2))
    before = {name: a.copy() for name, a in arrays.items()}
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    call(forward, backward, moved, parameters, backend)
    for name, a in moved.items():
        np.testing.assert_array_equal(to_numpy(a), before[name], err_msg=f"{backend} wrote {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stride_of_2_to_the_42_with_a_padding_that_makes_the_call_valid(backend):
    """padding = stride = 2⁴² on a 5×5 input with a 3×3 kernel: 3×3 outputs, of which only (1, 1)
    samples the image, at 2⁴² − 2⁴² + k = k: the one output of a stride-5 call without padding."""
    rng = np.random.default_rng(3)
    x, weight = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    offset = 0.4 * rng.standard_normal((1, 18, 3, 3))
    big = 2**42
    output = to_numpy(deform_conv2d(*(to_backend(backend, a) for a in (x, offset, weight)),
                                    stride=big, padding=big, backend=backend))
    one = deform_conv2d(x, offset[:, :, 1:2, 1:2], weight, stride=5, backend="reference")
    assert output.shape == (1, 3, 3, 3)
    np.testing.assert_allclose(output[:, :, 1, 1], one[:, :, 0, 0], rtol=1e-12, atol=1e-12)
    output[:, :, 1, 1] = 0
    np.testing.assert_array_equal(output, 0.0)  # every other output samples outside: zeros
    grad_input = deform_conv2d_backward(*(to_backend(backend, a) for a in (np.ones((1, 3, 3, 3)), x, offset,
                                                                          weight)),
                                        stride=big, padding=big, backend=backend)[0]
    expected = deform_conv2d_backward(np.ones((1, 3, 1, 1)), x, offset[:, :, 1:2, 1:2], weight, stride=5,
                                      backend="reference")[0]
    np.testing.assert_allclose(to_numpy(grad_input), expected, rtol=1e-12, atol=1e-12)


def test_a_stride_beyond_the_exact_range_is_refused_saying_why():
    x, offset, weight = np.zeros((1, 1, 4, 4)), np.zeros((1, 18, 1, 1)), np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match=f"stride must be <= {MAX_DISTANCE} in both directions, got {2**51}"):
        deform_conv2d(x, offset, weight, stride=2**51)


@pytest.mark.parametrize("call_op, names", [
    (lambda: deform_roi_pool(np.zeros((1, 2, 4, 4)), np.zeros((1, 5)), output_size=10**6),
     "output_size, the number of rois and input's channels"),
    (lambda: deform_psroi_pool(np.zeros((1, 2, 4, 4)), np.zeros((1, 5)), output_dim=2, pooled_size=10**6),
     "pooled_size, output_dim and the number of rois"),
    (lambda: deform_conv2d(np.zeros((1, 1, 4, 4)), np.zeros((1, 2, 1, 1)), np.zeros((1, 1, 1, 1)),
                           padding=2**40),
     "input's batch and size, weight's C_out, stride, padding and dilation"),
], ids=["output_size", "pooled_size", "stride-padding"])
def test_the_memory_cap_names_the_arguments_that_set_the_output(call_op, names):
    with pytest.raises(ValueError, match=f"bytes of memory: check {names}"):
        call_op()


ROI_COLUMNS = {1: "x1", 2: "y1", 3: "x2", 4: "y2"}


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("op", ["deform_roi_pool", "adaptive deform_roi_pool", "deform_psroi_pool"])
def test_non_finite_roi_coordinates_agree_on_every_backend(op, value, seed):
    rng = np.random.default_rng(seed)
    forward, backward, arrays, parameters = CASES[op.split()[-1]](rng)
    if op.startswith("adaptive"):
        parameters = dict(parameters, sampling_ratio=0)
    gradient = "grad_offset" if "offset" in arrays else "grad_trans"
    for column in ROI_COLUMNS:
        spoiled = dict(arrays, rois=arrays["rois"].copy())
        spoiled["rois"][rng.integers(2), column] = value
        run_everywhere(forward, backward, list(spoiled.values()), ["output", "grad_input", gradient], parameters)


def test_x2_minus_infinity_pools_a_thin_finite_roi_in_psroi_pooling():
    """The one place a non-finite coordinate vanishes, as the specification says: max(end − start,
    0.1) makes x2 = −∞ a RoI 0.1 wide, the same as x2 = x1 − 1 (end − start = 0 < 0.1)."""
    forward, _, arrays, parameters = psroi_case(np.random.default_rng(4))
    infinite, thin = arrays["rois"].copy(), arrays["rois"].copy()
    infinite[0, 3], thin[0, 3] = -np.inf, thin[0, 1] - 1
    for backend in BACKENDS:
        pooled = [to_numpy(forward(to_backend(backend, arrays["input"]), to_backend(backend, rois),
                                   to_backend(backend, arrays["trans"]), **parameters, backend=backend))
                  for rois in (infinite, thin)]
        assert np.isfinite(pooled[0]).all(), backend
        np.testing.assert_allclose(pooled[0], pooled[1], rtol=1e-12, atol=1e-12, err_msg=backend)
