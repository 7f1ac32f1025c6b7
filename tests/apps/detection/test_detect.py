"""The detection command: its options, a tiny end-to-end run, and the table it writes."""

import json
import shutil

import numpy as np
import pytest

from dcn_numba.apps.detection import detect
from dcn_numba.apps.detection.viz import main as viz_main
from dcn_numba.apps.detection.viz import part_bins
from dcn_numba.apps.detection.evaluation import detection_metrics
from dcn_numba.data.mnist import IDX_FILES
from data.test_data import write_idx


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
    """A tiny run on a tiny MNIST of random 28×28 'digits' in IDX files (quicker to load than the
    embedded digits)."""
    out, digits = tmp_path_factory.mktemp("detect"), tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for part, count in (("train", 16), ("test", 8)):
        images, labels = IDX_FILES[part]
        write_idx(digits / images, (rng.random((count, 28, 28)) < 0.2) * 255)
        write_idx(digits / labels, rng.integers(0, 10, count))
    detect.main(["--variants", "rfcn", "rfcn_droi", "--steps", "3", "--batch-size", "2", "--data", str(digits),
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


def test_an_unusable_table_is_refused_before_any_seed_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(detect, "train_variant", lambda *args: pytest.fail("a seed trained before --table was checked"))
    with pytest.raises(SystemExit) as exit_info:
        detect.main(["--seeds", "0", "1", "--table", ".", "--out", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert "error: --table . is a folder, expected a file name" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--train-canvases", "--test-canvases"])
def test_canvas_counts_that_cannot_fit_in_memory_are_refused_naming_the_option(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        detect.parse_args([option, str(10**9)])
    assert exit_info.value.code == 2
    assert (f"argument {option}: 1,000,000,000 64×64 float32 canvases would take 1.64e+13 bytes, more than "
            "this machine's") in capsys.readouterr().err


def test_a_seed_folder_that_is_a_link_is_refused(tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "seed0").symlink_to(outside)
    monkeypatch.setattr(detect, "train_variant", lambda *args: pytest.fail("trained through a link"))
    with pytest.raises(SystemExit):
        detect.main(["--seeds", "0", "--out", str(tmp_path / "runs")])
    assert f"{tmp_path / 'runs' / 'seed0'} is a symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.fixture
def damaged_run(tiny_run, tmp_path):
    """A copy of the tiny run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.mark.parametrize("damage, message", [
    ("missing", "--run {run}: no finished run there ({run}/metrics.json is missing"),
    ("not json", "--run {run}: {run}/metrics.json or run.json is not the JSON a detect run writes"),
    ("no variant", "--run {run}: {run}/metrics.json holds no variant 'rfcn_droi' (it holds rfcn); train it"),
    ("truncated", "--run {run}: the weights {run}/rfcn_droi.npz cannot be loaded (BadZipFile"),
])
def test_detection_viz_names_what_is_wrong_with_the_run(damaged_run, tmp_path, capsys, damage, message):
    metrics = damaged_run / "metrics.json"
    if damage == "missing":
        metrics.unlink()
    elif damage == "not json":
        metrics.write_text('{"rfcn": {"seed": 0,')
    elif damage == "no variant":
        metrics.write_text(json.dumps({"rfcn": json.loads(metrics.read_text())["rfcn"]}))
    else:
        weights = damaged_run / "rfcn_droi.npz"
        weights.write_bytes(weights.read_bytes()[:20_000])
    with pytest.raises(SystemExit) as exit_info:
        viz_main(["--run", str(damaged_run), "--out", str(tmp_path / "figure.png")])
    assert exit_info.value.code == 2
    assert message.format(run=damaged_run) in capsys.readouterr().err
    assert not (tmp_path / "figure.png").exists()


def test_detection_viz_draws_the_figure_of_a_finished_run(tiny_run, tmp_path):
    viz_main(["--run", str(tiny_run), "--out", str(tmp_path / "figure.png")])
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_part_bins_round_halves_away_from_zero_as_the_operator():
    """At .5 coordinates the operator rounds as C does, halves away from zero: the RoI [2.5, 1.5,
    12.5, 13.5) has last-pixel corners (2.5, 1.5, 11.5, 12.5), rounded to (3, 2, 12, 13) (NumPy's
    round would give 2 and 12). At stride 2 that is x from 1 to 6.5 − 0.5 on the feature map, 5
    cells, y from 0.5 to 6.5, 6 cells: 2×2 bins of 2.5 × 3 cells, 5 × 6 pixels."""
    bins = part_bins([2.5, 1.5, 12.5, 13.5], np.zeros((2, 2, 2)), 2, 0.1, 0.5)
    np.testing.assert_allclose(bins[0, 0], [3, 2, 8, 8])
    np.testing.assert_allclose(bins[1, 1], [8, 8, 13, 14])
