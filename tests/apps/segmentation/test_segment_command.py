"""The segmentation commands: the file contract of `python -m dcn_numba.segment` on a tiny run,
the tables' command reusing finished runs, the sampling points it measures, and the dispatch of
`python -m dcn_numba.experiment`."""

import json

import numpy as np
import pytest

from dcn_numba import experiment as dispatcher
from dcn_numba.apps.segmentation import experiment, sampling, segment
from dcn_numba.apps.segmentation.data import BACKGROUND, CLASS_NAMES, CLASSES
from dcn_numba.apps.segmentation.metrics import confusion_matrix, mean_iou
from dcn_numba.apps.segmentation.model import SegNet
from dcn_numba.data.mnist import load_mnist

TINY_RUN = ["--steps", "2", "--batch-size", "2", "--train-canvases", "4", "--test-canvases", "3"]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist):
    out = tmp_path_factory.mktemp("segment")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segment, "load_mnist", lambda path: mnist)  # loaded once for the module
        segment.main(["--variants", "regular", "deformable3", *TINY_RUN, "--out", str(out)])
    return out


def test_segment_writes_its_file_contract(tiny_run, mnist):
    with np.load(tiny_run / "ground_truth.npz") as stored:
        truth = stored["labels"]
    assert truth.dtype == np.uint8 and truth.shape == (3, 64, 64)
    assert truth.max() < CLASSES and (truth == BACKGROUND).any() and (truth != BACKGROUND).any()
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert list(metrics) == ["regular", "deformable3"]
    for variant, m in metrics.items():
        with np.load(tiny_run / f"predictions_{variant}.npz") as stored:
            predicted = stored["labels"]
        assert predicted.dtype == np.uint8 and predicted.shape == truth.shape
        confusion = confusion_matrix(predicted, truth, CLASSES)
        assert m["miou"] == pytest.approx(mean_iou(confusion))
        assert 0 <= m["miou"] <= 1
        assert list(m["per_class_iou"]) == list(CLASS_NAMES)
        assert m["confusion"] == confusion.tolist()
        assert len(m["loss"]) == 2
        net = segment.make_net(variant, seed=0).load(tiny_run / f"{variant}.npz")
        test = segment.test_canvases(segment.parse_args(TINY_RUN), mnist)
        np.testing.assert_array_equal(segment.predict(net, test.images), predicted)
    assert metrics["deformable3"]["params"] > metrics["regular"]["params"]


@pytest.mark.parametrize("argv, option", [
    (["--steps", "0"], "--steps"), (["--batch-size", "-1"], "--batch-size"), (["--lr", "0"], "--lr"),
    (["--seed", "-2"], "--seed"), (["--variants", "deformable4"], "--variants"),
])
def test_bad_options_are_named(argv, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        segment.parse_args(argv)
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def test_table_completes_over_several_invocations(tmp_path, monkeypatch, mnist):
    monkeypatch.setattr(experiment, "load_mnist", lambda path: mnist)
    monkeypatch.setattr(experiment, "BOOTSTRAP_ROUNDS", 50)
    argv = ["--seeds", "0", *TINY_RUN, "--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs")]
    trained, train = [], segment.run

    def counted_run(args, canvases):
        trained.append(args.variants[0])
        return train(args, canvases)

    monkeypatch.setattr(segment, "run", counted_run)
    experiment.main(argv)
    assert trained == experiment.TABLE_VARIANTS
    table = (tmp_path / "docs" / "results_segmentation.md").read_text()
    results = json.loads((tmp_path / "docs" / "results_segmentation.json").read_text())
    assert set(results) == set(experiment.TABLE_VARIANTS)
    for variant, entry in results.items():
        stored = json.loads((tmp_path / "runs" / "seed0" / variant / "metrics.json").read_text())[variant]
        assert entry == {"miou": [stored["miou"]], "seeds": [0]}
        assert f"{100 * stored['miou']:.1f} ± 0.0" in table
    assert (tmp_path / "docs" / experiment.FIGURE).stat().st_size > 0
    # A second invocation reads every finished run; one removed is trained again.
    (tmp_path / "runs" / "seed0" / "dilated4" / "metrics.json").unlink()
    trained.clear()
    experiment.main(argv)
    assert trained == ["dilated4"]
    # Other settings are other runs.
    trained.clear()
    stored = experiment.run_args(experiment.parse_args(argv[:-4] + ["--lr", "0.02"]), "regular", 0)
    assert experiment.stored_run(stored) is None


def test_figure_only_trains_the_figure_runs_of_the_first_seed_and_writes_the_figure_alone(
        tmp_path, monkeypatch, mnist):
    monkeypatch.setattr(experiment, "load_mnist", lambda path: mnist)
    trained, train = [], segment.run

    def counted_run(args, canvases):
        trained.append((args.variants[0], args.seed))
        return train(args, canvases)

    monkeypatch.setattr(segment, "run", counted_run)
    experiment.main(["--seeds", "1", "0", "--figure-only", *TINY_RUN, "--runs", str(tmp_path / "runs"),
                     "--docs", str(tmp_path / "docs")])
    assert trained == [(variant, 1) for variant in experiment.FIGURE_VARIANTS]
    assert sorted(path.name for path in (tmp_path / "docs").iterdir()) == [experiment.FIGURE]
    assert (tmp_path / "docs" / experiment.FIGURE).stat().st_size > 0


def test_experiment_dispatches_segmentation_and_every_other_table(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatcher.segmentation_experiment, "main", lambda argv: calls.append(("seg", argv)))
    monkeypatch.setattr(dispatcher.mnist_experiment, "main", lambda argv: calls.append(("mnist", argv)))
    dispatcher.main(["segmentation", "--seeds", "0"])
    dispatcher.main(["scales", "--seeds", "0"])
    assert calls == [("seg", ["--seeds", "0"]), ("mnist", ["scales", "--seeds", "0"])]


TINY = dict(channels=(2, 3))


def test_a_regular_res5_reads_729_points_with_spread_8_pixels():
    # Three 3×3 layers at stride 4: each axis sums three taps of variance 2/3 cells², so
    # σ² = 2 axes · 3 · 2/3 · 4² px² = 64.
    net = SegNet(**TINY)
    locations = sampling.res5_locations(net, np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32))
    levels = sampling.unit_points(locations, 1, (3, 4), net.stride)
    assert [len(points) for points in levels] == [729, 81, 9]
    assert sampling.spread(levels[0]) == pytest.approx(8.0)
    np.testing.assert_allclose(levels[0].mean(axis=0), [3 * 4 + 1.5, 4 * 4 + 1.5])


def test_learned_offsets_move_the_points():
    net = SegNet(deformable_layers=3, **TINY)
    for _, conv, _ in net.res5():
        conv.offset_conv.bias.data[0::2] = 1.0  # every tap one cell down ...
        conv.offset_conv.bias.data[1::2] = -1.0  # ... and one cell left
    images = np.random.default_rng(1).random((1, 1, 48, 48), dtype=np.float32)
    still = sampling.unit_points(sampling.res5_locations(SegNet(**TINY), images), 0, (5, 6), 4)
    moved = sampling.unit_points(sampling.res5_locations(net, images), 0, (5, 6), 4)
    # Each of the three layers adds (1, −1) cells, (4, −4) pixels at stride 4.
    np.testing.assert_allclose(moved[0] - still[0], np.broadcast_to([12.0, -12.0], (729, 2)))


def test_units_on_a_digit_and_on_the_background():
    labels = np.full((32, 32), BACKGROUND, dtype=np.uint8)
    labels[2:10, 6:14] = 7  # a digit near the top, its pixels centred at (5.5, 9.5)
    units = sampling.digit_units(labels, [[6, 2, 14, 10]], [7], stride=4)
    np.testing.assert_array_equal(units[0][0], [1, 2])  # ((5.5 − 1.5) / 4, (9.5 − 1.5) / 4)
    assert units[0][1] == 8
    assert not sampling.interior(units[0][0], (8, 8))
    # Interior cells are 2..5. The digit lies within one cell of the blocks of (2, 2), (3, 3)
    # and (3, 4); of the free cells nearest to the map centre (3.5, 3.5), (4, 3) comes first.
    np.testing.assert_array_equal(sampling.background_unit(labels, 4), [4, 3])
    labels[:] = 2
    assert sampling.background_unit(labels, 4) is None


def test_spread_by_size_bins_the_digits(mnist):
    canvases = segment.test_canvases(segment.parse_args(TINY_RUN), mnist)
    measured = sampling.spread_by_size(SegNet(), canvases)
    assert measured["bins"] == [[14, 20], [20, 28], [28, 40], [40, 57]]
    counted = sum(measured["object_units"])
    assert 0 < counted <= sum(len(b) for b in canvases.boxes)
    for spread, units in zip(measured["object"], measured["object_units"]):
        assert spread is None if units == 0 else spread == pytest.approx(8.0)
