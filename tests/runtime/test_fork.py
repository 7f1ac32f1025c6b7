"""A process that forks after running a CPU kernel keeps working, and so does its child: the
CPU kernels run on a fork-safe threading layer (see dcn_numba.runtime.settings)."""

import subprocess
import sys

PROGRAM = """
import multiprocessing
import numpy as np
import dcn_numba

x = np.arange(32.0).reshape(1, 2, 4, 4)
offset = np.full((1, 18, 4, 4), 0.25)
weight = np.ones((2, 2, 3, 3))
expected = dcn_numba.deform_conv2d(x, offset, weight, padding=1, backend="cpu")

def child(queue):
    queue.put(dcn_numba.deform_conv2d(x, offset, weight, padding=1, backend="cpu"))

context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
result = queue.get(timeout=120)
process.join(120)
assert process.exitcode == 0, process.exitcode
assert np.array_equal(result, expected)
assert np.array_equal(dcn_numba.deform_conv2d(x, offset, weight, padding=1, backend="cpu"), expected)
"""


def test_a_forked_child_runs_cpu_kernels_after_its_parent_did():
    finished = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
