"""The toy detector: anchors, box coding, box matching and RoI sampling, NMS, the loss, the
backbone's variants, the heads, and the drift of learned offsets."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dcn_numba.engine.autograd import Tensor
from dcn_numba.data.canvases import box_iou
from dcn_numba.apps.detection.detector import (VARIANTS, SmoothL1, Detector, anchor_grid, batch_rois,
                                               decode_boxes, detect, detection_loss, encode_boxes, inclusive_rois,
                                               match_boxes, nms, offset_drift, sample_rois)
from dcn_numba.engine.nn import Conv2d, DeformConv2d
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
    """Same seed: the offset branches start at zero, so every deformable variant of a head
    computes the same logits and box deltas before training."""
    images, rois = images_and_rois
    outputs = []
    for layers, roi in ((0, False), (1, False), (3, False), (0, True), (3, True)):
        detector = Detector(head, deformable_layers=layers, deformable_roi=roi, seed=4, channels=(4, 8), hidden=16)
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
    detector = Detector(head, deformable_layers=3, deformable_roi=True, seed=0, channels=(4, 8), hidden=16)
    zero_start = [(n, p) for n, p in detector.named_parameters()
                  if ("offset" in n or "trans" in n) and n.endswith("weight") and not p.data.any()]
    logits, deltas = detector(Tensor(images), rois)
    loss, _, _ = detection_loss(logits, deltas, np.array([1, 0, 4]), np.full((3, 4), 0.5, np.float32))
    loss.backward()
    # three deformable convolutions, then the RoI pooling's fc branch (2fc) or two trans convs (rfcn)
    assert len(zero_start) == (4 if head == "2fc" else 5)
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

    def score_anchors(self, images, anchors):
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


def test_match_boxes_by_hand():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 24, 24]], np.float32)
    gt_labels = np.array([4, 9])
    candidates = np.array([[0, 0, 10, 10],     # IoU 1 with box 0
                           [0, 0, 10, 5],      # IoU 0.5 with box 0: foreground at fg_iou 0.5
                           [0, 0, 10, 4.5],    # IoU 0.45: between bg_iou 0.4 and 0.5, neither
                           [0, 0, 10, 3],      # IoU 0.3: background
                           [19, 19, 27, 27]],  # IoU 16/64 = 0.25 with box 1, its best candidate
                          np.float32)
    labels, targets = match_boxes(candidates, gt_boxes, gt_labels, fg_iou=0.5, bg_iou=0.4)
    np.testing.assert_array_equal(labels, [5, 5, -1, 0, 0])
    np.testing.assert_allclose(decode_boxes(targets[:2], candidates[:2]), gt_boxes[[0, 0]], atol=1e-4)
    np.testing.assert_array_equal(targets[2:], 0)
    labels, targets = match_boxes(candidates, gt_boxes, gt_labels, fg_iou=0.5, bg_iou=0.4, best_for_each_box=True)
    np.testing.assert_array_equal(labels, [5, 5, -1, 0, 10])  # box 1 claims its best candidate
    np.testing.assert_allclose(decode_boxes(targets[4:], candidates[4:]), gt_boxes[1:], atol=1e-4)


def test_backbone_variants_by_layer_name():
    """deformable_layers counts res5 layers from the last; dilation dilates them all and keeps
    the 16×16 map."""
    for layers in (0, 1, 2, 3):
        backbone = Detector(deformable_layers=layers, channels=(4, 8), hidden=16).backbone
        deformable = [isinstance(getattr(backbone, name), DeformConv2d) for name in ("res5a", "res5b", "res5c")]
        assert deformable == [False] * (3 - layers) + [True] * layers
    backbone = Detector(**VARIANTS["2fc_dil4"], channels=(4, 8), hidden=16).backbone
    assert all(type(getattr(backbone, n)) is Conv2d and getattr(backbone, n).dilation == 4
               for n in ("res5a", "res5b", "res5c"))
    features = backbone(Tensor(np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)))
    assert features.shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="deformable_layers must be 0, 1, 2 or 3"):
        Detector(deformable_layers=4)


def test_variants_of_the_table():
    assert VARIANTS["rfcn_both"] == dict(head="rfcn", deformable_roi=True, deformable_layers=3, dilation=1)
    assert VARIANTS["2fc_dil6"] == dict(head="2fc", deformable_roi=False, deformable_layers=0, dilation=6)
    assert len(VARIANTS) == 2 * (1 + 3 + 3 + 2)


def test_rfcn_offsets_come_from_the_hidden_features(images_and_rois):
    """The offset branch of deformable PS RoI pooling reads conv_new_1's features (16 channels
    here), not the score maps; and roi_offsets returns what the class-score pooling applied."""
    images, rois = images_and_rois
    detector = Detector("rfcn", deformable_roi=True, channels=(4, 8), hidden=16, seed=1)
    pool = detector.head.pools[0]
    assert pool.trans_conv.weight.shape[1] == 16
    trans, gamma = detector.roi_offsets(images, rois)
    assert gamma == pool.trans_std and trans.shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(trans, 0)  # zero-initialised branch
    pool.trans_conv.bias.data[:] = np.arange(18, dtype=np.float32)  # channel c: the offset c everywhere
    trans, _ = detector.roi_offsets(images, rois)
    # position-sensitive pooling of constant maps: bin (i, j) of offset channel d reads map d·9 + 3i + j
    np.testing.assert_allclose(trans[1], np.arange(18).reshape(2, 3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="deformable_roi=True"):
        Detector("2fc", channels=(4, 8), hidden=16).roi_offsets(images, rois)


def test_offset_drift_on_hand_made_bins():
    """3×3 bins, γ = 0.1. RoI 0: bin (0, 0) moved by Δ = (3, 4): a shift of 0.1·5 = 0.5 of the RoI,
    its centre (1/6, 1/6) going to (0.467, 0.567), inside. RoI 1: bin (1, 0) moved by Δx = −2:
    shift 0.2, its centre x from 1/6 to −0.033, outside. Mean shift (0.5 + 0.2)/18 over 18 bins,
    1 of 18 centres outside."""
    offsets = np.zeros((2, 2, 3, 3))
    offsets[0, :, 0, 0] = 3, 4
    offsets[1, 0, 1, 0] = -2
    drift, outside = offset_drift(offsets, 0.1)
    assert drift == pytest.approx(0.7 / 18)
    assert outside == pytest.approx(1 / 18)
    # a shift of Δy = +4 at the bottom row leaves through the bottom edge
    offsets = np.zeros((1, 2, 3, 3))
    offsets[0, 1, 2, :] = 4
    assert offset_drift(offsets, 0.1) == pytest.approx((3 * 0.4 / 9, 3 / 9))
