"""What the engine runs: its one piece of state besides the graph, changed only inside `with` blocks.

    no_grad()                   (autograd)      Functions record no graph: evaluation, updates
    backend(name)               (functional)    where the deformable Functions run
    dcn_numba.speed.plain_numpy()               the engine's own Functions on NumPy arrays too

Each block sets one field of the `Mode` in force, held by one context variable (so a block in one
thread does not change another thread's mode), and restores it on the way out.

The optional speed layer (`dcn_numba.speed`) registers faster implementations of some Functions
here (`register_faster`): subclasses that give the same numbers on NumPy arrays. `Function.apply`
runs the class that `implementation` picks; the engine itself never imports the speed layer, and
without it every Function runs as written.
"""

import contextlib
import contextvars
from typing import NamedTuple

import numpy as np


class Mode(NamedTuple):
    """grad: Functions record the graph for the backward pass; backend: the backend of the
    deformable Functions ("reference", "cpu", "cuda"; None follows the arrays); faster: the
    registered faster implementations run on NumPy arrays."""

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


FASTER = {}  # {an engine Function class: the faster subclass registered for NumPy arrays}


def register_faster(function_class, faster_class):
    """Run `faster_class`, a subclass of `function_class` that computes the same results, in its
    place on NumPy arrays (outside `plain_numpy()` blocks)."""
    if not issubclass(faster_class, function_class):
        raise TypeError(f"{faster_class.__name__} must subclass {function_class.__name__}")
    FASTER[function_class] = faster_class


def implementation(function_class, xp):
    """The class that computes `function_class` on arrays of module xp: the registered faster one
    on NumPy arrays when the Mode allows it, else `function_class` itself."""
    if xp is np and mode().faster:
        return FASTER.get(function_class, function_class)
    return function_class
