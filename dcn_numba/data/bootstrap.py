"""The bootstrap over test items: how much a measured number depends on which test items were drawn.

A table's measurement (an accuracy over test digits, an mIoU over test canvases, or the gain of
one net over another on the same items) is a statistic of the n test items. The percentile
bootstrap (Efron & Tibshirani 1993) draws n items with replacement from the n, `rounds` times,
computes the statistic on each draw, and reports the central `confidence` share of those values:

    interval = (q_{(1 − confidence)/2}, q_{(1 + confidence)/2}) of {statistic(draw_r)}_{r=1..rounds}

For a gain, both nets are scored on the same drawn items (a paired bootstrap), so the interval
reflects the test set, not the difference between the two test sets. It says nothing about the
spread over training seeds, which the tables give separately.
"""

import numpy as np


def bootstrap_interval(statistic, items, rounds=2000, confidence=0.95, seed=0):
    """The percentile-bootstrap interval (low, high) of statistic(indices) over `rounds` draws
    of `items` indices in [0, items) with replacement, from a generator seeded by `seed`.

    `statistic` maps an index array (items,) to a number: the measurement on the drawn items
    (indices repeat; a draw counts an item as often as it was drawn)."""
    if items < 1:
        raise ValueError(f"bootstrap_interval: items must be >= 1, got {items!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_interval: confidence must lie in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, items, items)) for _ in range(rounds)], dtype=np.float64)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
