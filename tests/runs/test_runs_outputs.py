"""dcn_numba.runs: an output folder is one run. Refusals name the option and the path; writes are
atomic; an overwrite killed at any point never leaves files of two runs side by side; nothing is
written outside the folder; checkpoints restore a training run exactly."""

import json
import os
import shutil

import numpy as np
import pytest

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.nn import Linear
from dcn_numba.engine.optim import SGD, Adam, CosineSchedule
from dcn_numba.runs import outputs
from dcn_numba.runs.checkpoint import Checkpoints, capture, restore
from dcn_numba.runs.outputs import OutputError, check_output_file, open_run, write_atomically

COMMAND = "python -m some.command"
SETTINGS = {"epochs": 2, "variants": ["a", "b"]}


def finished_run(folder, files=("a.npz", "b.npz", "curves.png"), metrics=None):
    """A finished run in `folder`, its files holding their own names."""
    run = open_run(folder, COMMAND, SETTINGS)
    for name in files:
        run.write(name, lambda file, name=name: file.write(name.encode()))
    run.finish(metrics or {"a": {"accuracy": 0.5}})
    return run


def listing(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_new_run_writes_nothing_until_its_first_file_and_run_json_first(tmp_path):
    folder = tmp_path / "new" / "run"
    run = open_run(folder, COMMAND, SETTINGS)
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert not run.resumed and not run.finished
    run.write_json("history.json", {"loss": [1.0, float("nan")]})
    assert json.loads((folder / "run.json").read_text()) == {"command": COMMAND, "settings": SETTINGS}
    assert json.loads((folder / "history.json").read_text()) == {"loss": [1.0, None]}
    run.finish({"a": 1}, leftovers=["history.json"])
    assert run.finished
    assert sorted(listing(folder)) == ["metrics.json", "run.json"]


@pytest.mark.parametrize("resume, overwrite", [(False, False), (True, False), (False, True)])
def test_files_no_run_wrote_are_refused_whatever_the_flags(tmp_path, resume, overwrite):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "weights.npz").write_bytes(b"old")
    before = listing(tmp_path)
    with pytest.raises(OutputError, match=f"--out {tmp_path} holds files that no run wrote "
                                          r"\(notes.txt, weights.npz\); choose an empty or new folder"):
        open_run(tmp_path, COMMAND, SETTINGS, resume, overwrite)
    assert listing(tmp_path) == before


@pytest.mark.parametrize("finish, state", [(True, "a finished run; pass --resume to read it back"),
                                           (False, "an unfinished run; pass --resume to continue it")])
def test_a_folder_holding_a_run_is_refused_saying_which(tmp_path, finish, state):
    run = open_run(tmp_path, COMMAND, SETTINGS)
    run.write("a.npz", lambda file: file.write(b"weights"))
    if finish:
        run.finish({"a": 1})
    before = listing(tmp_path)
    with pytest.raises(OutputError, match=f"--out {tmp_path} holds {state} or --overwrite to replace it"):
        open_run(tmp_path, COMMAND, SETTINGS)
    assert listing(tmp_path) == before


def test_resume_needs_the_same_command_and_settings(tmp_path):
    finished_run(tmp_path)
    with pytest.raises(OutputError, match=r"the run in --out .* was made with epochs 2 \(now 3\); resume it "
                                          "with its own settings, or pass --overwrite"):
        open_run(tmp_path, COMMAND, dict(SETTINGS, epochs=3), resume=True)
    with pytest.raises(OutputError, match="holds a run of python -m some.command, not of python -m other"):
        open_run(tmp_path, "python -m other", SETTINGS, resume=True)
    run = open_run(tmp_path, COMMAND, {"variants": ("a", "b"), "epochs": 2}, resume=True)  # tuples are lists
    assert run.resumed and run.finished and run.metrics() == {"a": {"accuracy": 0.5}}


def test_overwrite_deletes_the_old_run_when_the_new_one_writes_its_first_file(tmp_path):
    finished_run(tmp_path)
    before = listing(tmp_path)
    run = open_run(tmp_path, COMMAND, dict(SETTINGS, epochs=5), overwrite=True)
    assert listing(tmp_path) == before and not run.finished  # not yet: no work done
    run.write("c.npz", lambda file: file.write(b"new"))
    assert sorted(listing(tmp_path)) == ["c.npz", "run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["epochs"] == 5


def test_an_overwrite_killed_at_any_point_never_mixes_two_runs(tmp_path, monkeypatch):
    """Fail at each rename and each deletion of the overwrite in turn (what a kill leaves on disk),
    then check the folder and open it again: the old run is whole, or on its way out without its
    metrics.json, or gone; the next open finishes the overwrite."""
    old_files = {"a.npz", "b.npz", "curves.png", "metrics.json", "run.json"}
    steps, real_replace, real_rmtree = [0], os.replace, shutil.rmtree

    def failing(real):
        def step(*args, **kwargs):
            steps[0] -= 1
            if steps[0] == 0:
                raise KeyboardInterrupt("killed")
            return real(*args, **kwargs)
        return step

    seen_states, new_settings = set(), dict(SETTINGS, epochs=9)
    for kill_at in range(1, 12):
        folder = tmp_path / f"kill{kill_at}"
        finished_run(folder)
        old = listing(folder)
        steps[0] = kill_at
        monkeypatch.setattr(outputs.os, "replace", failing(real_replace))
        monkeypatch.setattr(outputs.shutil, "rmtree", failing(real_rmtree))
        try:
            open_run(folder, COMMAND, new_settings, overwrite=True).write("new.npz", lambda file: file.write(b"new"))
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        top = {path.name for path in folder.iterdir()}
        if listing(folder) == old:
            continue  # killed before the overwrite began
        new_run = "run.json" in top and json.loads((folder / "run.json").read_text())["settings"] == new_settings
        if new_run or not top:  # the new run begun, or no run at all (cleared, not begun)
            assert top <= {"new.npz", "run.json"}, (kill_at, top)
            continue
        # The journal announces the overwrite; beside it, the old run whole, or part of it
        # without its metrics.json: never a finished-looking mix.
        assert ".overwrite" in top and top - {".overwrite", ".trash"} <= old_files, (kill_at, top)
        assert "metrics.json" not in top or old_files <= top, (kill_at, top)
        # Opening the folder again, with any flags, finishes the overwrite the user asked for.
        open_run(folder, COMMAND, SETTINGS)
        assert list(folder.iterdir()) == []
        seen_states.add(frozenset(top))
    assert len(seen_states) >= 4  # the kills landed at different points of the overwrite


def test_a_kill_during_a_write_keeps_the_old_file_and_the_next_open_removes_the_temporary(tmp_path):
    run = finished_run(tmp_path)
    old = listing(tmp_path)

    def killed(file):
        file.write(b"half of the new weights")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.write("a.npz", killed)
    assert listing(tmp_path) == old  # the temporary file went with the failure
    (tmp_path / ".a.npz.0123.tmp").write_bytes(b"what a SIGKILL leaves")
    open_run(tmp_path, COMMAND, SETTINGS, resume=True)
    assert listing(tmp_path) == old


def test_nothing_is_written_through_a_symbolic_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.json").write_text("precious")
    folder = tmp_path / "run"
    run = finished_run(folder)
    (folder / "plots").symlink_to(outside)
    for flags in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(OutputError, match=f"{folder / 'plots'} is a symbolic link"):
            open_run(folder, COMMAND, SETTINGS, **flags)
    (folder / "plots").unlink()
    run = open_run(folder, COMMAND, SETTINGS, resume=True)
    (folder / "metrics.json").unlink()
    (folder / "metrics.json").symlink_to(outside / "metrics.json")  # made after the folder was opened
    with pytest.raises(OutputError, match=f"{folder / 'metrics.json'} is a symbolic link"):
        run.finish({"a": 2})
    with pytest.raises(OutputError, match="leaves the folder"):
        run.file("../outside/metrics.json")
    assert (outside / "metrics.json").read_text() == "precious"


def unwritable_folder(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if os.path.isdir("/proc/self/fdinfo"):  # root may write anywhere but in /proc
        return "/proc/self/fdinfo"
    pytest.skip("no folder this user cannot write in")


@pytest.mark.parametrize("case, message", [
    ("empty", "--out needs a folder name, got an empty string"),
    ("file", "--out {path} is a file, expected a folder"),
    ("below a file", "--out {path}: {file} is a file, expected a folder"),
    ("unwritable", "--out {path}: cannot write in {path}"),
])
def test_an_unusable_out_is_named_before_any_work(tmp_path, case, message):
    (tmp_path / "file").write_text("x")
    path = {"empty": "", "file": tmp_path / "file", "below a file": tmp_path / "file" / "run",
            "unwritable": None}[case]
    if case == "unwritable":
        path = unwritable_folder(tmp_path)
    with pytest.raises(OutputError, match=message.format(path=path, file=tmp_path / "file")):
        open_run(path, COMMAND, SETTINGS)


@pytest.mark.parametrize("path, message", [
    ("", "--table needs a file name, got an empty string"),
    (".", "--table . is a folder, expected a file name"),
    ("{tmp}/file/table.md", "--table {tmp}/file/table.md: {tmp}/file is a file, expected a folder"),
])
def test_an_unusable_output_file_is_named(tmp_path, path, message):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=message.format(tmp=tmp_path)):
        check_output_file(path.format(tmp=tmp_path), "--table")


def test_write_atomically_replaces_a_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "table.md"
    path.write_text("old table")
    assert write_atomically(path, lambda file: file.write(b"new table")) == len(b"new table")
    assert path.read_text() == "new table"
    with pytest.raises(ValueError):
        write_atomically(path, lambda file: (file.write(b"par"), int("t")))
    assert path.read_text() == "new table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_module_save_killed_mid_write_keeps_the_old_weights(tmp_path, monkeypatch):
    layer, path = Linear(3, 2, rng=np.random.default_rng(0)), tmp_path / "layer.npz"
    layer.save(path)
    old = path.read_bytes()

    def killed(file, **arrays):
        file.write(b"PK\x03\x04 the first bytes of a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        Linear(3, 2, rng=np.random.default_rng(1)).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["layer.npz"]
    Linear(3, 2, rng=np.random.default_rng(1)).save(tmp_path / "other")  # np.savez appends .npz too
    assert Linear(3, 2).load(tmp_path / "other.npz").weight.data.shape == (2, 3)


def training(seed, optimizer_class):
    model = Linear(4, 3, rng=np.random.default_rng(seed))
    optimizer = optimizer_class(model.parameters(), lr=0.1, **({"momentum": 0.9} if optimizer_class is SGD else {}))
    return model, optimizer, CosineSchedule(optimizer, 10, warmup_steps=2), np.random.default_rng(seed)


def step(model, optimizer, schedule, rng):
    x, labels = rng.standard_normal((5, 4)).astype(np.float32), rng.integers(0, 3, 5)
    schedule.step()
    loss = F.cross_entropy(model(Tensor(x)), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("optimizer_class", [Adam, SGD])
def test_a_restored_checkpoint_continues_exactly(tmp_path, optimizer_class):
    straight = training(0, optimizer_class)
    losses = [step(*straight) for _ in range(6)]
    interrupted = training(0, optimizer_class)
    for _ in range(3):
        step(*interrupted)
    run = open_run(tmp_path, COMMAND, SETTINGS)
    Checkpoints(run, interval=0).save(lambda: capture(*interrupted, {"order": np.arange(4)}, {"epoch": 1}))
    resumed_run = open_run(tmp_path, COMMAND, SETTINGS, resume=True)
    saved = Checkpoints(resumed_run, interval=0).load()
    fresh = training(7, optimizer_class)  # other weights and generator: all of it is restored
    arrays, values = restore(saved, *fresh)
    assert values == {"epoch": 1} and np.array_equal(arrays["order"], np.arange(4))
    assert [step(*fresh) for _ in range(3)] == losses[3:]
    np.testing.assert_array_equal(fresh[0].weight.data, straight[0].weight.data)


def test_checkpoints_are_saved_at_most_every_interval_and_read_only_when_resuming(tmp_path):
    run = open_run(tmp_path, COMMAND, SETTINGS)
    checkpoints = Checkpoints(run, interval=3600)
    state = training(0, Adam)
    assert not checkpoints.save(lambda: capture(*state))
    assert checkpoints.save(lambda: capture(*state), force=True)
    assert checkpoints.load() is None  # a new run never reads a checkpoint
    assert open_run(tmp_path, COMMAND, SETTINGS, overwrite=True) is not None
    resumed = Checkpoints(open_run(tmp_path, COMMAND, SETTINGS, resume=True), interval=0)
    assert resumed.load().values["schedule_steps"] == 0
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(OutputError, match="the checkpoint .*checkpoint.npz cannot be read"):
        resumed.load()
