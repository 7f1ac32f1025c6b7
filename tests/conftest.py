"""Test-session setup: simulate CUDA unless a real GPU (with CuPy) is present.

NUMBA_ENABLE_CUDASIM must be set before anything imports numba.cuda, so this runs first.
Set it yourself to force a mode: 1 simulates, 0 uses the GPU.

The tests mirror the package's folders (tests/ops, tests/kernels, ...); the helpers they share
stay here at the top (helpers.py, dcnv3_helpers.py), importable from every folder. The tests of
dcn_numba.torch are in tests/dcn_numba_torch: this folder is on sys.path, so a folder named torch
would be imported as a namespace package `torch` wherever PyTorch is not installed.
"""

import os
import pathlib
import sys


def _gpu_with_cupy():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: all mean "simulate"
        return False


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if _gpu_with_cupy() else "1")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

# The engine's CPU speed layer, switched on as the training commands switch it on, so that the
# suite runs what they run; tests/speed/test_speed_layer.py holds it to the engine's own Functions.
from dcn_numba import speed  # noqa: E402  (after the simulator's switch, before any numba.cuda)

speed.switch_on()


def pytest_report_header(config):
    mode = "simulator" if os.environ["NUMBA_ENABLE_CUDASIM"] == "1" else "GPU (CuPy arrays)"
    return f"dcn_numba CUDA backend runs on: {mode}"
