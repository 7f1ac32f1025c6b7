"""Two settings of the libraries under the engine that decide how fast a CPU training step runs.

Neither is about dcn_numba's own code; both were measured on the MNIST nets at batch 64 on a
2-core machine (benchmarks/bench_train_step.py).

1. **OpenBLAS's idle threads.** After each matrix product, OpenBLAS keeps its worker threads
   spinning for 2^28 processor cycles (about 0.1 s) before they sleep. The deformable layers run
   parallel Numba kernels between matrix products, and on a machine with few cores those
   spinning threads take the cores away from them: a deformable step took about 260 ms with the
   default and 160 ms with a spin of 2^16 cycles (tens of microseconds), the regular step the
   same 32 ms with both. `quiet_idle_blas_threads()` sets OPENBLAS_THREAD_TIMEOUT=16 unless the
   environment already sets it. OpenBLAS reads it once, when NumPy loads it, so the package
   calls it on import, before it imports NumPy: it takes effect when dcn_numba is imported
   before NumPy (the training command and the benchmarks do so); otherwise set the variable
   yourself.

2. **glibc's malloc giving memory back.** A step allocates and frees tens of MB of activations
   and gradients. malloc hands blocks above a threshold (128 kB at first, rising to at most
   32 MB as such blocks are freed) straight back to the operating system and trims the top of
   its heap once enough of it is free; the next step then gets fresh pages, which the kernel
   zero-fills one page fault at a time: about 5,000 faults per regular step, up to a third of
   its time. `keep_freed_memory()` raises both thresholds so that freed blocks stay with malloc
   for the next step, as CuPy's memory pool keeps GPU memory; the process then holds on to its
   peak memory. It changes the whole process, so the package never calls it on import: the
   training command and the training-step benchmark do, and a training script of your own can.

This module imports nothing but the standard library, so that it can run before NumPy loads.
"""

import ctypes
import os
import sys

# 2^16 cycles: long enough to catch the next matrix product of a layer, short enough to free
# the core for the kernel that runs in between.
OPENBLAS_THREAD_TIMEOUT = "16"

# mallopt's parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems.
MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD = 1 << 30


def quiet_idle_blas_threads():
    """Set OPENBLAS_THREAD_TIMEOUT (log2 of the cycles an idle OpenBLAS thread spins before it
    sleeps) to 16 unless it is set already. Effective only before NumPy is first imported."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)


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
