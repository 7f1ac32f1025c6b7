"""The training command: a short run learns, and the command-line entry point writes every output."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from dcn_numba import experiment, train
from dcn_numba.data import Digits, load_embedded, subset
from dcn_numba.models import MnistNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_embedded()


def test_a_few_dozen_steps_beat_chance(mnist):
    args = train.parse_args(["--epochs", "1", "--batch-size", "32", "--train-size", "1024", "--lr", "0.003"])
    test = subset(mnist.test, 300, seed=0)
    train_digits = subset(mnist.train, args.train_size, args.seed)
    net, seconds, history = train.train_variant("regular", train_digits, test, args, "cpu")
    assert len(history["loss"]) == 32 and len(seconds) == 1
    # Chance is 10% on ten balanced classes; the loss starts near ln 10 ≈ 2.30. (After so few
    # steps BatchNorm's running statistics still lag behind, which keeps evaluation modest.)
    assert history["test_accuracy"][-1] > 0.3
    assert np.mean(history["loss"][-5:]) < 0.85 * np.mean(history["loss"][:5])


def test_predictions_do_not_depend_on_the_batching(mnist):
    net = MnistNet(seed=3, channels=(4, 4))
    images = mnist.test.images[:23]
    np.testing.assert_array_equal(train.predict(net, images, "cpu", batch_size=5),
                                  train.predict(net, images, "cpu", batch_size=23))


def test_batches_cover_every_digit_once():
    digits = Digits(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10))
    seen = [labels for _, labels in train.batches(digits, 4, np.random.default_rng(0))]
    assert [len(labels) for labels in seen] == [4, 4, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(10))


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--variants", "wide"], "invalid choice: 'wide'"),
])
def test_bad_arguments_are_reported(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_command_line_writes_every_output(tmp_path, mnist):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dcn_numba.train", "--epochs", "1", "--batch-size", "32",
               "--train-size", "64", "--test-size", "40", "--augment", "affine", "--seed", "5",
               "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "regular" in result.stdout and "deformable" in result.stdout and "scaled acc" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"regular", "deformable"}
    for variant, expected_params in (("regular", MnistNet().num_parameters()),
                                     ("deformable", MnistNet(deformable=True).num_parameters())):
        m = metrics[variant]
        assert m["params"] == expected_params
        assert m["epochs"] == 1 and m["seed"] == 5 and m["augment"] == "affine"
        assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["scaled_test_accuracy"] <= 1
        assert m["seconds_per_epoch"] > 0
        assert len(m["history"]["loss"]) == 2 and len(m["history"]["test_accuracy"]) == 1
        net = MnistNet(**train.VARIANTS[variant]).load(out / f"{variant}.npz")
        # The saved weights reproduce the reported accuracy on the same test digits.
        test = subset(mnist.test, 40, seed=0)
        assert train.accuracy(net, test, "cpu") == pytest.approx(m["test_accuracy"])
    for picture in ("training_curves.png", "sampling_locations.png"):
        assert imread(out / picture).shape[0] > 100


def test_experiment_table_reports_mean_and_spread_over_seeds():
    def metrics(test, scaled):
        return dict(test_accuracy=test, scaled_test_accuracy=scaled, params=1234, seconds_per_epoch=2.0,
                    epochs=3, batch_size=64, lr=0.003, augment="none", train_digits=4000,
                    test_digits=1000, scaled_range=[0.5, 1.4], device="cpu")

    runs = {0: {"regular": metrics(0.97, 0.60), "deformable": metrics(0.98, 0.70)},
            1: {"regular": metrics(0.99, 0.64), "deformable": metrics(0.98, 0.80)}}
    table = experiment.markdown_table(runs, "python -m dcn_numba.experiment --seeds 0 1")
    assert "`python -m dcn_numba.experiment --seeds 0 1`" in table
    # mean 98.0, sample standard deviation sqrt(2)·1.0 ≈ 1.4; mean 62.0 ± 2.8.
    assert "| regular | 98.0 ± 1.4 (97.0, 99.0) | 62.0 ± 2.8 (60.0, 64.0) | 1,234 | 2.0 |" in table
    assert "| deformable | 98.0 ± 0.0 (98.0, 98.0) | 75.0 ± 7.1 (70.0, 80.0) |" in table


def test_experiment_runs_every_seed_and_writes_the_table(tmp_path):
    table = tmp_path / "results.md"
    experiment.main(["--seeds", "3", "4", "--out", str(tmp_path / "runs"), "--table", str(table),
                     "--variants", "regular", "--epochs", "1", "--train-size", "32", "--test-size", "20",
                     "--batch-size", "16"])
    for seed in (3, 4):
        assert json.loads((tmp_path / "runs" / f"seed{seed}" / "metrics.json").read_text())["regular"]["seed"] == seed
    rows = [line for line in table.read_text().splitlines() if line.startswith("| regular |")]
    assert len(rows) == 1 and "seeds 3, 4" in table.read_text()
