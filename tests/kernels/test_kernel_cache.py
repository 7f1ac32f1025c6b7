"""An edit of the shared mathematics takes effect on the next run, without clearing any cache.

A copy of the package runs a CPU kernel in a fresh process, `bilinear.bilinear_blend` is edited
to return 0, and the next process must see the edit (while loading every kernel from the cache
when nothing changed)."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

import dcn_numba
from dcn_numba.kernels import _cache

RUN_A_KERNEL = """
import numpy as np
from dcn_numba.kernels import deform_conv_cpu
import dcn_numba

x = np.arange(16.0).reshape(1, 1, 4, 4)
offset = np.full((1, 2, 4, 4), 0.25)
output = dcn_numba.deform_conv2d(x, offset, np.ones((1, 1, 1, 1)), backend="cpu")
print(float(np.abs(output).sum()), len(deform_conv_cpu.deformable_conv_tiles_cpu.stats.cache_hits))
"""


def run_in(root):
    """(Σ|output|, cache hits of the forward kernel) of a fresh process importing the copy at root."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    finished = subprocess.run([sys.executable, "-c", RUN_A_KERNEL], cwd=root, capture_output=True,
                              text=True, env=dict(environment, PYTHONPATH=str(root)), timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    total, hits = finished.stdout.split()
    return float(total), int(hits)


def test_an_edit_of_the_shared_mathematics_takes_effect_on_the_next_run(tmp_path):
    # Run the kernel here first, so that the package's own cache holds it, and copy that cache
    # along: the copy's first process then loads the kernel instead of compiling it.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    original = float(np.abs(dcn_numba.deform_conv2d(x, np.full((1, 2, 4, 4), 0.25), np.ones((1, 1, 1, 1)),
                                                     backend="cpu")).sum())
    assert original > 0
    shutil.copytree(pathlib.Path(dcn_numba.__file__).parent, tmp_path / "dcn_numba")
    assert run_in(tmp_path) == (original, 1), "an unchanged package should load the cached kernel"

    bilinear = tmp_path / "dcn_numba" / "kernels" / "bilinear.py"
    text = bilinear.read_text()
    blend = 'def bilinear_blend(v00, v01, v10, v11, l_y, l_x):\n'
    body = text.index('    return', text.index(blend))
    bilinear.write_text(text[:body] + "    return 0.0 * v00\n" + text[body:])
    edited, hits = run_in(tmp_path)
    assert edited == 0.0, "the edit of bilinear_blend did not take effect"
    assert hits == 0


def test_an_edit_of_the_parameters_dcnv3_kernels_extend_changes_the_stamp(tmp_path, monkeypatch):
    # DCNv3's kernel geometry is reference.dcnv3.Parameters with the sizes in front: reordering
    # those fields must recompile the kernels, which read them by position.
    package = pathlib.Path(dcn_numba.__file__).parent
    copy = tmp_path / "dcn_numba"
    for folder in ("kernels", "reference"):
        shutil.copytree(package / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "KERNELS", copy / "kernels")
    monkeypatch.setattr(_cache, "PACKAGE", copy)
    own_file = copy / "kernels" / "dcnv3.py"
    before = _cache.sources_stamp.__wrapped__(own_file)
    reference = copy / "reference" / "dcnv3.py"
    reference.write_text(reference.read_text().replace("    stride_h: int\n    stride_w: int\n",
                                                       "    stride_w: int\n    stride_h: int\n"))
    assert _cache.sources_stamp.__wrapped__(own_file) != before
