"""The segmentation toy's tables over several seeds: the paper's mIoU column at toy scale.

    python -m dcn_numba.experiment segmentation --seeds 0 1 2
        → docs/results_segmentation.md, docs/results_segmentation.json, docs/segmentation_sampling.png
    python -m dcn_numba.experiment segmentation --seeds 0 --figure-only
        → docs/segmentation_sampling.png alone, from seed 0's regular and deformable3 runs

Each (variant, seed) of TABLE_VARIANTS is one run of the training command (`segment.run`, the
same options) with one variant, in its own folder <runs>/seed<n>/<variant>. A run whose
metrics.json exists with the same settings is read, not repeated (also one written before run
folders held a run.json), so the table completes over several invocations, each continuing
where the last stopped: a run cut off part-way has no metrics.json and is resumed from its
checkpoint (the command's --resume); one cut off before run folders held a run.json has none and
is trained again. A folder holding a run with other settings is refused, naming them, unless
--overwrite replaces it. The seeds are taken one at a time, every variant of a seed before the
next seed. The results files are written from the runs of the seeds asked for.

Budget (the whole table within 2 hours on 2 cores), with one Numba and one BLAS thread, on the
shared 2-core machine. `python -m dcn_numba.segment --variants regular deformable1 deformable2
deformable3 dilated2 dilated4 dilated6 regular-wide --steps 20 --train-canvases 64 --test-canvases
8` (its ms/step column, the median step of each run) printed 403, 475, 626 and 710 ms for 0 to 3
deformable layers, 366, 361 and 378 ms for dilation 2, 4 and 6 and 455 ms for the widened net,
3.77 s for one step of all eight, under a load average of 9–10 from other jobs. Earlier, at a load
of 1.3, the same steps timed in turns by a scratch script (median of five after a warm-up, the
loss then on transposed scores, some 10 ms slower) took 0.20 s for the regular and each dilated
net, 0.23 s for the widened one and 0.27, 0.31, 0.36 s with 1, 2, 3 deformable layers: 1.98 s for
all eight. TABLE_STEPS = 1000 steps then make 1,980 s = 33 minutes of training per seed; the
digits and canvases (made once per invocation), the evaluation and the spread measurement add
about 2 minutes per seed: 3 seeds take about 1 h 45 min on a quiet machine, and would take about 3
h 10 min as loaded as the first count. Two invocations, one per core, may share the work, each
with its own --seeds (never the same seed in both at once: both would train it). 1000 steps of 16
canvases are 4 passes over the 4,000 training canvases.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from dcn_numba.data.bootstrap import bootstrap_interval
from dcn_numba.data.mnist import load_mnist
from dcn_numba import speed
from dcn_numba.runtime.settings import keep_freed_memory
from dcn_numba.runs.options import add_checkpoint_option, mean_std, threads
from dcn_numba.runs.outputs import OutputError, is_temporary
from dcn_numba.apps.segmentation import segment
from dcn_numba.apps.segmentation.data import CLASSES
from dcn_numba.apps.segmentation.files import write_figure, write_json, write_text
from dcn_numba.apps.segmentation.metrics import image_confusions, mean_iou
from dcn_numba.apps.segmentation.sampling import sampling_figure

TABLE_VARIANTS = ["regular", "deformable1", "deformable2", "deformable3", "dilated2", "dilated4", "dilated6",
                  "regular-wide"]
TABLE_STEPS = 1000
BOOTSTRAP_ROUNDS = 2000
FIGURE = "segmentation_sampling.png"
FIGURE_VARIANTS = ("regular", "deformable3")
NAMES = {
    "regular": "regular",
    "deformable1": "deformable res5c",
    "deformable2": "deformable res5b–c",
    "deformable3": "deformable res5a–c",
    "dilated2": "dilation 2, res5a–c",
    "dilated4": "dilation 4, res5a–c",
    "dilated6": "dilation 6, res5a–c",
    "regular-wide": "regular, widened",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.experiment segmentation",
        description="Train (or reuse) the segmentation runs of the tables over several seeds and write "
                    "docs/results_segmentation.md and .json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[segment.training_options(TABLE_STEPS)],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/segmentation", help="folder of the training runs")
    parser.add_argument("--docs", default="docs", help="folder the results files are written to")
    parser.add_argument("--figure-only", action="store_true",
                        help=f"draw {FIGURE} alone, from the first seed's {' and '.join(FIGURE_VARIANTS)} runs "
                             "(trained unless stored), leaving the results files as they are")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the runs in --runs made with other settings or left unfinished "
                             "(without it an unfinished run is resumed)")
    add_checkpoint_option(parser)
    args = segment.check_training_options(parser, parser.parse_args(argv))
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be >= 0, got {args.seeds}")
    return args


def run_args(options, variant, seed):
    """The training command's arguments of one run of the table: resumed, unless --overwrite."""
    return argparse.Namespace(**{k: v for k, v in vars(options).items() if k not in ("seeds", "runs", "docs")},
                              variants=[variant], seed=seed, out=str(Path(options.runs) / f"seed{seed}" / variant),
                              resume=not options.overwrite)


def stored_run(args):
    """The metrics of the finished run in args.out when it was made with the settings of args,
    else None."""
    path = Path(args.out) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text()).get(args.variants[0])
    if metrics is None or any(metrics.get(key) != value for key, value in segment.settings(args).items()):
        return None
    return metrics


def clear_unmarked_unfinished_run(args):
    """Delete what a run cut off before run folders held a run.json left in args.out: no run.json,
    no metrics.json, only that run's own files (the ground truth, the variant's weights and
    predictions, temporaries). It has no checkpoint, so it is trained again from its first step
    either way; the folder is otherwise refused as holding files that no run wrote."""
    folder = Path(args.out)
    names = {entry.name for entry in folder.iterdir()} if folder.is_dir() else set()
    variant = args.variants[0]
    own = {"ground_truth.npz", f"{variant}.npz", f"predictions_{variant}.npz"}
    if names and all(name in own or is_temporary(name) for name in names):
        for name in names:
            (folder / name).unlink()


def get_runs(options, mnist, variants=None):
    """{variant: {seed: metrics}} of every run of `variants` (None: the table's, TABLE_VARIANTS),
    trained unless stored, on canvases made from the digits of `mnist`."""
    variants = TABLE_VARIANTS if variants is None else variants
    runs, canvases = {variant: {} for variant in variants}, None
    for seed in options.seeds:
        for variant in variants:
            args = run_args(options, variant, seed)
            metrics = stored_run(args)
            if metrics is None:
                print(f"training {variant}, seed {seed}", flush=True)
                clear_unmarked_unfinished_run(args)
                canvases = canvases or segment.make_canvases(args, mnist)
                metrics = segment.run(args, canvases)[variant]
            runs[variant][seed] = metrics
    return runs


def confusions(options, variant, seed):
    """One confusion matrix per test canvas (N, CLASSES, CLASSES) of a stored run, flattened to
    (N, CLASSES²), from its predictions and ground truth."""
    folder = Path(run_args(options, variant, seed).out)
    with np.load(folder / f"predictions_{variant}.npz") as predicted, np.load(folder / "ground_truth.npz") as truth:
        per_canvas = image_confusions(predicted["labels"], truth["labels"], CLASSES)
    return per_canvas.reshape(len(per_canvas), -1)


def miou_of_draw(per_canvas, counts):
    """The mIoU of a bootstrap draw: each canvas's confusion matrix counted as often as drawn."""
    return mean_iou((counts @ per_canvas).reshape(CLASSES, CLASSES))


def gain_interval(options, variant, baseline):
    """The 95% bootstrap interval of variant's mIoU minus baseline's, averaged over the seeds,
    the same test canvases drawn for both nets and every seed; in mIoU fractions."""
    pairs = [(confusions(options, variant, s), confusions(options, baseline, s)) for s in options.seeds]
    canvases = len(pairs[0][0])

    def mean_gain(indices):
        counts = np.bincount(indices, minlength=canvases).astype(np.float64)
        return np.mean([miou_of_draw(ours, counts) - miou_of_draw(theirs, counts) for ours, theirs in pairs])

    return bootstrap_interval(mean_gain, canvases, rounds=BOOTSTRAP_ROUNDS)


def per_seed(runs, variant, key):
    return [metrics[key] for metrics in runs[variant].values()]


def miou_cell(runs, variant):
    values = per_seed(runs, variant, "miou")
    return f"{mean_std(values)} ({', '.join(f'{100 * v:.1f}' for v in values)})"


def gain_cell(runs, options, variant, baseline="regular"):
    gains = np.subtract(per_seed(runs, variant, "miou"), per_seed(runs, baseline, "miou"))
    low, high = gain_interval(options, variant, baseline)
    return f"{100 * gains.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def row(runs, options, variant, first_cells):
    """One table row: the given cells, parameters, mIoU, gain over regular, ms per step."""
    params = per_seed(runs, variant, "params")[0]
    gain = "–" if variant == "regular" else gain_cell(runs, options, variant)
    step = 1000 * np.median(per_seed(runs, variant, "seconds_per_step"))
    return "| " + " | ".join([*first_cells, f"{params:,}", miou_cell(runs, variant), gain, f"{step:.0f}"]) + " |"


def header(command, runs, options):
    first = runs["regular"][options.seeds[0]]
    return [
        "<!-- Written by dcn_numba.experiment segmentation; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}`: seeds {', '.join(map(str, options.seeds))}, on the CPU ({os.cpu_count()} "
        f"cores, {threads()}). Every run trains one variant for {first['steps']} steps of {first['batch_size']} "
        f"canvases (Adam, peak learning rate {first['lr']}, cosine decay, per-pixel cross-entropy) drawn from "
        f"{first['train_canvases']:,} training canvases ({first['canvas_size']}×{first['canvas_size']}, 1 to 4 "
        "digits 14–56 pixels tall, fragments of other digits as clutter, labelled background), and scores it "
        f"on {first['test_canvases']:,} test canvases made from the test digits. mIoU in %: the mean over the "
        "11 classes (10 digits and the background) of each class's intersection over union, pixels pooled "
        "over the test canvases; mean ± standard deviation over the seeds (each seed's value). Gain: the "
        "variant's mIoU minus the regular net's, averaged over the seeds, in points, with a 95% bootstrap "
        f"interval over the test canvases ({BOOTSTRAP_ROUNDS:,} draws, the same canvases for both nets and "
        "every seed). ms per step: the median time of a training step, over the runs.",
        "",
    ]


def spread_table(runs):
    """The spread of res5's 729 sampling points per digit height, per variant with a fixed or
    learned grid (dilated grids reach past the 16×16 map and are clipped: left out)."""
    first = next(iter(runs["regular"].values()))["spread_by_size"]
    bins = [f"{low}–{high - 1} px" for low, high in first["bins"]]
    lines = ["**Spread of the 729 sampling points of one res5c unit, by digit height** (pixels, mean ± "
             "standard deviation over the seeds; units at least 2 cells from the map's border, their count "
             "in the first seed below each column; ratio: the tallest bin over the shortest)",
             "", "| variant | background | " + " | ".join(bins) + " | ratio |",
             "|---|---" + "|---" * len(bins) + "|---|"]
    for variant in ("regular", "deformable1", "deformable2", "deformable3"):
        spreads = [m["spread_by_size"] for m in runs[variant].values()]
        columns = [[s["background"] for s in spreads]]
        columns += [[s["object"][i] for s in spreads] for i in range(len(bins))]
        columns.append([None if None in (s["object"][-1], s["object"][0]) else s["object"][-1] / s["object"][0]
                        for s in spreads])
        cells = ["–" if None in values else mean_std(values, scale=1, digits=2) for values in columns]
        lines.append(f"| {NAMES[variant]} | " + " | ".join(cells) + " |")
    counts = [str(first["background_units"])] + [str(n) for n in first["object_units"]]
    lines.append("| units | " + " | ".join(counts) + " | |")
    return lines


def markdown(runs, options, command):
    """The results file: how it was made, the two tables of the paper's mIoU column, the spread
    per digit size and the figure."""
    wide = per_seed(runs, "regular-wide", "params")[0]
    lines = header(command, runs, options) + [
        "**Deformable layers in res5** (the last 1, 2 or 3 of its three 3×3 convolutions)", "",
        "| variant | deformable layers | parameters | mIoU | gain [95% interval] | ms per step |",
        "|---|---|---|---|---|---|",
    ]
    for variant, count in (("regular", "none"), ("deformable1", "res5c"), ("deformable2", "res5b, res5c"),
                           ("deformable3", "res5a, res5b, res5c")):
        lines.append(row(runs, options, variant, [NAMES[variant], count]))
    lines += [
        "", "**Dilated against deformable**, and the regular net widened to the deformable net's parameter "
        "count", "",
        "| variant | parameters | mIoU | gain [95% interval] | ms per step |", "|---|---|---|---|---|",
    ]
    for variant in ("regular", "dilated2", "dilated4", "dilated6", "deformable3", "regular-wide"):
        lines.append(row(runs, options, variant, [NAMES[variant]]))
    lines += ["", f"Deformable res5a–c against the widened regular net ({wide:,} parameters): "
              f"{gain_cell(runs, options, 'deformable3', 'regular-wide')} points.", ""]
    lines += spread_table(runs) + ["", f"![sampling points]({FIGURE})", ""]
    return "\n".join(lines)


def write_results(runs, options, command, mnist):
    """docs/results_segmentation.md and .json, and the figure from the first seed's weights."""
    docs = Path(options.docs)
    docs.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, options, command)
    write_text(docs / "results_segmentation.md", text)
    write_json(docs / "results_segmentation.json",
               {variant: {"miou": per_seed(runs, variant, "miou"), "seeds": list(options.seeds)}
                for variant in TABLE_VARIANTS})
    write_sampling_figure(options, mnist)
    print(text, flush=True)


def write_sampling_figure(options, mnist):
    """docs/segmentation_sampling.png from the weights of the first seed's FIGURE_VARIANTS."""
    seed = options.seeds[0]
    nets = {f"{variant} (seed {seed})": segment.make_net(variant, seed).load(
        Path(run_args(options, variant, seed).out) / f"{variant}.npz") for variant in FIGURE_VARIANTS}
    Path(options.docs).mkdir(parents=True, exist_ok=True)
    write_figure(Path(options.docs) / FIGURE, sampling_figure(nets, segment.test_canvases(options, mnist)))


def main(argv):
    """The `segmentation` subcommand of `python -m dcn_numba.experiment`: argv follows the word."""
    options = parse_args(argv)
    keep_freed_memory()
    speed.switch_on()
    mnist = load_mnist(options.data)
    if options.figure_only:
        options.seeds = options.seeds[:1]  # the figure shows the first seed's nets
    try:
        runs = get_runs(options, mnist, FIGURE_VARIANTS if options.figure_only else None)
    except OutputError as error:
        raise SystemExit(f"python -m dcn_numba.experiment segmentation: error: {error}") from None
    if options.figure_only:
        write_sampling_figure(options, mnist)
        return
    write_results(runs, options, " ".join(["python -m dcn_numba.experiment segmentation", *argv]), mnist)
