"""mIoU on hand-made confusion matrices, the confusion matrix of label arrays, and the bootstrap
interval the tables put on every gain."""

import numpy as np
import pytest

from dcn_numba.apps.segmentation.metrics import class_iou, confusion_matrix, image_confusions, mean_iou
from dcn_numba.data.bootstrap import bootstrap_interval


def test_perfect_prediction_has_miou_one():
    assert mean_iou(np.diag([7, 3, 1])) == 1.0


def test_miou_of_a_hand_made_matrix_leaves_out_a_class_absent_from_truth_and_prediction():
    # rows: truth, columns: prediction. Class 0: 5 hits, 1 missed (as 1), 2 false alarms (from 1):
    # IoU = 5 / (5 + 1 + 2) = 5/8. Class 1: 3 hits, 2 missed, 1 false alarm: 3 / 6. Class 2 never
    # occurs and is never predicted: 0/0, left out of the mean.
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(class_iou(confusion), [5 / 8, 3 / 6, np.nan])
    assert mean_iou(confusion) == pytest.approx((5 / 8 + 3 / 6) / 2)


def test_a_class_only_predicted_or_only_true_scores_zero():
    predicted_only = np.array([[4, 1], [0, 0]])  # class 1 never true, predicted once
    np.testing.assert_allclose(class_iou(predicted_only), [4 / 5, 0.0])
    assert mean_iou(predicted_only) == pytest.approx(0.4)
    true_only = predicted_only.T  # class 1 true once, never predicted
    np.testing.assert_allclose(class_iou(true_only), [4 / 5, 0.0])


def test_background_counts_as_a_class():
    # Everything predicted background (class 2): the digits score 0, the background 8 / 10.
    confusion = np.array([[0, 0, 1], [0, 0, 1], [0, 0, 8]])
    assert mean_iou(confusion) == pytest.approx((0 + 0 + 0.8) / 3)


def test_an_empty_matrix_is_an_error():
    with pytest.raises(ValueError, match="no pixel"):
        mean_iou(np.zeros((3, 3)))


def test_confusion_matrix_of_label_arrays():
    truth = np.array([[0, 1], [2, 2]])
    predicted = np.array([[0, 1], [1, 2]])
    expected = np.zeros((3, 3), dtype=int)
    expected[0, 0] = expected[1, 1] = expected[2, 1] = expected[2, 2] = 1
    np.testing.assert_array_equal(confusion_matrix(predicted, truth, 3), expected)


def test_image_confusions_add_up_to_the_whole_sets_matrix():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, (5, 6, 7)), rng.integers(0, 4, (5, 6, 7))
    per_image = image_confusions(predicted, truth, 4)
    assert per_image.shape == (5, 4, 4)
    np.testing.assert_array_equal(per_image.sum(axis=0), confusion_matrix(predicted, truth, 4))


@pytest.mark.parametrize("predicted, truth, message", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), "shape"),
    (np.full((2, 2), 5), np.zeros((2, 2), int), r"predicted holds labels in \[5, 5\]"),
    (np.zeros((2, 2), int), np.full((2, 2), -1), "truth holds labels"),
])
def test_bad_labels_are_named(predicted, truth, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(predicted, truth, 3)


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    # For the mean of n values the 95% interval is about mean ± 1.96·s/√n.
    values = np.random.default_rng(1).standard_normal(400)
    low, high = bootstrap_interval(lambda i: values[i].mean(), len(values), rounds=4000, seed=2)
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.2 * half_width)


def test_bootstrap_interval_of_a_paired_gain_is_narrower_than_unpaired():
    # Two nets right on mostly the same items: a paired draw sees their difference only.
    rng = np.random.default_rng(3)
    ours = rng.random(300) < 0.8
    theirs = ours.copy()
    theirs[rng.choice(300, 15, replace=False)] = False
    low, high = bootstrap_interval(lambda i: ours[i].mean() - theirs[i].mean(), 300, seed=4)
    assert 0 < low < high
    unpaired = bootstrap_interval(lambda i: ours[i].mean() - theirs[rng.integers(0, 300, 300)].mean(), 300, seed=4)
    assert high - low < (unpaired[1] - unpaired[0]) / 2


def test_bootstrap_interval_is_seeded_and_checks_its_arguments():
    values = np.arange(10.0)
    first = bootstrap_interval(lambda i: values[i].mean(), 10, rounds=50, seed=5)
    assert bootstrap_interval(lambda i: values[i].mean(), 10, rounds=50, seed=5) == first
    assert bootstrap_interval(lambda i: 3.0, 10, rounds=50) == (3.0, 3.0)
    with pytest.raises(ValueError, match="items"):
        bootstrap_interval(lambda i: 0.0, 0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(lambda i: 0.0, 5, confidence=1.5)
