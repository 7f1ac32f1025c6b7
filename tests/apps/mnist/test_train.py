"""The training command: a short run learns, and the command-line entry point writes every output."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from dcn_numba.data import mnist as data
from dcn_numba.apps.mnist import experiment
from dcn_numba.apps.mnist import train
from dcn_numba.data.mnist import Digits, load_embedded, scaled_digits, subset
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.runs.outputs import open_run
from data.test_data import write_idx

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def mnist():
    return load_embedded()


def test_a_few_dozen_steps_beat_chance(mnist):
    args = train.parse_args(["--epochs", "1", "--batch-size", "32", "--train-size", "768", "--lr", "0.003"])
    test = train.setting_test_digits(subset(mnist.test, 300, seed=0), "seen")
    train_digits = subset(mnist.train, args.train_size, args.seed)
    net, seconds, history = train.train_variant("regular", train_digits, test, args, "cpu")
    assert len(history["loss"]) == 24 and len(seconds) == 1
    # Chance is 10% on ten balanced classes; the loss starts near ln 10 ≈ 2.30. (After so few
    # steps BatchNorm's running statistics still lag behind, which keeps evaluation modest.)
    assert history["test_accuracy"][-1] > 0.3
    assert np.mean(history["loss"][-5:]) < 0.85 * np.mean(history["loss"][:5])


def test_predictions_do_not_depend_on_the_batching(mnist):
    net = MnistNet(seed=3, channels=(4, 4))
    images = scaled_digits(subset(mnist.test, 23, seed=0), 1.5, canvas_size=train.CANVAS_SIZE).images
    np.testing.assert_array_equal(train.predict(net, images, "cpu", batch_size=5),
                                  train.predict(net, images, "cpu", batch_size=23))


def test_batches_cover_every_digit_once():
    digits = Digits(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    order = np.random.default_rng(0).permutation(10)
    seen = [labels for _, labels in train.batches(digits, 4, order)]
    assert [len(labels) for labels in seen] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(seen), order)
    # From the middle of an epoch (a resumed run): the rest of the same order.
    rest = [labels for _, labels in train.batches(digits, 4, order, start=4)]
    np.testing.assert_array_equal(np.concatenate(rest), order[4:])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
    (["--variants", "wide"], "invalid choice: 'wide'"),
    (["--train-size", "-5"], "argument --train-size: must be >= 1, got -5"),
    (["--train-size", "0"], "argument --train-size: must be >= 1, got 0"),
    (["--test-size", "0"], "argument --test-size: must be >= 1, got 0"),
    (["--spread-digits", "0"], "argument --spread-digits: must be >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--lr", "-0.1"], "argument --lr: must be a finite number > 0, got -0.1"),
    (["--setting", "both"], "invalid choice: 'both'"),
])
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("damage, named", [
    ("truncated", "train-images-idx3-ubyte"),
    ("garbage", "train-labels-idx1-ubyte"),
    ("label", "t10k-labels-idx1-ubyte"),
    ("missing", "t10k-images-idx3-ubyte"),
])
def test_bad_data_folders_are_reported_naming_the_option_and_the_file(tmp_path, capsys, damage, named):
    rng = np.random.default_rng(0)
    for part, count in (("train", 4), ("test", 3)):
        images, labels = data.IDX_FILES[part]
        write_idx(tmp_path / images, rng.integers(0, 256, size=(count, 5, 5)))
        write_idx(tmp_path / labels, rng.integers(0, 10, size=count))
    target = tmp_path / named
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-3])
    elif damage == "garbage":
        target.write_bytes(b"not an IDX file at all")
    elif damage == "label":
        write_idx(target, np.array([0, 11, 3]))
    else:
        target.unlink()
    with pytest.raises(SystemExit):
        train.load_data(train.parse_args(["--data", str(tmp_path)]))
    error = capsys.readouterr().err
    assert f"--data {tmp_path}:" in error
    assert named in error
    assert "Traceback" not in error


def test_metrics_json_is_strict_json_without_nan(tmp_path):
    run = open_run(tmp_path, train.COMMAND, {})
    run.finish({"v": {"loss": [1.5, float("nan")], "best": float("inf"), "n": 3}})

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert metrics == {"v": {"loss": [1.5, None], "best": None, "n": 3}}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.json", "run.json"]


def tiny_args(out, *extra):
    return train.parse_args(["--epochs", "1", "--batch-size", "16", "--train-size", "32", "--test-size", "20",
                             "--spread-digits", "3", "--device", "cpu", "--out", str(out), *extra])


def test_a_failed_figure_leaves_no_metrics_json(tmp_path, mnist, monkeypatch):
    out = tmp_path / "run"
    open_run(out, train.COMMAND, {}).finish({"regular": {"test_accuracy": 1.0}})  # a previous run

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(train.viz, "plot_training_curves", broken)
    with pytest.raises(OSError, match="disk full"):
        train.run(tiny_args(out, "--variants", "regular", "--overwrite"), mnist)
    assert not (out / "metrics.json").exists()
    assert not list(out.glob(".*.tmp"))  # the figure's temporary file went with the failure


def test_command_line_writes_every_output(tmp_path, mnist):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dcn_numba.train", "--epochs", "1", "--batch-size", "32",
               "--train-size", "64", "--test-size", "40", "--spread-digits", "4", "--seed", "5",
               "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "regular" in result.stdout
    assert "deformable" in result.stdout
    assert "×2.0" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"regular", "deformable"}
    test = subset(mnist.test, 40, seed=0)
    for variant in ("regular", "deformable"):
        m = metrics[variant]
        net = MnistNet(**train.VARIANTS[variant]).load(out / f"{variant}.npz")
        assert m["params"] == net.num_parameters()
        assert m["epochs"] == 1 and m["seed"] == 5 and m["setting"] == "seen"
        assert list(m["accuracy_by_scale"]) == [str(f) for f in train.TEST_FACTORS]
        assert len(m["history"]["loss"]) == 2 and len(m["history"]["test_accuracy"]) == 1
        # The saved weights reproduce the reported accuracies on the same test digits: as
        # shipped (on the canvas, which is factor 1 exactly) and at factor 2.
        plain = train.accuracy(net, scaled_digits(test, 1.0, canvas_size=train.CANVAS_SIZE), "cpu")
        assert m["plain_test_accuracy"] == pytest.approx(plain)
        assert m["accuracy_by_scale"]["1.0"] == pytest.approx(plain)
        large = train.accuracy(net, scaled_digits(test, 2.0, canvas_size=train.CANVAS_SIZE), "cpu")
        assert m["accuracy_by_scale"]["2.0"] == pytest.approx(large)
        assert set(m["receptive_field"]["0.5"]) == {"object", "object_weighted", "background",
                                                     "background_weighted", "background_units"}
    # Only deformable variants report spread_by_scale: the object units' spread per factor.
    assert "spread_by_scale" not in metrics["regular"]
    spreads = metrics["deformable"]["spread_by_scale"]
    assert spreads == {f: field["object"] for f, field in metrics["deformable"]["receptive_field"].items()}
    # A regular net reads a fixed grid: 8 pixels of spread at every factor.
    assert all(field["object"] == pytest.approx(8.0) for field in metrics["regular"]["receptive_field"].values())
    # Background units are kept off the map's border, where the traced grid would be clipped.
    assert all(field["background"] in (None, pytest.approx(8.0))
               for field in metrics["regular"]["receptive_field"].values())
    for picture in ("training_curves.png", "sampling_locations.png"):
        assert imread(out / picture).shape[0] > 100


def test_unseen_setting_trains_at_factor_one(monkeypatch, tmp_path, mnist):
    seen_factors = []
    real = train.scale_about_centre

    def recording(images, factors, canvas_size=None):
        seen_factors.append(np.asarray(factors))
        return real(images, factors, canvas_size)

    monkeypatch.setattr(train, "scale_about_centre", recording)
    monkeypatch.setattr(train, "variant_metrics", lambda *args: {"history": args[3]})
    monkeypatch.setattr(train.viz, "plot_training_curves", lambda *args: None)
    train.run(tiny_args(tmp_path / "unseen", "--variants", "regular", "--setting", "unseen"), mnist)
    np.testing.assert_array_equal(np.concatenate(seen_factors), 1.0)
    seen_factors.clear()
    train.run(tiny_args(tmp_path / "seen", "--variants", "regular", "--setting", "seen"), mnist)
    factors = np.concatenate(seen_factors)
    assert factors.min() >= train.SCALE_RANGE[0]
    assert factors.max() <= train.SCALE_RANGE[1]
    assert factors.std() > 0.2


def fake_metrics(test, by_scale, spreads, seed=0, params=1234):
    factors = ["0.5", "1.0", "2.0"]
    return dict(test_accuracy=test, accuracy_by_scale=dict(zip(factors, by_scale)),
                receptive_field={f: dict(object=s, object_weighted=s / 2, background=8.0, background_weighted=4.0,
                                         background_units=100) for f, s in zip(factors, spreads)},
                params=params, epochs=3, batch_size=64, lr=0.003, train_digits=4000, test_digits=500,
                spread_digits=100, canvas_size=48, scale_range=[0.5, 2.0], device="cpu", seed=seed)


def test_scales_table_reports_mean_spread_and_seed_by_seed_gain():
    runs = {}
    for setting in ("seen", "unseen"):
        runs[(setting, "regular")] = {0: fake_metrics(0.97, [0.90, 0.97, 0.95], [8, 8, 8]),
                                      1: fake_metrics(0.99, [0.92, 0.99, 0.93], [8, 8, 8])}
        runs[(setting, "deformable")] = {0: fake_metrics(0.98, [0.91, 0.98, 0.99], [8, 9, 10]),
                                         1: fake_metrics(0.98, [0.95, 0.98, 0.97], [8, 9, 11])}
    blocks = np.zeros((2, 1, 28, 28), dtype=np.float32)
    blocks[0, 0, 10:18, 10:18] = 1.0  # stays on the canvas at ×2
    blocks[1, 0, 10:18, 0:4] = 1.0  # about its left half falls off at ×2
    table = experiment.scales_table(runs, "python -m dcn_numba.experiment scales --seeds 0 1",
                                    Digits(blocks, np.array([0, 1])))
    assert "`python -m dcn_numba.experiment scales --seeds 0 1`" in table
    # mean 98.0, sample standard deviation √2·1.0 ≈ 1.4; at ×0.5 91.0 ± 1.4.
    assert "| regular | 98.0 ± 1.4 | 91.0 ± 1.4 | 98.0 ± 1.4 | 94.0 ± 1.4 |" in table
    # Gains seed by seed: test +1, −1 → 0.0 ± 1.4; ×0.5: +1, +3 → 2.0 ± 1.4; ×2.0: +4, +4 → 4.0 ± 0.0.
    assert "| gain (points) | 0.0 ± 1.4 | 2.0 ± 1.4 | 0.0 ± 1.4 | 4.0 ± 0.0 |" in table
    assert table.count("| gain (points) |") == 2
    cut = experiment.ink_cut_off(Digits(blocks, np.array([0, 1])), 2.0)
    assert cut[0] == pytest.approx(0.0, abs=1e-6)
    assert 0.2 < cut[1] < 0.6
    assert f"cuts off {100 * cut.mean():.2f}% of a test digit's ink on average (50.0% of the digits" in table


def test_ablation_and_receptive_field_tables():
    runs = {("seen", "regular"): {0: fake_metrics(0.97, [0.90, 0.97, 0.95], [8, 8, 8])},
            ("seen", "deformable"): {0: fake_metrics(0.98, [0.91, 0.98, 0.99], [8, 9, 12]),
                                     1: fake_metrics(0.96, [0.91, 0.98, 0.99], [8, 9, 10])}}
    table = experiment.ablation_table(runs, "cmd", ["regular", "deformable"], "Intro.")
    assert "| regular (0 deformable layers) | 1,234 | 97.0 ± 0.0 (97.0) | 90.0 ± 0.0 | 97.0 ± 0.0 | 95.0 ± 0.0 | 1.00 ± 0.00 |" in table
    # Spread ratios 12/8 = 1.5 and 10/8 = 1.25: 1.38 ± 0.18.
    assert "| deformable layers 1–3 (3 layers) | 1,234 | 97.0 ± 1.4 (98.0, 96.0) |" in table
    assert table.rstrip().endswith("| 1.38 ± 0.18 |")
    field = experiment.receptive_field_table(runs, "cmd")
    # Object points of the deformable runs: 8 → 12 and 8 → 10 over factors 0.5 … 2.0; slopes
    # (least squares over 0.5, 1, 2) 19/7 ≈ 2.71 and 9/7 ≈ 1.29.
    row = next(line for line in field.splitlines() if line.startswith("| seen | deformable | object | points |"))
    assert "| 8.00 ± 0.00 | 9.00 ± 0.00 | 11.00 ± 1.41 | 1.38 ± 0.18 (1.50, 1.25) | 2.00 ± 1.01 |" in row


def test_experiment_reuses_stored_runs(tmp_path, mnist, monkeypatch):
    options, train_argv = experiment.parse_args(
        ["modulation", "--seeds", "3", "--runs", str(tmp_path), "--epochs", "1", "--train-size", "16",
         "--test-size", "8", "--spread-digits", "2", "--batch-size", "16", "--device", "cpu"])
    pairs = [("seen", "regular")]
    first = experiment.get_runs(options, train_argv, pairs, mnist)
    assert first[("seen", "regular")][3]["seed"] == 3
    assert (tmp_path / "seen" / "seed3" / "regular" / "metrics.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(experiment.train, "run", no_training)
    assert experiment.get_runs(options, train_argv, pairs, mnist) == first
    # Other settings are another run: trained, not read.
    changed = train_argv[:]
    changed[changed.index("--epochs") + 1] = "2"
    with pytest.raises(AssertionError, match="trained again"):
        experiment.get_runs(options, changed, pairs, mnist)


@pytest.mark.parametrize("out, message", [
    ("", "--out needs a folder name, got an empty string"),
    ("{tmp}/file", "--out {tmp}/file is a file, expected a folder"),
    ("{tmp}/file/run", "--out {tmp}/file/run: {tmp}/file is a file, expected a folder"),
])
def test_an_unusable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(train, "load_data", lambda args: pytest.fail("the data was loaded before --out was checked"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", out.format(tmp=tmp_path)])
    assert exit_info.value.code == 2
    assert f"error: {message.format(tmp=tmp_path)}" in capsys.readouterr().err


def test_an_idx_folder_of_0_digits_is_refused_naming_the_option_and_the_files(tmp_path, capsys):
    for part in ("train", "test"):
        images, labels = data.IDX_FILES[part]
        write_idx(tmp_path / images, np.zeros((0, 28, 28)))
        write_idx(tmp_path / labels, np.zeros(0))
    with pytest.raises(SystemExit):
        train.load_data(train.parse_args(["--data", str(tmp_path)]))
    error = capsys.readouterr().err
    assert f"--data {tmp_path}: {tmp_path / 'train-images-idx3-ubyte'} and " in error
    assert "hold 0 digits, expected at least one" in error


def test_a_gzip_idx_file_is_checked_before_it_is_inflated(tmp_path, monkeypatch):
    """A small gzip file whose header announces 2 images of 5×5 but which inflates to 40 MB of
    zeros is refused from its header and its trailer, having inflated only the header."""
    header = bytes([0, 0, 0x08, 3]) + np.array([2, 5, 5], dtype=">u4").tobytes()
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + bytes(40 << 20)))
    assert path.stat().st_size < 100_000
    inflated = []
    real_read = gzip.GzipFile.read

    def read(file, size=-1):
        data_read = real_read(file, size)
        inflated.append(len(data_read))
        return data_read

    monkeypatch.setattr(gzip.GzipFile, "read", read)
    with pytest.raises(ValueError, match=r"bomb-idx3-ubyte.gz is a damaged gzip file, or holds another array "
                                         r"than its header says: it inflates to 41943056 bytes .* expected 66"):
        data.read_idx(path)
    assert sum(inflated) <= len(header)


def test_experiment_checks_the_docs_folder_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(train, "load_data", lambda args: pytest.fail("the data was loaded before --docs was checked"))
    with pytest.raises(SystemExit) as exit_info:
        experiment.main(["modulation", "--docs", str(tmp_path / "file"), "--runs", str(tmp_path / "runs")])
    assert f"--docs {tmp_path / 'file' / 'results_modulation.md'}: {tmp_path / 'file'} is a file" in str(
        exit_info.value)


def test_experiment_writes_its_table_atomically(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results_modulation.md").write_text("the previous table")
    options, train_argv = experiment.parse_args(["modulation", "--docs", str(docs)])
    runs = {("seen", "deformable"): {0: fake_metrics(0.98, [0.9, 0.98, 0.97], [8, 9, 10])},
            ("seen", "modulated"): {0: fake_metrics(0.97, [0.9, 0.97, 0.96], [8, 9, 11])}}
    monkeypatch.setattr(experiment, "get_runs", lambda *args: runs)
    real_ablation = experiment.ablation_table
    monkeypatch.setattr(experiment, "ablation_table", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        experiment.write_table("modulation", options, train_argv, None, "cmd")
    assert [p.name for p in docs.iterdir()] == ["results_modulation.md"]
    assert (docs / "results_modulation.md").read_text() == "the previous table"
    monkeypatch.setattr(experiment, "ablation_table", real_ablation)
    experiment.write_table("modulation", options, train_argv, None, "cmd")
    assert "| modulated (v2) layers 1–3 | 1,234 | 97.0 ± 0.0 (97.0) |" in (docs / "results_modulation.md").read_text()
