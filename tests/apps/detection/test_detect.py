"""The detection command: its options, a tiny end-to-end run, and the table it writes."""

import json

import numpy as np
import pytest

from dcn_numba.apps.detection import detect
from dcn_numba.apps.detection.viz import part_bins
from dcn_numba.apps.detection.evaluation import detection_metrics


@pytest.mark.parametrize("argv, option", [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-2"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--test-canvases", "x"], "--test-canvases"),
    (["--variants", "3fc"], "--variants"),
    (["--table", "t.md"], "--table"),
])
def test_bad_options_are_named(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        detect.parse_args(argv)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_all_means_the_eight_variants_of_the_table():
    assert detect.parse_args(["--variants", "all"]).variants == list(detect.VARIANTS)
    assert len(detect.VARIANTS) == 8


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect")
    detect.main(["--variants", "rfcn", "rfcn_droi", "--steps", "3", "--batch-size", "2",
                 "--train-canvases", "6", "--test-canvases", "3", "--out", str(out)])
    return out


def test_run_writes_detections_that_recompute_its_metrics(tiny_run):
    ground_truth = json.loads((tiny_run / "ground_truth.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics) == {"rfcn", "rfcn_droi"}
    assert {tuple(sorted(g)) for g in ground_truth} == {("box", "image", "label")}
    for variant, m in metrics.items():
        detections = json.loads((tiny_run / f"detections_{variant}.json").read_text())
        for record in detections:
            assert sorted(record) == ["box", "image", "label", "score"]
            assert len(record["box"]) == 4
        recomputed = detection_metrics(detections, ground_truth)
        assert m["map50"] == pytest.approx(recomputed["map50"])
        assert m["map70"] == pytest.approx(recomputed["map70"])
        assert 0 <= m["map70"] <= m["map50"] <= 1
        assert len(m["history"]["loss"]) == 3
        assert (tiny_run / f"{variant}.npz").exists()
    assert metrics["rfcn_droi"]["params"] > metrics["rfcn"]["params"]
    assert (tiny_run / "part_offsets.png").stat().st_size > 0


def fake_metrics(map50, map70, params):
    settings = dict(steps=10, batch_size=2, rois_per_image=8, lr=0.01, train_canvases=5, test_canvases=3,
                    test_digits=7, anchors=100)
    return dict(settings, map50=map50, map70=map70, map50_all=map50, map70_all=map70, coco_ap=map70 / 2,
                params=params, seconds_per_image=0.002)


def test_markdown_table_reports_mean_std_and_each_seed():
    runs = {seed: {"2fc": fake_metrics(0.8 + d, 0.6 + d, 1000), "2fc_droi": fake_metrics(0.82, 0.7 + d, 1500)}
            for seed, d in ((0, 0.0), (1, 0.02))}
    table = detect.markdown_table(runs, "python -m dcn_numba.detect --seeds 0 1")
    lines = table.splitlines()
    assert "`python -m dcn_numba.detect --seeds 0 1`" in lines[1]
    row = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    # 2fc mAP@0.5 over the seeds: 80 and 82, mean 81, sample std sqrt(2) = 1.4
    assert "81.0 ± 1.4 (80.0, 82.0)" in row["none"]
    assert "71.0 ± 1.4 (70.0, 72.0)" in row["deformable RoI pooling"]
    assert row["both"].count("–") == 4  # not trained: dashes, not numbers
    assert "| 2fc_droi | 1,500 | 2.0 |" in table
    assert np.isclose(float(row["none"].split(" | ")[2].split(" ")[0]), 61.0)


def test_part_bins_by_hand():
    """A 12×12 RoI at stride 4 is 3 feature cells wide: 3×3 bins of 4×4 pixels; a normalised
    offset of 1 in x at bin (0, 0) moves it by trans_std·1·(RoI width 3 cells) = 0.3 cells = 1.2 px."""
    trans = np.zeros((2, 3, 3))
    trans[0, 0, 0] = 1.0
    bins = part_bins([0, 0, 12, 12], trans, 3, 0.1, 0.25)
    np.testing.assert_allclose(bins[1, 2], [8, 4, 12, 8])
    np.testing.assert_allclose(bins[0, 0], [1.2, 0, 5.2, 4])


def test_part_bins_round_halves_away_from_zero_as_the_operator():
    """At .5 coordinates the operator rounds as C does, halves away from zero: the RoI [2.5, 1.5,
    12.5, 13.5) has last-pixel corners (2.5, 1.5, 11.5, 12.5), rounded to (3, 2, 12, 13) (NumPy's
    round would give 2 and 12). At stride 2 that is x from 1 to 6.5 − 0.5 on the feature map, 5
    cells, y from 0.5 to 6.5, 6 cells: 2×2 bins of 2.5 × 3 cells, 5 × 6 pixels."""
    bins = part_bins([2.5, 1.5, 12.5, 13.5], np.zeros((2, 2, 2)), 2, 0.1, 0.5)
    np.testing.assert_allclose(bins[0, 0], [3, 2, 8, 8])
    np.testing.assert_allclose(bins[1, 1], [8, 8, 13, 14])
