"""Helpers the tests share: the backend axis and moving arrays to where a backend runs."""

import os

import numpy as np

BACKENDS = ["reference", "cpu", "cuda"]
KERNEL_BACKENDS = ["cpu", "cuda"]
ON_GPU = os.environ.get("NUMBA_ENABLE_CUDASIM") == "0"


def to_backend(backend, array):
    """The array as the backend takes it: CuPy on a real GPU for 'cuda', NumPy otherwise."""
    if array is None or backend != "cuda" or not ON_GPU:
        return array
    import cupy

    return cupy.asarray(array)


def to_numpy(array):
    """A NumPy copy of a NumPy or CuPy array (None stays None)."""
    if array is None or isinstance(array, np.ndarray):
        return array
    import cupy

    return cupy.asnumpy(array)


def assert_gradients_match(backend, names, gradients, expected, dtype, tolerance):
    """Each gradient a backend returned equals the reference's (None where the reference gives
    None), in the input dtype; the absolute tolerance grows with the gradient's magnitude."""
    from dcn_numba.reference.gradcheck import assert_close

    for name, actual, wanted in zip(names, gradients, expected):
        if wanted is None:
            assert actual is None, f"{backend} {name} should be None"
            continue
        scale = 1 + float(np.abs(wanted).max(initial=0))
        assert actual.dtype == dtype, f"{backend} {name} dtype"
        assert_close(to_numpy(actual), wanted, rtol=tolerance, atol=tolerance * scale,
                     what=f"{backend} {name}")


def assert_op_matches_reference(backend, op, op_backward, arrays, params, gradient_names, tolerance):
    """The kernel test every op shares: `op` and `op_backward` run by `backend` against the reference
    computed in float64 from the same arrays, output first, then every gradient.

    arrays: {argument name: NumPy array of the case's dtype, or None}, the op's array arguments and
    "grad_output"; params: the op's other keyword arguments.
    """
    from dcn_numba.reference.gradcheck import assert_close

    dtype = arrays["input"].dtype
    exact = {name: None if a is None else a.astype(np.float64) for name, a in arrays.items()}
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}

    def without_grad(given):
        return {name: a for name, a in given.items() if name != "grad_output"}

    output = op(**without_grad(moved), **params, backend=backend)
    expected = op(**without_grad(exact), **params, backend="reference")
    assert output.dtype == dtype, f"{backend} output is {output.dtype}, expected {dtype}"
    assert_close(to_numpy(output), expected, rtol=tolerance, atol=tolerance, what=f"{backend} output")

    gradients = op_backward(**moved, **params, backend=backend)
    expected = op_backward(**exact, **params, backend="reference")
    assert_gradients_match(backend, gradient_names, gradients, expected, dtype, tolerance)
