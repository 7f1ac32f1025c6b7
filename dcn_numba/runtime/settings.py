"""Two settings of the libraries under the engine that decide how fast a CPU training step runs.

Neither is about dcn_numba's own code, and neither is made on import: each is made where the
engine needs it, or by a command. Both were measured on the MNIST nets at batch 64 on a 2-core
machine (benchmarks/bench_train_step.py, benchmarks/bench_blas_threads.py).

1. **BLAS threads beside the parallel deformable kernels.** After each matrix product, OpenBLAS
   keeps its worker threads spinning for about 0.1 s before they sleep. The deformable layers
   run parallel Numba kernels between matrix products, and on a machine with few cores those
   spinning threads take the cores away from them. The engine therefore calls
   `single_threaded_blas()` the first time it runs a deformable CPU kernel (dcn_numba.engine.functional):
   from then on BLAS runs on the calling thread and leaves the other cores to the kernels. It
   works through threadpoolctl at run time, whatever was imported first and with no environment
   variable; benchmarks/bench_blas_threads.py measures the step both ways in one run.

2. **glibc's malloc giving memory back.** A step allocates and frees tens of MB of activations
   and gradients. malloc hands blocks above a threshold (128 kB at first, rising to at most
   32 MB as such blocks are freed) straight back to the operating system and trims the top of
   its heap once enough of it is free; the next step then gets fresh pages, which the kernel
   zero-fills one page fault at a time: about 5,000 faults per regular step, up to a third of
   its time. `keep_freed_memory()` raises both thresholds so that freed blocks stay with malloc
   for the next step, as CuPy's memory pool keeps GPU memory; the process then holds on to its
   peak memory. It changes the whole process, so the package never calls it on import: the
   training command and the training-step benchmark do, and a training script of your own can.

"""

import ctypes
import sys

from threadpoolctl import threadpool_limits

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems.
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 1 << 30


def single_threaded_blas():
    """Limit every BLAS library of the process to one thread, for the rest of the process.
    Returns the limits now in force, as threadpoolctl reports them."""
    return threadpool_limits(limits=1, user_api="blas")


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
