"""The DCNv3 kernels (CPU, and CUDA under the simulator or on a GPU) against the NumPy reference,
forward and every gradient, in float32 and float64, over random shapes and parameters; the CPU
result is independent of how many threads run it."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcn_numba.kernels import dcnv3 as kernels
from dcn_numba.reference import dcnv3 as reference
from dcnv3_helpers import PARAMETER_NAMES, geometries, random_call
from helpers import KERNEL_BACKENDS, ON_GPU, assert_gradients_match, to_backend, to_numpy
from dcn_numba.reference.gradcheck import assert_close

TOLERANCE = {np.float64: 1e-10, np.float32: 2e-4}


def check_kernels(backend, call, parameters, dtype):
    """Forward and backward of the kernels on `backend`, in `dtype`, against the float64 reference
    on the same (rounded) values."""
    arrays = {name: a.astype(dtype) for name, a in call.items()}
    exact = {name: a.astype(np.float64) for name, a in arrays.items()}
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    values = [parameters[name] for name in PARAMETER_NAMES]
    tolerance = TOLERANCE[dtype]

    output = kernels.dcnv3(moved["input"], moved["offset"], moved["mask"], *values, backend=backend)
    expected = reference.dcnv3(exact["input"], exact["offset"], exact["mask"], **parameters)
    assert output.dtype == dtype
    scale = 1 + float(np.abs(expected).max(initial=0))
    assert_close(to_numpy(output), expected, rtol=tolerance, atol=tolerance * scale,
                 what=f"{backend} output")

    gradients = kernels.dcnv3_backward(moved["grad_output"], moved["input"], moved["offset"],
                                       moved["mask"], *values, backend=backend)
    expected = reference.dcnv3_backward(exact["grad_output"], exact["input"], exact["offset"],
                                        exact["mask"], **parameters)
    assert_gradients_match(backend, ("grad_input", "grad_offset", "grad_mask"), gradients, expected,
                           dtype, tolerance)


# The simulator runs one Python thread per CUDA thread: its shapes stay tiny (a few hundred
# threads), the CPU's and a GPU's may be larger.
SIZES = {"cpu": dict(max_size=6, max_group=3, max_channels=4),
         "cuda": dict(max_size=6, max_group=3, max_channels=4) if ON_GPU
         else dict(max_size=3, max_group=2, max_channels=2)}


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_match_the_reference(backend, dtype):
    @settings(max_examples=25 if backend == "cpu" or ON_GPU else 6, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(geometry=geometries(**SIZES[backend]), seed=st.integers(0, 2**32 - 1))
    def check(geometry, seed):
        shape, parameters = geometry
        check_kernels(backend, random_call(np.random.default_rng(seed), shape, parameters), parameters, dtype)

    check()


def test_an_empty_batch_gives_empty_results():
    parameters = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                      dilation_w=1, group=2, group_channels=2, offset_scale=1.0, remove_center=0)
    call = {name: a[:0] for name, a in random_call(np.random.default_rng(0), (1, 3, 3), parameters).items()}
    values = [parameters[name] for name in PARAMETER_NAMES]
    for backend in KERNEL_BACKENDS:
        moved = {name: to_backend(backend, a) for name, a in call.items()}
        assert kernels.dcnv3(moved["input"], moved["offset"], moved["mask"], *values,
                             backend=backend).shape == (0, 3, 3, 4)
        shapes = [g.shape for g in kernels.dcnv3_backward(moved["grad_output"], moved["input"], moved["offset"],
                                                           moved["mask"], *values, backend=backend)]
        assert shapes == [(0, 3, 3, 4), (0, 3, 3, 36), (0, 3, 3, 18)]


def test_the_cpu_result_does_not_depend_on_the_thread_count():
    """Each output and each gradient element has one owner, so one thread and all give the same
    bits (the iterations' order differs; their sums do not interleave)."""
    import numba

    parameters = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
                      dilation_w=1, group=2, group_channels=3, offset_scale=1.0, remove_center=0)
    call = random_call(np.random.default_rng(1), (2, 5, 5), parameters)
    values = [parameters[name] for name in PARAMETER_NAMES]
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            results.append([kernels.dcnv3(call["input"], call["offset"], call["mask"], *values, backend="cpu"),
                            *kernels.dcnv3_backward(call["grad_output"], call["input"], call["offset"],
                                                    call["mask"], *values, backend="cpu")])
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for one, many in zip(*results):
        assert np.array_equal(one, many)
