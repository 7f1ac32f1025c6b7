"""A toy two-stage detector for digit canvases, with or without the paper's deformable parts.

    backbone   conv 3×3 (1 → C1) · BN · ReLU · max-pool 2       64×64 → 32×32
               conv 3×3 (C1 → C2) · BN · ReLU · max-pool 2      → 16×16, stride 4
               2 × [conv 3×3 (C2 → C2) · BN · ReLU]              deformable with deformable_conv
    proposals  a fixed grid of anchor boxes (`anchor_grid`): no ground truth at test time, as
               Fast R-CNN with given proposals
    head "2fc" RoIAlign (P×P, `DeformRoIPool` with deformable_roi) · fc · ReLU · fc · ReLU,
               then class scores (classes + 1) and a class-agnostic box regression (4)
    head "rfcn" 1×1 convs to (classes + 1)·k² score maps and 4·k² box maps, position-sensitive
               RoI pooling over k×k bins (`DeformPSRoIPool` with deformable_roi), averaged (the
               R-FCN vote)

Training samples RoIs from the anchors and the ground-truth boxes (`sample_rois`); the loss is
the cross-entropy of the class scores plus the smooth L1 loss of the box regression of the
foreground RoIs. At test time every anchor is scored and regressed, and per-class NMS keeps the
best of overlapping boxes (`detect`).

Boxes are [x1, y1, x2, y2) in continuous pixel coordinates (pixel (i, j) covers [j, j+1)×[i, i+1)),
which is the aligned RoIAlign convention of `deform_roi_pool`. Position-sensitive pooling follows
the R-FCN operator, whose x2, y2 name the last pixel inside the box, so its RoIs are passed as
[x1, y1, x2 − 1, y2 − 1] (`inclusive_rois`).
"""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Function, Tensor, no_grad
from dcn_numba.data.canvases import box_iou
from dcn_numba.engine.nn import (BatchNorm2d, Conv2d, DeformConv2d, DeformPSRoIPool, DeformRoIPool, Linear,
                                 MaxPool2d, Module)

# Box deltas are divided by these before regression, so that the four targets have similar spread.
BOX_DELTA_STD = np.array([0.1, 0.1, 0.2, 0.2], dtype=np.float32)
# exp(dw) is clipped at the width of a 1000-fold larger box: a wild delta cannot overflow.
MAX_LOG_SCALE = np.log(1000.0)
HEADS = ("2fc", "rfcn")
SAMPLING_RATIO = 2  # 2×2 bilinear samples per bin, in both pooling families


# ---------------------------------------------------------------------------------------------
# Anchors, box coding, RoI sampling and NMS: NumPy on the host
# ---------------------------------------------------------------------------------------------


def anchor_grid(image_size, heights=(16, 24, 36, 54), aspect_ratios=(0.4, 0.7, 1.0), density=4):
    """Anchor boxes (A, 4) [x1, y1, x2, y2) of each height h and aspect ratio r (width / height):
    boxes h·r wide and h tall centred on a square grid of spacing h / density over the image, so
    that neighbouring anchors of one size overlap by the same fraction whatever the size."""
    anchors = []
    for height in heights:
        spacing = height / density
        centres = np.arange(spacing / 2, image_size, spacing)
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        for ratio in aspect_ratios:
            half_w, half_h = height * ratio / 2, height / 2
            anchors.append(np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1).reshape(-1, 4))
    return np.concatenate(anchors).astype(np.float32)


def encode_boxes(boxes, anchors):
    """Regression targets (N, 4) of boxes relative to anchors, divided by BOX_DELTA_STD:
    dx = (x − x_a)/w_a, dy = (y − y_a)/h_a, dw = log(w/w_a), dh = log(h/h_a) (centres and sizes)."""
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    deltas = np.stack([(x - xa) / wa, (y - ya) / ha, np.log(w / wa), np.log(h / ha)], axis=1)
    return (deltas / BOX_DELTA_STD).astype(np.float32)


def decode_boxes(deltas, anchors):
    """The inverse of `encode_boxes`: boxes (N, 4) from deltas (N, 4) and anchors (N, 4)."""
    deltas = deltas * BOX_DELTA_STD
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    x, y = xa + deltas[:, 0] * wa, ya + deltas[:, 1] * ha
    w = wa * np.exp(np.minimum(deltas[:, 2], MAX_LOG_SCALE))
    h = ha * np.exp(np.minimum(deltas[:, 3], MAX_LOG_SCALE))
    return np.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=1)


def sample_rois(candidates, gt_boxes, gt_labels, count, rng, fg_fraction=0.25, fg_iou=0.5, bg_iou=0.5):
    """Fast R-CNN's RoI sampling for one image.

    A candidate whose best IoU with a ground-truth box is >= fg_iou is foreground, labelled with
    that box's class (1..classes; 0 is background) and regressed towards it; one below bg_iou is
    background. Up to fg_fraction·count foreground RoIs are drawn without replacement, and the
    rest of the `count` from the background. Returns rois (count', 4), labels (count',) and box
    targets (count', 4) (zero for the background).
    """
    if len(gt_boxes) == 0:
        iou = np.zeros(len(candidates))
        best = np.zeros(len(candidates), dtype=np.int64)
    else:
        overlaps = box_iou(candidates, gt_boxes)
        best, iou = overlaps.argmax(axis=1), overlaps.max(axis=1)
    foreground, background = np.flatnonzero(iou >= fg_iou), np.flatnonzero(iou < bg_iou)
    fg_count = min(int(round(fg_fraction * count)), len(foreground))
    foreground = rng.choice(foreground, fg_count, replace=False)
    background = rng.choice(background, min(count - fg_count, len(background)), replace=False)
    chosen = np.concatenate([foreground, background])
    labels = np.zeros(len(chosen), dtype=np.int64)
    targets = np.zeros((len(chosen), 4), dtype=np.float32)
    if fg_count:
        matched = best[foreground]
        labels[:fg_count] = gt_labels[matched] + 1
        targets[:fg_count] = encode_boxes(gt_boxes[matched], candidates[foreground])
    return candidates[chosen], labels, targets


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression: the indices of the boxes kept, best score first; a box is
    dropped when it overlaps a kept, better-scoring box by an IoU above iou_threshold."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[box_iou(boxes[best], boxes[order])[0] <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def batch_rois(rois_per_image):
    """A list of (n_i, 4) boxes, one per image, as RoI rows (Σn_i, 5) (batch_index, x1, y1, x2, y2)."""
    rows = [np.concatenate([np.full((len(r), 1), b, dtype=np.float32), r], axis=1)
            for b, r in enumerate(rois_per_image)]
    return np.concatenate(rows).astype(np.float32)


def inclusive_rois(rois):
    """RoI rows with [x1, y1, x2, y2) turned into the R-FCN operator's last-pixel corners."""
    return rois - np.array([0, 0, 0, 1, 1], dtype=rois.dtype)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


class SmoothL1(Function):
    """Σ smooth_L1(d) over the elements of d, with smooth_L1(d) = d²/(2β) for |d| < β, else
    |d| − β/2 (Fast R-CNN); its derivative is d/β inside, sign(d) outside."""

    def forward(self, difference, beta):
        self.beta = beta
        magnitude = abs(difference)
        return self.xp.where(magnitude < beta, 0.5 * difference ** 2 / beta, magnitude - 0.5 * beta).sum()

    def backward(self, grad_output):
        difference = self.inputs[0].data
        slope = self.xp.where(abs(difference) < self.beta, difference / self.beta, self.xp.sign(difference))
        return (grad_output * slope,)


def detection_loss(class_logits, box_deltas, labels, targets, beta=1.0):
    """cross-entropy(class_logits, labels) + Σ_fg smooth_L1(box_deltas − targets) / N over the N
    RoIs (Fast R-CNN's multi-task loss, box term on foreground RoIs only). Returns
    (total, classification, box) Tensors."""
    classification = F.cross_entropy(class_logits, labels)
    foreground = np.flatnonzero(labels > 0)
    if len(foreground) == 0:
        return classification, classification, None
    difference = box_deltas[foreground] - Tensor(targets[foreground])
    box = SmoothL1.apply(difference, beta=beta) * (1.0 / len(labels))
    return classification + box, classification, box


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def same_start(regular, deformable):
    """A deformable layer given the weights of a regular one: with its offset branch at zero it
    starts out computing what the regular layer computes."""
    for name, parameter in regular.named_parameters():
        getattr(deformable, name).data[...] = parameter.data
    return deformable


class Backbone(Module):
    """Two conv · BN · ReLU · max-pool stages to stride 4, then two 3×3 convolutions at stride 4,
    deformable when `deformable`. The weights come from `rng` either way, the offset branches
    (zero weights) from `branch_rng`, so that both variants of one seed start out equal."""

    stride = 4

    def __init__(self, deformable, channels, rng, branch_rng):
        first, width = channels
        self.stem = [Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
                     for c_in, c_out in ((1, first), (first, width))]
        self.stem_norms = [BatchNorm2d(c) for c in channels]
        self.pool = MaxPool2d(2)
        self.top = [Conv2d(width, width, 3, padding=1, bias=False, rng=rng) for _ in range(2)]
        if deformable:
            self.top = [same_start(conv, DeformConv2d(width, width, 3, padding=1, bias=False, rng=branch_rng))
                        for conv in self.top]
        self.top_norms = [BatchNorm2d(width) for _ in self.top]

    def forward(self, images):
        x = images
        for conv, norm in zip(self.stem, self.stem_norms):
            x = self.pool(F.relu(norm(conv(x))))
        for conv, norm in zip(self.top, self.top_norms):
            x = F.relu(norm(conv(x)))
        return x


class TwoFCHead(Module):
    """RoIAlign over P×P bins (deformable RoI pooling with its fc offset branch when
    `deformable`), two fc layers, then class logits (classes + 1) and box deltas (4)."""

    def __init__(self, in_channels, classes, deformable, pooled_size, hidden, rng, branch_rng):
        self.pooled_size, self.spatial_scale = pooled_size, 1.0 / Backbone.stride
        self.roi_pool = DeformRoIPool(in_channels, pooled_size, self.spatial_scale, SAMPLING_RATIO,
                                      hidden_channels=hidden, rng=branch_rng) if deformable else None
        features = in_channels * pooled_size ** 2
        self.fc = [Linear(features, hidden, rng=rng), Linear(hidden, hidden, rng=rng)]
        self.classifier = Linear(hidden, classes + 1, rng=rng)
        self.box_regressor = Linear(hidden, 4, rng=rng)
        self.box_regressor.weight.data *= 0.1  # start near the anchors

    def forward(self, features, rois):
        if self.roi_pool is None:
            x = F.deform_roi_pool(features, rois, None, self.pooled_size, self.spatial_scale, SAMPLING_RATIO)
        else:
            x = self.roi_pool(features, rois)
        x = F.flatten(x)
        for fc in self.fc:
            x = F.relu(fc(x))
        return self.classifier(x), self.box_regressor(x)


class RFCNHead(Module):
    """1×1 convs to (classes + 1)·k² score maps and 4·k² box maps, position-sensitive RoI pooling
    over k×k bins (deformable, each with its own offset branch, when `deformable`), and the vote:
    the mean over the bins."""

    def __init__(self, in_channels, classes, deformable, pooled_size, rng, branch_rng):
        k2 = pooled_size ** 2
        self.pooled_size, self.spatial_scale = pooled_size, 1.0 / Backbone.stride
        self.output_dims = (classes + 1, 4)
        self.score_maps = Conv2d(in_channels, (classes + 1) * k2, 1, rng=rng)
        self.box_maps = Conv2d(in_channels, 4 * k2, 1, rng=rng)
        self.box_maps.weight.data *= 0.1  # start near the anchors
        self.pools = [DeformPSRoIPool(dim * k2, dim, pooled_size, spatial_scale=self.spatial_scale,
                                      sample_per_part=SAMPLING_RATIO, rng=branch_rng)
                      for dim in self.output_dims] if deformable else None

    def pooled(self, index, maps, rois):
        """Position-sensitive pooling of one set of maps, with learned offsets when deformable."""
        if self.pools is not None:
            return self.pools[index](maps, rois)
        P = self.pooled_size
        return F.deform_psroi_pool(maps, rois, None, self.spatial_scale, output_dim=self.output_dims[index],
                                   group_size=P, pooled_size=P, part_size=P, sample_per_part=SAMPLING_RATIO)

    def forward(self, features, rois):
        rois = inclusive_rois(rois)
        scores = self.pooled(0, self.score_maps(features), rois)
        boxes = self.pooled(1, self.box_maps(features), rois)
        return scores.mean(axis=(2, 3)), boxes.mean(axis=(2, 3))


class Detector(Module):
    """The backbone and one head; forward(images (B, 1, H, W), rois (N, 5)) → (class logits
    (N, classes + 1), box deltas (N, 4)).

    The offset branches draw from a generator of their own (seeded seed + 1), the rest from one
    seeded `seed`, and every offset branch starts at zero: with one seed, the four variants of a
    head start out computing the same function and differ only in what they learn.
    """

    def __init__(self, head="2fc", deformable_conv=False, deformable_roi=False, seed=0, classes=10,
                 channels=(16, 32), pooled_size=None, hidden=128):
        if head not in HEADS:
            raise ValueError(f"Detector: head must be one of {HEADS}, got {head!r}")
        rng, branch_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
        self.head_name, self.deformable_conv, self.deformable_roi = head, deformable_conv, deformable_roi
        self.backbone = Backbone(deformable_conv, channels, rng, branch_rng)
        if head == "2fc":
            self.head = TwoFCHead(channels[-1], classes, deformable_roi, pooled_size or 7, hidden, rng, branch_rng)
        else:
            self.head = RFCNHead(channels[-1], classes, deformable_roi, pooled_size or 3, rng, branch_rng)

    def forward(self, images, rois):
        return self.head(self.backbone(images), rois)


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def detect(detector, images, anchors, score_threshold=0.05, nms_iou=0.3, max_per_image=100):
    """Detections of every image of images (B, 1, H, W), a NumPy array: every anchor is scored
    and its box regressed and clipped to the image; per class, boxes scoring above
    score_threshold go through NMS at nms_iou; the best max_per_image are kept.

    Returns one (boxes (n, 4), labels (n,) in 0..classes−1, scores (n,)) per image.
    """
    detector.eval()
    size = images.shape[-1]
    with no_grad():
        logits, deltas = detector(Tensor(images), batch_rois([anchors] * len(images)))
    probabilities = softmax(np.asarray(logits.data)).reshape(len(images), len(anchors), -1)
    deltas = np.asarray(deltas.data).reshape(len(images), len(anchors), 4)
    results = []
    for b in range(len(images)):
        boxes = np.clip(decode_boxes(deltas[b], anchors), 0, size)
        kept_boxes, kept_labels, kept_scores = [], [], []
        for label in range(1, probabilities.shape[2]):
            scores = probabilities[b, :, label]
            candidates = np.flatnonzero(scores > score_threshold)
            keep = candidates[nms(boxes[candidates], scores[candidates], nms_iou)]
            kept_boxes.append(boxes[keep])
            kept_labels.append(np.full(len(keep), label - 1, dtype=np.int64))
            kept_scores.append(scores[keep])
        boxes, labels, scores = (np.concatenate(a) for a in (kept_boxes, kept_labels, kept_scores))
        best = np.argsort(-scores, kind="stable")[:max_per_image]
        results.append((boxes[best], labels[best], scores[best]))
    return results
