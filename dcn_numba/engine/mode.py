"""What the engine runs: its one piece of state besides the graph, changed only inside `with` blocks.

    no_grad()                   (autograd)      Functions record no graph: evaluation, updates
    backend(name)               (functional)    where the deformable Functions run
    dcn_numba.speed.plain_numpy()               the engine's plain array-module path on NumPy arrays

Each block sets one field of the `Mode` in force, held by one context variable (so a block in one
thread does not change another thread's mode), and restores it on the way out.
"""

import contextlib
import contextvars
from typing import NamedTuple


class Mode(NamedTuple):
    """grad: Functions record the graph for the backward pass; backend: the backend of the
    deformable Functions ("reference", "cpu", "cuda"; None follows the arrays); faster: the
    speed layer's CPU kernels run on NumPy arrays."""

    grad: bool = True
    backend: object = None
    faster: bool = True


_MODE = contextvars.ContextVar("dcn_numba engine mode", default=Mode())


def mode():
    """The Mode in force."""
    return _MODE.get()


@contextlib.contextmanager
def changed(**fields):
    """Inside this block, the Mode in force with `fields` changed."""
    token = _MODE.set(_MODE.get()._replace(**fields))
    try:
        yield
    finally:
        _MODE.reset(token)
