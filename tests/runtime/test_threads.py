"""Calling the CPU kernels from several Python threads at once is safe.

Some of Numba's threading layers abort the whole process on concurrent use; this runs the calls in
a subprocess so that such a regression shows up as a failed test instead of a dead test runner.
"""

import subprocess
import sys

PROGRAM = """
import threading
import numpy as np
import dcn_numba

rng = np.random.default_rng(0)
x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
offset = rng.standard_normal((2, 18, 9, 9)).astype(np.float32)
expected = dcn_numba.deform_conv2d(x, offset, w, padding=1)
results = []

def work():
    for _ in range(20):
        results.append(dcn_numba.deform_conv2d(x, offset, w, padding=1))

threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert len(results) == 60 and all(np.array_equal(r, expected) for r in results)
"""


def test_concurrent_calls_from_python_threads_agree_and_do_not_crash():
    finished = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
