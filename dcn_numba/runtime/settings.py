"""Every process-wide setting that dcn_numba makes: the threading layer of the CPU kernels, the
threads of BLAS, and glibc's malloc. Only the first is made on import (of the kernels); the
others are made where the code that needs them runs, or by a command.

1. **The fork-safe threading layer.** The CPU kernels run on Numba's "workqueue" threading layer,
   the one that survives fork(): a process that forks after a kernel (multiprocessing,
   data-loader workers) keeps working, and so do its children. That layer must not be entered by
   two Python threads at once, so `dcn_numba.kernels._targets` holds a lock around every CPU
   kernel: concurrent calls take turns, each using every core. Setting NUMBA_THREADING_LAYER
   chooses another layer instead.

2. **BLAS inside the deformable convolution's CPU kernels.** Each parallel iteration of those
   kernels runs GEMMs of its own tile (BLAS through SciPy), so for the kernel's duration BLAS is
   held to the calling thread (`with one_blas_thread():`), and its previous limits are restored
   afterwards: each core already runs a tile.

3. **BLAS threads beside the parallel deformable kernels.** After each matrix product, OpenBLAS
   keeps its worker threads spinning for about 0.1 s before they sleep. A deformable net runs
   parallel Numba kernels between matrix products, and on a machine with few cores those
   spinning threads take the cores away from them. The engine's speed layer therefore calls
   `leave_the_cores_to_the_kernels()` the first time it runs a deformable CPU kernel: from then
   on BLAS runs on the calling thread and leaves the other cores to the kernels. It works through
   threadpoolctl at run time, whatever was imported first and with no environment variable;
   `python benchmarks/bench_blas_threads.py` measures a training step both ways in one run.

4. **glibc's malloc giving memory back.** A training step allocates and frees tens of MB of
   activations and gradients. malloc hands blocks above a threshold (128 kB at first, rising to
   at most 32 MB as such blocks are freed) straight back to the operating system and trims the
   top of its heap once enough of it is free; the next step then gets fresh pages, which the
   kernel zero-fills one page fault at a time: about 5,000 faults per regular MNIST step at batch
   64, up to a third of its time, on a 2-core machine (`python benchmarks/bench_train_step.py`
   times the step both ways, with `--default-malloc`). `keep_freed_memory()` raises both thresholds so that freed blocks stay with
   malloc for the next step, as CuPy's memory pool keeps GPU memory; the process then holds on to
   its peak memory. It changes the whole process, so the package never calls it on import: the
   training commands and the training-step benchmark do, and a training script of your own can.

Both BLAS settings go through one controller of the process's BLAS libraries (`blas_libraries`).
"""

import ctypes
import functools
import sys

from numba import config

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems.
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 1 << 30


def use_the_fork_safe_threading_layer():
    """Run the CPU kernels on Numba's "workqueue" layer, unless NUMBA_THREADING_LAYER chose one
    (Numba reads the setting at the first parallel kernel)."""
    if config.THREADING_LAYER == "default":
        config.THREADING_LAYER = "workqueue"


@functools.cache
def blas_libraries():
    """The threadpoolctl controller of the process's BLAS libraries, made once, after loading the
    BLAS that the compiled kernels call (Numba reaches it through SciPy), so that it is listed."""
    import scipy.linalg.cython_blas  # noqa: F401  (loaded for its side effect)
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def one_blas_thread():
    """Limit every BLAS library of the process to one thread: for the duration of a `with` block
    (the previous limits are restored after it), or, called alone, from then on. Returns
    threadpoolctl's limiter."""
    return blas_libraries().limit(limits=1, user_api="blas")


@functools.cache
def leave_the_cores_to_the_kernels():
    """Limit BLAS to one thread for the rest of the process (the first call does it, later calls
    nothing): see 3. above. Returns the limiter."""
    return one_blas_thread()


def keep_freed_memory():
    """Make glibc serve blocks under 32 MB from its heap and give heap memory back to the
    operating system only when more than 1 GiB of it is free. Returns True when both settings
    took effect, False where malloc is not glibc's (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
