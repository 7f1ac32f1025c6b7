"""The files the segmentation commands write, one function per kind of file, each written
atomically (`dcn_numba.runs.outputs.write_atomically`: a temporary file in the same folder,
renamed into place), so that a kill never leaves half a file. (A run's metrics.json and checkpoint
are written by its `dcn_numba.runs` Run, atomically too.)"""

from pathlib import Path

import numpy as np

from dcn_numba.runs.outputs import json_bytes, write_atomically


def write_json(path, data):
    """`data` as strict JSON (NaN as null), indented."""
    text = json_bytes(data) + b"\n"
    write_atomically(path, lambda file: file.write(text))


def write_npz(path, arrays):
    """The arrays of the dict `arrays`, by name, compressed (.npz)."""
    write_atomically(path, lambda file: np.savez_compressed(file, **arrays))


def write_text(path, text):
    """`text`, UTF-8."""
    write_atomically(path, lambda file: file.write(text.encode()))


def write_figure(path, figure):
    write_atomically(path, lambda file: figure.savefig(file, dpi=110, format=Path(path).suffix[1:]))
