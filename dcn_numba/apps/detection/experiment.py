"""The paper's detection tables at toy scale, over several seeds: class-aware RPN, Faster R-CNN
2fc and R-FCN, with 0–3 deformable layers in res5, dilated res5, deformable RoI pooling, both.

    python -m dcn_numba.experiment detection --seeds 0 1 2         docs/results_detection.md, .json
    python -m dcn_numba.experiment detection --rows none droi --heads 2fc rfcn    some rows first

Each (variant, seed) is one run of the detection command's training (`detect.train_variant`, or
`rpn.train_rpn`, with `detect`'s defaults but --steps and --test-canvases), in its own folder
<runs>/<variant>/seed<n>: weights.npz, detections.json, and metrics.json, written last. A run
whose metrics.json holds the same settings is read, not repeated: a killed table loses at most
the run in progress, and two invocations with different --rows can run at once. The tables are
written from every finished run whose settings match, whatever --rows asked for.

Numbers reported: VOC 11-point mAP at IoU 0.5 and 0.7 (mean ± standard deviation over the
seeds); each gain over the row "none" of its head (the mean over the seeds of the per-seed
difference) with a 95% bootstrap interval over test canvases (`bootstrap`: the test canvases are
resampled with replacement, the same resamples for every run); for deformable RoI pooling the
offset drift on the test digits' boxes (`detector.offset_drift`); parameters; time per canvas.

Time, in CPU seconds of one process with one Numba and one BLAS thread (NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1), measured on the 2-core development machine (the runs' metrics.json keep
training_cpu_seconds and test_cpu_seconds). A training step (8 canvases; timed over 20 steps of each
variant, and in the pilot runs for deformable RoI pooling) costs 85 ms for the RPN,
108 / 110 ms for 2fc / R-FCN, 144 / 153 ms with deformable res5a–c, 171 / 143 ms with deformable
RoI pooling, 219 / 184 ms with both, about the regular cost when dilated. Testing 500 canvases
costs 8 s (RPN), 28 / 30 s (2fc / R-FCN), 51 / 36 s with deformable RoI pooling. So one seed is
7 RPN runs (~470 s) + 9 2fc runs (~1,040 s) + 9 R-FCN runs (~1,000 s) ≈ 42 minutes, three seeds
≈ 126 minutes, and the bootstrap (3.6 ms per class-averaged AP: 75 runs × 2 IoUs × 1,000
resamples ≈ 9 minutes) and loading bring the table to about 2 h 20 min on one free core: within
3 hours, not with the machine shared (the wall-clock times in the results show the load). Two
invocations with disjoint --rows use both cores.

Why 600 steps and 500 test canvases: 600 steps (1.2 epochs) is the schedule the issue's
measurements used; on 500 canvases the 95% bootstrap interval of one seed's gain in mAP@0.7 was
about ±2.5–3 points (deformable RoI pooling on seed 0: 2fc +8.7 [+6.1, +11.2], R-FCN +4.7 [+1.3,
+7.4]; at mAP@0.5 about ±1.5), so gains of 3 points or more at 0.7 are resolved; 1,000 canvases,
which would narrow the intervals by a factor √2, would cost another 34 minutes.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dcn_numba.apps.detection import detect, rpn
from dcn_numba.apps.detection import viz as detection_viz
from dcn_numba.apps.detection.detector import (PS_SAMPLES_PER_BIN, RFCN_GROUP_SIZE, OFFSET_LR_MULTIPLIERS,
                                               SAMPLING_RATIO, VARIANTS as DETECTORS, Backbone, Detector, anchor_grid,
                                               batch_rois, offset_drift)
from dcn_numba.apps.detection.evaluation import average_precision, detection_metrics, precision_recall
from dcn_numba.runs.options import mean_std, positive_int, seed_int, threads, with_seeds
from dcn_numba.data.canvases import make_canvases
from dcn_numba.data.mnist import load_mnist
from dcn_numba import speed
from dcn_numba.runtime.settings import keep_freed_memory

HEADS = ("rpn", "2fc", "rfcn")
HEAD_NAMES = {"rpn": "class-aware RPN", "2fc": "Faster R-CNN 2fc", "rfcn": "R-FCN"}
# (key for --rows, variant suffix, row of the table)
ROWS = (("none", "", "none"),
        ("dconv1", "_dconv1", "deformable res5c (1 layer)"),
        ("dconv2", "_dconv2", "deformable res5b–c (2 layers)"),
        ("dconv3", "_dconv3", "deformable res5a–c (3 layers)"),
        ("dil2", "_dil2", "dilation 2 in res5a–c"),
        ("dil4", "_dil4", "dilation 4 in res5a–c"),
        ("dil6", "_dil6", "dilation 6 in res5a–c"),
        ("droi", "_droi", "deformable RoI pooling"),
        ("both", "_both", "deformable res5a–c and RoI pooling"))
ALL_VARIANTS = {**rpn.VARIANTS, **DETECTORS}
DEFAULT_STEPS = 600
DEFAULT_TEST_CANVASES = 500
RESULTS, FIGURE = "results_detection", "part_offsets"
DETECTOR_ANCHORS = len(anchor_grid(detect.CANVAS_SIZE))
RPN_ANCHORS = len(anchor_grid(detect.CANVAS_SIZE, stride=Backbone.stride))


def variant_name(head, suffix):
    """The variant of a head in a row, or None where the row does not apply (no RoI pooling in the RPN)."""
    name = f"{head}{suffix}"
    return name if name in ALL_VARIANTS else None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.experiment detection",
        description="Train (or reuse) the detection runs over several seeds and write the detection table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=[key for key, _, _ in ROWS], default=[key for key, _, _ in ROWS],
                        help="rows of the table to train")
    parser.add_argument("--heads", nargs="+", choices=HEADS, default=list(HEADS), help="columns of the table to train")
    parser.add_argument("--steps", type=positive_int, default=DEFAULT_STEPS, help="training steps per run")
    parser.add_argument("--test-canvases", type=positive_int, default=DEFAULT_TEST_CANVASES)
    parser.add_argument("--resamples", type=positive_int, default=1000, help="bootstrap resamples of the test canvases")
    parser.add_argument("--offset-lr-multiplier", type=non_negative_float, default=None,
                        help="train the offset branches of deformable RoI pooling at this multiple of the learning "
                             "rate instead of detector.OFFSET_LR_MULTIPLIERS; those runs and the results files get "
                             "the suffix _offset-lr<value>")
    parser.add_argument("--runs", default="runs/detection", help="folder of the runs")
    parser.add_argument("--docs", default="docs", help="folder the results are written to")
    return parser.parse_args(argv)


def non_negative_float(text):
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not (np.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def suffix(options):
    """The suffix of the runs and results made with another offset learning-rate multiplier."""
    return "" if options.offset_lr_multiplier is None else f"_offset-lr{options.offset_lr_multiplier:g}"


def run_folder(options, variant, seed):
    """<runs>/<variant>/seed<n>; with --offset-lr-multiplier, the runs of deformable RoI pooling,
    which it changes, go to <runs>/<variant>_offset-lr<value>/seed<n>."""
    changed = ALL_VARIANTS[variant].get("deformable_roi", False)
    return Path(options.runs) / f"{variant}{suffix(options) if changed else ''}" / f"seed{seed}"


def run_settings(options, variant, seed):
    """Everything a run depends on: a stored run with other settings is trained again."""
    args = detect.parse_args(["--steps", str(options.steps), "--test-canvases", str(options.test_canvases),
                              "--seed", str(seed)])
    model = ALL_VARIANTS[variant]
    multiplier = OFFSET_LR_MULTIPLIERS[model["head"]] if model.get("deformable_roi") else None
    design = dict(offset_lr_multiplier=multiplier, rfcn_group_size=RFCN_GROUP_SIZE,
                  ps_samples_per_bin=PS_SAMPLES_PER_BIN, roi_sampling_ratio=SAMPLING_RATIO)
    return args, dict(variant=variant, model=model, seed=seed, steps=args.steps,
                      batch_size=args.batch_size, rois_per_image=args.rois_per_image, lr=args.lr,
                      train_canvases=args.train_canvases, test_canvases=args.test_canvases, design=design)


def stored_run(folder, settings):
    """The metrics of the run in `folder` if it finished with `settings`, else None."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("settings") == json.loads(json.dumps(settings)) else None


def write_atomically(path, text):
    """Write `text` to `path` through a temporary file, so that a kill leaves the old file or none."""
    temporary = Path(f"{path}.partial")
    temporary.write_text(text)
    os.replace(temporary, path)


def drift_on_test_digits(detector, test, batch_size=10):
    """`offset_drift` of a detector's deformable RoI pooling on the boxes of the test digits."""
    offsets = []
    for start in range(0, len(test.images), batch_size):
        rois = batch_rois(test.boxes[start:start + batch_size])
        trans, gamma = detector.roi_offsets(test.images[start:start + batch_size], rois)
        offsets.append(trans)
    return offset_drift(np.concatenate(offsets), gamma)


def train_run(variant, args, data):
    """Train and test one variant with `args`; returns (model, its metrics without settings)."""
    train, test, anchors, ground_truth = data
    began, began_cpu = time.perf_counter(), time.process_time()
    if variant in rpn.VARIANTS:
        model, history = rpn.train_rpn(variant, train, args)
        anchors = model.anchors
    else:
        model, history = detect.train_variant(variant, train, anchors, args)
    training_seconds, training_cpu_seconds = time.perf_counter() - began, time.process_time() - began_cpu
    began_cpu = time.process_time()
    detections, seconds_per_canvas = detect.evaluate(model, test, anchors)
    metrics = dict(detection_metrics(detections, ground_truth), params=int(model.num_parameters()),
                   seconds_per_canvas=seconds_per_canvas, training_seconds=training_seconds,
                   training_cpu_seconds=training_cpu_seconds, test_cpu_seconds=time.process_time() - began_cpu,
                   test_digits=len(ground_truth), anchors=len(anchors), history=history)
    if getattr(model, "deformable_roi", False):
        metrics["drift"], metrics["outside"] = drift_on_test_digits(model, test)
    return model, detections, metrics


def get_run(options, variant, seed, data):
    """The metrics of (variant, seed): stored, or trained now and stored."""
    args, settings = run_settings(options, variant, seed)
    folder = run_folder(options, variant, seed)
    metrics = stored_run(folder, settings)
    if metrics is not None:
        return metrics
    print(f"training {variant}, seed {seed}", flush=True)
    model, detections, metrics = train_run(variant, args, data)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "weights.npz")
    write_atomically(folder / "detections.json", json.dumps(detections))
    metrics["settings"] = settings
    write_atomically(folder / "metrics.json", json.dumps(metrics))
    print(f"{variant}, seed {seed}: mAP@0.5 {metrics['map50']:.3f}, mAP@0.7 {metrics['map70']:.3f}, "
          f"{metrics['training_seconds']:.0f} s training, "
          f"{1000 * metrics['seconds_per_canvas']:.1f} ms per test canvas",
          flush=True)
    return metrics


def finished_runs(options):
    """{variant: {seed: metrics}} of every variant finished for every seed of options.seeds."""
    runs = {}
    for variant in ALL_VARIANTS:
        per_seed = {seed: stored_run(run_folder(options, variant, seed), run_settings(options, variant, seed)[1])
                    for seed in options.seeds}
        if all(m is not None for m in per_seed.values()):
            runs[variant] = per_seed
    return runs


# ---------------------------------------------------------------------------------------------
# The bootstrap over test canvases
# ---------------------------------------------------------------------------------------------


def bootstrap(statistic, count, resamples=1000, seed=0):
    """Bootstrap samples of `statistic` over `count` test canvases: each resample draws `count`
    canvases with replacement, and statistic(weights) is evaluated with weights (count,) the
    number of times each canvas was drawn. Returns an array (resamples, ...) of the statistic;
    np.percentile(samples, [2.5, 97.5], axis=0) is the 95% percentile interval."""
    rng = np.random.default_rng(seed)
    return np.array([statistic(rng.multinomial(count, np.full(count, 1.0 / count))) for _ in range(resamples)])


def scored_detections(detections, ground_truth, iou_threshold):
    """Per class with ground truth: (canvas of each detection, best score first; 1 where it is a
    true positive; canvas of each ground-truth box). A detection's match depends only on its own
    canvas, so a resample that draws a canvas twice draws its matches twice. The true positives are
    read from `precision_recall`: precision after the i-th detection times i is the running count."""
    classes = []
    for label in sorted({g["label"] for g in ground_truth}):
        found = [d for d in detections if d["label"] == label]
        truth = [g for g in ground_truth if g["label"] == label]
        precision, _ = precision_recall(found, truth, iou_threshold)
        order = sorted(range(len(found)), key=lambda i: -found[i]["score"])  # precision_recall's order
        running = np.round(precision * np.arange(1, len(found) + 1))
        classes.append((np.array([found[i]["image"] for i in order], dtype=np.int64),
                        np.diff(np.concatenate([[0.0], running])),
                        np.array([g["image"] for g in truth], dtype=np.int64)))
    return classes


def weighted_map(classes, weights):
    """The 11-point mAP of `scored_detections` when canvas c counts weights[c] times."""
    aps = []
    for canvases, true_positive, truth_canvases in classes:
        w = weights[canvases]
        drawn = w > 0
        tp = np.cumsum((w * true_positive)[drawn])
        precision = tp / np.cumsum(w[drawn])
        recall = tp / max(weights[truth_canvases].sum(), 1)
        aps.append(average_precision(precision, recall, "11point"))
    return float(np.mean(aps))


def bootstrap_maps(runs, options, ground_truth, count):
    """{(variant, seed, key): resampled mAPs (resamples,)} for key map50 and map70 of every run."""
    scored = {}
    for variant, per_seed in runs.items():
        for seed in per_seed:
            detections = json.loads((run_folder(options, variant, seed) / "detections.json").read_text())
            for key, iou in (("map50", 0.5), ("map70", 0.7)):
                scored[(variant, seed, key)] = scored_detections(detections, ground_truth, iou)
    keys = list(scored)
    samples = bootstrap(lambda w: [weighted_map(scored[k], w) for k in keys], count, options.resamples)
    return {k: samples[:, i] for i, k in enumerate(keys)}


# ---------------------------------------------------------------------------------------------
# The results files
# ---------------------------------------------------------------------------------------------


def values(per_seed, key):
    return [metrics[key] for metrics in per_seed.values()]


def gain_cell(runs, samples, variant, base, key):
    """'+gain [low, high]' in points: the mean over seeds of variant − base, and its 95% bootstrap
    interval over test canvases ('base' for the base itself, '–' while the base is not run)."""
    if variant == base or base not in runs:
        return "base" if variant == base else "–"
    gain = np.mean(np.subtract(values(runs[variant], key), values(runs[base], key)))
    resampled = np.mean([samples[(variant, seed, key)] - samples[(base, seed, key)] for seed in runs[variant]], axis=0)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return f"{100 * gain:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def table_rows(runs, cell):
    """Markdown rows of the table: one per row of ROWS with a finished run, cell(variant) per
    head and IoU, 'N.A.' where the row does not apply and '–' where it is not run yet."""
    lines = []
    for _, suffix, title in ROWS:
        cells = []
        for head in HEADS:
            variant = variant_name(head, suffix)
            for key in ("map50", "map70"):
                cells.append("N.A." if variant is None else cell(variant, key) if variant in runs else "–")
        if any(c not in ("N.A.", "–") for c in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return lines


def results_markdown(runs, samples, command, first, canvases):
    """docs/results_detection.md: how it was made, the table, the gains, the per-variant details."""
    settings = first["settings"]
    columns = " | ".join(f"{HEAD_NAMES[h]} mAP@{iou}" for h in HEADS for iou in ("0.5", "0.7"))
    header = [f"| deformation modules | {columns} |", "|---" * 7 + "|"]
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    lines = [
        "<!-- Written by dcn_numba.experiment detection; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}`: seeds {', '.join(map(str, seeds))}, on the CPU ({os.cpu_count()} cores, "
        f"{threads()}). Every run trains one detector for {settings['steps']} steps of {settings['batch_size']} "
        f"canvases ({settings['rois_per_image']} sampled RoIs or anchors each; Adam, peak learning rate "
        f"{settings['lr']}, cosine decay) drawn from {settings['train_canvases']:,} training canvases, and tests "
        f"it on {settings['test_canvases']:,} test canvases ({first['test_digits']:,} digits). The two-stage "
        f"heads score {DETECTOR_ANCHORS:,} anchor boxes per canvas as proposals, the class-aware RPN its "
        f"{RPN_ANCHORS:,} anchors. mAP in %, PASCAL VOC 11-point rule (the paper's), mean ± standard deviation "
        "over the seeds. The offset branch of deformable RoI pooling learns at "
        f"{OFFSET_LR_MULTIPLIERS['2fc']:g} (2fc) and {OFFSET_LR_MULTIPLIERS['rfcn']:g} (R-FCN) times the "
        "learning rate, the deformable convolutions' at the full rate.",
        "", *header, *table_rows(runs, lambda v, k: mean_std(values(runs[v], k))), "",
        f"Gain over the row \"none\" of the same head, in points: the mean over the seeds of the per-seed "
        f"difference, and in brackets its 95% interval from {len(next(iter(samples.values())))} bootstrap "
        f"resamples of the {canvases:,} test canvases (the same resamples for every run): an interval that "
        "excludes 0 is a gain the test set resolves; the spread over seeds is in the table above.",
        "", *header,
        *table_rows(runs, lambda v, k: gain_cell(runs, samples, v, v.split("_")[0], k)), "",
        "Each run: parameters, detection time per test canvas (all anchors scored, NMS), training time "
        "(wall clock and CPU; other jobs shared the machine), "
        "mAP of each seed, and for deformable RoI pooling the drift of its bins on the boxes of the test "
        "digits: the mean Euclidean shift of a bin centre in units of the RoI's width and height, and the "
        "fraction of bin centres moved outside the RoI (mean over the seeds).",
        "",
        "| variant | parameters | ms per test canvas | training s (CPU s) | mAP@0.5 | mAP@0.7 | bin shift / RoI "
        "| bins outside |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, per_seed in runs.items():
        drift = ([f"{np.mean(values(per_seed, 'drift')):.3f}", f"{100 * np.mean(values(per_seed, 'outside')):.1f}%"]
                 if "drift" in first_of(per_seed) else ["–", "–"])
        lines.append(f"| {variant} | {first_of(per_seed)['params']:,} "
                     f"| {1000 * np.mean(values(per_seed, 'seconds_per_canvas')):.1f} "
                     f"| {np.mean(values(per_seed, 'training_seconds')):.0f} "
                     f"({np.mean(values(per_seed, 'training_cpu_seconds')):.0f}) "
                     f"| {with_seeds(values(per_seed, 'map50'))} | {with_seeds(values(per_seed, 'map70'))} | "
                     + " | ".join(drift) + " |")
    return "\n".join(lines) + "\n"


def first_of(per_seed):
    return next(iter(per_seed.values()))


def write_figure(options, runs, test, docs):
    """The part-offsets figure of the first seed's deformable R-FCN, from its saved weights."""
    if "rfcn_droi" not in runs:
        return None
    seed = options.seeds[0]
    detector = Detector(**DETECTORS["rfcn_droi"], seed=seed)
    detector.load(run_folder(options, "rfcn_droi", seed) / "weights.npz")
    return detection_viz.plot_part_offsets(detector, test, anchor_grid(detect.CANVAS_SIZE),
                                           Path(docs) / f"{FIGURE}{suffix(options)}.png")


def write_results(options, runs, test, ground_truth, command):
    """docs/results_detection.md and .json (and the figure) from the finished runs."""
    docs = Path(options.docs)
    docs.mkdir(parents=True, exist_ok=True)
    samples = bootstrap_maps(runs, options, ground_truth, len(test.images))
    first = first_of(next(iter(runs.values())))
    text = results_markdown(runs, samples, command, first, len(test.images))
    shift = write_figure(options, runs, test, docs)
    if shift is not None:
        text += (f"\n![part offsets]({FIGURE}{suffix(options)}.png)\n\n"
                 "The figure: the best detection on each of the first six "
                 f"test canvases with one scoring at least 0.5, from R-FCN with deformable RoI pooling "
                 f"(seed {options.seeds[0]}); its title gives the shift over those detections "
                 f"(mean Euclidean bin shift {shift:.1f} px).\n")
    write_atomically(docs / f"{RESULTS}{suffix(options)}.md", text)
    table = {variant: {key: values(per_seed, key) for key in ("map50", "map70")} for variant, per_seed in runs.items()}
    write_atomically(docs / f"{RESULTS}{suffix(options)}.json", json.dumps(table, indent=2) + "\n")
    print(text, flush=True)


def main(argv=None):
    """Train the runs of --rows × --heads × --seeds that are not stored, then write the results
    from every finished run. argv: the arguments after `detection`."""
    options = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    defaults = dict(OFFSET_LR_MULTIPLIERS)
    if options.offset_lr_multiplier is not None:  # the detectors read the multipliers when built
        OFFSET_LR_MULTIPLIERS.update(dict.fromkeys(OFFSET_LR_MULTIPLIERS, options.offset_lr_multiplier))
    try:
        run_table(options, " ".join(["python -m dcn_numba.experiment detection", *argv]))
    finally:
        OFFSET_LR_MULTIPLIERS.update(defaults)


def run_table(options, command):
    keep_freed_memory()
    speed.switch_on()
    mnist = load_mnist()
    train_canvases = detect.parse_args([]).train_canvases
    train = make_canvases(mnist.train, train_canvases, detect.TRAIN_CANVAS_SEED, detect.CANVAS_SIZE)
    test = make_canvases(mnist.test, options.test_canvases, detect.TEST_CANVAS_SEED, detect.CANVAS_SIZE)
    ground_truth = detect.ground_truth_records(test)
    data = (train, test, anchor_grid(detect.CANVAS_SIZE), ground_truth)
    for key, suffix_, _ in ROWS:  # row by row, so that an interrupted table has whole rows
        for head in options.heads:
            variant = variant_name(head, suffix_)
            for seed in options.seeds:
                if key in options.rows and variant is not None:
                    get_run(options, variant, seed, data)
    runs = finished_runs(options)
    if runs:
        write_results(options, runs, test, ground_truth, command)


if __name__ == "__main__":
    main()
