"""The global-pooling table: the scaled-digits experiment with a head that cannot see the whole
canvas at once.

    python -m dcn_numba.experiment global-pooling --seeds 0 1 2      docs/results_global_pooling.md

MnistNet's default head pools the last map to 6×6 and applies a linear layer: its class scores
read every part of the canvas, whatever the stacked layers' receptive field, which may be why
the scales table finds no gain on seen scales (that table stays as the null result for such a
head). Here the same experiment is run with the global-average-pooling head (`head="global"`),
whose class scores are averages of what single units see, beside the 6×6-head pair, all on seen
scales drawn log-uniformly (`--setting seen-log`) and tested on every test digit (the runs'
--test-size, all 1,000 by default). A regular net widened to the deformable net's parameter count
(`gap-regular-wide`) tells a gain of deformable layers from a gain of parameters.

Every gain is the seeds' mean difference of accuracy between two variants, with a 95% bootstrap
interval over the test digits (`data.bootstrap`): each draw scores both variants of every seed
on the same drawn digits. The per-digit results come from each run's saved weights.
"""

import numpy as np

from dcn_numba.data.bootstrap import bootstrap_interval
from dcn_numba.data.mnist import scaled_digits
from dcn_numba.apps.mnist import train
from dcn_numba.apps.mnist.models import MnistNet

SETTING = "seen-log"
VARIANTS = ["regular", "deformable", "gap-regular", "gap-regular-wide", "gap-deformable"]
NAMES = {
    "regular": ("regular", "6×6 + linear"),
    "deformable": ("deformable layers 1–3", "6×6 + linear"),
    "gap-regular": ("regular", "global average"),
    "gap-regular-wide": ("regular, widened", "global average"),
    "gap-deformable": ("deformable layers 1–3", "global average"),
}
GAINS = [("deformable", "regular"), ("gap-deformable", "gap-regular"), ("gap-regular-wide", "gap-regular"),
         ("gap-deformable", "gap-regular-wide")]
SHOWN_FACTORS = ("0.5", "1.0", "2.0")
BOOTSTRAP_ROUNDS = 2000


def digit_sets(test):
    """The digit sets a gain is measured on: the setting's test digits, then each SHOWN_FACTORS."""
    sets = {"setting's test": train.setting_test_digits(test, SETTING)}
    sets.update((f"×{f}", scaled_digits(test, float(f), canvas_size=train.CANVAS_SIZE)) for f in SHOWN_FACTORS)
    return sets


def correct_digits(weights, variant, digits):
    """Whether the net of `variant` with the saved `weights` classifies each digit right: (N,)."""
    net = MnistNet(**train.VARIANTS[variant]).load(weights)
    return train.predict(net, digits.images, "cpu") == digits.labels


def gain_with_interval(ours, theirs):
    """The mean over seeds of the accuracy difference, and its 95% bootstrap interval over the
    digits: ours and theirs are (seeds, N) booleans of the same digits. In points."""
    difference = ours.astype(np.float64) - theirs
    low, high = bootstrap_interval(lambda i: difference[:, i].mean(), difference.shape[1], rounds=BOOTSTRAP_ROUNDS)
    return f"{100 * difference.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def table(runs, header_lines, folder_of, test, cell):
    """The results file: the accuracies of the five variants and the gains with their intervals.

    runs {(setting, variant): {seed: metrics}}; folder_of(setting, variant, seed) the run's folder;
    test: the runs' test digits; cell(values) the 'mean ± std (each seed)' formatting."""
    lines = header_lines + [
        "Seen scales drawn log-uniformly in 0.5–2.0 (as many digits below ×1 as above), for training and "
        "for the setting's test digits. Accuracy in %, mean ± standard deviation over the seeds (each "
        "seed's value). Gain: the difference in points, averaged over the seeds, with a 95% bootstrap "
        f"interval over the {len(test.labels):,} test digits ({BOOTSTRAP_ROUNDS:,} draws, both variants of "
        "every seed scored on the same drawn digits).",
        "",
        "| variant | head | parameters | setting's test | " + " | ".join(f"×{f}" for f in SHOWN_FACTORS) + " |",
        "|---|---|---|---" + "|---" * len(SHOWN_FACTORS) + "|",
    ]
    for variant in VARIANTS:
        per_seed = list(runs[(SETTING, variant)].values())
        cells = [f"{per_seed[0]['params']:,}", cell([m["test_accuracy"] for m in per_seed])]
        cells += [cell([m["accuracy_by_scale"][f] for m in per_seed]) for f in SHOWN_FACTORS]
        lines.append(f"| {' | '.join(NAMES[variant])} | " + " | ".join(cells) + " |")
    sets = digit_sets(test)
    seeds = list(runs[(SETTING, VARIANTS[0])])
    correct = {(variant, name): np.stack([correct_digits(folder_of(SETTING, variant, seed) / f"{variant}.npz",
                                                         variant, digits) for seed in seeds])
               for variant in VARIANTS for name, digits in sets.items()}
    lines += ["", "| gain | " + " | ".join(sets) + " |", "|---" + "|---" * len(sets) + "|"]
    for variant, baseline in GAINS:
        label = f"{' '.join(NAMES[variant])} − {' '.join(NAMES[baseline])}".replace(" global average", " (GAP)")
        cells = [gain_with_interval(correct[(variant, name)], correct[(baseline, name)]) for name in sets]
        lines.append(f"| {label.replace(' 6×6 + linear', ' (6×6)')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
