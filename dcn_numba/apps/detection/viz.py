"""The paper's part-offsets picture, from a trained deformable R-FCN detector.

    python -m dcn_numba.detection_viz --run runs/detect --variant rfcn_droi --out docs/part_offsets.png

draws it from the weights a `dcn_numba.detect` run saved, on that run's test canvases.

Deformable position-sensitive RoI pooling splits a RoI into k×k bins; bin (i, j) pools the
(i, j)-th score map of each class, after a learned shift of (Δx·γ·w, Δy·γ·h) for a RoI of width w
and height h. Drawing each bin before and after its shift, on test detections, shows which parts
of a digit the detector moved its bins to.
"""

import argparse
import json
import zipfile
from pathlib import Path

import numpy as np

from dcn_numba.data.canvases import make_canvases
from dcn_numba.data.mnist import load_mnist
from dcn_numba.ops.locations import psroi_bin_boxes
from dcn_numba.apps.detection.detector import Detector, anchor_grid, batch_rois, detect, offset_drift
from dcn_numba.runs.outputs import OutputError, check_output_file, write_atomically


def part_bins(roi, trans, pooled_size, trans_std, spatial_scale):
    """The k×k bins of one RoI shifted by its offsets, as image-coordinate boxes (k, k, 4).

    roi [x1, y1, x2, y2) in pixels; trans (2, k, k) normalised offsets, x first (zeros give the
    unshifted bins). The bins lie where the R-FCN operator puts them on the feature map
    (`dcn_numba.ops.locations.psroi_bin_boxes`) for the RoI's last-pixel corners (x2 − 1, y2 − 1);
    a feature coordinate u maps back to the image coordinate (u + 0.5)/s.
    """
    boxes = psroi_bin_boxes(np.asarray(roi, dtype=np.float64) - [0, 0, 1, 1], trans, pooled_size, trans_std,
                            spatial_scale)
    return (boxes + 0.5) / spatial_scale


def learned_offsets(detector, image, boxes):
    """The normalised offsets (N, 2, k, k), x first, that the class-score pooling of a deformable
    R-FCN detector applies to `boxes` (N, 4) of one image (1, H, W)."""
    if detector.head_name != "rfcn" or not detector.deformable_roi:
        raise ValueError("learned_offsets: needs a detector with head 'rfcn' and deformable_roi=True")
    return detector.roi_offsets(image[None], batch_rois([boxes]))[0]


def part_offsets_figure(detector, canvases, anchors, count=6, min_score=0.5):
    """On the first `count` canvases with a detection scoring at least min_score, the best
    detection (yellow) and its k×k bins before (dashed) and after (solid) their learned offsets.
    Returns (figure, the mean Euclidean shift of a bin in pixels, one value per detection drawn).

    The title states the shift over the detections drawn: in pixels, as a fraction of the RoI's
    size (`offset_drift`), and the fraction of bin centres the offsets move outside the RoI.
    """
    import matplotlib.pyplot as plt

    pool = detector.head.offset_pool()
    columns = count // 2
    figure, axes = plt.subplots(2, columns, figsize=(2.8 * columns, 6.6), layout="constrained")
    shifts, drifts, outside = [], [], []
    for n in range(len(canvases.images)):
        if len(shifts) == count:
            break
        boxes, labels, scores = detect(detector, canvases.images[n:n + 1], anchors)[0]
        if len(scores) == 0 or scores[0] < min_score:
            continue
        trans = learned_offsets(detector, canvases.images[n], boxes[:1])[0]
        before = part_bins(boxes[0], np.zeros_like(trans), pool.pooled_size, pool.trans_std, pool.spatial_scale)
        after = part_bins(boxes[0], trans, pool.pooled_size, pool.trans_std, pool.spatial_scale)
        axis = axes.flat[len(shifts)]
        shifts.append(float(np.hypot(*np.moveaxis(after[..., :2] - before[..., :2], -1, 0)).mean()))
        drift, left = offset_drift(trans[None], pool.trans_std)
        drifts.append(drift)
        outside.append(left)
        size = canvases.images.shape[-1]
        axis.imshow(canvases.images[n, 0], cmap="gray", extent=(0, size, size, 0))
        draw_bins(axis, boxes[:1], "gold", "-")
        draw_bins(axis, before, "tab:cyan", "--")
        draw_bins(axis, after, "tab:red", "-")
        axis.set(xlim=(0, size), ylim=(size, 0))
        # two short lines: one line of a panel's width ran into the next panel's title
        axis.set_title(f"'{labels[0]}' score {scores[0]:.2f}\nbins moved {shifts[-1]:.1f} px", fontsize=9)
        axis.axis("off")
    for axis in axes.flat[len(shifts):]:
        axis.axis("off")
    k = pool.pooled_size
    figure.suptitle(f"deformable PS RoI pooling: {k}×{k} bins before (dashed) and after (solid) their offsets\n"
                    f"mean Euclidean bin shift {np.mean(shifts or [0]):.1f} px = {np.mean(drifts or [0]):.2f} of the "
                    f"RoI's size; {np.mean(outside or [0]):.0%} of bin centres outside the RoI", fontsize=10)
    return figure, shifts


def plot_part_offsets(detector, canvases, anchors, path, count=6, min_score=0.5):
    """`part_offsets_figure` saved to `path`; returns the mean bin shift in pixels."""
    import matplotlib.pyplot as plt

    figure, shifts = part_offsets_figure(detector, canvases, anchors, count, min_score)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return float(np.mean(shifts)) if shifts else 0.0


def draw_bins(axis, bins, colour, style):
    import matplotlib.pyplot as plt

    for x1, y1, x2, y2 in bins.reshape(-1, 4):
        axis.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, ls=style, lw=1))


def finished_run_settings(parser, run, variant):
    """(the metrics entry of `variant`, the run's settings) of a finished detect run in the
    folder `run`; anything else is a usage error naming --run and the file."""
    path = run / "metrics.json"
    if not path.is_file():
        parser.error(f"--run {run}: no finished run there ({path} is missing; "
                     f"python -m dcn_numba.detect --out {run} makes one)")
    try:
        metrics = json.loads(path.read_text())
        settings = json.loads((run / "run.json").read_text())["settings"] if (run / "run.json").is_file() else {}
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"--run {run}: {path} or run.json is not the JSON a detect run writes ({error})")
    if not isinstance(metrics, dict) or not isinstance(metrics.get(variant), dict):
        listed = ", ".join(metrics) if isinstance(metrics, dict) else "none"
        parser.error(f"--run {run}: {path} holds no variant {variant!r} (it holds {listed}); "
                     f"train it with python -m dcn_numba.detect --variants {variant}")
    missing = [key for key in ("seed", "test_canvases") if key not in metrics[variant]]
    if missing:
        parser.error(f"--run {run}: {path} gives {variant!r} no {', '.join(missing)}")
    return metrics[variant], settings


def main(argv=None):
    from dcn_numba.apps.detection import detect as command  # detect imports this module: import it only here

    parser = argparse.ArgumentParser(prog="python -m dcn_numba.detection_viz",
                                     description="Draw the part-offsets figure from a detect run's weights.")
    parser.add_argument("--run", default="runs/detect", help="output folder of python -m dcn_numba.detect")
    parser.add_argument("--variant", default="rfcn_droi", choices=[v for v, s in command.VARIANTS.items()
                                                                    if s["head"] == "rfcn" and s["deformable_roi"]])
    parser.add_argument("--out", default="docs/part_offsets.png", help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        out = check_output_file(args.out, "--out")
    except OutputError as error:
        parser.error(str(error))
    run = Path(args.run)
    entry, settings = finished_run_settings(parser, run, args.variant)
    detector = Detector(**command.VARIANTS[args.variant], seed=entry["seed"])
    weights = run / f"{args.variant}.npz"
    try:
        detector.load(weights)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        parser.error(f"--run {run}: the weights {weights} cannot be loaded ({type(error).__name__}: {error})")
    test = make_canvases(load_mnist(settings.get("data")).test, entry["test_canvases"], command.TEST_CANVAS_SEED,
                         command.CANVAS_SIZE)
    anchors = anchor_grid(command.CANVAS_SIZE)
    shift = write_atomically(out, lambda file: plot_part_offsets(detector, test, anchors, file))
    print(f"{args.out}: mean bin shift {shift:.2f} px")


if __name__ == "__main__":
    main()
