"""Solutions to the exercises of notebook 7, Training on MNIST and looking inside."""

import numpy as np


def spread(points, weights=None):
    """Exercise 7.1: σ = sqrt(Σ w ‖p − p̄‖² / Σ w), p̄ = Σ w p / Σ w."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = weights @ points / weights.sum()
    return float(np.sqrt(weights @ ((points - centre) ** 2).sum(axis=1) / weights.sum()))
