"""The class-aware RPN: its anchors, the layout of its per-anchor rows, its training targets on
hand-made boxes, and decoding through `detector.detect`."""

import numpy as np
import pytest

from dcn_numba.apps.detection import detect as command
from dcn_numba.apps.detection.detector import decode_boxes, detect, encode_boxes
from dcn_numba.apps.detection.rpn import VARIANTS, ClassAwareRPN, anchor_samples, train_rpn, training_batches
from dcn_numba.data.canvases import Canvases, box_iou
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.nn import DeformConv2d


@pytest.fixture(scope="module")
def rpn():
    return ClassAwareRPN(channels=(4, 8), hidden=8, seed=0)


def test_anchors_sit_on_the_feature_cells(rpn):
    """12 shapes at each of the 16×16 cells of stride 4, in the order (shape, row, column)."""
    assert rpn.anchors_per_cell == 12 and len(rpn.anchors) == 12 * 16 * 16
    centres = (rpn.anchors[:, :2] + rpn.anchors[:, 2:]) / 2
    shape, row, column = 5, 3, 7
    np.testing.assert_allclose(centres[shape * 256 + row * 16 + column], [4 * column + 2, 4 * row + 2])
    heights = rpn.anchors[:, 3] - rpn.anchors[:, 1]
    np.testing.assert_allclose(heights[::256], np.repeat([16, 24, 36, 54], 3))


def test_per_anchor_rows_follow_the_anchors(rpn):
    """Channel a·D + d at cell (y, x) of image b is row b·A·h·w + a·h·w + y·w + x, column d."""
    B, A, D, h, w = 2, rpn.anchors_per_cell, 5, 16, 16
    b, a, d, y, x = np.meshgrid(*(np.arange(n) for n in (B, A, D, h, w)), indexing="ij")
    code = (((b * 100 + a) * 10 + d) * 100 + y) * 100 + x  # every index readable from the value
    rows = rpn.per_anchor(Tensor(code.reshape(B, A * D, h, w).astype(np.float64))).data
    assert rows.shape == (B * A * h * w, D)
    image, shape, cell_y, cell_x, column = 1, 7, 9, 4, 3
    value = rows[image * A * h * w + shape * h * w + cell_y * w + cell_x, column]
    assert value == (((image * 100 + shape) * 10 + column) * 100 + cell_y) * 100 + cell_x


def test_anchor_samples_on_hand_made_boxes(rpn):
    """Two digits: a 16×24 one that anchors match by IoU >= 0.5, and a 6×6 one too small for any
    anchor, which still trains its best anchor (the RPN's rule)."""
    gt_boxes = np.array([[10, 10, 26, 34], [50, 50, 56, 56]], np.float32)
    gt_labels = np.array([3, 8])
    # a count above the number of anchors draws every labelled anchor
    chosen, labels, targets = anchor_samples(rpn.anchors, gt_boxes, gt_labels, 10 ** 5, np.random.default_rng(0))
    iou = box_iou(rpn.anchors[chosen], gt_boxes)
    fg = labels > 0
    best_small = box_iou(rpn.anchors, gt_boxes[1:])[:, 0].argmax()
    assert iou[:, 1].max() < 0.5
    assert list(labels[chosen == best_small]) == [9]
    assert np.all(iou[labels == 4].max(axis=1) >= 0.5) and (labels == 4).sum() > 1
    assert np.all(iou[~fg].max(axis=1) < 0.4)  # nothing from the ignored band between 0.4 and 0.5
    np.testing.assert_allclose(decode_boxes(targets[fg], rpn.anchors[chosen[fg]]), gt_boxes[(labels[fg] == 9) * 1],
                               atol=1e-3)
    # 64 anchors: a quarter foreground, none twice
    chosen, labels, _ = anchor_samples(rpn.anchors, gt_boxes, gt_labels, 64, np.random.default_rng(1))
    assert len(set(chosen)) == 64 and (labels > 0).sum() == min(16, fg.sum())


def test_training_batches_index_the_rows_of_their_image(rpn):
    boxes = [np.array([[4, 4, 20, 28]], np.float32), np.array([[30, 30, 60, 60]], np.float32)]
    images = np.stack([np.full((1, 64, 64), n, np.float32) for n in (0, 1)])  # canvas n is filled with n
    train = Canvases(images, boxes, [np.array([1]), np.array([6])], [[], []])
    args = command.parse_args(["--steps", "1", "--batch-size", "2", "--rois-per-image", "16"])
    images, rows, labels, targets = next(training_batches(train, args, rpn.anchors, np.random.default_rng(0)))
    A = len(rpn.anchors)
    image = rows // A
    assert np.all(np.diff(image) >= 0) and set(image) == {0, 1}
    for b in (0, 1):
        n = int(images[b, 0, 0, 0])
        fg = (image == b) & (labels > 0)
        assert fg.sum() > 0 and np.all(labels[fg] == train.labels[n][0] + 1)
        np.testing.assert_allclose(decode_boxes(targets[fg], rpn.anchors[rows[fg] % A]),
                                   np.repeat(train.boxes[n], fg.sum(), axis=0), atol=1e-3)


def test_detect_decodes_the_rpn_anchors(rpn, monkeypatch):
    """Fixed outputs: one anchor says '2' and moves 3 px right; detect decodes it there."""
    A = len(rpn.anchors)
    logits = np.full((A, 11), -10.0)
    logits[:, 0] = 10.0
    anchor = 5 * 256 + 3 * 16 + 7
    logits[anchor, 3] = 12.0
    deltas = np.zeros((A, 4), np.float32)
    target = rpn.anchors[anchor] + np.array([3, 0, 3, 0], np.float32)
    deltas[anchor] = encode_boxes(target[None], rpn.anchors[anchor:anchor + 1])[0]
    monkeypatch.setattr(rpn, "forward", lambda images: (Tensor(np.tile(logits, (len(images), 1))),
                                                        Tensor(np.tile(deltas, (len(images), 1)))))
    (boxes, labels, scores), = detect(rpn, np.zeros((1, 1, 64, 64), np.float32), rpn.anchors)
    assert list(labels) == [2]
    np.testing.assert_allclose(boxes[0], np.clip(target, 0, 64), atol=1e-4)
    with pytest.raises(ValueError, match="scores its own anchors"):
        detect(rpn, np.zeros((1, 1, 64, 64), np.float32), rpn.anchors[:10])


def test_variants_and_a_short_training_run():
    assert set(VARIANTS) == {"rpn", "rpn_dconv1", "rpn_dconv2", "rpn_dconv3", "rpn_dil2", "rpn_dil4", "rpn_dil6"}
    assert isinstance(ClassAwareRPN(**VARIANTS["rpn_dconv1"], channels=(4, 8), hidden=8).backbone.res5c, DeformConv2d)
    rng = np.random.default_rng(0)
    boxes = [np.array([[8, 8, 32, 40]], np.float32)] * 4
    train = Canvases(rng.random((4, 1, 64, 64), dtype=np.float32), boxes, [np.array([2])] * 4, [[]] * 4)
    args = command.parse_args(["--steps", "6", "--batch-size", "2", "--rois-per-image", "16", "--lr", "0.01"])
    model, history = train_rpn("rpn", train, args)
    assert len(history["loss"]) == 6 and np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0]
    assert isinstance(model, ClassAwareRPN)
