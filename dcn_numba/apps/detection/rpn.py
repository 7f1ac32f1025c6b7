"""A class-aware region proposal network: the paper's one-stage column of detection results.

The paper's "class-aware RPN" is an RPN whose anchors are classified into the object classes and
the background instead of object/not-object, a simplified SSD: no second stage, no RoI pooling.
Here it is built on the two-stage detector's parts (`detector`): the same backbone and its
variants (deformable res5 layers, dilation), the same anchor shapes, box coding, loss and NMS.

    backbone    as `detector.Backbone`                          16×16 features, stride 4
    head        conv 3×3 (C2 → hidden) · ReLU (the RPN's conv)
                conv 1×1 → A·(classes + 1) class logits, conv 1×1 → A·4 box deltas
    anchors     the detector's A = 4 heights × 3 aspect ratios, centred on every feature cell
                (`anchor_grid(..., stride=4)`): 16·16·12 = 3,072 per canvas

Training labels every anchor (`match_boxes`: IoU >= 0.5 foreground, < 0.4 background, and each
digit's best anchor foreground, as the RPN does) and samples per canvas as many anchors as the
two-stage heads sample RoIs, a quarter foreground (`sample_indices`); the loss is
`detection_loss`. At test time `detector.detect` scores every anchor, decodes, and keeps the best
boxes per class after NMS, exactly as for the two-stage heads.
"""

import numpy as np
from tqdm.auto import tqdm

from dcn_numba.apps.detection.detector import (BACKBONES, Backbone, anchor_grid, detection_loss, match_boxes,
                                               sample_indices)
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.nn import Conv2d, Module
from dcn_numba.engine.optim import Adam, CosineSchedule

FG_IOU, BG_IOU = 0.5, 0.4
# Every named RPN: "rpn" with each backbone variant of the detector.
VARIANTS = {f"rpn{name}": dict(backbone) for name, backbone in BACKBONES.items()}


class ClassAwareRPN(Module):
    """forward(images (B, 1, H, W)) → (class logits (B·A·h·w, classes + 1), box deltas
    (B·A·h·w, 4)): one row per anchor of `self.anchors`, image by image.

    Seeded as `detector.Detector`: the weights from a generator seeded `seed`, the offset
    branches of deformable layers (zero at the start) from one seeded seed + 1.
    """

    def __init__(self, deformable_layers=0, dilation=1, seed=0, classes=10, channels=(16, 32), hidden=128,
                 image_size=64):
        rng, branch_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
        self.backbone = Backbone(channels, rng, branch_rng, deformable_layers, dilation)
        # (A·h·w, 4) in the order (anchor shape, row, column): the order of per_anchor's rows
        self.anchors = anchor_grid(image_size, stride=Backbone.stride)
        self.anchors_per_cell = len(self.anchors) // (image_size // Backbone.stride) ** 2
        self.conv = Conv2d(channels[-1], hidden, 3, padding=1, rng=rng)
        self.classifier = Conv2d(hidden, self.anchors_per_cell * (classes + 1), 1, rng=rng)
        self.box_regressor = Conv2d(hidden, self.anchors_per_cell * 4, 1, rng=rng)
        self.box_regressor.weight.data *= 0.1  # start near the anchors

    def per_anchor(self, maps):
        """Maps (B, A·D, h, w), channel a·D + d for anchor shape a, as rows (B·A·h·w, D)."""
        B, _, h, w = maps.shape
        A = self.anchors_per_cell
        return maps.reshape(B, A, -1, h, w).transpose(0, 1, 3, 4, 2).reshape(B * A * h * w, -1)

    def forward(self, images):
        hidden = F.relu(self.conv(self.backbone(images)))
        return self.per_anchor(self.classifier(hidden)), self.per_anchor(self.box_regressor(hidden))

    def score_anchors(self, images, anchors):
        """`detector.detect`'s hook: (logits, deltas) of every anchor of every image. The RPN
        scores only its own anchors, so `anchors` must be `self.anchors`."""
        if anchors.shape != self.anchors.shape or not np.array_equal(anchors, self.anchors):
            raise ValueError(f"ClassAwareRPN scores its own anchors (rpn.anchors, {len(self.anchors)} boxes "
                             f"centred on its feature cells); got {len(anchors)} other boxes")
        return self(Tensor(images))


def anchor_samples(anchors, gt_boxes, gt_labels, count, rng):
    """The anchors one canvas trains on: (indices into anchors, labels, box targets) of `count`
    anchors, labelled by `match_boxes` at FG_IOU / BG_IOU with each box's best anchor foreground."""
    labels, targets = match_boxes(anchors, gt_boxes, gt_labels, FG_IOU, BG_IOU, best_for_each_box=True)
    chosen = sample_indices(labels, count, rng)
    return chosen, labels[chosen], targets[chosen]


def training_batches(train, args, anchors, rng):
    """(images, rows of the chosen anchors in forward's output, labels, box targets) of each
    training step: canvases drawn without replacement (reshuffled each pass), as the two-stage
    detectors draw them, args.rois_per_image anchors sampled per canvas."""
    order = np.array([], dtype=np.int64)
    for _ in range(args.steps):
        if len(order) < args.batch_size:
            order = np.concatenate([order, rng.permutation(len(train.images))])
        chosen, order = order[:args.batch_size], order[args.batch_size:]
        rows, labels, targets = [], [], []
        for b, n in enumerate(chosen):
            indices, l, t = anchor_samples(anchors, train.boxes[n], train.labels[n], args.rois_per_image, rng)
            rows.append(b * len(anchors) + indices)
            labels.append(l)
            targets.append(t)
        yield train.images[chosen], np.concatenate(rows), np.concatenate(labels), np.concatenate(targets)


def train_rpn(variant, train, args):
    """Train one RPN variant with the two-stage detectors' settings (args of `detect.parse_args`:
    steps, batch_size, rois_per_image, lr, seed); returns the RPN and its loss history."""
    rpn = ClassAwareRPN(**VARIANTS[variant], seed=args.seed)
    optimizer = Adam(rpn.parameters(), lr=args.lr)
    schedule = CosineSchedule(optimizer, args.steps, warmup_steps=min(50, args.steps // 10))
    history = {"loss": [], "classification_loss": [], "box_loss": []}
    rpn.train()
    progress = tqdm(total=args.steps, desc=f"{variant:>11}", unit="step")
    for images, rows, labels, targets in training_batches(train, args, rpn.anchors, np.random.default_rng(args.seed)):
        schedule.step()
        logits, deltas = rpn(Tensor(images))
        loss, classification, box = detection_loss(logits[rows], deltas[rows], labels, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for key, value in (("loss", loss), ("classification_loss", classification), ("box_loss", box)):
            history[key].append(0.0 if value is None else value.item())
        progress.update()
    progress.close()
    return rpn, history
