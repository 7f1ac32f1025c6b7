"""Batch normalisation's passes over channel rows as single-threaded CPU kernels, and the engine's
BatchNorm (`dcn_numba.engine.functional.BatchNorm`) that uses them on NumPy arrays.

Every array here is a matrix (C, N) with one row per channel (`functional.channel_rows`), and every
kernel walks it channel by channel, so that a row is read while it is in cache. Fusing the steps
that NumPy would make one whole-array pass each (centre, square, sum, scale, shift) leaves three
passes over x in the forward pass (sum, centred squares, normalise) and two over (g, x) in the
backward pass. Sums accumulate in float64. NumPy arrays only: the BatchNorm below must give the
numbers of the engine's (tests/engine/test_functional.py checks it).
"""

import numpy as np

from dcn_numba.engine import functional
from dcn_numba.kernels._targets import serial_kernel


@serial_kernel(reassociate=True)
def channel_moments(x, mean, var):
    """mean[c] = Σ_n x[c, n] / N and the biased var[c] = Σ_n (x[c, n] − mean[c])² / N: the second
    pass is centred, which keeps the variance accurate when the mean is large."""
    C, N = x.shape
    for c in range(C):
        total = 0.0
        for n in range(N):
            total += x[c, n]
        centre = total / N
        squares = 0.0
        for n in range(N):
            deviation = x[c, n] - centre
            squares += deviation * deviation
        mean[c] = centre
        var[c] = squares / N


@serial_kernel
def normalize(x, mean, scale, bias, out):
    """out[c, n] = (x[c, n] − mean[c]) · scale[c] + bias[c], with scale = weight / sqrt(σ² + eps):
    centring, scaling and shifting in one pass."""
    C, N = x.shape
    for c in range(C):
        for n in range(N):
            out[c, n] = (x[c, n] - mean[c]) * scale[c] + bias[c]


@serial_kernel(reassociate=True)
def gradient_sums(grad_output, x, mean, grad_bias, grad_centred):
    """grad_bias[c] = Σ_n g[c, n] and grad_centred[c] = Σ_n g[c, n] · (x[c, n] − mean[c]), the
    two sums the backward pass needs (Σ g·x̂ is the second times 1/sqrt(σ² + eps))."""
    C, N = x.shape
    for c in range(C):
        total = 0.0
        centred = 0.0
        for n in range(N):
            total += grad_output[c, n]
            centred += grad_output[c, n] * (x[c, n] - mean[c])
        grad_bias[c] = total
        grad_centred[c] = centred


@serial_kernel
def input_gradient(grad_output, x, mean, scale, slope, offset, grad_input):
    """grad_input[c, n] = scale[c] · g[c, n] + slope[c] · (x[c, n] − mean[c]) + offset[c]: the
    training-mode ∂L/∂x of BatchNorm with its per-channel constants folded (see BatchNorm)."""
    C, N = x.shape
    for c in range(C):
        for n in range(N):
            grad_input[c, n] = scale[c] * grad_output[c, n] + slope[c] * (x[c, n] - mean[c]) + offset[c]


class BatchNorm(functional.BatchNorm):
    """The engine's BatchNorm, its passes over channel rows made by the kernels above."""

    def moments(self, rows):
        mean, var = np.empty(len(rows), dtype=rows.dtype), np.empty(len(rows), dtype=rows.dtype)
        channel_moments(rows, mean, var)
        return mean, var

    def normalized(self, rows, bias):
        out = np.empty(rows.shape, dtype=rows.dtype)
        normalize(rows, self.mean, self.scale, bias, out)
        return out

    def gradient_sums(self, g, rows):
        """As the engine's, without the centred rows: `input_gradient` centres again in its pass."""
        grad_bias, grad_centred = np.empty_like(self.mean), np.empty_like(self.mean)
        gradient_sums(g, rows, self.mean, grad_bias, grad_centred)
        return grad_bias, grad_centred, None

    def input_gradient(self, g, rows, centred, slope, offset):
        grad_input = np.empty(rows.shape, dtype=rows.dtype)
        input_gradient(g, rows, self.mean, self.scale, slope, offset, grad_input)
        return grad_input
