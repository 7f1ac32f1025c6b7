"""Where arrays live: NumPy or CuPy, and the little glue the CUDA backend needs.

This is the only module of the ops, the kernels and the engine that touches CuPy (the PyTorch
adapters, dcn_numba.torch, hand CUDA tensors to the ops as CuPy arrays through DLPack, on torch's
stream, themselves). The CUDA simulator never executes the CuPy branches, so they are kept short
enough to verify by reading, and run on hardware whenever a GPU is there.
"""

import numpy as np

try:  # CuPy is optional: without it every array is a NumPy array.
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None


def is_cupy(array):
    """True for a CuPy array (and False whenever CuPy is not installed)."""
    return cupy is not None and isinstance(array, cupy.ndarray)


def gpu_available():
    """True when CuPy is installed and sees at least one CUDA device."""
    try:
        return cupy is not None and cupy.cuda.runtime.getDeviceCount() > 0
    except RuntimeError:  # CuPy's CUDARuntimeError: no driver, or no device
        return False


def array_module(*arrays):
    """The module (numpy or cupy) that owns every array given; None entries are ignored.

    Mixing NumPy and CuPy arrays is a TypeError: dcn_numba never moves data behind your back.
    """
    kinds = {is_cupy(a) for a in arrays if a is not None}
    if len(kinds) > 1:
        raise TypeError(
            "arrays must all be NumPy arrays or all be CuPy arrays; got a mix of both "
            "(move them with cupy.asarray or cupy.asnumpy first)"
        )
    return cupy if kinds == {True} else np


def to_device(array, device):
    """`array` where `device` says: "cpu" gives a NumPy array, "cuda" a CuPy array; no copy when
    it is already there. This is the one explicit transfer (e.g. moving a model, saving it)."""
    if device == "cpu":
        return cupy.asnumpy(array) if is_cupy(array) else np.asarray(array)
    if device == "cuda":
        if cupy is None:
            raise TypeError("device='cuda' needs CuPy (pip install -e '.[cuda]'), which is not installed")
        return cupy.asarray(array)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def contiguous(xp, array):
    """A C-contiguous version of `array` (no copy when it already is one).

    Kernels index flat memory, so views such as transposes and the stride-0 broadcasts that
    `out.sum()` produces as gradients must be materialised first.
    """
    return xp.ascontiguousarray(array)


def cuda_stream():
    """The Numba stream to launch on: CuPy's current stream, so work stays ordered with CuPy's.

    Under the simulator (or without CuPy) kernels run on the default stream.
    """
    from numba import config, cuda

    if config.ENABLE_CUDASIM or cupy is None:
        return 0
    return cuda.external_stream(cupy.cuda.get_current_stream().ptr)
