"""How one piece of scalar mathematics is compiled for both targets, and how kernels run.

`shared` compiles a function of the shared mathematics with Numba's @njit. CPU kernels call it
directly; CUDA kernels call it through `for_cuda(module)`, which is the module itself on real
hardware (Numba CUDA compiles @njit functions as device functions) and, under the CUDA simulator,
a namespace of the pure-Python originals, because the simulator hands arrays to kernels as wrapped
objects that @njit code cannot unbox. The helpers of the CPU kernels' own walks (tiles, buffers,
rows of channels), which no CUDA kernel calls, are compiled by `cpu_helper` instead.

Every step of an op is a `KernelPair` (CPU kernel, CUDA kernel) taking the same arguments, run by
`run(backend, pair, cpu_items, cuda_items, *args)`: the CPU kernel as a parallel loop over
cpu_items, the CUDA kernel over cuda_items threads. The two may walk the index space differently,
and an array argument may come in the layout its target walks best (RoI pooling reads its input
channels last on the CPU, flat on a GPU). Each CUDA kernel declares its argument types where it
is defined (`cuda_kernel`), for ahead-of-time compilation.

The one exception is the deformable convolution's GEMMs, whose two pipelines have different
steps: on the CPU one kernel per pass samples cache-sized tiles and multiplies them with BLAS
inside its parallel loop (run by `run_cpu_calling_blas`), on a GPU four kernels locate, im2col,
col2im and sum the offset and mask gradients around cuBLAS's GEMMs (each run by `run_cuda`).

The CPU kernels run on Numba's fork-safe "workqueue" threading layer
(`dcn_numba.runtime.settings`), which must not be entered by two Python threads at once: every
CPU kernel runs under one lock, so concurrent calls take turns, each using every core.
"""

import functools
import math
import sys
import threading
import types
from typing import NamedTuple

import numba
import numpy as np
from numba import config, cuda, njit

from dcn_numba.runtime.arrays import cuda_stream
from dcn_numba.runtime.settings import one_blas_thread, use_the_fork_safe_threading_layer
from dcn_numba.kernels import _cache

SIMULATED = bool(config.ENABLE_CUDASIM)

# An edit of any kernel source invalidates the cached kernels (see `_cache`).
_cache.install()

use_the_fork_safe_threading_layer()
CPU_KERNEL_LOCK = threading.Lock()

# Division by zero gives inf/nan as on the GPU instead of raising, and no bounds checks: the
# kernels are written so that every index is in range (the simulator checks that in the tests).
CPU_OPTIONS = dict(error_model="numpy", cache=True)


def shared(func):
    """Compile a function of the shared mathematics for both targets (see the module docstring):
    inlined into the CPU kernels that call it, a device function of the CUDA kernels."""
    return njit(func, inline="always", **CPU_OPTIONS)


def cpu_helper(func):
    """Compile a helper of the CPU kernels' walks (buffers, row views, tiles), which CUDA kernels
    never call: inlined into the CPU kernels, as a shared function is."""
    return njit(func, inline="always", **CPU_OPTIONS)


def cpu_kernel(func=None, *, reassociate=False, contract=False):
    """A CPU kernel: a parallel loop over an output index space (`numba.prange`).
    reassociate: as for `serial_kernel`, for a kernel whose owned sums should vectorise.
    contract: the compiler may fuse a multiplication and the addition of its product into one
    multiply-add, rounded once (LLVM's `contract` flag), as the CUDA compiler does by default."""
    if func is None:
        return lambda func: cpu_kernel(func, reassociate=reassociate, contract=contract)
    flags = {"reassoc"} if reassociate else set()
    flags |= {"contract"} if contract else set()
    return njit(func, parallel=True, fastmath=flags or False, **CPU_OPTIONS)


def serial_kernel(func=None, *, reassociate=False):
    """A single-threaded CPU kernel, for the memory-bound passes that the autograd engine runs
    between BLAS calls: a parallel loop there would compete with BLAS's own threads for the cores
    (and Numba's threading layers either spin after a loop or cannot be called from two Python
    threads at once).

    reassociate=True lets the compiler reorder the additions of a sum (LLVM's `reassoc` flag, and
    no other fast-math assumption: NaN and infinities behave as usual), so that a reduction
    vectorises; the sum then differs from a left-to-right one by rounding only."""
    if func is None:
        return lambda func: serial_kernel(func, reassociate=reassociate)
    return njit(func, fastmath={"reassoc"} if reassociate else False, **CPU_OPTIONS)


def for_cuda(module):
    """The object through which CUDA kernels reach the shared functions (and the typed constants)
    of `module`."""
    if not SIMULATED:
        return module
    python = python_functions(module.__name__)
    compiled = [name for name, value in vars(module).items() if hasattr(value, "py_func")]
    constants = {name: value for name, value in vars(module).items() if isinstance(value, np.generic)}
    return types.SimpleNamespace(**constants, **{name: python[name] for name in compiled})


@functools.cache
def python_functions(module_name):
    """The globals of a module with every compiled function rebuilt as plain Python (for the
    simulator): each over the globals of the module that defines it, so that shared functions
    calling each other, across modules too, all stay in Python."""
    python_globals = dict(vars(sys.modules[module_name]))
    for name, value in vars(sys.modules[module_name]).items():
        if not hasattr(value, "py_func"):
            continue
        code = value.py_func
        if code.__module__ != module_name:
            python_globals[name] = python_functions(code.__module__)[code.__name__]
        else:
            python_globals[name] = types.FunctionType(code.__code__, python_globals, name, code.__defaults__,
                                                      code.__closure__)
    return python_globals


THREADS_PER_BLOCK = 256
# Grid-stride loops let any problem size run on a bounded grid; this bound keeps every SM busy.
MAX_BLOCKS = 4096
# The simulator runs one Python thread per CUDA thread: a tiny grid keeps it fast and makes
# every thread walk several elements, so the grid-stride loops themselves are exercised.
SIMULATED_GRID = (2, 8)


def launch(kernel, n_items, stream, *args):
    """Launch `kernel(n_items, *args)` with enough threads to cover `n_items` work items."""
    if n_items == 0:
        return
    if SIMULATED:
        blocks, threads = SIMULATED_GRID
    else:
        threads = THREADS_PER_BLOCK
        blocks = min(MAX_BLOCKS, math.ceil(n_items / threads))
    kernel[blocks, threads, stream](n_items, *args)



class KernelPair(NamedTuple):
    """The CPU kernel and the CUDA kernel of one step: the same arguments (each array in the
    layout its target reads), the same outputs, each walking the index space its own way."""

    cpu: object
    cuda: object


def optional_argument(xp, array, ndim, dtype):
    """(array, True) for an optional argument that is given; for one that is None, an empty
    stand-in of `ndim` dimensions and False: one compiled kernel then serves both cases, its flag
    telling it never to read the stand-in."""
    if array is None:
        return xp.empty((0,) * ndim, dtype=dtype), False
    return array, True


def run(backend, kernels, cpu_items, cuda_items, *args):
    """Run a KernelPair on the "cpu" or "cuda" backend: the CPU kernel as
    kernel(cpu_items, *args), its parallel loop over cpu_items iterations, or the CUDA kernel
    launched over cuda_items threads."""
    if backend == "cpu":
        run_cpu(kernels.cpu, cpu_items, *args)
    else:
        launch(kernels.cuda, cuda_items, cuda_stream(), *args)


def run_cpu(kernel, cpu_items, *args):
    """Run a CPU kernel under the kernels' lock."""
    with CPU_KERNEL_LOCK:
        kernel(cpu_items, *args)


def run_cuda(kernel, cuda_items, *args):
    """Launch a CUDA kernel of the GPU's GEMM pipeline, which has no CPU twin, over cuda_items
    threads."""
    launch(kernel, cuda_items, cuda_stream(), *args)


def run_cpu_calling_blas(kernel, cpu_items, *args):
    """Run a CPU kernel of the CPU's GEMM pipeline, whose parallel iterations call BLAS (a GEMM per
    iteration): BLAS is held to the calling thread for the kernel's duration, since each core
    already runs an iteration of its own and BLAS's worker threads would only compete with them.
    The previous limits are restored afterwards; nothing else in the process changes."""
    with one_blas_thread():
        run_cpu(kernel, cpu_items, *args)


# Argument kinds of the CUDA kernels, each a function of the data's Numba type (float32 or
# float64) giving the argument's type.
def COUNT(dtype):
    return numba.types.int64


def FLAG(dtype):
    return numba.types.boolean


def FLAT(dtype):
    return dtype[::1]


def INDICES(dtype):
    return numba.types.int64[::1]


def ROWS(dtype):
    return dtype[:, ::1]


def BINS(dtype):
    return dtype[:, :, :, ::1]


def geometry_of(geometry_class):
    """The argument kind of a kernel's geometry tuple (a NamedTuple of ints and floats)."""
    example = geometry_class(*(np.float64(1) if kind is float else 1
                               for kind in geometry_class.__annotations__.values()))

    def kind(dtype):
        return numba.typeof(example)
    return kind


CUDA_KERNELS = []  # (kernel, argument kinds) of every kernel made by `cuda_kernel`


def cuda_kernel(*argument_kinds):
    """@cuda.jit, recording the kernel's argument types (the kinds above) in CUDA_KERNELS."""
    def compile_kernel(func):
        kernel = cuda.jit(func)
        CUDA_KERNELS.append((kernel, argument_kinds))
        return kernel
    return compile_kernel


def cuda_kernel_signatures(module=None):
    """(name, CUDA kernel, argument types) of every CUDA kernel declared with `cuda_kernel` (of
    `module` only, when given), in float32 and float64, for compiling them ahead of time."""
    return [(f"{kernel.py_func.__name__}[{dtype}]", kernel, tuple(kind(dtype) for kind in kinds))
            for kernel, kinds in CUDA_KERNELS
            if module is None or kernel.py_func.__module__ == module.__name__
            for dtype in (numba.types.float32, numba.types.float64)]
