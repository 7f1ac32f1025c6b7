"""Average precision on hand-made cases whose value is worked out by hand in each test."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dcn_numba.apps.detection.evaluation import (average_precision, coco_average_precision,
                                                 detection_metrics, mean_average_precision, precision_recall)


def truth(image, box, label=0):
    return dict(image=image, label=label, box=box)


def found(image, box, score, label=0):
    return dict(image=image, label=label, score=score, box=box)


# Two images, one ground-truth box each (class 0).
TRUTH = [truth(0, [0, 0, 10, 10]), truth(1, [20, 20, 30, 30])]


def test_precision_recall_matches_greedily_by_score():
    # Sorted by score: a hit on image 0 (tp), its duplicate (fp: already found), a miss (fp),
    # a hit on image 1 (tp): precision 1, 1/2, 1/3, 2/4; recall 1/2, 1/2, 1/2, 1.
    detections = [found(0, [0, 0, 10, 10], 0.9), found(0, [1, 0, 10, 10], 0.8),
                  found(1, [40, 40, 50, 50], 0.7), found(1, [20, 20, 30, 30], 0.6)]
    precision, recall = precision_recall(detections, TRUTH, 0.5)
    np.testing.assert_allclose(precision, [1, 1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(recall, [1 / 2, 1 / 2, 1 / 2, 1])


def test_ap_rules_on_a_worked_curve():
    # The curve above. 11-point: r = 0..0.5 (six levels) have max precision 1, r = 0.6..1 (five
    # levels) have max precision 1/2: (6·1 + 5·0.5)/11 = 8.5/11. All-point: recall steps 1/2 at
    # precision 1, then 1/2 at precision 1/2: 0.75. 101-point: 51 levels at 1, 50 at 1/2: 76/101.
    precision, recall = np.array([1, 1 / 2, 1 / 3, 1 / 2]), np.array([1 / 2, 1 / 2, 1 / 2, 1])
    assert average_precision(precision, recall, "11point") == pytest.approx(8.5 / 11)
    assert average_precision(precision, recall, "all") == pytest.approx(0.75)
    assert average_precision(precision, recall, "101point") == pytest.approx(76 / 101)


def test_all_point_ap_uses_the_precision_envelope():
    # tp, fp, tp over two boxes: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1. The dip at the second
    # detection is lifted to 2/3 but adds no recall: AP = 1/2·1 + 1/2·2/3 = 5/6.
    assert average_precision(np.array([1, 1 / 2, 2 / 3]), np.array([1 / 2, 1 / 2, 1]), "all") == pytest.approx(5 / 6)


def test_iou_threshold_decides_a_hit():
    # [0, 0, 10, 8] against [0, 0, 10, 10]: IoU 80/100 = 0.8, a hit at 0.7, a miss at 0.85.
    detections = [found(0, [0, 0, 10, 8], 0.9)]
    one_box = TRUTH[:1]
    assert mean_average_precision(detections, one_box, 0.7)[0] == pytest.approx(1.0)
    assert mean_average_precision(detections, one_box, 0.85)[0] == pytest.approx(0.0)


def test_wrong_class_and_wrong_image_are_false_positives():
    detections = [found(0, [0, 0, 10, 10], 0.9, label=1), found(1, [0, 0, 10, 10], 0.8)]
    value, per_class = mean_average_precision(detections, TRUTH, 0.5)
    assert per_class == {0: 0.0}
    assert value == 0.0


def test_map_averages_the_classes_with_ground_truth():
    # class 0: one of two boxes found first (precision 1 up to recall 1/2): 11-point AP 6/11;
    # class 1: its one box found: AP 1. Class 2 has detections but no ground truth: not averaged.
    ground_truth = TRUTH + [truth(0, [5, 5, 15, 15], label=1)]
    detections = [found(0, [0, 0, 10, 10], 0.9), found(0, [5, 5, 15, 15], 0.5, label=1),
                  found(0, [0, 0, 9, 9], 0.4, label=2)]
    value, per_class = mean_average_precision(detections, ground_truth, 0.5)
    assert per_class == pytest.approx({0: 6 / 11, 1: 1.0})
    assert value == pytest.approx((6 / 11 + 1) / 2)


def test_coco_ap_averages_over_ten_iou_thresholds():
    # IoU 0.8 with its box: a hit at thresholds 0.5..0.8 (7 of 10), where the 101-point AP is 1,
    # a miss at 0.85, 0.9, 0.95: AP@[.5:.95] = 0.7.
    assert coco_average_precision([found(0, [0, 0, 10, 8], 0.9)], TRUTH[:1]) == pytest.approx(0.7)


def test_detection_metrics_names_the_table_columns():
    metrics = detection_metrics([found(0, [0, 0, 10, 8], 0.9)], TRUTH)
    # one of two boxes found at IoU 0.8: recall 1/2 at precision 1, 11-point AP 6/11 at 0.5 and 0.7
    assert metrics["map50"] == pytest.approx(6 / 11)
    assert metrics["map70"] == pytest.approx(6 / 11)
    assert metrics["map50_all"] == pytest.approx(0.5)
    assert metrics["coco_ap"] == pytest.approx(0.7 * 51 / 101)


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="rule must be one of"):
        average_precision(np.array([1.0]), np.array([1.0]), "voc")


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12), st.integers(1, 5))
def test_perfect_detections_score_one_whatever_their_scores(scores, boxes_per_image):
    """Every box found once, nothing else: precision 1 at every recall, so AP = 1 by every rule."""
    ground_truth = [truth(n, [k * 10, 0, k * 10 + 8, 8]) for n in range(len(scores)) for k in range(boxes_per_image)]
    detections = [found(g["image"], g["box"], scores[g["image"]]) for g in ground_truth]
    precision, recall = precision_recall(detections, ground_truth, 0.5)
    for rule in ("11point", "all", "101point"):
        assert average_precision(precision, recall, rule) == pytest.approx(1.0)
