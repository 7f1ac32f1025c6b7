"""How one piece of scalar mathematics is compiled for both targets, and how kernels launch.

`shared` compiles a scalar function with Numba's @njit. CPU kernels call it directly; CUDA
kernels call it through `for_cuda(module)`, which is the module itself on real hardware (Numba
CUDA compiles @njit functions as device functions) and, under the CUDA simulator, a namespace of
the pure-Python originals, because the simulator hands arrays to kernels as wrapped objects that
@njit code cannot unbox.
"""

import math
import types

import numpy as np
from numba import config, njit

from . import _cache

SIMULATED = bool(config.ENABLE_CUDASIM)

# An edit of any kernel source invalidates the cached kernels (see `_cache`).
_cache.install()

# Division by zero gives inf/nan as on the GPU instead of raising, and no bounds checks: the
# kernels are written so that every index is in range (the simulator checks that in the tests).
CPU_OPTIONS = dict(error_model="numpy", cache=True)


def shared(func):
    """Compile a scalar helper for both targets (see the module docstring)."""
    return njit(func, inline="always", **CPU_OPTIONS)


def cpu_kernel(func):
    """A CPU kernel: a parallel loop over an output index space (`numba.prange`)."""
    return njit(func, parallel=True, **CPU_OPTIONS)


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
    # Rebuild every compiled function of the module as plain Python over one globals dict, so
    # that shared functions calling each other also stay in Python under the simulator.
    python_globals = dict(vars(module))
    compiled = {name: f for name, f in vars(module).items() if hasattr(f, "py_func")}
    for name, dispatcher in compiled.items():
        code = dispatcher.py_func
        python_globals[name] = types.FunctionType(
            code.__code__, python_globals, name, code.__defaults__, code.__closure__
        )
    constants = {name: value for name, value in vars(module).items() if isinstance(value, np.generic)}
    return types.SimpleNamespace(**constants, **{name: python_globals[name] for name in compiled})


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

