"""The CPU kernels and the CUDA kernels (simulated without a GPU, on CuPy arrays with one) against
the NumPy reference: forward and all five gradients over randomised shapes and parameters, chunk
sizes, non-contiguous inputs, and finite differences of the CPU kernels on a realistic case."""

import math

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcn_numba import deform_conv2d, deform_conv2d_backward
from dcn_numba.runtime.arrays import array_module
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.kernels import deform_conv as kernels
from dcn_numba.kernels import deform_conv_cpu, deform_conv_cuda
from dcn_numba.ops.deform_conv import output_size
from helpers import KERNEL_BACKENDS, to_backend, to_numpy, assert_op_matches_reference

GRADIENT_NAMES = ["grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]
TOLERANCE = {np.float64: 1e-10, np.float32: 2e-4}


@st.composite
def conv_cases(draw):
    """A random valid call, tiny enough for the CUDA simulator (C ≤ 4, H, W ≤ 6, B ≤ 2)."""
    groups = draw(st.sampled_from([1, 2]))
    offset_groups = draw(st.sampled_from([1, 2]))
    C_in = math.lcm(groups, offset_groups) * draw(st.integers(1, 2))
    C_out = groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    smallest = [max(1, dilation[d] * (kernel[d] - 1) + 1 - 2 * padding[d]) for d in range(2)]
    H = draw(st.integers(smallest[0], max(smallest[0], 6)))
    W = draw(st.integers(smallest[1], max(smallest[1], 6)))
    return dict(
        B=draw(st.sampled_from([0, 1, 2])), C_in=C_in, C_out=C_out, H=H, W=W, kernel=kernel,
        groups=groups, offset_groups=offset_groups, stride=stride, padding=padding, dilation=dilation,
        with_mask=draw(st.booleans()), with_bias=draw(st.booleans()),
        integer_offsets=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_arrays(case):
    """input, offset, weight, bias, mask and grad_output of a case, as NumPy arrays of its dtype.
    Integer offsets put samples exactly on pixels and on the −1 border (the validity rule's edge)."""
    rng = np.random.default_rng(case["seed"])
    kh, kw = case["kernel"]
    H_out = output_size(case["H"], kh, case["stride"][0], case["padding"][0], case["dilation"][0])
    W_out = output_size(case["W"], kw, case["stride"][1], case["padding"][1], case["dilation"][1])
    B, K, dtype = case["B"], kh * kw, case["dtype"]
    offset_shape = (B, 2 * case["offset_groups"] * K, H_out, W_out)
    if case["integer_offsets"]:
        offset = rng.integers(-2, 3, size=offset_shape).astype(float)
    else:
        offset = 1.5 * rng.standard_normal(offset_shape)
    arrays = dict(
        input=rng.standard_normal((B, case["C_in"], case["H"], case["W"])),
        offset=offset,
        weight=rng.standard_normal((case["C_out"], case["C_in"] // case["groups"], kh, kw)),
        bias=rng.standard_normal(case["C_out"]) if case["with_bias"] else None,
        mask=rng.random((B, case["offset_groups"] * K, H_out, W_out)) if case["with_mask"] else None,
        grad_output=rng.standard_normal((B, case["C_out"], H_out, W_out)),
    )
    return {name: None if a is None else a.astype(dtype) for name, a in arrays.items()}


def forward_args(arrays, case):
    return (arrays["input"], arrays["offset"], arrays["weight"], arrays["bias"], case["stride"],
            case["padding"], case["dilation"], arrays["mask"])


def on_backend(backend, arrays):
    return {name: to_backend(backend, a) for name, a in arrays.items()}


def assert_matches_reference(backend, case):
    """Forward and all five gradients of `backend` against the reference computed in float64."""
    params = {k: case[k] for k in ("stride", "padding", "dilation")}
    assert_op_matches_reference(backend, deform_conv2d, deform_conv2d_backward, make_arrays(case),
                                params, GRADIENT_NAMES, TOLERANCE[case["dtype"]])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_cpu_kernels_match_the_reference(case):
    assert_matches_reference("cpu", case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=conv_cases())
def test_cuda_kernels_match_the_reference(case):
    assert_matches_reference("cuda", case)


BASE_CASE = dict(B=2, C_in=4, C_out=4, H=5, W=6, kernel=(3, 2), groups=2, offset_groups=2,
                 stride=(1, 2), padding=(1, 1), dilation=(1, 2), with_mask=True, with_bias=True,
                 integer_offsets=False, dtype=np.float64, seed=11)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("changes", [
    dict(B=1),
    dict(B=0),
    dict(with_mask=False, with_bias=False),
    dict(kernel=(1, 1), padding=(0, 0), dilation=(1, 1), stride=(1, 1)),
    dict(integer_offsets=True, dtype=np.float32),
])
def test_named_cases_match_the_reference(backend, changes):
    assert_matches_reference(backend, {**BASE_CASE, **changes})


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_results_do_not_depend_on_the_chunk_or_tile_size(backend):
    case = {**BASE_CASE, "B": 3}
    arrays = on_backend(backend, make_arrays(case))
    args = forward_args(arrays, case)
    col_bytes_per_image = 4 * 6 * 3 * 3 * 8  # C_in · K · H_out · W_out · 8 bytes
    results = []
    for budget in [1, 2 * col_bytes_per_image, None]:
        output = kernels.deform_conv2d(*args, backend, max_col_buffer_bytes=budget)
        gradients = kernels.deform_conv2d_backward(arrays["grad_output"], *args, backend,
                                                   max_col_buffer_bytes=budget)
        results.append([to_numpy(output)] + [to_numpy(g) for g in gradients])
    for chunked in results[:2]:
        for name, actual, whole in zip(["output"] + GRADIENT_NAMES, chunked, results[2]):
            assert_close(actual, whole, rtol=1e-13, atol=1e-13, what=f"{name} over chunks or tiles")


def test_cpu_results_do_not_depend_on_the_thread_count():
    """The CPU's tiles are independent: the forward and every gradient but grad_weight are the
    same bits with one thread or two; grad_weight, summed per worker, agrees to rounding."""
    case = {**BASE_CASE, "B": 3}
    arrays = make_arrays(case)
    args = forward_args(arrays, case)
    results = []
    threads = numba.get_num_threads()
    try:
        for count in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(count)
            results.append([kernels.deform_conv2d(*args, "cpu", max_col_buffer_bytes=1)]
                           + list(kernels.deform_conv2d_backward(arrays["grad_output"], *args, "cpu",
                                                                 max_col_buffer_bytes=1)))
    finally:
        numba.set_num_threads(threads)
    for name, one, two in zip(["output"] + GRADIENT_NAMES, *results):
        if name == "grad_weight":
            assert_close(one, two, rtol=1e-13, atol=1e-13, what=name)
        else:
            np.testing.assert_array_equal(one, two, err_msg=name)


def test_cpu_tiles_fit_the_budget():
    geometry = kernels.conv_geometry(np.empty((1, 4, 5, 6)), np.empty((1, 36, 5, 6)), np.empty((4, 2, 3, 3)),
                                     (1, 1), (1, 1), (1, 1))
    per_position = 9 * 4 * 8  # K · C_in values of 8 bytes
    assert deform_conv_cpu.positions_per_tile(geometry, 8, 7 * per_position + 1) == 7
    assert deform_conv_cpu.positions_per_tile(geometry, 8, 1) == 1
    assert deform_conv_cpu.positions_per_tile(geometry, 8, None) == 30  # the whole 5 × 6 image fits CPU_TILE_BYTES


def test_chunks_cover_the_batch_within_the_budget():
    assert deform_conv_cuda.batch_chunks(5, 100, 250) == [(0, 2), (2, 4), (4, 5)]
    assert deform_conv_cuda.batch_chunks(3, 100, 1) == [(0, 1), (1, 2), (2, 3)]
    assert deform_conv_cuda.batch_chunks(0, 100, 1000) == []


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous_inputs_and_a_stride_zero_grad_output(backend):
    case = BASE_CASE
    arrays = make_arrays(case)
    rng = np.random.default_rng(12)
    offset_wide = rng.standard_normal(arrays["offset"].shape[:1] + (2 * arrays["offset"].shape[1],)
                                      + arrays["offset"].shape[2:])
    offset_wide[:, ::2] = arrays["offset"]
    bases = on_backend(backend, dict(
        input=arrays["input"].transpose(0, 1, 3, 2).copy(), offset=offset_wide,
        weight=arrays["weight"][:, :, ::-1].copy(), bias=arrays["bias"], mask=arrays["mask"]))
    xp = array_module(bases["input"])
    # Views, made where the backend's arrays live: a transpose, a strided slice, a reversed weight,
    # and the stride-0 broadcast that is the gradient of out.sum().
    views = dict(input=bases["input"].transpose(0, 1, 3, 2), offset=bases["offset"][:, ::2],
                 weight=bases["weight"][:, :, ::-1], bias=bases["bias"], mask=bases["mask"],
                 grad_output=xp.broadcast_to(xp.ones((), dtype=np.float64), arrays["grad_output"].shape))
    assert not views["input"].flags.c_contiguous and views["grad_output"].strides == (0, 0, 0, 0)
    contiguous = {name: np.ascontiguousarray(to_numpy(a)) for name, a in views.items()}

    output = deform_conv2d(*forward_args(views, case), backend=backend)
    assert_close(to_numpy(output), deform_conv2d(*forward_args(contiguous, case), backend="reference"),
                 rtol=1e-10, atol=1e-10, what="output of views")
    gradients = deform_conv2d_backward(views["grad_output"], *forward_args(views, case), backend=backend)
    expected = deform_conv2d_backward(contiguous["grad_output"], *forward_args(contiguous, case),
                                      backend="reference")
    for name, actual, wanted in zip(GRADIENT_NAMES, gradients, expected):
        assert_close(to_numpy(actual), wanted, rtol=1e-10, atol=1e-10, what=f"{name} of views")


def test_cpu_gradients_match_finite_differences_in_a_random_direction():
    """A realistic float64 layer, all five gradients at once along one random direction."""
    rng = np.random.default_rng(13)
    B, C_in, C_out, H, W, groups, offset_groups = 2, 8, 8, 10, 10, 2, 2
    offset_shape = (B, 2 * offset_groups * 9, H, W)
    inputs = dict(
        input=rng.standard_normal((B, C_in, H, W)),
        offset=rng.integers(-2, 3, size=offset_shape) + rng.uniform(0.2, 0.8, size=offset_shape),
        weight=rng.standard_normal((C_out, C_in // groups, 3, 3)),
        bias=rng.standard_normal(C_out),
        mask=rng.uniform(0.1, 1.0, (B, offset_groups * 9, H, W)),
    )

    def forward(**arrays):
        return deform_conv2d(**arrays, padding=1, backend="cpu")

    grad_output = rng.standard_normal((B, C_out, H, W))
    gradients = deform_conv2d_backward(grad_output, **inputs, padding=1, backend="cpu")
    analytic = dict(zip(["input", "offset", "weight", "bias", "mask"], gradients))
    for seed in range(3):
        check_gradients(forward, inputs, grad_output, analytic, mode="random", rtol=1e-6, atol=1e-6,
                        seed=seed)
