"""Interrupting real runs of `python -m dcn_numba.train` and `python -m dcn_numba.detect` with
SIGKILL and SIGINT at several points, resuming each, and checking what is on disk after every
interruption: run.json there, no metrics.json before the end, only the run's own files, every
weights file whole. The resumed run equals the uninterrupted one exactly (timings aside), and no
command destroys an earlier result, in any order.

A subprocess runs the real command with os.replace wrapped so that the process signals itself
just before (or after) its k-th rename onto a given file name: every file lands by a rename, so
this reaches any point between two writes, deterministically.

The subprocess first gives SIGINT Python's own handler (KeyboardInterrupt), as a terminal's Ctrl-C
finds it: a process started in the background by a non-interactive shell (`make test &`, a CI
runner's job) inherits SIGINT ignored, Python then leaves it ignored, and every process below it
would run on through the SIGINT it sends itself."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dcn_numba.apps.detection import detect
from dcn_numba.apps.mnist import train
from dcn_numba.data import mnist as data
from data.test_data import write_idx

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = {"seconds_per_epoch", "seconds_per_image", "training_seconds"}
DRIVER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
name, k = sys.argv[1].split("#")
signal_name, when, module = sys.argv[2], sys.argv[3], sys.argv[4]
real_replace, count = os.replace, [0]

def replace(source, target):
    hit = os.path.basename(target) == name and count[0] == int(k) - 1
    count[0] += os.path.basename(target) == name
    if hit and when == "before":
        os.kill(os.getpid(), getattr(signal, signal_name))
    real_replace(source, target)
    if hit and when == "after":
        os.kill(os.getpid(), getattr(signal, signal_name))

os.replace = replace
import importlib
importlib.import_module(module).main(sys.argv[5:])
"""


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory):
    """A tiny MNIST of 28×28 IDX files: 16 training digits, 8 test digits (quick to load)."""
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for part, count in (("train", 16), ("test", 8)):
        images, labels = data.IDX_FILES[part]
        write_idx(folder / images, (rng.random((count, 28, 28)) < 0.2) * 255)
        write_idx(folder / labels, rng.integers(0, 10, count))
    return folder


def train_argv(idx_folder, out):
    return ["--data", str(idx_folder), "--variants", "regular", "deformable-last1", "--epochs", "1",
            "--batch-size", "8", "--test-size", "4", "--spread-digits", "1", "--device", "cpu",
            "--checkpoint-seconds", "0", "--out", str(out)]


def detect_argv(idx_folder, out):
    return ["--data", str(idx_folder), "--variants", "rfcn", "rfcn_droi", "--steps", "3", "--batch-size", "2",
            "--train-canvases", "6", "--test-canvases", "3", "--checkpoint-seconds", "0", "--out", str(out)]


def interrupt(module, argv, rename, signal_name, when):
    """Run `module` in a subprocess, signalled `when` ("before" or "after") its rename `rename`
    ("NAME#k": the k-th onto NAME); returns the exit status."""
    command = [sys.executable, "-c", DRIVER, rename, signal_name, when, module, *argv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode != 0, f"not interrupted at {rename}:\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr or "KeyboardInterrupt" in result.stderr, result.stderr[-2000:]
    return result.returncode


def check_on_disk(out, command, allowed):
    """What an interruption may leave: the run's marker, its own files (and the temporary file of
    a write cut short), every weights file loadable, and no metrics.json."""
    names = {path.name for path in out.iterdir()}
    assert json.loads((out / "run.json").read_text())["command"] == command
    assert "metrics.json" not in names
    finished = {name for name in names if not (name.startswith(".") and name.endswith(".tmp"))}
    assert finished <= allowed, finished - allowed
    for weights in out.glob("*.npz"):
        with np.load(weights) as stored:
            assert stored.files


def assert_same_run(folder, reference, weights):
    """Metrics (timings aside) and every weights file equal, bit for bit."""
    got, expected = (json.loads((f / "metrics.json").read_text()) for f in (folder, reference))
    assert got.keys() == expected.keys()
    for variant in expected:
        assert {k: v for k, v in got[variant].items() if k not in TIMINGS} == \
               {k: v for k, v in expected[variant].items() if k not in TIMINGS}, variant
    for name in weights:
        with np.load(folder / name) as a, np.load(reference / name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    assert not (folder / "checkpoint.npz").exists()


@pytest.fixture(scope="module")
def references(idx_folder, tmp_path_factory):
    """The uninterrupted tiny runs: {"train": folder, "detect": folder}."""
    folder = tmp_path_factory.mktemp("references")
    train.main(train_argv(idx_folder, folder / "train"))
    detect.main(detect_argv(idx_folder, folder / "detect"))
    return {"train": folder / "train", "detect": folder / "detect"}


TRAIN_FILES = {"run.json", "checkpoint.npz", "regular.npz", "deformable-last1.npz", "training_curves.png",
               "sampling_locations.png"}


def test_train_interrupted_three_times_then_resumed_equals_the_uninterrupted_run(tmp_path, idx_folder,
                                                                                  references, monkeypatch):
    out = tmp_path / "interrupted"
    argv = train_argv(idx_folder, out)
    # 1: SIGKILL just before the second step's checkpoint lands: its temporary file is left.
    assert interrupt("dcn_numba.train", argv, "checkpoint.npz#2", "SIGKILL", "before") == -signal.SIGKILL
    check_on_disk(out, train.COMMAND, TRAIN_FILES)
    assert any(path.name.endswith(".tmp") for path in out.iterdir())
    # 2: resumed, SIGINT just after the first variant's weights land: the second not begun.
    interrupt("dcn_numba.train", argv + ["--resume"], "regular.npz#1", "SIGINT", "after")
    check_on_disk(out, train.COMMAND, TRAIN_FILES)
    assert (out / "regular.npz").is_file() and not (out / "deformable-last1.npz").exists()
    # 3: resumed, SIGKILL just before metrics.json lands: every other output is there.
    interrupt("dcn_numba.train", argv + ["--resume"], "metrics.json#1", "SIGKILL", "before")
    check_on_disk(out, train.COMMAND, TRAIN_FILES)
    assert {"training_curves.png", "sampling_locations.png"} <= {path.name for path in out.iterdir()}
    train.main(argv + ["--resume"])
    assert_same_run(out, references["train"], ["regular.npz", "deformable-last1.npz"])
    # A finished run resumed is read back, not trained again.
    monkeypatch.setattr(train, "train_variant", lambda *args: pytest.fail("a finished run was trained again"))
    assert train.run(train.parse_args(argv + ["--resume"])) == json.loads((out / "metrics.json").read_text())


DETECT_FILES = {"run.json", "checkpoint.npz", "ground_truth.json", "rfcn.npz", "rfcn_droi.npz",
                "detections_rfcn.json", "detections_rfcn_droi.json", "part_offsets.png"}


def test_detect_killed_from_outside_then_interrupted_then_resumed_equals_the_uninterrupted_run(
        tmp_path, idx_folder, references):
    out = tmp_path / "interrupted"
    argv = detect_argv(idx_folder, out)
    # 1: SIGKILL from outside, as a user's would come, once the first checkpoint is on disk:
    # wherever the run then is in the first variant's training.
    process = subprocess.Popen([sys.executable, "-m", "dcn_numba.detect", *argv], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        while process.poll() is None and not (out / "checkpoint.npz").exists():
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    check_on_disk(out, detect.COMMAND, DETECT_FILES)
    # 2: resumed, SIGINT just before the second variant's weights land.
    interrupt("dcn_numba.detect", argv + ["--resume"], "rfcn_droi.npz#1", "SIGINT", "before")
    check_on_disk(out, detect.COMMAND, DETECT_FILES)
    assert not list(out.glob(".*.tmp"))  # SIGINT lets the write clean up after itself
    assert (out / "detections_rfcn.json").is_file() and not (out / "rfcn_droi.npz").exists()
    detect.main(argv + ["--resume"])
    assert_same_run(out, references["detect"], ["rfcn.npz", "rfcn_droi.npz"])


def test_no_command_destroys_an_earlier_result(tmp_path, idx_folder, references, capsys):
    """A finished train run and a finished detect run; every command pointed at either, with any
    flag but --overwrite, is refused before any work and leaves every byte as it was."""
    runs = {name: tmp_path / name for name in references}
    for name, folder in references.items():
        shutil.copytree(folder, runs[name])
    before = {name: {p.name: p.read_bytes() for p in folder.iterdir()} for name, folder in runs.items()}
    attempts = []
    for folder in runs.values():
        attempts += [(train.main, train_argv(idx_folder, folder)),
                     (train.main, train_argv(idx_folder, folder) + ["--epochs", "2", "--resume"]),
                     (detect.main, detect_argv(idx_folder, folder)),
                     (detect.main, detect_argv(idx_folder, folder) + ["--resume", "--steps", "4"]),
                     (detect.main, detect_argv(idx_folder, folder) + ["--seeds", "0"])]
    for main, argv in attempts:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert "error: --" in capsys.readouterr().err
    after = {name: {p.name: p.read_bytes() for p in folder.iterdir()} for name, folder in runs.items()}
    assert after == before
