"""dcn_numba.cpu_runtime: the OpenBLAS setting made on import, and keep_freed_memory, after which
a loop that frees and allocates the same big arrays stops faulting in fresh pages. Each runs in a
child process: both settings are for the whole process and must come before NumPy's."""

import os
import subprocess
import sys

import pytest


def run_child(code, **environment):
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=env)
    return result.stdout.split()


SEEN_BY_NUMPY = "import os, dcn_numba, numpy; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"


def test_import_quiets_idle_blas_threads_before_numpy_loads():
    assert run_child(SEEN_BY_NUMPY) == ["16"]


def test_import_keeps_a_timeout_set_by_the_user():
    assert run_child(SEEN_BY_NUMPY, OPENBLAS_THREAD_TIMEOUT="20") == ["20"]


FAULTS = """
import resource
import numpy as np
from dcn_numba.cpu_runtime import keep_freed_memory

def faults_per_step():
    def step():
        # 16 × 2 MB, then freed: under the size NumPy asks huge pages for, so 4 kB pages.
        arrays = [np.ones(1 << 19, dtype=np.float32) for _ in range(16)]
        return sum(float(a[-1]) for a in arrays)
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5

default = faults_per_step()
applied = keep_freed_memory()
print(default, applied, faults_per_step())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's")
def test_keep_freed_memory_stops_page_faults():
    default, applied, kept = run_child(FAULTS)
    if applied == "False":
        pytest.skip("this Linux's malloc is not glibc's")
    # 32 MB freed and allocated again per step: up to 8,192 pages of 4 kB.
    if float(default) < 100:
        pytest.skip(f"only {default} page faults per step with malloc's defaults here: nothing to stop")
    assert float(kept) < 0.1 * float(default)
