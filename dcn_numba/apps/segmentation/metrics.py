"""Mean intersection over union (mIoU), the PASCAL VOC segmentation measure, from confusion matrices.

The confusion matrix M (C, C) counts pixels over a whole test set: M[t, p] is the number of pixels
of true class t predicted as class p. For class c,

    IoU_c = M[c, c] / (Σ_p M[c, p] + Σ_t M[t, c] − M[c, c])

(true positives over true positives + false negatives + false positives), and mIoU is the mean of
IoU_c over the classes, background included, as VOC counts it. The pixels are pooled over the
whole test set before dividing: a class's IoU is not a mean over images.

A class absent from both the truth and the predictions has 0/0: its IoU is undefined (NaN) and
it is left out of the mean. Scoring it 1 would reward a net for not predicting a class that never
occurs, and scoring it 0 would punish it for the same; either would move mIoU by a test set's
composition alone. On the full test sets of the experiment every class occurs, so this matters
for subsets: a bootstrap resample, a tiny run. A class that occurs in only one of the two has
IoU 0, as VOC scores it.
"""

import numpy as np


def confusion_matrix(predicted, truth, classes):
    """M (classes, classes) int64 with M[t, p] = the number of pixels of true class t predicted
    as p; predicted and truth are integer arrays of one shape, values in [0, classes)."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"confusion_matrix: predicted has shape {predicted.shape} but truth "
                         f"{truth.shape}; expected one label per pixel in both")
    for name, labels in (("predicted", predicted), ("truth", truth)):
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise ValueError(f"confusion_matrix: {name} holds labels in [{labels.min()}, {labels.max()}], "
                             f"expected [0, {classes})")
    pairs = truth.astype(np.int64).ravel() * classes + predicted.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def image_confusions(predicted, truth, classes):
    """One confusion matrix per image: predicted and truth (N, H, W) → (N, classes, classes).
    Any set of images sums its matrices to the set's own matrix (for the bootstrap)."""
    return np.stack([confusion_matrix(p, t, classes) for p, t in zip(predicted, truth)])


def class_iou(confusion):
    """IoU_c of every class (module docstring): (C,) floats, NaN for a class absent from both
    the truth and the predictions."""
    confusion = np.asarray(confusion, dtype=np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(axis=1) + confusion.sum(axis=0) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def mean_iou(confusion):
    """mIoU: the mean of `class_iou` over the classes that occur in the truth or the predictions."""
    iou = class_iou(confusion)
    if np.isnan(iou).all():
        raise ValueError("mean_iou: the confusion matrix counts no pixel")
    return float(np.nanmean(iou))
