"""The toy detector: anchors, box coding, RoI sampling, NMS, the loss and the four heads."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dcn_numba.engine.autograd import Tensor
from dcn_numba.data.canvases import box_iou
from dcn_numba.apps.detection.detector import (SmoothL1, Detector, anchor_grid, batch_rois, decode_boxes,
                                               detect, detection_loss, encode_boxes, inclusive_rois, nms,
                                               sample_rois)
from dcn_numba.reference.gradcheck import numerical_gradient


def test_anchor_grid_sizes_and_spacing():
    anchors = anchor_grid(64, heights=(16, 32), aspect_ratios=(0.5, 1.0), density=4)
    # spacing 4 → 16 centres a side for height 16, spacing 8 → 8 for height 32; two ratios each
    assert len(anchors) == 2 * (16 ** 2 + 8 ** 2)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert sorted(set(np.round(heights, 4))) == [16, 32]
    assert sorted(set(np.round(widths / heights, 4))) == [0.5, 1.0]
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    np.testing.assert_allclose(sorted(set(np.round(centres_x[heights == 32], 4))), 4 + 8 * np.arange(8))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 40), min_size=4, max_size=4), st.lists(st.floats(0, 40), min_size=4, max_size=4))
def test_decode_inverts_encode(box, anchor):
    box = np.array([[box[0], box[1], box[0] + 1 + box[2], box[1] + 1 + box[3]]], dtype=np.float32)
    anchor = np.array([[anchor[0], anchor[1], anchor[0] + 2 + anchor[2], anchor[1] + 2 + anchor[3]]], dtype=np.float32)
    np.testing.assert_allclose(decode_boxes(encode_boxes(box, anchor), anchor), box, rtol=1e-4, atol=1e-3)


def test_encode_by_hand():
    # anchor centred at (5, 5), 10×10; box centred at (6, 4), 20×5:
    # dx = 0.1, dy = −0.1, dw = log 2, dh = log 0.5, divided by (0.1, 0.1, 0.2, 0.2)
    deltas = encode_boxes(np.array([[-4, 1.5, 16, 6.5]], np.float32), np.array([[0, 0, 10, 10]], np.float32))
    np.testing.assert_allclose(deltas, [[1, -1, np.log(2) / 0.2, np.log(0.5) / 0.2]], rtol=1e-5)


def test_sample_rois_respects_thresholds_and_counts():
    rng = np.random.default_rng(0)
    gt_boxes = np.array([[10, 10, 30, 40], [40, 5, 60, 25]], np.float32)
    gt_labels = np.array([3, 7])
    candidates = np.concatenate([anchor_grid(64), gt_boxes])
    rois, labels, targets = sample_rois(candidates, gt_boxes, gt_labels, 64, rng)
    assert len(rois) == 64
    fg = labels > 0
    assert fg.sum() == 16  # a quarter, since there are more than 16 foreground candidates
    iou = box_iou(rois, gt_boxes)
    assert iou[fg].max(axis=1).min() >= 0.5
    assert iou[~fg].max(axis=1).max() < 0.5
    # each foreground RoI carries the class (+1) and the regression target of its best box
    best = iou[fg].argmax(axis=1)
    np.testing.assert_array_equal(labels[fg], gt_labels[best] + 1)
    np.testing.assert_allclose(decode_boxes(targets[fg], rois[fg]), gt_boxes[best], atol=1e-3)
    np.testing.assert_array_equal(targets[~fg], 0)


def test_sample_rois_without_ground_truth_is_all_background():
    rois, labels, _ = sample_rois(anchor_grid(64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 32,
                                  np.random.default_rng(1))
    assert len(rois) == 32
    assert labels.max() == 0


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 6]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # box 1 overlaps box 0 by IoU 90/110 > 0.3: dropped; box 3 overlaps box 0 by 0.6: dropped
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), [0, 2])
    # at 0.85, box 3 (IoU 0.6) and box 1 (IoU 0.818) both survive
    np.testing.assert_array_equal(nms(boxes, scores, 0.85), [0, 1, 2, 3])


def test_batch_and_inclusive_rois():
    rows = batch_rois([np.array([[1, 2, 3, 4]], np.float32), np.array([[5, 6, 7, 8], [0, 0, 2, 2]], np.float32)])
    np.testing.assert_array_equal(rows, [[0, 1, 2, 3, 4], [1, 5, 6, 7, 8], [1, 0, 0, 2, 2]])
    np.testing.assert_array_equal(inclusive_rois(rows)[0], [0, 1, 2, 2, 3])


def test_smooth_l1_value_and_gradient():
    d = np.array([-2.0, -0.5, 0.25, 3.0])
    # |d| − 1/2 outside, d²/2 inside (β = 1): 1.5 + 0.125 + 0.03125 + 2.5
    assert SmoothL1.apply(Tensor(d), beta=1.0).item() == pytest.approx(4.15625)
    x = Tensor(d.copy(), requires_grad=True)
    SmoothL1.apply(x, beta=1.0).backward()
    expected = numerical_gradient(lambda difference: SmoothL1.apply(Tensor(difference), beta=1.0).data,
                                  {"difference": d.copy()}, np.ones(()), "difference")
    np.testing.assert_allclose(x.grad, expected, atol=1e-6)


def test_detection_loss_counts_box_terms_of_foreground_only():
    logits = Tensor(np.zeros((4, 11)), requires_grad=True)
    deltas = Tensor(np.array([[0.5, 0, 0, 0], [9, 9, 9, 9], [0, 0, 0, 0], [9, 9, 9, 9]]), requires_grad=True)
    labels = np.array([2, 0, 5, 0])
    targets = np.zeros((4, 4))
    total, classification, box = detection_loss(logits, deltas, labels, targets)
    assert classification.item() == pytest.approx(np.log(11))  # uniform logits
    assert box.item() == pytest.approx(0.125 / 4)  # one term 0.5²/2, over 4 RoIs
    assert total.item() == pytest.approx(np.log(11) + 0.125 / 4)


VARIANT_PAIRS = [("2fc", False, False), ("2fc", True, True), ("rfcn", False, False), ("rfcn", True, True)]


@pytest.fixture(scope="module")
def images_and_rois():
    rng = np.random.default_rng(0)
    images = rng.random((2, 1, 32, 32)).astype(np.float32)
    rois = batch_rois([np.array([[2, 3, 20, 25], [8, 8, 30, 30]], np.float32),
                       np.array([[0, 0, 16, 12]], np.float32)])
    return images, rois


@pytest.mark.parametrize("head", ["2fc", "rfcn"])
def test_deformable_variants_start_as_the_regular_one(head, images_and_rois):
    """Same seed: the offset branches start at zero, so every variant of a head computes the same
    logits and box deltas before training."""
    images, rois = images_and_rois
    outputs = []
    for conv, roi in ((False, False), (True, False), (False, True), (True, True)):
        detector = Detector(head, deformable_conv=conv, deformable_roi=roi, seed=4, channels=(4, 8), hidden=16)
        detector.eval()
        outputs.append([t.data for t in detector(Tensor(images), rois)])
    for logits, deltas in outputs[1:]:
        np.testing.assert_allclose(logits, outputs[0][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(deltas, outputs[0][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["2fc", "rfcn"])
def test_deformable_parts_add_only_offset_parameters(head):
    names = {roi: {n for n, _ in Detector(head, deformable_roi=roi, channels=(4, 8), hidden=16).named_parameters()}
             for roi in (False, True)}
    extra = names[True] - names[False]
    assert names[False] <= names[True]
    assert extra
    assert all("offset" in n or "trans" in n for n in extra)


@pytest.mark.parametrize("head", ["2fc", "rfcn"])
def test_one_training_step_reaches_the_offset_branches(head, images_and_rois):
    """The zero-initialised last layer of every offset branch gets a nonzero gradient at once."""
    images, rois = images_and_rois
    detector = Detector(head, deformable_conv=True, deformable_roi=True, seed=0, channels=(4, 8), hidden=16)
    zero_start = [(n, p) for n, p in detector.named_parameters()
                  if ("offset" in n or "trans" in n) and n.endswith("weight") and not p.data.any()]
    logits, deltas = detector(Tensor(images), rois)
    loss, _, _ = detection_loss(logits, deltas, np.array([1, 0, 4]), np.full((3, 4), 0.5, np.float32))
    loss.backward()
    # two deformable convolutions, then the RoI pooling's fc branch (2fc) or two trans convs (rfcn)
    assert len(zero_start) == (3 if head == "2fc" else 4)
    for name, parameter in zero_start:
        assert np.abs(parameter.grad).sum() > 0, name


def test_unknown_head_is_named():
    with pytest.raises(ValueError, match="head must be one of"):
        Detector("ssd")


class FixedDetector:
    """Stands in for a Detector: the same logits and deltas for every image."""

    def __init__(self, logits, deltas):
        self.logits, self.deltas = logits, deltas

    def eval(self):
        return self

    def __call__(self, images, rois):
        repeat = len(images)
        return Tensor(np.tile(self.logits, (repeat, 1))), Tensor(np.tile(self.deltas, (repeat, 1)))


def test_detect_scores_decodes_suppresses_and_clips():
    anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 70, 40]], np.float32)
    logits = np.full((3, 3), -10.0)
    logits[0, 1], logits[1, 1] = 5.0, 4.0  # anchors 0 and 1: class 0 (label index 1), overlapping
    logits[2, 2] = 4.5                      # anchor 2: class 1, scoring a little lower
    deltas = np.zeros((3, 4), np.float32)
    deltas[0, 0] = 1.0                      # shift anchor 0 by 0.1 of its width: +1 px
    (boxes, labels, scores), = detect(FixedDetector(logits, deltas), np.zeros((1, 1, 64, 64)), anchors)
    np.testing.assert_array_equal(labels, [0, 1])  # anchor 1 suppressed by anchor 0
    np.testing.assert_allclose(boxes[0], [1, 0, 11, 10], atol=1e-5)
    np.testing.assert_allclose(boxes[1], [30, 30, 64, 40])  # clipped to the canvas
    np.testing.assert_allclose(scores, [np.exp(z) / (np.exp(z) + 2 * np.exp(-10)) for z in (5, 4.5)], rtol=1e-6)
