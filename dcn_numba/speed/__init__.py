"""The optional speed layer of the autograd engine on the CPU, kept apart from the readable engine.

Faster implementations of some of the engine's Functions, for NumPy arrays, each a subclass that
gives the numbers of the Function it replaces (tests/speed/test_speed_layer.py, tests/engine/test_functional.py):

* `windows`: Conv2d and AvgPool2d with im2col and col2im as serial CPU kernels, MaxPool2d with
  its maximum and argmax found in one kernel pass;
* `normalization`: BatchNorm's passes as serial CPU kernels;
* `deformable`: the deformable Functions, which limit BLAS to one thread before their first CPU
  kernel (`dcn_numba.runtime.settings`).

Importing this package changes nothing. `switch_on()` registers them with the engine
(`dcn_numba.engine.mode.register_faster`) for the rest of the process; the training commands, the
training-step benchmarks and the training notebooks call it. Inside `with plain_numpy():` the
engine runs its own Functions on NumPy arrays again: the code a reader steps through.

May import: dcn_numba.engine, dcn_numba.runtime, and the CPU decorators of dcn_numba.kernels._targets.
"""

from dcn_numba.engine import functional as engine_functional
from dcn_numba.engine import windows as engine_windows
from dcn_numba.engine.mode import changed, register_faster
from dcn_numba.speed import deformable, normalization, windows

# (the engine's Function, its faster implementation)
IMPLEMENTATIONS = [
    (engine_windows.Conv2d, windows.Conv2d),
    (engine_windows.AvgPool2d, windows.AvgPool2d),
    (engine_windows.MaxPool2d, windows.MaxPool2d),
    (engine_functional.BatchNorm, normalization.BatchNorm),
    (engine_functional.DeformConv2d, deformable.DeformConv2d),
    (engine_functional.DeformRoIPool, deformable.DeformRoIPool),
    (engine_functional.DeformPSRoIPool, deformable.DeformPSRoIPool),
]


def switch_on():
    """Run the faster implementations in place of the engine's Functions on NumPy arrays, from now
    on in this process (outside `plain_numpy()` blocks)."""
    for function, faster in IMPLEMENTATIONS:
        register_faster(function, faster)


def plain_numpy():
    """Run the engine's own Functions on NumPy arrays inside this block (same results)."""
    return changed(faster=False)
