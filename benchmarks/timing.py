"""Timing helpers the benchmark scripts share: a warm-up call, then the best of several repeats.

The best (minimum) time is the least disturbed by other work on the machine; every ratio a script
prints compares two timings taken in the same run, on the same machine.
"""

import math
import platform
import time

import numpy as np


def best_time(func, repeats=5, warmup=1, synchronize=None):
    """Minimum wall time of `func()` over `repeats` runs after `warmup` untimed runs (seconds).

    `synchronize` (e.g. a CUDA stream synchronize) is called before reading each clock, so that
    asynchronous GPU work is counted.
    """
    for _ in range(warmup):
        func()
    if synchronize:
        synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        if synchronize:
            synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best_times(candidates, rounds, repeats=1, warmup=0):
    """The best time of each closure (name → seconds), timed in turns so that other work on the
    machine weighs on all of them alike. Each turn makes `warmup` untimed runs, then `repeats`
    timed ones: an untimed run lets a library's thread pool wake up after another's has run."""
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(rounds):
        for name, run in candidates.items():
            best[name] = min(best[name], best_time(run, repeats=repeats, warmup=warmup))
    return best


def machine_description():
    """One line naming the machine: processor, core count, Python, NumPy and Numba versions, and
    OpenBLAS's idle-thread spin when the environment sets it."""
    import os

    import numba

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__}, "
            f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}")


def row(name, seconds, baseline_seconds=None, baseline_name=None, width=48):
    """A printed result line: the name padded to `width`, the time, and the ratio to a baseline
    measured in the same run."""
    line = f"{name:<{width}s} {seconds * 1e3:10.2f} ms"
    if baseline_seconds is not None:
        line += f"   {baseline_seconds / seconds:6.2f}x faster than {baseline_name}" if seconds < baseline_seconds \
            else f"   {seconds / baseline_seconds:6.2f}x slower than {baseline_name}"
    return line
