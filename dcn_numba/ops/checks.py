"""Argument checks shared by every op: each error names the argument, what was received and
what was expected, so that the message tells the fix."""

import math
import numbers
import os

import numpy as np

from dcn_numba.runtime.arrays import array_module, contiguous, is_cupy

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
BACKENDS = ("reference", "cpu", "cuda")
# The largest integer argument (sizes, strides, counts): the kernels index in 64-bit integers,
# and products of these must not overflow.
MAX_INT = 2**31 - 1
# The largest stride, padding or dilation of a convolution: a valid call samples within
# H + 2·padding of the origin, and below 2**50 those positions are exact in the kernels' int64
# and float64 arithmetic (a stride of 2**42 with a padding of 2**42 is a valid call).
MAX_DISTANCE = 2**50
# The most samples along one axis of a bin (sampling_ratio, sample_per_part, adaptive grids):
# 256 × 256 samples a bin is far beyond any use, and a bound keeps a wrong argument from
# starting hours of work.
MAX_SAMPLES_PER_AXIS = 256


def as_pair(value, name, minimum, maximum=MAX_INT):
    """(a, b) from an int or a pair of ints, each in [minimum, maximum]."""
    if isinstance(value, numbers.Integral):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in both directions, got {value!r}")
    if max(pair) > maximum:
        raise ValueError(f"{name} must be <= {maximum} in both directions, got {value!r}")
    return pair


def check_ndim(array, name, ndim, layout):
    """`array` has `ndim` dimensions; `layout` spells them out for the message, e.g. '(B, C, H, W)'."""
    if not (isinstance(array, np.ndarray) or is_cupy(array)):
        raise TypeError(
            f"{name} must be a NumPy or CuPy array {layout}, got {type(array).__name__} "
            f"(from {type(array).__module__}; dcn_numba Tensors go through dcn_numba.engine.functional, torch "
            "tensors through dcn_numba.torch)")
    if array.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions {layout}, got shape {tuple(array.shape)}"
        )


def check_shape(array, name, expected, why):
    """`array.shape == expected`; `why` explains where the expected shape comes from."""
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"{name} has shape {tuple(array.shape)}, expected {tuple(expected)} ({why})"
        )


def check_float_dtypes(named_arrays):
    """All arrays share one dtype, float32 or float64; returns it. None entries are skipped."""
    present = [(name, a) for name, a in named_arrays if a is not None]
    first_name, first = present[0]
    if first.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first_name} must be float32 or float64, got {first.dtype}")
    for name, a in present[1:]:
        if a.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {a.dtype} but {first_name} has {first.dtype}; "
                "all arrays of one call must share a dtype"
            )
    return first.dtype


def check_arrays(required, optional=()):
    """Check the arrays of one call: each (name, array, ndim, layout) of `required`, and of
    `optional` where the array is not None, is a NumPy or CuPy array of `ndim` dimensions
    (`check_ndim`), all of one kind and one float dtype (`check_float_dtypes`). Returns their
    array module."""
    present = [*required, *((name, array, ndim, layout) for name, array, ndim, layout in optional
                            if array is not None)]
    for name, array, ndim, layout in present:
        check_ndim(array, name, ndim, layout)
    xp = array_module(*(array for _, array, _, _ in present))
    check_float_dtypes([(name, array) for name, array, _, _ in present])
    return xp


def resolve_backend(backend, uses_cupy):
    """The backend to run: the one asked for, or 'cuda' for CuPy arrays and 'cpu' for NumPy ones.

    The CPU and reference backends need NumPy arrays; the CUDA backend needs CuPy arrays except
    under the Numba CUDA simulator, which runs kernels on NumPy arrays.
    """
    if backend is None:
        return "cuda" if uses_cupy else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend != "cuda" and uses_cupy:
        raise TypeError(
            f"backend={backend!r} runs on NumPy arrays, got CuPy arrays "
            "(use backend='cuda' or None, or move the arrays with cupy.asnumpy)"
        )
    if backend == "cuda" and not uses_cupy:
        from numba import config

        if not config.ENABLE_CUDASIM:
            raise TypeError(
                "backend='cuda' needs CuPy arrays, got NumPy arrays "
                "(move them with cupy.asarray, or set NUMBA_ENABLE_CUDASIM=1 to simulate)"
            )
    return backend


def prepare(backend, xp, *arrays):
    """The backend that runs a validated call, and its arrays made C-contiguous (None stays
    None): kernels index flat memory, so transposed views and stride-0 broadcasts are
    materialised first. Read-only arrays (memory-mapped files, `broadcast_to` views, arrays
    marked writeable=False) are copied once for the kernels: the CUDA simulator writes every
    argument back, and the CPU kernels are compiled for writeable arrays (a read-only one would
    need a compilation of its own, and a kernel that writes one of its arrays or reads it, as a
    flag says, would not compile at all). The caller's array is never written."""
    backend = resolve_backend(backend, is_cupy(arrays[0]))
    copy_read_only = backend != "reference" and xp is np
    return backend, [None if a is None else
                     np.array(a, order="C") if copy_read_only and not a.flags.writeable else contiguous(xp, a)
                     for a in arrays]


def check_grad_output(grad_output, layout):
    """A backward call's grad_output is an array (not None), of the output's layout."""
    if grad_output is None:
        raise TypeError(f"grad_output must be a NumPy or CuPy array {layout}, ∂L/∂output, got None")


def as_int(value, name, minimum=None, maximum=MAX_INT):
    """`value` as an int in [minimum, maximum] (no lower bound when minimum is None; bools are
    not counts)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return int(value)


def check_adaptive_grid(xp, rois, spatial_scale, output_size, sampling_ratio):
    """Adaptive sampling (sampling_ratio <= 0) takes ceil(roi extent · spatial_scale / bins)
    samples per bin and axis: refuse RoIs that would take more than MAX_SAMPLES_PER_AXIS, before
    any work. Non-finite coordinates are left to propagate (they get one sample)."""
    if sampling_ratio > 0 or rois.shape[0] == 0:
        return
    extents = (rois[:, 3:5] - rois[:, 1:3]) * spatial_scale / xp.asarray(output_size[::-1])
    grid = xp.where(xp.isfinite(extents), extents, 0).max()
    if float(grid) > MAX_SAMPLES_PER_AXIS:
        raise ValueError(
            f"rois with spatial_scale = {spatial_scale} give bins of up to {float(grid):.3g} samples per "
            f"axis under adaptive sampling (sampling_ratio = {sampling_ratio}); expected at most "
            f"{MAX_SAMPLES_PER_AXIS}: check the RoIs' coordinates and spatial_scale, or pass "
            "sampling_ratio > 0")


def as_real(value, name, positive=False):
    """`value` as a finite float, > 0 when `positive`."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or (positive and value <= 0):
        expected = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def check_output_bytes(shape, itemsize, name, set_by):
    """An output of `shape` fits in this machine's memory: an absurd size is a clear error here
    rather than a MemoryError, or hours of work, later. `set_by` names the arguments that set
    the shape, for the message."""
    size = math.prod(int(extent) for extent in shape) * itemsize
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if size > memory:
        raise ValueError(f"{name} would have shape {tuple(shape)}, {size:.3g} bytes, more than this "
                         f"machine's {memory:.3g} bytes of memory: check {set_by}")


def check_rois(xp, rois, batch_size):
    """rois is (N, 5) with rows (batch_index, x1, y1, x2, y2) and every batch_index an integer value
    in [0, batch_size). Reading the verdict of a CuPy array waits for the device once."""
    if rois.shape[1:] != (5,):
        raise ValueError(
            f"rois has shape {tuple(rois.shape)}, expected (N, 5): rows (batch_index, x1, y1, x2, y2)"
        )
    batch_index = rois[:, 0]
    wrong = ~((batch_index == xp.floor(batch_index)) & (batch_index >= 0) & (batch_index < batch_size))
    if bool(wrong.any()):
        n = int(xp.argmax(wrong))
        raise ValueError(
            f"rois[{n}, 0] = {float(batch_index[n])!r} is not a batch index: expected an integer value "
            f"in [0, {batch_size}), the input's batch size being {batch_size} "
            "(rows are (batch_index, x1, y1, x2, y2))"
        )
