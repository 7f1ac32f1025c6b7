"""Brute-force pieces shared by the RoI pooling tests: RoIs, images and 1-D interpolation weights."""

import numpy as np


def tent(position, size):
    """Weights max(0, 1 − |p − i|) of the pixels i = 0..size−1: bilinear interpolation written as
    a sum over every pixel."""
    return np.maximum(0.0, 1.0 - np.abs(position - np.arange(size)))


def random_rois(rng, N, B, H, W, spatial_scale, outside=2.0, degenerate=False):
    """N RoIs in input-image coordinates, reaching `outside` feature pixels beyond the map;
    with `degenerate`, some have x2 < x1 or y2 < y1."""
    low = rng.uniform(-outside, [W, H], (N, 2))
    high = rng.uniform(low - (2.0 if degenerate else 0.0), [W + outside, H + outside], (N, 2))
    return np.concatenate([rng.integers(0, B, (N, 1)), low, high], axis=1) / [1, *[spatial_scale] * 4]


def linear_image(H, W):
    """x[i, j] = 10·i + j: bilinear interpolation reproduces it exactly inside the image."""
    return (10.0 * np.arange(H)[:, None] + np.arange(W))[None, None]
