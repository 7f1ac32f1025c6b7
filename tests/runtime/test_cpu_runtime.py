"""dcn_numba.runtime.settings: BLAS limited to one thread once the engine's speed layer runs a deformable
CPU kernel, whatever was imported first, and keep_freed_memory, after which a loop that frees and allocates
the same big arrays stops faulting in fresh pages. Each runs in a child process: both settings
are for the whole process."""

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


# NumPy imported first, as user code and the tutorials do; the speed layer switched on, as the
# training commands do; one training step of a net, then the BLAS threads threadpoolctl reports,
# and whether the package set OPENBLAS_THREAD_TIMEOUT.
TRAINING_STEP = """
import os
import numpy as np
from threadpoolctl import threadpool_info
from dcn_numba import speed
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.apps.mnist.models import MnistNet

speed.switch_on()

def blas_threads():
    return max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")

before = blas_threads()
net = MnistNet(deformable={deformable})
images = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
F.cross_entropy(net(Tensor(images)), np.array([1, 2])).backward()
print(before, blas_threads(), "OPENBLAS_THREAD_TIMEOUT" in os.environ)
"""


def test_a_deformable_step_leaves_blas_one_thread_whatever_was_imported_first():
    before, after, variable_set = run_child(TRAINING_STEP.format(deformable=True),
                                            OPENBLAS_NUM_THREADS="2")
    assert before == "2"
    assert after == "1"
    assert variable_set == "False"


def test_a_regular_step_keeps_the_blas_threads():
    before, after, _ = run_child(TRAINING_STEP.format(deformable=False), OPENBLAS_NUM_THREADS="2")
    assert before == "2"
    assert after == "2"


FAULTS = """
import resource
import numpy as np
from dcn_numba.runtime.settings import keep_freed_memory

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
