"""The optional speed layer of the autograd engine on the CPU, kept apart from the readable engine.

* `windows`: im2col, col2im and max pooling as serial CPU kernels (for `dcn_numba.engine.windows`);
* `normalization`: BatchNorm's passes as serial CPU kernels (for `dcn_numba.engine.functional`);
* `runtime`: settings of the libraries under the engine (BLAS threads, malloc).

The kernels are pure functions of their inputs, tested equal to the engine's plain array-module
path (the one CuPy arrays take), and the engine uses them by default for NumPy arrays. Inside
`with plain_numpy():` it takes the plain path on NumPy arrays too: the code a reader steps
through. Nothing here changes the process on import; `runtime` says when each setting is made.
"""

import numpy as np

from dcn_numba.engine.mode import changed, mode


def kernels_apply(xp):
    """Whether the engine runs this layer's CPU kernels: NumPy arrays, outside `plain_numpy()`."""
    return xp is np and mode().faster


def plain_numpy():
    """Run the engine's plain array-module path on NumPy arrays inside this block (same results)."""
    return changed(faster=False)
