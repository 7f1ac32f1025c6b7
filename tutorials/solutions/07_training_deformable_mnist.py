"""Solutions to the exercises of notebook 7, Training on MNIST and looking inside."""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor


def spread(points, weights=None):
    """Exercise 7.2: σ = sqrt(Σ w ‖p − p̄‖² / Σ w), p̄ = Σ w p / Σ w."""
    points = np.asarray(points, dtype=np.float64)
    weights = np.ones(len(points)) if weights is None else np.asarray(weights, dtype=np.float64)
    centre = weights @ points / weights.sum()
    return float(np.sqrt(weights @ ((points - centre) ** 2).sum(axis=1) / weights.sum()))


def training_step(net, optimizer, images, labels):
    """Exercise 7.1: the loss of one batch, fresh gradients of it, one update; returns the loss as a float."""
    loss = F.cross_entropy(net(Tensor(images)), labels)
    optimizer.zero_grad()  # the gradients of the last step are still in .grad: backward adds to them
    loss.backward()
    optimizer.step()
    return loss.item()
