"""`python -m dcn_numba.segment` keeps the contract of an output folder (`dcn_numba.runs`): a run
interrupted at several points and resumed equals the uninterrupted run, weights, predictions and
metrics bit for bit; a folder holding a run is refused unless --resume or --overwrite; an
overwrite leaves nothing of the old run; and the tables' command reads the finished runs it finds
(those written before run folders held a run.json too) and resumes the unfinished ones.

Interruptions happen in this process, at a chosen rename (every file lands by one): os.replace
raises `Killed` just before or just after its k-th rename onto a given name, as Ctrl-C would;
tests/runs/test_runs_interrupt.py kills real processes of the other commands the same way."""

import json
import os
import shutil

import numpy as np
import pytest

from dcn_numba.apps.segmentation import experiment, segment
from dcn_numba.data.mnist import load_mnist
from dcn_numba.runs.outputs import OutputError, json_bytes

TINY = ["--steps", "3", "--batch-size", "2", "--train-canvases", "4", "--test-canvases", "3"]
VARIANTS = ["regular", "deformable3"]
TIMINGS = {"seconds_per_step", "training_seconds"}
FILES = {"run.json", "ground_truth.npz", *(f"{prefix}{variant}.npz" for variant in VARIANTS
                                            for prefix in ("", "predictions_"))}


class Killed(BaseException):
    """Stands for a kill at the chosen rename: nothing after it runs."""


def argv(out, *more):
    return ["--variants", *VARIANTS, *TINY, "--checkpoint-seconds", "0", "--out", str(out), *more]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(autouse=True)
def digits_loaded_once(monkeypatch, mnist):
    monkeypatch.setattr(segment, "load_mnist", lambda path: mnist)
    monkeypatch.setattr(experiment, "load_mnist", lambda path: mnist)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist):
    """The uninterrupted tiny run."""
    out = tmp_path_factory.mktemp("segment") / "reference"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment, "load_mnist", lambda path: mnist)
        segment.main(argv(out))
    return out


def renames_counted(patch, rename=None, when="before"):
    """Wrap os.replace: count the renames onto each name ({name: count}, returned) and, with
    `rename` ("NAME#k"), raise Killed just `when` ("before" or "after") the k-th onto NAME."""
    name, k = rename.split("#") if rename else (None, 0)
    real_replace, counts = os.replace, {}

    def replace(source, target):
        target_name = os.path.basename(target)
        counts[target_name] = counts.get(target_name, 0) + 1
        hit = target_name == name and counts[target_name] == int(k)
        if hit and when == "before":
            raise Killed(rename)
        real_replace(source, target)
        if hit and when == "after":
            raise Killed(rename)

    patch.setattr(os, "replace", replace)
    return counts


def interrupt(arguments, rename, when):
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        renames_counted(patch, rename, when)
        segment.main(arguments)


def check_on_disk(out):
    """What an interruption may leave: run.json, the run's own files and its checkpoint, every
    .npz whole, no metrics.json."""
    names = {path.name for path in out.iterdir()}
    assert json.loads((out / "run.json").read_text())["command"] == segment.COMMAND
    assert names <= FILES | {"checkpoint.npz"}, names - FILES
    for path in out.glob("*.npz"):
        with np.load(path) as stored:
            assert stored.files
    return names


def assert_same_run(folder, reference, variants=VARIANTS):
    """The same files; metrics (timings aside) and every array equal, bit for bit."""
    assert {p.name for p in folder.iterdir()} == {p.name for p in reference.iterdir()}
    got, expected = (json.loads((f / "metrics.json").read_text()) for f in (folder, reference))
    assert list(got) == list(expected) == variants
    for variant in variants:
        assert {k: v for k, v in got[variant].items() if k not in TIMINGS} == \
               {k: v for k, v in expected[variant].items() if k not in TIMINGS}, variant
    for path in reference.glob("*.npz"):
        with np.load(folder / path.name) as a, np.load(path) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{path.name} {key}")


def test_interrupted_four_times_then_resumed_equals_the_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "interrupted"
    # 1: while the first variant trains: its second step's checkpoint never lands.
    interrupt(argv(out), "checkpoint.npz#2", "before")
    assert check_on_disk(out) == {"run.json", "ground_truth.npz", "checkpoint.npz"}
    # 2: resumed; just after the first variant's weights land, before its predictions.
    interrupt(argv(out, "--resume"), "regular.npz#1", "after")
    assert "predictions_regular.npz" not in check_on_disk(out)
    # 3: resumed; while the second variant trains (its second step's checkpoint lands, after
    # the first variant's two: the end of its training and its metrics).
    interrupt(argv(out, "--resume"), "checkpoint.npz#4", "after")
    names = check_on_disk(out)
    assert "predictions_regular.npz" in names and "deformable3.npz" not in names
    # 4: resumed; just before metrics.json lands: every other output is there.
    interrupt(argv(out, "--resume"), "metrics.json#1", "before")
    assert check_on_disk(out) == FILES | {"checkpoint.npz"}
    segment.main(argv(out, "--resume"))
    assert_same_run(out, reference)
    assert not (out / "checkpoint.npz").exists()


def test_a_checkpoint_at_most_every_checkpoint_seconds(tmp_path):
    """With an interval longer than the run, a checkpoint lands only where one must: when a
    variant's training ends and when its metrics are known."""
    with pytest.MonkeyPatch.context() as patch:
        counts = renames_counted(patch)
        segment.main(["--variants", *VARIANTS, *TINY, "--checkpoint-seconds", "3600", "--out", str(tmp_path)])
    assert counts["checkpoint.npz"] == 2 * len(VARIANTS)


def test_a_second_run_is_refused_and_overwrite_leaves_nothing_of_the_old_run(tmp_path, reference, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for arguments, says in ((argv(out), "a finished run"), (argv(out, "--resume", "--steps", "4"), "steps 3")):
        with pytest.raises(SystemExit) as exit_info:
            segment.main(arguments)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"--out {out}" in error and says in error, error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # An unfinished run is refused too, and named so.
    interrupt(argv(tmp_path / "unfinished"), "regular.npz#1", "after")
    with pytest.raises(SystemExit):
        segment.main(argv(tmp_path / "unfinished"))
    assert "an unfinished run; pass --resume" in capsys.readouterr().err
    # --overwrite: one variant, two steps; nothing of the two-variant run is left.
    segment.main(["--variants", "regular", *TINY[2:], "--steps", "2", "--out", str(out), "--overwrite"])
    assert {p.name for p in out.iterdir()} == {"run.json", "ground_truth.npz", "regular.npz",
                                               "predictions_regular.npz", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["regular"] and len(metrics["regular"]["loss"]) == metrics["regular"]["steps"] == 2
    assert json.loads((out / "run.json").read_text())["settings"]["steps"] == 2


def test_the_table_reads_finished_runs_and_resumes_unfinished_ones(tmp_path, monkeypatch, reference, mnist):
    monkeypatch.setattr(experiment, "TABLE_VARIANTS", VARIANTS)
    options = experiment.parse_args(["--seeds", "0", *TINY, "--checkpoint-seconds", "0",
                                     "--runs", str(tmp_path / "runs")])
    canvases = segment.make_canvases(options, mnist)
    # regular: finished, in a folder written before run folders held a run.json.
    legacy = segment.run(experiment.run_args(options, "regular", 0), canvases)
    (tmp_path / "runs" / "seed0" / "regular" / "run.json").unlink()
    # deformable3: cut off while it trains.
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Killed):
        renames_counted(patch, "checkpoint.npz#2", "before")
        segment.run(experiment.run_args(options, "deformable3", 0), canvases)
    trained, train = [], segment.train_variant

    def counted(variant, train_canvases, args, checkpoints, saved, done):
        trained.append((variant, saved and saved.values["command"].get("variant")))  # the state resumed
        return train(variant, train_canvases, args, checkpoints, saved, done)

    monkeypatch.setattr(segment, "train_variant", counted)
    runs = experiment.get_runs(options, mnist)
    assert trained == [("deformable3", "deformable3")]
    assert runs["regular"][0] == json.loads(json_bytes(legacy))["regular"]
    # One variant per run, each from the same seed as in the two-variant run: the same numbers.
    expected = json.loads((reference / "metrics.json").read_text())["deformable3"]
    got = json.loads(json_bytes(runs["deformable3"][0]))  # as metrics.json holds it: NaN as null
    assert {k: v for k, v in got.items() if k not in TIMINGS} == \
           {k: v for k, v in expected.items() if k not in TIMINGS}
    # A run with other settings is refused, naming them, unless --overwrite replaces it.
    monkeypatch.setattr(experiment, "TABLE_VARIANTS", ["deformable3"])
    argv_other = ["--seeds", "0", *TINY, "--lr", "0.02", "--runs", str(tmp_path / "runs"),
                  "--docs", str(tmp_path / "docs")]
    with pytest.raises(SystemExit, match=r"lr 0\.01 \(now 0\.02\)"):
        experiment.main(argv_other)
    trained.clear()
    experiment.get_runs(experiment.parse_args(argv_other + ["--overwrite"]), mnist)
    assert trained == [("deformable3", None)]
    stored = json.loads((tmp_path / "runs" / "seed0" / "deformable3" / "metrics.json").read_text())
    assert stored["deformable3"]["lr"] == 0.02


def test_the_table_trains_again_a_run_cut_off_before_run_folders_held_a_run_json(tmp_path, monkeypatch, mnist):
    monkeypatch.setattr(experiment, "TABLE_VARIANTS", ["regular"])
    options = experiment.parse_args(["--seeds", "0", *TINY, "--runs", str(tmp_path / "runs")])
    folder = tmp_path / "runs" / "seed0" / "regular"
    finished = segment.run(experiment.run_args(options, "regular", 0), segment.make_canvases(options, mnist))
    for name in ("run.json", "metrics.json"):  # what such a run left: its files, no mark
        (folder / name).unlink()
    (folder / ".regular.npz.0123456789ab.tmp").write_bytes(b"cut")
    runs = experiment.get_runs(options, mnist)
    assert {p.name for p in folder.iterdir()} == {"run.json", "metrics.json", "ground_truth.npz", "regular.npz",
                                                  "predictions_regular.npz"}
    assert json.loads(json_bytes(runs["regular"][0]))["loss"] == json.loads(json_bytes(finished))["regular"]["loss"]
    # A file no run of the command writes: the folder is refused, and nothing in it deleted.
    (folder / "metrics.json").unlink()
    (folder / "run.json").unlink()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds files that no run wrote"):
        experiment.get_runs(options, mnist)
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "regular.npz").is_file()
