"""The scaled-digits experiment over several seeds: one command per table, each written as a
markdown file under docs/ that the README embeds.

    python -m dcn_numba.experiment scales --seeds 0 1 2            docs/results_mnist.md
    python -m dcn_numba.experiment layers                          docs/results_layers.md
    python -m dcn_numba.experiment dilation                        docs/results_dilation.md
    python -m dcn_numba.experiment modulation                      docs/results_modulation.md
    python -m dcn_numba.experiment receptive-field                 docs/results_receptive_field.md
    python -m dcn_numba.experiment complexity                      docs/results_complexity.md
    python -m dcn_numba.experiment global-pooling                  docs/results_global_pooling.md
    python -m dcn_numba.experiment all                             every table in turn

(`python -m dcn_numba.experiment segmentation` is the segmentation toy's table, in
dcn_numba.apps.segmentation.experiment.) Every table that trains also records each run's accuracy
on its setting's test digits in docs/results_mnist.json, {"setting/variant": {"accuracy": [one
per seed], "seeds": [...]}}, beside the other tables' entries.

A table needs training runs, one per (setting, variant, seed), each the training command
(`dcn_numba.train`, same options, same defaults) with one variant, in its own folder
<runs>/<setting>/seed<n>/<variant>. A run whose metrics.json exists with the same settings is
read, not repeated: the tables share their runs. Each run folder is a run of the training command
(`dcn_numba.runs.outputs`): --resume continues one that was interrupted, --overwrite replaces one
made with other settings. Every number in a results file is measured by this command; the file
says so, and how it was produced; the file is written atomically.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.apps.mnist import global_pooling, train
from dcn_numba.apps.mnist import viz
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba import speed
from dcn_numba.runtime.settings import keep_freed_memory
from dcn_numba.data.mnist import scaled_digits, subset
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.engine.optim import Adam
from dcn_numba.apps.mnist.receptive_field import slope_and_ratio
from dcn_numba.runs.options import mean_std, seed_int, threads, with_seeds
from dcn_numba.runs.outputs import OutputError, check_output_file, json_bytes, write_atomically

# The runs each table reads: (setting, variant).
TABLE_RUNS = {
    "scales": [("seen", "regular"), ("seen", "deformable"), ("unseen", "regular"), ("unseen", "deformable")],
    "modulation": [("seen", "deformable"), ("seen", "modulated")],
    "layers": [("seen", "regular"), ("seen", "deformable-last1"), ("seen", "deformable-last2"),
               ("seen", "deformable")],
    "dilation": [("seen", "regular"), ("seen", "dilated2"), ("seen", "dilated3"), ("seen", "deformable")],
    "receptive-field": [("seen", "regular"), ("seen", "deformable"), ("seen", "modulated"),
                        ("unseen", "regular"), ("unseen", "deformable")],
    "complexity": [],
    "global-pooling": [(global_pooling.SETTING, variant) for variant in global_pooling.VARIANTS],
}
TABLE_FILES = {"scales": "results_mnist.md", **{t: f"results_{t.replace('-', '_')}.md" for t in TABLE_RUNS
                                                 if t != "scales"}}
VARIANT_NAMES = {
    "regular": "regular (0 deformable layers)",
    "deformable-last1": "deformable layer 3 (1 layer)",
    "deformable-last2": "deformable layers 2–3 (2 layers)",
    "deformable": "deformable layers 1–3 (3 layers)",
    "modulated": "modulated (v2) layers 1–3",
    "dilated2": "dilated, dilation 2, layers 1–3",
    "dilated3": "dilated, dilation 3, layers 1–3",
}
FIGURE = "receptive_field.png"
ACCURACY_FILE = "results_mnist.json"
TIMING_BATCH, TIMING_ROUNDS = 64, 7


def parse_args(argv=None):
    """(experiment options, the remaining arguments, handed to the training command)."""
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.experiment",
        description="Train (or reuse) the runs a table needs over several seeds and write the table. "
                    "Other options are the training command's (see python -m dcn_numba.train --help). "
                    "The segmentation table has options of its own: python -m dcn_numba.experiment "
                    "segmentation --help.",
    )
    parser.add_argument("table", choices=[*TABLE_RUNS, "all"])
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/experiment", help="folder of the training runs")
    parser.add_argument("--docs", default="docs", help="folder the results files are written to")
    return parser.parse_known_args(argv)


def run_folder(options, setting, variant, seed):
    return Path(options.runs) / setting / f"seed{seed}" / variant


def stored_run(folder, args, variant, mnist):
    """The metrics of the run in `folder` when it was made with the settings of `args`, else None."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text()).get(variant)
    expected = dict(setting=args.setting, epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                    lr=args.lr, spread_digits=args.spread_digits, canvas_size=train.CANVAS_SIZE,
                    scale_range=list(train.SCALE_RANGE),
                    train_digits=min(args.train_size or len(mnist.train.labels), len(mnist.train.labels)),
                    test_digits=min(args.test_size or len(mnist.test.labels), len(mnist.test.labels)))
    if metrics is None or any(metrics.get(key) != value for key, value in expected.items()):
        return None
    # Runs measured before background units kept off the map's border lack the count: measure again.
    if any("background_units" not in field for field in metrics["receptive_field"].values()):
        return None
    return metrics


def get_runs(options, train_argv, pairs, mnist):
    """{(setting, variant): {seed: metrics}}: every run of `pairs` × options.seeds, trained
    unless a run with the same settings is stored."""
    runs = {}
    for setting, variant in pairs:
        for seed in options.seeds:
            folder = run_folder(options, setting, variant, seed)
            args = train.parse_args(train_argv + ["--setting", setting, "--variants", variant,
                                                  "--seed", str(seed), "--out", str(folder)])
            metrics = stored_run(folder, args, variant, mnist)
            if metrics is None:
                print(f"training {variant} on {setting} scales, seed {seed}", flush=True)
                metrics = train.run(args, mnist)[variant]
            runs.setdefault((setting, variant), {})[seed] = metrics
    return runs


def header(command, runs):
    """The opening lines of a results file: who wrote it and with which settings."""
    first = next(iter(next(iter(runs.values())).values()))
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    return [
        "<!-- Written by dcn_numba.experiment; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}`: seeds {', '.join(map(str, seeds))}, on the {first['device'].upper()} "
        f"({os.cpu_count()} cores, {threads()}). Every run trains one variant for {first['epochs']} epochs (batch "
        f"{first['batch_size']}, Adam, peak learning rate {first['lr']}, cosine decay) on "
        f"{first['train_digits']:,} training digits scaled about the image centre onto a "
        f"{first['canvas_size']}×{first['canvas_size']} canvas: {training_scales(runs, first)}. "
        f"Test: {first['test_digits']:,} test digits, all of them at each "
        "factor ×f (factor 1 is the test digit unchanged, padded), and, for the setting's test "
        "accuracy, each at a factor drawn once from the setting's training range.",
        "",
    ]


def training_scales(runs, first):
    """How the runs' training digits were scaled, by their settings."""
    low, high = first["scale_range"]
    if {setting for setting, _ in runs} == {"seen-log"}:
        return (f"by a factor drawn for every digit of every batch, log-uniform in {low}–{high} (seen "
                "scales drawn log-uniformly)")
    return (f"by a factor drawn for every digit of every batch, uniform in {low}–{high} (seen scales), "
            "or by 1 (unseen scales)")


def factors_of(runs):
    return list(next(iter(next(iter(runs.values())).values()))["accuracy_by_scale"])


def per_seed(runs, key, *path):
    """Every seed's value of metrics[key][path...] of one (setting, variant)."""
    values = []
    for metrics in runs.values():
        value = metrics[key]
        for step in path:
            value = value[step]
        values.append(value)
    return values


def ink_cut_off(digits, factor):
    """Per digit, the fraction of its ink that falls off the canvas at `factor`: its ink on the
    canvas against its ink on a canvas large enough for the whole 28×28 image scaled."""
    whole = int(np.ceil(factor * max(digits.images.shape[2:]))) + 2
    on_canvas = scaled_digits(digits, factor, canvas_size=train.CANVAS_SIZE).images.sum(axis=(1, 2, 3))
    everything = scaled_digits(digits, factor, canvas_size=max(whole, train.CANVAS_SIZE)).images.sum(axis=(1, 2, 3))
    return 1 - on_canvas / np.maximum(everything, 1e-12)


def scales_table(runs, command, test):
    """The main table: both settings, accuracy per factor, and what the canvas cuts off the
    `test` digits (the runs' test digits) at the largest factor."""
    factors = factors_of(runs)
    cut = ink_cut_off(test, float(factors[-1]))
    lines = header(command, runs) + [
        "Accuracy in %, mean ± standard deviation over the seeds; the gain row is deformable minus "
        f"regular, seed by seed. At ×{factors[-1]} the canvas cuts off {100 * cut.mean():.2f}% of a "
        f"test digit's ink on average ({100 * np.mean(cut > 0.01):.1f}% of the digits lose more than 1%, "
        f"none more than {100 * cut.max():.1f}%).",
        "",
    ]
    for setting, title in (("seen", "Seen scales (trained on factors in the test range)"),
                           ("unseen", "Unseen scales (trained at factor 1 only)")):
        regular, deformable = runs[(setting, "regular")], runs[(setting, "deformable")]
        lines += [f"**{title}**", "",
                  "| variant | setting's test | " + " | ".join(f"×{f}" for f in factors) + " |",
                  "|---|---" + "|---" * len(factors) + "|"]
        for variant, variant_runs in (("regular", regular), ("deformable", deformable)):
            cells = [mean_std(per_seed(variant_runs, "test_accuracy"))]
            cells += [mean_std(per_seed(variant_runs, "accuracy_by_scale", f)) for f in factors]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        gains = [mean_std(np.subtract(per_seed(deformable, "test_accuracy"), per_seed(regular, "test_accuracy")))]
        gains += [mean_std(np.subtract(per_seed(deformable, "accuracy_by_scale", f),
                                       per_seed(regular, "accuracy_by_scale", f))) for f in factors]
        lines += ["| gain (points) | " + " | ".join(gains) + " |", ""]
        for variant, variant_runs in (("regular", regular), ("deformable", deformable)):
            each = ", ".join(f"{100 * v:.1f}" for v in per_seed(variant_runs, "test_accuracy"))
            lines.append(f"Each seed's setting's test accuracy, {variant}: {each}.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def ablation_table(runs, command, variants, intro):
    """Rows of seen-scale runs: parameters, setting's test accuracy with every seed, the
    accuracy at the smallest, unit and largest factor, and the object units' spread ratio."""
    factors = factors_of(runs)
    low, high = factors[0], factors[-1]
    lines = header(command, runs) + [
        intro + f" Seen scales. Accuracy in %, mean ± standard deviation over the seeds (each "
        f"seed's value); spread ratio: the spread of the 729 sampling points of a unit on the digit "
        f"at ×{high} over that at ×{low} (1 for a fixed grid; the digit grows "
        f"{float(high) / float(low):g}×).",
        "",
        f"| variant | parameters | setting's test accuracy | ×{low} | ×1.0 | ×{high} | spread ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        variant_runs = runs[("seen", variant)]
        ratio = [m["receptive_field"][high]["object"] / m["receptive_field"][low]["object"]
                 for m in variant_runs.values()]
        cells = [f"{next(iter(variant_runs.values()))['params']:,}",
                 with_seeds(per_seed(variant_runs, "test_accuracy")),
                 *(mean_std(per_seed(variant_runs, "accuracy_by_scale", f)) for f in (low, "1.0", high)),
                 mean_std(ratio, scale=1, digits=2)]
        lines.append(f"| {VARIANT_NAMES[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread_rows(runs):
    """Per (setting, variant), unit kind and weighting: (label, spreads per seed per factor)."""
    for (setting, variant), variant_runs in runs.items():
        for kind in ("object", "background"):
            for weighting, suffix in (("points", ""), ("gradient-weighted", "_weighted")):
                label = f"{setting} | {variant} | {kind} | {weighting}"
                values = [[m["receptive_field"][f][kind + suffix] for f in m["receptive_field"]]
                          for m in variant_runs.values()]
                yield label, np.array(values, dtype=np.float64)  # None (no unit measured) → NaN


def receptive_field_table(runs, command):
    factors = factors_of(runs)
    first = next(iter(next(iter(runs.values())).values()))
    lines = header(command, runs) + [
        f"Spread, in input pixels, of the effective sampling locations of one unit of the last "
        f"stacked layer, traced back through the three layers (729 points), on {first['spread_digits']} "
        "test digits at each factor: a unit on the digit (the cell nearest to its ink centre) and one "
        "on the background, at least 2 cells from the map's border (nearer, the traced grid would be "
        "clipped by the border; the last line counts the digits that have one); the points "
        "themselves, or each weighted by the norm of the gradient of the "
        "unit's response with respect to that sampling location (as DCNv2 weighs effective sampling "
        "locations). Spread: root-mean-square distance from the (weighted) centre of the points. "
        f"Ratio: spread at ×{factors[-1]} over spread at ×{factors[0]} (the digit grows "
        f"{float(factors[-1]) / float(factors[0]):g}×); slope: least-squares pixels of spread per unit "
        "of factor, over all factors. Mean ± standard deviation over the seeds (each seed's value for "
        "the ratio).",
        "",
        "| setting | variant | unit | weighting | " + " | ".join(f"×{f}" for f in factors)
        + " | ratio | slope |",
        "|---|---|---|---|" + "---|" * len(factors) + "---|---|",
    ]
    numeric = [float(f) for f in factors]
    for label, values in spread_rows(runs):
        cells = [mean_std(values[:, i], scale=1, digits=2) if np.isfinite(values[:, i]).all() else "–"
                 for i in range(len(factors))]
        if np.isfinite(values).all():
            slopes, ratios = zip(*(slope_and_ratio(numeric, seed_values) for seed_values in values))
            cells += [with_seeds(ratios, scale=1, digits=2), mean_std(slopes, scale=1, digits=2)]
        else:
            cells += ["–", "–"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"×{f} {first['receptive_field'][f]['background_units']}" for f in factors)
    lines += ["", f"Digits with a background unit away from the border, of {first['spread_digits']}: {counts}.",
              "", f"![sampling points]({FIGURE})", ""]
    return "\n".join(lines)


def time_variants(variants, canvas_size, batch_size=TIMING_BATCH, rounds=TIMING_ROUNDS):
    """Median seconds of one forward pass (evaluation mode) and of one training step (forward,
    backward, Adam) per variant, on a batch of random images, the variants timed in turns so
    that a change in the machine's load touches all of them alike."""
    rng = np.random.default_rng(0)
    images = rng.random((batch_size, 1, canvas_size, canvas_size)).astype(np.float32)
    labels = rng.integers(0, 10, batch_size)
    nets = {v: MnistNet(**train.VARIANTS[v]) for v in variants}
    optimizers = {v: Adam(net.parameters()) for v, net in nets.items()}
    times = {v: {"forward": [], "step": []} for v in variants}
    for _ in range(rounds + 1):  # the first round compiles and warms up: not counted
        for variant, net in nets.items():
            net.eval()
            start = time.perf_counter()
            with no_grad():
                net(Tensor(images))
            forward = time.perf_counter() - start
            net.train()
            start = time.perf_counter()
            loss = F.cross_entropy(net(Tensor(images)), labels)
            optimizers[variant].zero_grad()
            loss.backward()
            optimizers[variant].step()
            times[variant]["forward"].append(forward)
            times[variant]["step"].append(time.perf_counter() - start)
    return {v: {kind: float(np.median(t[1:])) for kind, t in per.items()} for v, per in times.items()}


def complexity_table(command, variants=("regular", "dilated2", "deformable-last1", "deformable-last2",
                                        "deformable", "modulated")):
    times = time_variants(variants, train.CANVAS_SIZE)
    base = times["regular"]
    lines = [
        "<!-- Written by dcn_numba.experiment; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}` on the CPU ({os.cpu_count()} cores, {threads()}): the median of "
        f"{TIMING_ROUNDS} timings of a forward pass (evaluation mode) and of a training step "
        f"(forward, backward, Adam) on a batch of {TIMING_BATCH} {train.CANVAS_SIZE}×"
        f"{train.CANVAS_SIZE} images, the variants timed in turns in the same run. Branch parameters: "
        "those of the offset (and mask) branches.",
        "",
        "| variant | parameters | branch parameters | forward ms / batch | training step ms | step vs regular |",
        "|---|---|---|---|---|---|",
    ]
    for variant in variants:
        net = MnistNet(**train.VARIANTS[variant])
        total, branch = net.num_parameters(), train.branch_parameters(net)
        lines.append(f"| {VARIANT_NAMES[variant]} | {total:,} | {branch:,} ({100 * branch / total:.0f}%) | "
                     f"{1000 * times[variant]['forward']:.1f} | {1000 * times[variant]['step']:.1f} | "
                     f"{times[variant]['step'] / base['step']:.2f}× |")
    layer = MnistNet(deformable=True).deform_layers[-1]
    out_channels, in_channels = layer.weight.shape[:2]
    K = layer.weight.shape[2] * layer.weight.shape[3]
    lines += [
        "",
        f"Why the branches weigh so much here: a 3×3 deformable layer's offset branch has "
        f"{in_channels}·{K}·{2 * K} weights (2·{K} offsets per position) beside the layer's own "
        f"{in_channels}·{K}·{out_channels}: {2 * K}/{out_channels} = {2 * K / out_channels:.0%} of it "
        f"with this toy's {out_channels} output channels. The branch does not grow with the output "
        f"channels, so in a layer of 512 output channels, the width of the paper's last ResNet stage, "
        f"it would be {2 * K}/512 = {2 * K / 512:.1%}.",
    ]
    return "\n".join(lines) + "\n"


def write_figure(options, docs, mnist):
    """The sampling-point figure of seed options.seeds[0]'s seen-scale regular and deformable
    nets (and modulated, when trained), from their saved weights."""
    seed = options.seeds[0]
    nets = {}
    for variant in ("regular", "deformable", "modulated"):
        weights = run_folder(options, "seen", variant, seed) / f"{variant}.npz"
        if weights.is_file():
            nets[f"{variant} (seed {seed})"] = MnistNet(**train.VARIANTS[variant]).load(weights)
    write_atomically(docs / FIGURE, lambda file: viz.plot_sampling_locations(nets, mnist.test, "cpu", file))


def record_accuracies(runs, path):
    """Add each run's accuracy on its setting's test digits to the JSON file `path`,
    {"setting/variant": {"accuracy": [per seed], "seeds": [...]}}, keeping other entries."""
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    for (setting, variant), per_seed in runs.items():
        recorded[f"{setting}/{variant}"] = {"accuracy": [m["test_accuracy"] for m in per_seed.values()],
                                            "seeds": list(per_seed)}
    write_atomically(path, lambda file: file.write(json_bytes(recorded) + b"\n"))


def write_table(table, options, train_argv, mnist, command):
    docs = Path(options.docs)
    if table == "complexity":
        text = complexity_table(command)
    else:
        runs = get_runs(options, train_argv, TABLE_RUNS[table], mnist)
        if table == "scales":
            first = next(iter(next(iter(runs.values())).values()))
            text = scales_table(runs, command, subset(mnist.test, first["test_digits"], seed=0))
        elif table == "receptive-field":
            text = receptive_field_table(runs, command)
            write_figure(options, docs, mnist)
        elif table == "global-pooling":
            first = next(iter(next(iter(runs.values())).values()))
            text = global_pooling.table(runs, header(command, runs), lambda *run: run_folder(options, *run),
                                        subset(mnist.test, first["test_digits"], seed=0), with_seeds)
        else:
            variants = [variant for _, variant in TABLE_RUNS[table]]
            text = ablation_table(runs, command, variants, ABLATION_INTROS[table])
        record_accuracies(runs, docs / ACCURACY_FILE)
    write_atomically(docs / TABLE_FILES[table], lambda file: file.write(text.encode()))
    print(text, flush=True)


ABLATION_INTROS = {
    "layers": "How many of the three stacked 3×3 layers are deformable, counted from the last.",
    "dilation": "Deformable against dilated (atrous) convolution in the same three layers: dilation 2 "
                "and 3 are those whose taps stay on the 12×12 map.",
    "modulation": "Deformable convolution v1 against the modulated v2 (a learned mask scales each "
                  "sample), in all three layers.",
}


def main(argv=None):
    options, train_argv = parse_args(argv)
    train.parse_args(train_argv)  # reject bad training options before any work
    keep_freed_memory()
    speed.switch_on()
    argv = sys.argv[1:] if argv is None else argv
    tables = [t for t in TABLE_RUNS] if options.table == "all" else [options.table]
    try:
        for table in tables:
            check_output_file(Path(options.docs) / TABLE_FILES[table], "--docs")
        mnist = train.load_data(train.parse_args(train_argv))
        for table in tables:
            rest = [a for a in argv if a != options.table]
            command = " ".join(["python -m dcn_numba.experiment", table, *rest])
            write_table(table, options, train_argv, mnist, command)
    except OutputError as error:
        raise SystemExit(f"python -m dcn_numba.experiment: error: {error}") from None


if __name__ == "__main__":
    main()
