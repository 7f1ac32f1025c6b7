"""Batch normalisation's passes over channel rows as single-threaded CPU kernels: the NumPy path
of `dcn_numba.engine.functional.BatchNorm`.

Every array here is a matrix (C, N) with one row per channel (`functional.channel_rows`), and every
kernel walks it channel by channel, so that a row is read while it is in cache. Fusing the steps
that NumPy would make one whole-array pass each (centre, square, sum, scale, shift) leaves three
passes over x in the forward pass (sum, centred squares, normalise) and two over (g, x) in the
backward pass. Sums accumulate in float64. NumPy arrays only; CuPy arrays take the array-module path of `BatchNorm`, which these
kernels must match (tests/test_functional.py checks it).
"""

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
