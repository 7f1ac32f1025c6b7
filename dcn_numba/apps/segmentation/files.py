"""Every file the segmentation commands write goes through one of these functions, one per kind
of file, so that how outputs are written (where, and how safely) is decided in one place."""

import json
import math
from pathlib import Path

import numpy as np


def strict_json(value):
    """`value` with every non-finite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data):
    """`data` as strict JSON (NaN as null), indented."""
    Path(path).write_text(json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def write_npz(path, arrays):
    """The arrays of the dict `arrays`, by name, compressed (.npz)."""
    np.savez_compressed(path, **arrays)


def write_text(path, text):
    Path(path).write_text(text)


def write_figure(path, figure):
    figure.savefig(path, dpi=110)
