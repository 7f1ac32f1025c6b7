"""Average precision of detections, as PASCAL VOC and COCO compute it.

Detections of one class, over all images, are sorted by score and matched greedily: a detection
is a true positive when its IoU with a not yet matched ground-truth box of its image and class is
at least the threshold (the best-overlapping such box is matched), else a false positive (a
second detection of a box already found is a false positive). Running sums give precision and
recall after each detection, and AP summarises the precision-recall curve by one of three rules:

* "11point" (VOC2007, the paper's): the mean over r ∈ {0, 0.1, …, 1} of the largest precision at
  a recall >= r (0 when the curve never reaches r);
* "all" (VOC2010 on): the area under the curve after each precision is raised to the largest
  precision at any higher recall, Σ (r_i − r_{i−1})·p_interp(r_i);
* "101point" (COCO): as "11point" over r ∈ {0, 0.01, …, 1}.

mAP is the mean AP over the classes that have ground truth; COCO's AP@[.5:.95] is the mean of the
101-point mAP over IoU thresholds 0.5, 0.55, …, 0.95. Boxes are [x1, y1, x2, y2) in continuous
coordinates, so a box's area is (x2 − x1)·(y2 − y1) (VOC's code adds 1 to each side, for boxes
named by their last pixel).

Detections are dicts {"image", "label", "score", "box"} and ground-truth boxes dicts {"image",
"label", "box"}: the records of detections_<variant>.json and ground_truth.json.
"""

import numpy as np

from dcn_numba.data.canvases import box_iou

RULES = ("11point", "all", "101point")
COCO_IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def precision_recall(detections, ground_truth, iou_threshold):
    """(precision, recall) arrays after each detection, best score first, for detections and
    ground truth of one class. Ties in score keep the order given."""
    by_image = {}
    for record in ground_truth:
        by_image.setdefault(record["image"], []).append(record["box"])
    boxes = {image: np.array(b, dtype=np.float64) for image, b in by_image.items()}
    matched = {image: np.zeros(len(b), dtype=bool) for image, b in boxes.items()}
    order = sorted(range(len(detections)), key=lambda i: -detections[i]["score"])
    true_positive = np.zeros(len(order))
    for rank, index in enumerate(order):
        detection = detections[index]
        image = detection["image"]
        if image not in boxes:
            continue
        overlaps = box_iou(detection["box"], boxes[image])[0]
        overlaps[matched[image]] = -1  # a box already found cannot be found again
        best = int(overlaps.argmax())
        if overlaps[best] >= iou_threshold:
            matched[image][best] = True
            true_positive[rank] = 1
    tp = np.cumsum(true_positive)
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / max(len(ground_truth), 1)
    return precision, recall


def interpolated_precision(precision, recall, levels):
    """At each recall level r, the largest precision at a recall >= r (0 if none)."""
    return np.array([precision[recall >= r].max() if np.any(recall >= r) else 0.0 for r in levels])


def average_precision(precision, recall, rule="11point"):
    """AP of one precision-recall curve (arrays after each detection) by `rule` (see RULES)."""
    if rule == "11point":
        return float(interpolated_precision(precision, recall, np.linspace(0, 1, 11)).mean())
    if rule == "101point":
        return float(interpolated_precision(precision, recall, np.linspace(0, 1, 101)).mean())
    if rule == "all":
        # the precision envelope: each point raised to the best precision at any higher recall
        envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
        steps = np.diff(np.concatenate([[0.0], recall]))
        return float(np.sum(steps * envelope))
    raise ValueError(f"average_precision: rule must be one of {RULES}, got {rule!r}")


def mean_average_precision(detections, ground_truth, iou_threshold, rule="11point"):
    """(mAP, {label: AP}) over the labels that have ground truth."""
    labels = sorted({record["label"] for record in ground_truth})
    per_class = {}
    for label in labels:
        class_detections = [d for d in detections if d["label"] == label]
        class_truth = [g for g in ground_truth if g["label"] == label]
        per_class[label] = average_precision(*precision_recall(class_detections, class_truth, iou_threshold), rule)
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


def coco_average_precision(detections, ground_truth):
    """COCO's AP@[.5:.95]: the 101-point mAP averaged over IoU thresholds 0.5, 0.55, …, 0.95."""
    return float(np.mean([mean_average_precision(detections, ground_truth, iou, "101point")[0]
                          for iou in COCO_IOUS]))


def detection_metrics(detections, ground_truth):
    """Every number the detection table reports, as fractions: map50 and map70 (VOC 11-point, the
    paper's), map50_all and map70_all (all-point), coco_ap (AP@[.5:.95]) and per-class 11-point
    AP at 0.5 and 0.7."""
    map50, per_class50 = mean_average_precision(detections, ground_truth, 0.5)
    map70, per_class70 = mean_average_precision(detections, ground_truth, 0.7)
    return dict(
        map50=map50,
        map70=map70,
        map50_all=mean_average_precision(detections, ground_truth, 0.5, "all")[0],
        map70_all=mean_average_precision(detections, ground_truth, 0.7, "all")[0],
        coco_ap=coco_average_precision(detections, ground_truth),
        ap50_per_class={str(k): v for k, v in per_class50.items()},
        ap70_per_class={str(k): v for k, v in per_class70.items()},
    )
