"""The deformable convolution benchmark (benchmarks/bench_deform_conv.py) without its timings:
how it judges a target, that a runtime disagreeing with the reference is not timed and fails the
run, and that a missing module is reported rather than failed."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_deform_conv.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_deform_conv as bench  # noqa: E402


def test_a_target_passes_on_its_limit_and_misses_beyond_it():
    within = bench.Comparison("forward", "openvino", within=1.5)
    assert within.verdict(1.5, 1.0).endswith("PASS")
    assert within.verdict(1.6, 1.0).endswith("MISS")
    faster = bench.Comparison("forward_backward", "torchvision cpu", faster=20.0)
    assert faster.verdict(1.0, 20.0).endswith("PASS")
    assert faster.verdict(1.0, 19.0).endswith("MISS")
    assert bench.Comparison("forward", "onnxruntime").verdict(2.0, 1.0) == ""


def test_every_cpu_comparison_names_a_planned_measurement():
    planned = {m.key for m in bench.plan(bench.IMPORT_ORDERS, jupyter=False, gpu=False)}
    assert {c.key for c in bench.COMPARISONS["cpu"]} <= planned


def measure(tmp_path, *options):
    """Run one child measurement on a layer whose 'reference' results are all zeros."""
    arrays = bench.problem(bench.B, bench.C, bench.C, bench.H, bench.W, np.float32, with_mask=True)
    zeros = {name: np.zeros(1) for name in bench.NAMES}
    zeros["output"] = np.zeros((bench.B, bench.C, bench.H, bench.W))
    layer = tmp_path / "layer.npz"
    np.savez(layer, **dict(zip(bench.LAYER, arrays)), **zeros)
    return subprocess.run([sys.executable, str(SCRIPT), "--measure", *options, "--layer", str(layer),
                           "--threads", "1"], capture_output=True, text=True, timeout=300)


def test_a_runtime_that_disagrees_is_not_timed_and_fails(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    result = measure(tmp_path, "onnxruntime")
    assert result.returncode != 0
    assert "MISMATCH ONNX Runtime output" in result.stdout
    assert "ONNX Runtime disagrees with the reference" in result.stderr


def test_a_missing_module_is_reported_as_not_installed(tmp_path):
    result = measure(tmp_path, "dcn_numba", "--import-first", "no_such_module_anywhere")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["not_installed"] == "no_such_module_anywhere"
