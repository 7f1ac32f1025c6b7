"""The prepared GPU check (benchmarks/gpu_check.py): its rehearsal runs end to end under the CUDA
simulator, exactly as `make gpu-check` starts it on a GPU machine, so that the kit cannot rot; and
its pieces detect what they exist to detect (a kernel never launched, a mismatch, a missing module).
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402  (the NUMBA_ENABLE_CUDASIM that conftest set decides its mode)

PARTS = ["environment", "tests", "sanitizer", "deform_conv", "roi_pool", "train_step"]


@pytest.mark.skipif(shutil.which("make") is None, reason="the rehearsal runs through `make gpu-check`")
def test_the_rehearsal_runs_every_part_and_writes_one_report(tmp_path):
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(["make", "-s", "gpu-check", f"OUT={tmp_path}", f"GPU_PYTHON={sys.executable}"],
                            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = (tmp_path / "gpu_check.md").read_text()
    assert "rehearsal under the CUDA simulator" in report
    assert "nothing failed" in report
    for part in PARTS:
        assert re.search(rf"^### {part} \(\d+ s, budget \d+ s\)$", report, re.MULTILINE), part
    collected = re.search(r"result: (\d+)/\d+ tests collected", report)
    assert collected is not None
    assert int(collected.group(1)) >= 30
    launched = re.search(r"launched (\d+) of (\d+) CUDA kernels", report)
    assert launched is not None
    assert launched.group(1) == launched.group(2)
    assert int(launched.group(2)) == len(gpu_check.cuda_kernels()[0])
    assert "| dcn_numba forward + backward |" in report
    assert "| dcn_numba deformable / dcn_numba regular |" in report


def test_every_cuda_kernel_is_found_and_one_never_launched_is_named():
    kernels = sorted(gpu_check.cuda_kernels()[0].values())
    assert "deform_conv_cuda.deformable_col2im_cuda" in kernels
    assert "deform_roi_pool.deform_roi_pool_grad_offset_cuda" in kernels
    kernel_type = gpu_check.cuda_kernels()[1]
    unpatched = kernel_type.__getitem__
    input, offset, weight, _, _, _ = map(gpu_check.on_device, gpu_check.conv_problem(1, 2, 2, 4, 4, np.float32))

    def forward_only():
        gpu_check.dcn_numba.deform_conv2d(input, offset, weight, padding=1, backend="cuda")

    missed, count = gpu_check.kernels_not_launched(forward_only)
    assert count == len(kernels)
    assert "deform_conv_cuda.deformable_col2im_cuda" in missed
    assert "deform_roi_pool.deform_roi_pool_forward_cuda" in missed
    assert "deform_conv_cuda.deformable_im2col_cuda" not in missed
    assert "deform_conv_cuda.locate_samples_cuda" not in missed
    assert kernel_type.__getitem__ is unpatched


def test_a_mismatch_is_recorded_with_its_first_elements():
    failures = []
    assert gpu_check.matches("same", np.arange(4.0), np.arange(4.0) * (1 + 1e-7), 1e-6, failures)
    assert failures == []
    assert not gpu_check.matches("planted", np.arange(4.0), np.array([0.0, 1.0, 2.5, 3.0]), 1e-6, failures)
    assert len(failures) == 1
    assert failures[0].startswith("MISMATCH planted: 1 of 4 elements differ")
    assert "at (2,)" in failures[0]
    assert not gpu_check.matches("shape", np.zeros(3), np.zeros(4), 1e-6, failures)
    assert failures[1] == "MISMATCH shape: shape (3,) != (4,)"


def test_a_missing_module_is_named(monkeypatch):
    assert gpu_check.missing_modules() == []
    monkeypatch.setitem(gpu_check.NEEDED, "no_such_module_anywhere", "a planted need")
    assert gpu_check.missing_modules() == ["no_such_module_anywhere (a planted need)"]


def test_a_failed_part_fails_the_check_and_is_in_the_report(monkeypatch, tmp_path):
    def environment(out):
        return ["found everything"], ["MISMATCH planted"]

    monkeypatch.setattr(gpu_check, "PARTS", [environment])
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code == 1
    report = (tmp_path / "gpu_check.md").read_text()
    assert "1 FAILED" in report
    assert "found everything" in report
    assert "- MISMATCH planted" in report


def test_a_test_file_needing_a_missing_package_is_found(tmp_path):
    (tmp_path / "helpers.py").write_text("")
    test_file = tmp_path / "test_needs.py"
    test_file.write_text("import os\nimport no_such_package.sub\nfrom helpers import x\n"
                         "from numpy import zeros\nfrom . import sibling\n\ndef test():\n    import late_missing\n")
    assert gpu_check.modules_missing_for(test_file) == ["no_such_package"]


def test_a_machine_missing_a_needed_module_is_refused_in_one_line(tmp_path):
    # A stand-in `pytest` that hides itself: the check must stop before any work, naming it.
    hidden = tmp_path / "sitecustomize.py"
    hidden.write_text("import sys\nsys.modules['pytest'] = None\n")
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
                       PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "out")],
                            env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu_check: cannot run, missing: pytest (tests)"
    assert not (tmp_path / "out").exists()
