"""Classification reframed: the global-average-pooling head and its width-matched control,
log-uniform scales, the background unit kept off the map's border, the global-pooling table's
paired gains and the accuracies recorded in docs/results_mnist.json."""

import json

import numpy as np
import pytest

from dcn_numba.apps.mnist import experiment, global_pooling, train
from dcn_numba.apps.mnist import receptive_field as rf
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.data.mnist import load_embedded, subset
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor, no_grad


def test_global_head_averages_the_map_before_its_linear_layer():
    net = MnistNet(head="global", seed=1, channels=(4, 6))
    images = np.random.default_rng(0).random((3, 1, 24, 24), dtype=np.float32)
    assert net.classifier.weight.shape == (10, 6)
    with no_grad():
        net.eval()
        logits = net(Tensor(images)).data
        x = net.trunk(Tensor(images))
        for conv, norm in zip(net.deform_layers, net.norms):
            x = F.relu(norm(conv(x)))
    expected = x.data.mean(axis=(2, 3)) @ net.classifier.weight.data.T + net.classifier.bias.data
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_the_default_head_and_width_are_unchanged():
    # The parameter counts the published tables report.
    assert MnistNet().num_parameters() == 44_218
    assert MnistNet(deformable=True).num_parameters() == 59_824
    assert MnistNet().classifier.weight.shape == (10, 32 * 36)


def test_the_widened_control_is_nearest_to_the_deformable_nets_parameter_count():
    target = MnistNet(**train.VARIANTS["gap-deformable"]).num_parameters()
    width = train.VARIANTS["gap-regular-wide"]["width"]

    def gap(w):
        return abs(MnistNet(head="global", width=w).num_parameters() - target)

    assert gap(width) < gap(width - 1) and gap(width) < gap(width + 1)
    assert gap(width) < 0.02 * target


def test_deformable_gap_net_starts_as_the_regular_one():
    images = Tensor(np.random.default_rng(2).random((2, 1, 24, 24), dtype=np.float32))
    with no_grad():
        regular = MnistNet(head="global", seed=3).eval()(images).data
        deformable = MnistNet(head="global", deformable=True, seed=3).eval()(images).data
    np.testing.assert_allclose(deformable, regular, rtol=1e-5, atol=1e-6)


def test_bad_head_is_named():
    with pytest.raises(ValueError, match="head must be one of"):
        MnistNet(head="6x6")


def test_log_uniform_scales_put_half_the_digits_below_factor_one():
    seen_log = train.setting_factors(20_000, "seen-log", seed=0)
    seen = train.setting_factors(20_000, "seen", seed=0)
    assert 0.5 <= seen_log.min() and seen_log.max() <= 2.0
    assert np.mean(seen_log < 1) == pytest.approx(0.5, abs=0.015)
    assert np.mean(seen < 1) == pytest.approx(1 / 3, abs=0.015)  # uniform draws: a third
    # log f is uniform on [log 0.5, log 2]: a quarter of the digits in each of ×0.5–0.71, …
    assert np.mean(seen_log < 2 ** -0.5) == pytest.approx(0.25, abs=0.015)
    np.testing.assert_array_equal(train.setting_factors(5, "seen-log", 7), train.setting_factors(5, "seen-log", 7))
    np.testing.assert_array_equal(train.setting_factors(4, "unseen", 7), np.ones(4))


def ink_everywhere_but_the_left_column():
    images = np.zeros((2, 1, 48, 48), dtype=np.float32)
    images[0, 0, 4:44, 8:44] = 1.0  # free cells only in column 0, at the border
    images[1, 0, 20:28, 20:28] = 1.0  # a small blob: free cells all around
    return images


def test_background_unit_keeps_off_the_border():
    images = ink_everywhere_but_the_left_column()
    old_rule = rf.background_units(images, 4, (12, 12))
    assert old_rule[0, 1] == 0  # without a margin: a cell on the border
    units = rf.background_units(images, 4, (12, 12), margin=2)
    interior = rf.interior(units, (12, 12), 2)
    np.testing.assert_array_equal(interior, [False, True])
    assert not rf.inked_cells(images, 4, (12, 12))[1, units[1, 0], units[1, 1]]


def test_a_regular_grid_traced_from_the_border_shrinks_and_is_not_reported():
    net = MnistNet(seed=0, channels=(4, 4))
    assert rf.unclipped_margin(net) == 2
    assert rf.unclipped_margin(MnistNet(dilation=2, channels=(4, 4))) == 4
    images = ink_everywhere_but_the_left_column()
    (clipped, _), = rf.unit_traces(net, images[:1], rf.background_units(images[:1], 4, (12, 12)), "cpu")
    assert rf.spread(clipped[0]) < 7.9  # why the border is kept off: the clipped grid shrinks
    spreads = rf.unit_spreads(net, images, "cpu")
    assert np.isnan(spreads["background"][0]) and np.isnan(spreads["background_weighted"][0])
    assert spreads["background"][1] == pytest.approx(8.0)
    np.testing.assert_allclose(spreads["object"], 8.0)


def test_paired_gain_and_its_interval():
    ours = np.array([[True] * 90 + [False] * 10, [True] * 80 + [False] * 20])
    theirs = np.array([[True] * 80 + [False] * 20, [True] * 80 + [False] * 20])
    cell = global_pooling.gain_with_interval(ours, theirs)
    gain, interval = cell.split(" [")
    assert gain == "+5.0"  # (10 + 0) / 2 points
    low, high = (float(v) for v in interval.rstrip("]").split(", "))
    assert 0 < low < 5 < high < 10


def test_accuracies_are_recorded_beside_other_tables_entries(tmp_path):
    path = tmp_path / "results_mnist.json"
    path.write_text(json.dumps({"unseen/regular": {"accuracy": [0.9], "seeds": [0]}}))
    runs = {("seen-log", "gap-deformable"): {0: {"test_accuracy": 0.97}, 2: {"test_accuracy": 0.95}}}
    experiment.record_accuracies(runs, path)
    assert json.loads(path.read_text()) == {"unseen/regular": {"accuracy": [0.9], "seeds": [0]},
                                            "seen-log/gap-deformable": {"accuracy": [0.97, 0.95], "seeds": [0, 2]}}


def test_table_recomputes_each_runs_accuracy_from_its_weights(tmp_path, monkeypatch):
    mnist = load_embedded()
    options, train_argv = experiment.parse_args(
        ["global-pooling", "--seeds", "0", "--runs", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
         "--epochs", "1", "--train-size", "32", "--test-size", "12", "--spread-digits", "2", "--batch-size", "16"])
    monkeypatch.setattr(global_pooling, "BOOTSTRAP_ROUNDS", 50)
    experiment.write_table("global-pooling", options, train_argv, mnist, "cmd")
    table = (tmp_path / "docs" / "results_global_pooling.md").read_text()
    recorded = json.loads((tmp_path / "docs" / "results_mnist.json").read_text())
    assert set(recorded) == {f"seen-log/{v}" for v in global_pooling.VARIANTS}
    test = subset(mnist.test, 12, seed=0)
    for variant in global_pooling.VARIANTS:
        stored = json.loads((tmp_path / "runs" / "seen-log" / "seed0" / variant / "metrics.json").read_text())[variant]
        right = global_pooling.correct_digits(tmp_path / "runs" / "seen-log" / "seed0" / variant / f"{variant}.npz",
                                              variant, train.setting_test_digits(test, "seen-log"))
        assert right.mean() == pytest.approx(stored["test_accuracy"])
        assert recorded[f"seen-log/{variant}"]["accuracy"] == [stored["test_accuracy"]]
        assert f"{100 * stored['test_accuracy']:.1f} ± 0.0" in table
    assert table.count(" [") == len(global_pooling.GAINS) * 4
