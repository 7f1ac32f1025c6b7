"""Solutions to the exercises of notebook 2, Deformable convolution forward."""

import numpy as np


def scale_offsets(s, kh, kw):
    """Exercise 2.1: the offset bias (2·kh·kw,) of Δp_n = (s − 1)·p_n, channel 2k + d."""
    tap_y, tap_x = np.divmod(np.arange(kh * kw), kw)  # tap k = ki·kw + kj
    p_n = np.stack([tap_y - (kh - 1) / 2, tap_x - (kw - 1) / 2], axis=1)  # (K, 2) as (y, x)
    return ((s - 1) * p_n).reshape(2 * kh * kw)  # row k holds (Δy, Δx): channels 2k, 2k + 1


def forward_by_gemm(weight, col, bias):
    """Exercise 2.2: out (B, C_out, H_out·W_out), one GEMM per weight group, then the bias."""
    groups = col.shape[1]
    C_out = weight.shape[0]
    per_group = weight.reshape(groups, C_out // groups, -1)  # (G, C_out/G, C_in/G·K)
    out = np.einsum("gok,bgkp->bgop", per_group, col)  # (B, G, C_out/G, H_out·W_out)
    return out.reshape(col.shape[0], C_out, -1) + bias[:, None]
