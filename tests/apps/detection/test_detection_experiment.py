"""The detection table: the bootstrap over test canvases, mAP on a resample, the gain cells, and
a tiny table that reuses its finished runs."""

import json

import numpy as np
import pytest

from dcn_numba.apps.detection import detect, experiment
from dcn_numba.apps.detection.detector import OFFSET_LR_MULTIPLIERS
from dcn_numba.apps.detection.evaluation import detection_metrics
from dcn_numba.data.mnist import Digits, Mnist


def test_bootstrap_of_a_mean_matches_its_standard_error():
    """The bootstrap standard deviation of a mean of n values is σ/√n (σ with ddof 0); every
    resample draws n canvases."""
    values = np.random.default_rng(0).exponential(size=200)
    means = experiment.bootstrap(lambda w: np.dot(w, values) / w.sum(), len(values), resamples=2000, seed=1)
    assert means.std() == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.1)
    assert np.mean(means) == pytest.approx(values.mean(), abs=0.01)
    counts = experiment.bootstrap(lambda w: w.sum(), 7, resamples=5)
    np.testing.assert_array_equal(counts, 7)
    again = experiment.bootstrap(lambda w: np.dot(w, values) / w.sum(), len(values), resamples=2000, seed=1)
    np.testing.assert_array_equal(means, again)


def random_detections(rng, canvases=12, classes=3):
    truth, found = [], []
    for image in range(canvases):
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 40, 2)
            label = int(rng.integers(classes))
            truth.append(dict(image=image, label=label, box=[x, y, x + 16, y + 20]))
            for _ in range(rng.integers(0, 3)):  # near misses and hits, some of the wrong class
                jitter = rng.normal(0, 3, 4)
                found.append(dict(image=image, label=int(rng.integers(classes)) if rng.random() < 0.2 else label,
                                  score=float(rng.random()), box=list(np.add([x, y, x + 16, y + 20], jitter))))
        found.append(dict(image=image, label=int(rng.integers(classes)), score=float(rng.random()),
                          box=[1.0, 1.0, 9.0, 9.0]))  # clutter
    return found, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_map_with_unit_weights_is_the_map(seed):
    found, truth = random_detections(np.random.default_rng(seed))
    metrics = detection_metrics(found, truth)
    for key, iou in (("map50", 0.5), ("map70", 0.7)):
        scored = experiment.scored_detections(found, truth, iou)
        assert experiment.weighted_map(scored, np.ones(12)) == pytest.approx(metrics[key], abs=1e-12)


def test_weighted_map_is_the_map_of_the_resampled_test_set():
    """Weights 2, 0, 1, 3, ...: the same as the test set with canvas c copied weights[c] times."""
    found, truth = random_detections(np.random.default_rng(3))
    weights = np.random.default_rng(4).multinomial(12, np.full(12, 1 / 12))
    copies_found, copies_truth, image = [], [], 0
    for canvas, count in enumerate(weights):
        for _ in range(count):
            copies_found += [dict(d, image=image) for d in found if d["image"] == canvas]
            copies_truth += [dict(g, image=image) for g in truth if g["image"] == canvas]
            image += 1
    resampled = detection_metrics(copies_found, copies_truth)
    for key, iou in (("map50", 0.5), ("map70", 0.7)):
        scored = experiment.scored_detections(found, truth, iou)
        assert experiment.weighted_map(scored, weights) == pytest.approx(resampled[key], abs=1e-12)


def test_gain_cell_reports_the_mean_gain_and_its_interval():
    runs = {"2fc": {0: dict(map70=0.60), 1: dict(map70=0.62)}, "2fc_droi": {0: dict(map70=0.70), 1: dict(map70=0.68)}}
    resampled = np.linspace(0, 1, 1001)
    samples = {("2fc", 0, "map70"): resampled, ("2fc", 1, "map70"): resampled,
               ("2fc_droi", 0, "map70"): resampled + 0.05, ("2fc_droi", 1, "map70"): resampled + 0.07}
    # gain (0.10 + 0.06)/2 = 8 points; every resampled gain is (0.05 + 0.07)/2 = 6 points
    assert experiment.gain_cell(runs, samples, "2fc_droi", "2fc", "map70") == "+8.0 [+6.0, +6.0]"
    assert experiment.gain_cell(runs, samples, "2fc", "2fc", "map70") == "base"
    assert experiment.gain_cell({"2fc_droi": runs["2fc_droi"]}, samples, "2fc_droi", "2fc", "map70") == "–"


def blocks(count, seed):
    """Stand-ins for MNIST digits: a bar of ink of random size in a 28×28 image."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 1, 28, 28), np.float32)
    for image in images:
        top, left = rng.integers(2, 10, 2)
        image[0, top:top + rng.integers(10, 18), left:left + rng.integers(4, 14)] = 1
    return Digits(images, rng.integers(0, 10, count))


@pytest.fixture
def tiny_options(monkeypatch, tmp_path):
    """A table of one seed, rows none and droi, heads rpn and 2fc, in seconds: stand-in digits, a
    few training canvases, two steps, three test canvases."""
    monkeypatch.setattr(experiment, "load_mnist", lambda: Mnist(blocks(40, 0), blocks(40, 1)))
    parse = detect.parse_args
    monkeypatch.setattr(detect, "parse_args", lambda argv: parse(list(argv) + ["--train-canvases", "6",
                                                                                "--batch-size", "2"]))
    return ["--seeds", "0", "--rows", "none", "droi", "--heads", "rpn", "2fc", "--steps", "2",
            "--test-canvases", "3", "--resamples", "10",
            "--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]


def test_tiny_table_reuses_its_finished_runs(tiny_options, tmp_path, monkeypatch):
    experiment.main(tiny_options)
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    table = json.loads((docs / "results_detection.json").read_text())
    assert sorted(table) == ["2fc", "2fc_droi", "rpn"]
    assert all(len(table[v]["map50"]) == 1 and 0 <= table[v]["map70"][0] <= table[v]["map50"][0] <= 1 for v in table)
    stored = json.loads((runs / "2fc_droi" / "seed0" / "metrics.json").read_text())
    assert {"drift", "outside", "params", "seconds_per_canvas"} <= set(stored) and stored["settings"]["steps"] == 2
    text = (docs / "results_detection.md").read_text()
    assert "| deformable RoI pooling | N.A. | N.A. |" in text
    assert "| none | base | base | base | base | – | – |" in text

    trained = []
    original = experiment.train_run
    monkeypatch.setattr(experiment, "train_run", lambda variant, *a: trained.append(variant) or original(variant, *a))
    experiment.main(tiny_options)
    assert trained == []  # every run read back
    (runs / "2fc_droi" / "seed0" / "metrics.json").unlink()  # as a kill during that run leaves it
    experiment.main(tiny_options)
    assert trained == ["2fc_droi"]
    # a run stored with other settings is not read back: the table trains it again
    longer = ["3" if previous == "--steps" else a for previous, a in zip([None, *tiny_options], tiny_options)]
    for options, found in ((tiny_options, True), (longer, False)):
        settings = experiment.run_settings(experiment.parse_args(options), "2fc", 0)[1]
        assert (experiment.stored_run(runs / "2fc" / "seed0", settings) is not None) == found
    # another offset learning rate: only the runs of deformable RoI pooling change, in folders and
    # results files of their own; the detector's defaults are back afterwards
    defaults = dict(OFFSET_LR_MULTIPLIERS)
    experiment.main([*tiny_options, "--offset-lr-multiplier", "1"])
    assert trained == ["2fc_droi", "2fc_droi"] and OFFSET_LR_MULTIPLIERS == defaults
    stored = json.loads((runs / "2fc_droi_offset-lr1" / "seed0" / "metrics.json").read_text())
    assert stored["settings"]["design"]["offset_lr_multiplier"] == 1.0
    assert sorted(json.loads((docs / "results_detection_offset-lr1.json").read_text())) == ["2fc", "2fc_droi", "rpn"]
    assert "learns at 1 (2fc) and 1 (R-FCN) times" in (docs / "results_detection_offset-lr1.md").read_text()
