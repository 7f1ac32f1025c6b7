"""A toy two-stage detector for digit canvases, with or without the paper's deformable parts.

    backbone   conv 3×3 (1 → C1) · BN · ReLU · max-pool 2       64×64 → 32×32
               conv 3×3 (C1 → C2) · BN · ReLU · max-pool 2      → 16×16, stride 4
               res5a, res5b, res5c: conv 3×3 (C2 → C2) · BN · ReLU, the last 0–3 deformable, or
               all dilated (`Backbone`)
    proposals  a fixed grid of anchor boxes (`anchor_grid`): no ground truth at test time, as
               Fast R-CNN with given proposals
    head "2fc" RoIAlign (P×P, `DeformRoIPool` with deformable_roi) · fc · ReLU · fc · ReLU,
               then class scores (classes + 1) and a class-agnostic box regression (4)
    head "rfcn" conv 1×1 · ReLU, then 1×1 convs to (classes + 1)·k² score maps and 4·k² box maps,
               position-sensitive RoI pooling over k×k bins (`DeformPSRoIPool` with
               deformable_roi, offsets from the hidden features), averaged (the R-FCN vote)

Training samples RoIs from the anchors and the ground-truth boxes (`sample_rois`); the loss is
the cross-entropy of the class scores plus the smooth L1 loss of the box regression of the
foreground RoIs. At test time every anchor is scored and regressed, and per-class NMS keeps the
best of overlapping boxes (`detect`). `rpn.ClassAwareRPN` is the one-stage detector built on the
same backbone, anchors, box coding, loss and NMS.

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
SAMPLING_RATIO = 2  # 2×2 bilinear samples per bin of the 2fc head's RoIAlign
PS_SAMPLES_PER_BIN = 4  # 4×4 per bin of R-FCN's position-sensitive pooling (the paper's code)
RFCN_GROUP_SIZE = 3  # k: R-FCN's k×k bins (see RFCNHead)
# The RoI pooling's offset branch learns at this multiple of the learning rate. The paper's code
# trains the 2fc offset fc at lr_mult 0.01 with SGD, whose step scales with the gradient; Adam's
# step is about the learning rate whatever the gradient, and at 0.01 the branch hardly moved: on
# seed 0 (`python -m dcn_numba.experiment detection --seeds 0 --rows none droi --heads 2fc rfcn
# --offset-lr-multiplier M`) mAP@0.7 gained +1.3 over 2fc at 0.01, +8.7 at 0.1, +8.7 at 1; R-FCN's
# bins ran off the RoIs at 1 (−4.0) and helped at 0.1 (+4.7).
OFFSET_LR_MULTIPLIERS = {"2fc": 0.1, "rfcn": 0.1}


# ---------------------------------------------------------------------------------------------
# Anchors, box coding, RoI sampling and NMS: NumPy on the host
# ---------------------------------------------------------------------------------------------


def anchor_grid(image_size, heights=(16, 24, 36, 54), aspect_ratios=(0.4, 0.7, 1.0), density=4, stride=None):
    """Anchor boxes (A, 4) [x1, y1, x2, y2) of each height h and aspect ratio r (width / height),
    h·r wide and h tall, in the order (height, ratio, row, column). Their centres lie on a square
    grid of spacing h / density over the image, so that neighbouring anchors of one size overlap by
    the same fraction whatever the size; or, given `stride`, on the centres of the cells of a
    feature map of that stride, every height at every cell (the anchors of a convolutional head)."""
    anchors = []
    for height in heights:
        spacing = height / density if stride is None else stride
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


def match_boxes(candidates, gt_boxes, gt_labels, fg_iou=0.5, bg_iou=0.5, best_for_each_box=False):
    """Fast R-CNN's labels for candidate boxes (N, 4) of one image.

    A candidate whose best IoU with a ground-truth box is >= fg_iou is foreground, labelled with
    that box's class (1..classes; 0 is background) and regressed towards it; one below bg_iou is
    background; one in between is neither (−1). With best_for_each_box, each ground-truth box
    also makes its best-overlapping candidate foreground (Faster R-CNN's rule for the RPN), so
    that a box no candidate overlaps by fg_iou still trains one. Returns labels (N,) and box
    targets (N, 4) (zero but for the foreground).
    """
    labels = np.zeros(len(candidates), dtype=np.int64)
    targets = np.zeros((len(candidates), 4), dtype=np.float32)
    if len(gt_boxes) == 0:
        return labels, targets
    overlaps = box_iou(candidates, gt_boxes)
    best, iou = overlaps.argmax(axis=1), overlaps.max(axis=1)
    if best_for_each_box:
        favourites = overlaps.argmax(axis=0)
        best[favourites], iou[favourites] = np.arange(len(gt_boxes)), np.maximum(iou[favourites], fg_iou)
    foreground = iou >= fg_iou
    labels[(iou >= bg_iou) & ~foreground] = -1
    labels[foreground] = gt_labels[best[foreground]] + 1
    targets[foreground] = encode_boxes(gt_boxes[best[foreground]], candidates[foreground])
    return labels, targets


def sample_indices(labels, count, rng, fg_fraction=0.25):
    """`count` indices of labelled candidates: up to fg_fraction·count foreground ones (label > 0)
    drawn without replacement, first, and the rest from the background (label 0)."""
    foreground, background = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
    fg_count = min(int(round(fg_fraction * count)), len(foreground))
    foreground = rng.choice(foreground, fg_count, replace=False)
    background = rng.choice(background, min(count - fg_count, len(background)), replace=False)
    return np.concatenate([foreground, background])


def sample_rois(candidates, gt_boxes, gt_labels, count, rng, fg_fraction=0.25, fg_iou=0.5, bg_iou=0.5):
    """Fast R-CNN's RoI sampling for one image (`match_boxes`, then `sample_indices`): rois
    (count', 4), their labels (count',) and box targets (count', 4)."""
    labels, targets = match_boxes(candidates, gt_boxes, gt_labels, fg_iou, bg_iou)
    chosen = sample_indices(labels, count, rng, fg_fraction)
    return candidates[chosen], labels[chosen], targets[chosen]


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
    """Two conv · BN · ReLU · max-pool stages to stride 4, then the last stage: three 3×3
    convolutions · BN · ReLU at stride 4, named after the paper's res5a, res5b and res5c. The last
    `deformable_layers` of them are deformable (1: res5c; 3: all); the regular ones may be dilated
    (atrous, padding = dilation, so the 16×16 map keeps its size). The weights come from `rng`
    whatever the variant, the offset branches (zero weights) from `branch_rng`, so that every
    variant of one seed starts out from the same weights."""

    stride = 4

    def __init__(self, channels, rng, branch_rng, deformable_layers=0, dilation=1):
        first, width = channels
        self.stem = [Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
                     for c_in, c_out in ((1, first), (first, width))]
        self.stem_norms = [BatchNorm2d(c) for c in channels]
        self.pool = MaxPool2d(2)

        def res5(index):
            conv = Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False, rng=rng)
            if index < 3 - deformable_layers:
                return conv
            return same_start(conv, DeformConv2d(width, width, 3, padding=dilation, dilation=dilation,
                                                 bias=False, rng=branch_rng))

        self.res5a, self.res5b, self.res5c = (res5(index) for index in range(3))
        self.bn5a, self.bn5b, self.bn5c = (BatchNorm2d(width) for _ in range(3))

    def forward(self, images):
        x = images
        for conv, norm in zip(self.stem, self.stem_norms):
            x = self.pool(F.relu(norm(conv(x))))
        for conv, norm in ((self.res5a, self.bn5a), (self.res5b, self.bn5b), (self.res5c, self.bn5c)):
            x = F.relu(norm(conv(x)))
        return x


class TwoFCHead(Module):
    """RoIAlign over P×P bins (deformable RoI pooling with its fc offset branch when
    `deformable`), two fc layers, then class logits (classes + 1) and box deltas (4)."""

    def __init__(self, in_channels, classes, deformable, pooled_size, hidden, rng, branch_rng,
                 offset_lr_multiplier):
        self.pooled_size, self.spatial_scale = pooled_size, 1.0 / Backbone.stride
        self.roi_pool = DeformRoIPool(in_channels, pooled_size, self.spatial_scale, SAMPLING_RATIO,
                                      hidden_channels=hidden, offset_lr_multiplier=offset_lr_multiplier,
                                      rng=branch_rng) if deformable else None
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

    def offset_pool(self):
        """The deformable RoI pooling whose offsets `Detector.roi_offsets` reads (None without)."""
        return self.roi_pool


class RFCNHead(Module):
    """R-FCN as the paper's code builds it: a hidden 1×1 convolution · ReLU (its conv_new_1),
    1×1 convs from it to (classes + 1)·k² score maps and 4·k² box maps, position-sensitive RoI
    pooling over k×k bins with PS_SAMPLES_PER_BIN² samples per bin (deformable when `deformable`:
    each set of maps with its own offset branch, computed from the hidden features, not from the
    score maps), and the vote: the mean over the bins.

    k = 3, not the paper's 7: a bin should span at least one feature cell, or neighbouring bins
    read the same cells from different part maps. The median test digit is 26 × 18 pixels, 6.5 ×
    4.5 cells at stride 4: k = 3 gives bins of 2.2 × 1.5 cells, k = 5 would give 0.9 cells across
    (and the smallest digits, 14 pixels tall, 0.7 cells down).
    """

    def __init__(self, in_channels, classes, deformable, group_size, hidden, rng, branch_rng,
                 offset_lr_multiplier):
        k2 = group_size ** 2
        self.group_size, self.spatial_scale = group_size, 1.0 / Backbone.stride
        self.output_dims = (classes + 1, 4)
        self.conv_new_1 = Conv2d(in_channels, hidden, 1, rng=rng)
        self.score_maps = Conv2d(hidden, (classes + 1) * k2, 1, rng=rng)
        self.box_maps = Conv2d(hidden, 4 * k2, 1, rng=rng)
        self.box_maps.weight.data *= 0.1  # start near the anchors
        self.pools = [DeformPSRoIPool(dim * k2, dim, group_size, spatial_scale=self.spatial_scale,
                                      sample_per_part=PS_SAMPLES_PER_BIN, offset_in_channels=hidden,
                                      offset_lr_multiplier=offset_lr_multiplier, rng=branch_rng)
                      for dim in self.output_dims] if deformable else None

    def pooled(self, index, maps, rois, hidden):
        """Position-sensitive pooling of one set of maps, with offsets from `hidden` when deformable."""
        if self.pools is not None:
            return self.pools[index](maps, rois, hidden)
        k = self.group_size
        return F.deform_psroi_pool(maps, rois, None, self.spatial_scale, output_dim=self.output_dims[index],
                                   group_size=k, pooled_size=k, part_size=k, sample_per_part=PS_SAMPLES_PER_BIN)

    def forward(self, features, rois):
        rois = inclusive_rois(rois)
        hidden = F.relu(self.conv_new_1(features))
        scores = self.pooled(0, self.score_maps(hidden), rois, hidden)
        boxes = self.pooled(1, self.box_maps(hidden), rois, hidden)
        return scores.mean(axis=(2, 3)), boxes.mean(axis=(2, 3))

    def offset_pool(self):
        """The class-score pooling, whose offsets `Detector.roi_offsets` reads (None without)."""
        return None if self.pools is None else self.pools[0]


class Detector(Module):
    """The backbone and one head; forward(images (B, 1, H, W), rois (N, 5)) → (class logits
    (N, classes + 1), box deltas (N, 4)).

    The offset branches draw from a generator of their own (seeded seed + 1), the rest from one
    seeded `seed`, and every offset branch starts at zero: with one seed, the deformable variants
    of a head start out computing what the regular one computes and differ only in what they
    learn. The RoI pooling's offset branch learns at offset_lr_multiplier × the rate of the rest
    (default OFFSET_LR_MULTIPLIERS of the head); the backbone's at the full rate, as in the
    paper's code.
    """

    def __init__(self, head="2fc", deformable_layers=0, dilation=1, deformable_roi=False, seed=0, classes=10,
                 channels=(16, 32), pooled_size=None, hidden=128, offset_lr_multiplier=None):
        if head not in HEADS:
            raise ValueError(f"Detector: head must be one of {HEADS}, got {head!r}")
        if deformable_layers not in (0, 1, 2, 3):
            raise ValueError(f"Detector: deformable_layers must be 0, 1, 2 or 3 (of res5a–c), "
                             f"got {deformable_layers!r}")
        rng, branch_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
        self.head_name, self.deformable_roi = head, deformable_roi
        self.backbone = Backbone(channels, rng, branch_rng, deformable_layers, dilation)
        multiplier = OFFSET_LR_MULTIPLIERS[head] if offset_lr_multiplier is None else offset_lr_multiplier
        if head == "2fc":
            self.head = TwoFCHead(channels[-1], classes, deformable_roi, pooled_size or 7, hidden, rng,
                                  branch_rng, multiplier)
        else:
            self.head = RFCNHead(channels[-1], classes, deformable_roi, pooled_size or RFCN_GROUP_SIZE, hidden,
                                 rng, branch_rng, multiplier)

    def forward(self, images, rois):
        return self.head(self.backbone(images), rois)

    def score_anchors(self, images, anchors):
        """(class logits, box deltas) of every anchor (A, 4) of every image (B, 1, H, W), rows
        image by image: the anchors are this detector's proposals."""
        return self(Tensor(images), batch_rois([anchors] * len(images)))

    def roi_offsets(self, images, rois):
        """The normalised offsets (N, 2, P, P), x first, that the deformable RoI pooling (the
        class-score pooling of R-FCN) applies to RoI rows (N, 5) of images, and the γ that scales
        them by the RoI's size."""
        pool = self.head.offset_pool()
        if pool is None:
            raise ValueError("roi_offsets: needs a detector with deformable_roi=True")
        self.eval()
        with no_grad():
            self(Tensor(images), rois)
        if isinstance(pool, DeformRoIPool):
            return np.asarray(pool.last_offset), pool.gamma
        return np.asarray(pool.last_trans), pool.trans_std


def offset_drift(offsets, gamma):
    """How far learned offsets (N, 2, P, Q), x first, move the bins, in units of the RoI's width
    and height: bin (i, j) has its centre at ((j + ½)/Q, (i + ½)/P) of the RoI and moves by
    (γ·Δx, γ·Δy), as both deformable RoI poolings define their offsets. Returns (the mean
    Euclidean shift sqrt((γ·Δx)² + (γ·Δy)²) over bins and RoIs, the fraction of bin centres that
    end outside the RoI)."""
    offsets = np.asarray(offsets, dtype=np.float64)
    P, Q = offsets.shape[2:]
    shift_x, shift_y = gamma * offsets[:, 0], gamma * offsets[:, 1]
    centre_x = (np.arange(Q)[None, None, :] + 0.5) / Q + shift_x
    centre_y = (np.arange(P)[None, :, None] + 0.5) / P + shift_y
    outside = (centre_x < 0) | (centre_x > 1) | (centre_y < 0) | (centre_y > 1)
    return float(np.hypot(shift_x, shift_y).mean()), float(outside.mean())


# The backbone's variants, by name suffix: regular; 1, 2 or 3 deformable layers (res5c; res5b–c;
# res5a–c); dilation 2, 4 or 6 in res5a–c (at 6 the outer taps of a centre cell of the 16×16 map
# still land on it).
BACKBONES = {"": dict(deformable_layers=0, dilation=1),
             **{f"_dconv{n}": dict(deformable_layers=n, dilation=1) for n in (1, 2, 3)},
             **{f"_dil{d}": dict(deformable_layers=0, dilation=d) for d in (2, 4, 6)}}
# Every named detector: a head with each backbone, with deformable RoI pooling ("_droi"), and both
# ("_both": deformable res5a–c and deformable RoI pooling).
VARIANTS = {
    **{f"{head}{name}": dict(head=head, deformable_roi=False, **backbone)
       for head in HEADS for name, backbone in BACKBONES.items()},
    **{f"{head}_droi": dict(head=head, deformable_roi=True, **BACKBONES[""]) for head in HEADS},
    **{f"{head}_both": dict(head=head, deformable_roi=True, **BACKBONES["_dconv3"]) for head in HEADS},
}


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def detect(detector, images, anchors, score_threshold=0.05, nms_iou=0.3, max_per_image=100):
    """Detections of every image of images (B, 1, H, W), a NumPy array: every anchor is scored
    and its box regressed (`detector.score_anchors`) and clipped to the image; per class, boxes
    scoring above score_threshold go through NMS at nms_iou; the best max_per_image are kept.

    Returns one (boxes (n, 4), labels (n,) in 0..classes−1, scores (n,)) per image.
    """
    detector.eval()
    size = images.shape[-1]
    with no_grad():
        logits, deltas = detector.score_anchors(images, anchors)
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
