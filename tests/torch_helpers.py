"""Random inputs for the tests of dcn_numba.torch. Those tests skip without torch: import this
module after their pytest.importorskip("torch")."""

import numpy as np
import torch


def random_rois(rng, count, batch_size, width, height):
    """(count, 5) RoIs (batch_index, x1, y1, x2, y2) inside a width × height image, as a NumPy array."""
    x = np.sort(rng.uniform(0, width - 1, (count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height - 1, (count, 2)), axis=1)
    batch_index = rng.integers(0, batch_size, count)
    return np.stack([batch_index, x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def random_tensor(rng, shape, low=None, high=None, grad=True):
    """A float64 tensor, needing gradients unless grad=False: standard normal, or uniform in [low, high)."""
    values = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return torch.tensor(values, requires_grad=grad)
