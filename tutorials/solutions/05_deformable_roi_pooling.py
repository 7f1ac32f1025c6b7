"""Solutions to the exercises of notebook 5, Deformable RoI pooling."""

import numpy as np

from dcn_numba.kernels import deform_roi_pool_math


def bin_offset_gradient(image, positions, roi_width, roi_height, gamma):
    """Exercise 5.1: (∂out/∂Δx̂, ∂out/∂Δŷ) = γ·(roi_w·mean ∂B/∂x, roi_h·mean ∂B/∂y), x first."""
    H, W = image.shape
    slopes = np.array([deform_roi_pool_math.roi_align_sample_gradient(image.ravel(), 0, H, W, y, x)
                       for y, x in positions])  # (samples, 2) as (∂B/∂y, ∂B/∂x)
    d_y, d_x = slopes.mean(axis=0)
    return np.array([gamma * roi_width * d_x, gamma * roi_height * d_y])


def score_map_channel(ctop, ph, pw, group_size, pooled_size):
    """Exercise 5.2: the input channel (ctop·group_size + gh)·group_size + gw that bin (ph, pw) reads."""
    gh = min(ph * group_size // pooled_size, group_size - 1)
    gw = min(pw * group_size // pooled_size, group_size - 1)
    return (ctop * group_size + gh) * group_size + gw
