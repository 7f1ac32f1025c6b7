"""Train and evaluate the toy detector with and without deformable parts: the paper's table.

    python -m dcn_numba.detect --out runs/detect             (also `make detect`)
    python -m dcn_numba.detect --seeds 0 1 2 --variants all --table docs/results_detection.md

Every variant of `detector.Detector` (head 2fc or rfcn; deformable convolution in the backbone or
not; deformable RoI pooling or not) trains on the same canvases for the same number of steps,
from the same seed, and is scored on the same test canvases (`canvases.make_canvases`, train
canvases from the training digits, test canvases from the test digits, each from a fixed seed).
--out is one run (`dcn_numba.runs.outputs`): a folder holding another run is refused unless
--resume continues it (from its checkpoint, saved at most every --checkpoint-seconds and after
each variant; the result is the one an uninterrupted run gives) or --overwrite replaces it. Every
file is written to a temporary name and renamed into place: per variant its weights
(<variant>.npz) and test detections (detections_<variant>.json), the test ground truth once
(ground_truth.json), when a deformable R-FCN variant was trained the part-offsets figure
(part_offsets.png), and, last, metrics.json, the mark of a finished run (per variant: map50 and
map70, VOC 11-point, as fractions; the all-point and COCO AP; parameter count; seconds per test
image; settings and the loss history). With --seeds, each seed is a run in <out>/seed<n> and
--table gets the mean ± standard deviation over the seeds; every folder and the table's path are
checked before any seed trains.

It runs on the CPU kernels (RoI sampling and NMS are NumPy on the host). `make detect` runs it with
one Numba and one BLAS thread (NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1), which on the shared
2-core machine was five times faster than two threads each (see the Makefile).
"""

import argparse
import os
import sys
import time

import numba
import numpy as np
from tqdm.auto import tqdm

from dcn_numba.apps.detection import viz as detection_viz
from dcn_numba.engine.autograd import Tensor
from dcn_numba.data.canvases import make_canvases
from dcn_numba import speed
from dcn_numba.runtime.settings import keep_freed_memory, leave_the_cores_to_the_kernels
from dcn_numba.data.mnist import load_mnist
from dcn_numba.apps.detection.detector import (VARIANTS as DETECTORS, Detector, anchor_grid, batch_rois, detect,
                                               detection_loss, sample_rois)
from dcn_numba.apps.detection.evaluation import detection_metrics
from dcn_numba.engine.optim import Adam, CosineSchedule
from dcn_numba.runs.checkpoint import CHECKPOINT, Checkpoint, Checkpoints, capture, restore
from dcn_numba.runs.options import (add_output_options, check_fits_in_memory, positive_float, positive_int,
                                    run_settings, seed_int, with_seeds)
from dcn_numba.runs.outputs import (MARKER, OutputError, check_output_file, check_output_folder, open_run,
                                    write_atomically)

# The eight of the paper's first table: no deformable part, deformable res5a–c, deformable RoI
# pooling, both (`detector.VARIANTS` names the rest, which the detection experiment trains).
VARIANTS = {f"{head}{suffix}": DETECTORS[f"{head}{suffix}"]
            for head in ("2fc", "rfcn") for suffix in ("", "_dconv3", "_droi", "_both")}
DEFAULT_VARIANTS = ["2fc", "2fc_droi", "rfcn", "rfcn_droi"]
# The canvases do not depend on --seed: every seed trains on the same data and is tested on the
# same canvases, so the spread over seeds is that of the training alone.
TRAIN_CANVAS_SEED = 11
TEST_CANVAS_SEED = 12
CANVAS_SIZE = 64
CANVAS_BYTES = CANVAS_SIZE * CANVAS_SIZE * 4  # one float32 canvas
COMMAND = "python -m dcn_numba.detect"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.detect",
        description="Train toy detectors on digit canvases with and without deformable convolution "
                    "and deformable RoI pooling; report VOC mAP at IoU 0.5 and 0.7.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS) + ["all"], default=DEFAULT_VARIANTS,
                        help="which detectors to train ('all': the eight of the table)")
    parser.add_argument("--steps", type=positive_int, default=600, help="training steps per variant")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="canvases per training step")
    parser.add_argument("--rois-per-image", type=positive_int, default=64,
                        help="RoIs sampled per canvas, a quarter of them foreground")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate of Adam (cosine decay)")
    parser.add_argument("--train-canvases", type=positive_int, default=4000, help="number of training canvases")
    parser.add_argument("--test-canvases", type=positive_int, default=300, help="number of test canvases")
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the weights and the RoI and batch draws")
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=None,
                        help="run once per seed into <out>/seed<n> and tabulate mean ± std")
    parser.add_argument("--table", default=None, help="markdown file for the table (with --seeds)")
    parser.add_argument("--data", default=None, help="folder of MNIST IDX files (default: the embedded digits)")
    add_output_options(parser, default="runs/detect")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if "all" in args.variants:
        args.variants = list(VARIANTS)
    if args.table is not None and args.seeds is None:
        parser.error("--table needs --seeds (the table is the mean ± std over seeds)")
    for option, count in (("--train-canvases", args.train_canvases), ("--test-canvases", args.test_canvases)):
        check_fits_in_memory(parser, option, count, CANVAS_BYTES, f"{CANVAS_SIZE}×{CANVAS_SIZE} float32 canvases")
    return args


def run_identity(args):
    """The settings that define one seed's run (what --resume must find again)."""
    return {name: value for name, value in run_settings(args).items() if name not in ("seeds", "table")}


def load_data(args):
    """MNIST from args.data; a folder that cannot be read exits with an error naming --data."""
    try:
        return load_mnist(args.data)
    except (OSError, ValueError) as error:
        build_parser().error(f"--data {args.data}: {error}")


def training_batch(train, args, anchors, rng, order):
    """(images, RoI rows, labels, box targets) of one training step, and the canvases left in
    `order`: canvases drawn without replacement (reshuffled when fewer than a batch are left),
    RoIs sampled per canvas from the anchors and its ground-truth boxes."""
    if len(order) < args.batch_size:
        order = np.concatenate([order, rng.permutation(len(train.images))])
    chosen, order = order[:args.batch_size], order[args.batch_size:]
    rois, labels, targets = [], [], []
    for n in chosen:
        candidates = np.concatenate([anchors, train.boxes[n]])
        r, l, t = sample_rois(candidates, train.boxes[n], train.labels[n], args.rois_per_image, rng)
        rois.append(r)
        labels.append(l)
        targets.append(t)
    return (train.images[chosen], batch_rois(rois), np.concatenate(labels), np.concatenate(targets)), order


def train_variant(variant, train, anchors, args, checkpoints=None, done=None):
    """Train one variant; returns the detector and its loss history.

    With `checkpoints` (runs.checkpoint.Checkpoints) the training state is saved at most every
    args.checkpoint_seconds, together with `done` (the metrics of the variants finished before),
    and a saved state of this variant is continued from: the result is the uninterrupted one."""
    detector = Detector(**DETECTORS[variant], seed=args.seed)
    optimizer = Adam(detector.parameters(), lr=args.lr)
    schedule = CosineSchedule(optimizer, args.steps, warmup_steps=min(50, args.steps // 10))
    rng = np.random.default_rng(args.seed)
    history = {"loss": [], "classification_loss": [], "box_loss": []}
    order = np.array([], dtype=np.int64)  # the canvases still to draw before the next reshuffle
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None and saved.values["command"].get("variant") == variant:
        arrays, values = restore(saved, detector, optimizer, schedule, rng)
        history, order = values["history"], arrays["order"]

    def save(force=False):
        if checkpoints is not None:
            values = dict(done=done or {}, variant=variant, history=history)
            checkpoints.save(lambda: capture(detector, optimizer, schedule, rng, {"order": order}, values), force)

    progress = tqdm(total=args.steps, initial=len(history["loss"]), desc=f"{variant:>11}", unit="step")
    detector.train()
    while len(history["loss"]) < args.steps:
        (images, rois, labels, targets), order = training_batch(train, args, anchors, rng, order)
        schedule.step()
        logits, deltas = detector(Tensor(images), rois)
        loss, classification, box = detection_loss(logits, deltas, labels, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["loss"].append(loss.item())
        history["classification_loss"].append(classification.item())
        history["box_loss"].append(0.0 if box is None else box.item())
        save()
        progress.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
        progress.update()
    progress.close()
    save(force=True)
    return detector, history


def detection_records(detections, first_image=0):
    """detect()'s per-image results as {"image", "label", "score", "box"} records."""
    return [dict(image=first_image + b, label=int(label), score=float(score), box=[float(v) for v in box])
            for b, (boxes, labels, scores) in enumerate(detections)
            for box, label, score in zip(boxes, labels, scores)]


def ground_truth_records(canvases):
    return [dict(image=n, label=int(label), box=[float(v) for v in box])
            for n, (boxes, labels) in enumerate(zip(canvases.boxes, canvases.labels))
            for box, label in zip(boxes, labels)]


def evaluate(detector, test, anchors, batch_size=10):
    """(detection records on the test canvases, seconds per canvas of detection)."""
    records, seconds = [], 0.0
    for start in range(0, len(test.images), batch_size):
        began = time.perf_counter()
        found = detect(detector, test.images[start:start + batch_size], anchors)
        seconds += time.perf_counter() - began
        records += detection_records(found, start)
    return records, seconds / len(test.images)


def run(args, folder=None):
    """Train and evaluate every variant of args on one seed into the run folder args.out (or
    `folder`, a Run the caller opened); returns the metrics. A finished run resumed is read back."""
    folder = folder or open_run(args.out, COMMAND, run_identity(args), args.resume, args.overwrite)
    if folder.finished:
        return folder.metrics()
    # The engine holds BLAS to one thread from its first deformable kernel on; holding it from the
    # first step makes every product of every variant, resumed or not, the same one.
    leave_the_cores_to_the_kernels()
    mnist = load_data(args)
    train = make_canvases(mnist.train, args.train_canvases, TRAIN_CANVAS_SEED, CANVAS_SIZE)
    test = make_canvases(mnist.test, args.test_canvases, TEST_CANVAS_SEED, CANVAS_SIZE)
    anchors = anchor_grid(CANVAS_SIZE)
    checkpoints = Checkpoints(folder, args.checkpoint_seconds)
    saved = checkpoints.load()
    done = dict(saved.values["command"]["done"]) if saved is not None else {}
    ground_truth = ground_truth_records(test)
    folder.write_json("ground_truth.json", ground_truth, indent=None)
    metrics, detectors = {}, {}
    for variant in args.variants:
        if variant in done:  # trained and evaluated before the run was interrupted
            detectors[variant] = Detector(**VARIANTS[variant], seed=args.seed).load(folder.folder / f"{variant}.npz")
            metrics[variant] = done[variant]
            continue
        began = time.perf_counter()
        detector, history = train_variant(variant, train, anchors, args, checkpoints, done)
        training_seconds = time.perf_counter() - began
        detector.save(folder.file(f"{variant}.npz"))
        detections, seconds_per_image = evaluate(detector, test, anchors)
        folder.write_json(f"detections_{variant}.json", detections, indent=None)
        detectors[variant] = detector
        metrics[variant] = done[variant] = dict(
            detection_metrics(detections, ground_truth),
            **VARIANTS[variant],
            params=int(detector.num_parameters()),
            seconds_per_image=seconds_per_image,
            training_seconds=training_seconds,
            steps=args.steps, batch_size=args.batch_size, rois_per_image=args.rois_per_image, lr=args.lr,
            seed=args.seed, train_canvases=args.train_canvases, test_canvases=args.test_canvases,
            test_digits=len(ground_truth), anchors=len(anchors), history=history,
        )
        checkpoints.save(lambda: Checkpoint({}, dict(command=dict(done=done))), force=True)
        print(f"{variant}: mAP@0.5 {metrics[variant]['map50']:.3f}  mAP@0.7 {metrics[variant]['map70']:.3f}")
    deformable_rfcn = [v for v in detectors if VARIANTS[v]["head"] == "rfcn" and VARIANTS[v]["deformable_roi"]]
    if deformable_rfcn:
        folder.write("part_offsets.png", lambda file: detection_viz.plot_part_offsets(
            detectors[deformable_rfcn[-1]], test, anchors, file))
    folder.finish(metrics, leftovers=[CHECKPOINT])
    return metrics


def format_table(metrics):
    """The table printed at the end of a run, one row per variant."""
    lines = [f"{'variant':<12}{'mAP@0.5':>9}{'mAP@0.7':>9}{'COCO AP':>9}{'params':>10}{'ms/image':>10}"]
    for variant, m in metrics.items():
        lines.append(f"{variant:<12}{m['map50']:>9.3f}{m['map70']:>9.3f}{m['coco_ap']:>9.3f}"
                     f"{m['params']:>10,}{1000 * m['seconds_per_image']:>10.1f}")
    return "\n".join(lines)


ROWS = (("none", "", "no"), ("deformable convolution", "_dconv3", "conv"),
        ("deformable RoI pooling", "_droi", "RoI pooling"), ("both", "_both", "both"))


def markdown_table(runs, command):
    """The results file: how it was made, the settings, and the paper's table.

    runs: {seed: metrics of run()}, every run with the same variants and settings.
    """
    first = next(iter(runs.values()))
    settings = next(iter(first.values()))

    def cell(variant, key):
        if variant not in first:
            return "–"
        return with_seeds([metrics[variant][key] for metrics in runs.values()])

    lines = [
        "<!-- Written by dcn_numba.detect; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}`: seeds {', '.join(str(s) for s in runs)}, on the CPU ({os.cpu_count()} cores, "
        f"{numba.get_num_threads()} Numba thread{'s' if numba.get_num_threads() > 1 else ''}). "
        f"Each seed trains every variant for {settings['steps']} steps of {settings['batch_size']} canvases "
        f"({settings['rois_per_image']} sampled RoIs each; Adam, peak learning rate {settings['lr']}, cosine decay) "
        f"drawn from {settings['train_canvases']:,} training canvases, and tests it on "
        f"{settings['test_canvases']:,} test canvases ({settings['test_digits']:,} digits), with "
        f"{settings['anchors']:,} anchor boxes per canvas as proposals. mAP in %, PASCAL VOC 11-point rule "
        "(the paper's), mean ± standard deviation over the seeds (each seed's value).",
        "",
        "| deformable | 2fc mAP@0.5 | 2fc mAP@0.7 | R-FCN mAP@0.5 | R-FCN mAP@0.7 |",
        "|---|---|---|---|---|",
    ]
    for name, suffix, _ in ROWS:
        lines.append(f"| {name} | {cell('2fc' + suffix, 'map50')} | {cell('2fc' + suffix, 'map70')} "
                     f"| {cell('rfcn' + suffix, 'map50')} | {cell('rfcn' + suffix, 'map70')} |")
    lines += [
        "",
        "| variant | parameters | ms per test canvas | all-point mAP@0.5 | all-point mAP@0.7 | COCO AP@[.5:.95] |",
        "|---|---|---|---|---|---|",
    ]
    for variant in first:
        per_seed = [metrics[variant] for metrics in runs.values()]
        lines.append(f"| {variant} | {per_seed[0]['params']:,} "
                     f"| {1000 * np.mean([m['seconds_per_image'] for m in per_seed]):.1f} "
                     f"| {cell(variant, 'map50_all')} | {cell(variant, 'map70_all')} | {cell(variant, 'coco_ap')} |")
    return "\n".join(lines) + "\n"


def open_seed_runs(args):
    """{seed: Run} of every seed of --seeds, each in <out>/seed<n>, all checked before any trains."""
    out = check_output_folder(args.out, "--out")
    if (out / MARKER).is_file():
        raise OutputError(f"--out {out} holds a run of one seed; with --seeds each seed is a run in "
                          "<out>/seed<n>: choose another --out")
    runs = {}
    for seed in args.seeds:
        if (out / f"seed{seed}").is_symlink():
            raise OutputError(f"--out {out}: {out / f'seed{seed}'} is a symbolic link; each seed's run is "
                              "written inside --out, never through a link")
        args.seed = seed
        runs[seed] = open_run(out / f"seed{seed}", COMMAND, run_identity(args), args.resume, args.overwrite)
    return runs


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    speed.switch_on()
    try:
        if args.seeds is None:
            metrics = run(args)
            print(format_table(metrics))
            print(f"outputs in {args.out}/")
            return
        table_path = None if args.table is None else check_output_file(args.table, "--table")
        runs = {}
        for seed, folder in open_seed_runs(args).items():
            args.seed = seed
            runs[seed] = run(args, folder)
            print(f"seed {seed}\n{format_table(runs[seed])}")
    except OutputError as error:
        build_parser().error(str(error))
    if table_path is not None:
        argv = sys.argv[1:] if argv is None else argv
        table = markdown_table(runs, " ".join(["python -m dcn_numba.detect", *argv]))
        write_atomically(table_path, lambda file: file.write(table.encode()))
        print(table)


if __name__ == "__main__":
    main()
