"""Solutions to the exercises of notebook 3, The backward pass by hand."""

import numpy as np


def mask_gradient(gcol, S):
    """Exercise 3.1: ∂L/∂m[b, k, i, j] = Σ_c gcol[b, c, k, i, j] · S[b, c, k, i, j]."""
    return (gcol * S).sum(axis=1)


def offset_gradient(gcol, m, dS_dpy, dS_dpx):
    """Exercise 3.2: ∂L/∂offset (B, 2K, H_out, W_out), Δy of tap k at channel 2k, Δx at 2k + 1."""
    grad_p_y = (gcol * m * dS_dpy).sum(axis=1)  # (B, K, H_out, W_out)
    grad_p_x = (gcol * m * dS_dpx).sum(axis=1)
    B, K, H_out, W_out = grad_p_y.shape
    return np.stack([grad_p_y, grad_p_x], axis=2).reshape(B, 2 * K, H_out, W_out)
