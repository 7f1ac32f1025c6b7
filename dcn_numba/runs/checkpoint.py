"""Checkpoints of a training run, so that `--resume` continues it and gives the result an
uninterrupted run gives.

    checkpoints = Checkpoints(run, interval=120)         # at most every 120 s
    saved = checkpoints.load()                           # None, or the last Checkpoint
    if saved is not None:
        restore(saved, model, optimizer, schedule, rng)  # then read your own keys from saved
    for step in ...:
        ...
        checkpoints.save(lambda: capture(model, optimizer, schedule, rng, arrays, values))
    checkpoints.save(lambda: capture(...), force=True)   # at the end of training

A Checkpoint holds everything that decides the rest of a run: the model's parameters and
buffers (`state_dict`), the optimizer's per-parameter state (None, an array, or a tuple of
arrays, as SGD's velocity and Adam's moments), its step count and learning rate, the schedule's
step count, the random generator's state, and what the command adds (`arrays`, NumPy arrays such
as the current epoch's batch order; `values`, JSON-able, such as the history so far). Saved
arrays keep their dtype and are restored onto the device of the parameter they belong to, so
resuming is exact. The file is one .npz in the run (`checkpoint.npz`), written atomically: a kill
leaves the previous checkpoint or the new one.

The model, optimizer and schedule are duck-typed (dcn_numba.engine's Module, Adam or SGD,
CosineSchedule or StepSchedule), so this module imports none of them.
"""

import json
import sys
import time
import zipfile
from typing import NamedTuple

import numpy as np

from dcn_numba.runs.outputs import OutputError

CHECKPOINT = "checkpoint.npz"
VALUES = "values.json"  # the entry of the .npz that holds the JSON values, as bytes


class Checkpoint(NamedTuple):
    """arrays: {name: NumPy array}; values: JSON-able {name: value}."""

    arrays: dict
    values: dict


def host(array):
    """A NumPy array of `array` (a CuPy array is copied from its device)."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def like(reference, array):
    """`array` (NumPy) as an array of the module of `reference` (NumPy or CuPy), with its own
    dtype: the module is the one that made `reference`, so none is imported here."""
    module = sys.modules[type(reference).__module__.split(".")[0]]
    return module.asarray(array)


def capture(model, optimizer, schedule, rng, arrays=None, values=None):
    """The Checkpoint of a training run at a step boundary (module docstring)."""
    saved = {f"model/{name}": host(array) for name, array in model.state_dict().items()}
    kinds = []  # per parameter: None, "array", or the length of a tuple of arrays
    for index, state in enumerate(optimizer.state):
        if state is None:
            kinds.append(None)
            continue
        kinds.append(len(state) if isinstance(state, tuple) else "array")
        parts = state if isinstance(state, tuple) else (state,)
        saved.update({f"optimizer/{index}/{part}": host(array) for part, array in enumerate(parts)})
    saved.update({f"command/{name}": np.asarray(array) for name, array in (arrays or {}).items()})
    return Checkpoint(saved, dict(
        optimizer=dict(kinds=kinds, lr=optimizer.lr, steps=getattr(optimizer, "steps", None)),
        schedule_steps=schedule.steps, rng=rng.bit_generator.state, command=values or {}))


def restore(checkpoint, model, optimizer, schedule, rng):
    """Put a captured state back into the model, optimizer, schedule and generator; returns
    (arrays, values) that the command added."""
    model.load_state_dict({name[len("model/"):]: array for name, array in checkpoint.arrays.items()
                           if name.startswith("model/")})
    kinds = checkpoint.values["optimizer"]["kinds"]
    for index, (parameter, kind) in enumerate(zip(optimizer.params, kinds)):
        if kind is None:
            optimizer.state[index] = None
            continue
        parts = tuple(like(parameter.data, checkpoint.arrays[f"optimizer/{index}/{part}"])
                      for part in range(1 if kind == "array" else kind))
        optimizer.state[index] = parts[0] if kind == "array" else parts
    optimizer.lr = checkpoint.values["optimizer"]["lr"]
    if checkpoint.values["optimizer"]["steps"] is not None:
        optimizer.steps = checkpoint.values["optimizer"]["steps"]
    schedule.steps = checkpoint.values["schedule_steps"]
    rng.bit_generator.state = checkpoint.values["rng"]
    command_arrays = {name[len("command/"):]: array for name, array in checkpoint.arrays.items()
                      if name.startswith("command/")}
    return command_arrays, checkpoint.values["command"]


class Checkpoints:
    """The checkpoint of one run: saved at most every `interval` seconds (or when forced),
    loaded on resume."""

    def __init__(self, run, interval, name=CHECKPOINT):
        self.run, self.interval, self.name = run, float(interval), name
        self.last_save = time.monotonic()

    def due(self):
        return time.monotonic() - self.last_save >= self.interval

    def save(self, make, force=False):
        """Write make() (a Checkpoint) when forced or due; returns whether it was written."""
        if not (force or self.due()):
            return False
        checkpoint = make()
        entries = dict(checkpoint.arrays)
        entries[VALUES] = np.frombuffer(json.dumps(checkpoint.values).encode(), dtype=np.uint8)
        self.run.write(self.name, lambda file: np.savez(file, **entries))
        self.last_save = time.monotonic()
        return True

    def load(self):
        """The saved Checkpoint of a resumed run, or None (a new run, or none saved)."""
        path = self.run.folder / self.name
        if not (self.run.resumed and path.is_file()):
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            values = json.loads(arrays.pop(VALUES).tobytes())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise OutputError(f"--resume: the checkpoint {path} cannot be read ({error}); pass "
                              "--overwrite to start the run again") from None
        return Checkpoint(arrays, values)
