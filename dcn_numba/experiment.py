"""The scaled-digits experiment over several seeds, written as a markdown table.

    python -m dcn_numba.experiment --seeds 0 1 2 --out runs/seeds --table docs/results_mnist.md

runs the training command (`dcn_numba.train`, same options, same defaults) once per seed, each
run in its own folder <out>/seed<n>, and writes the mean ± standard deviation over the seeds of
each variant's accuracy on the ordinary and on the scaled test digits, with every seed's value,
to a markdown file that the README embeds. Every number in that file is measured by this
command; the file says so, and how it was produced.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from . import train
from .speed.runtime import keep_freed_memory


def parse_args(argv=None):
    """(experiment options, the remaining arguments, handed to the training command)."""
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.experiment",
        description="Run the training command once per seed and tabulate mean ± standard deviation. "
                    "Other options are the training command's (see python -m dcn_numba.train --help).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/seeds", help="folder of the per-seed runs")
    parser.add_argument("--table", default="docs/results_mnist.md", help="markdown file to write")
    return parser.parse_known_args(argv)


def percent(values):
    """'mean ± std %' over the seeds (sample standard deviation), then every seed's value."""
    values = 100 * np.asarray(values)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    each = ", ".join(f"{v:.1f}" for v in values)
    return f"{values.mean():.1f} ± {spread:.1f} ({each})"


def markdown_table(runs, command):
    """The results file: how it was made, the settings, and one row per variant.

    runs: {seed: metrics of train.run}, every run with the same variants and settings.
    """
    first = next(iter(runs.values()))
    settings = next(iter(first.values()))
    lines = [
        "<!-- Written by dcn_numba.experiment; do not edit by hand: rerun the command below. -->",
        f"Measured by `{command}`: seeds {', '.join(str(s) for s in runs)}, on the {settings['device'].upper()} "
        f"({os.cpu_count()} cores). Each seed trains every variant for {settings['epochs']} epochs "
        f"(batch {settings['batch_size']}, Adam, peak learning rate {settings['lr']}, cosine decay, "
        f"augmentation: {settings['augment']}) on {settings['train_digits']:,} training digits, then "
        f"tests on {settings['test_digits']:,} test digits as they are and scaled by a random factor "
        f"in {settings['scaled_range'][0]}–{settings['scaled_range'][1]}. Accuracy in %: mean ± "
        "standard deviation over the seeds (each seed's value).",
        "",
        "| variant | test accuracy | scaled test accuracy | parameters | seconds / epoch |",
        "|---|---|---|---|---|",
    ]
    for variant in first:
        per_seed = [metrics[variant] for metrics in runs.values()]
        lines.append(
            f"| {variant} | {percent([m['test_accuracy'] for m in per_seed])} "
            f"| {percent([m['scaled_test_accuracy'] for m in per_seed])} "
            f"| {per_seed[0]['params']:,} | {np.mean([m['seconds_per_epoch'] for m in per_seed]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    options, train_argv = parse_args(argv)
    keep_freed_memory()
    runs = {}
    for seed in options.seeds:
        args = train.parse_args(train_argv + ["--seed", str(seed), "--out", f"{options.out}/seed{seed}"])
        runs[seed] = train.run(args)
        print(f"seed {seed}\n{train.format_table(runs[seed])}")
    argv = sys.argv[1:] if argv is None else argv
    table = markdown_table(runs, " ".join(["python -m dcn_numba.experiment", *argv]))
    Path(options.table).parent.mkdir(parents=True, exist_ok=True)
    Path(options.table).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
