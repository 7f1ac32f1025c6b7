"""Solutions to the exercises of notebook 6, Deformable RoI pooling."""

import numpy as np

from dcn_numba.kernels import deform_roi_pool_math
from dcn_numba.reference import deform_roi_pool as roi_reference


def bin_offset_gradient(image, positions, roi_width, roi_height, gamma):
    """Exercise 6.2: (∂out/∂Δx̂, ∂out/∂Δŷ) = γ·(roi_w·mean ∂B/∂x, roi_h·mean ∂B/∂y), x first."""
    H, W = image.shape
    slopes = np.array([deform_roi_pool_math.roi_align_sample_gradient(image.ravel(), 0, H, W, y, x)
                       for y, x in positions])  # (samples, 2) as (∂B/∂y, ∂B/∂x)
    d_y, d_x = slopes.mean(axis=0)
    return np.array([gamma * roi_width * d_x, gamma * roi_height * d_y])


def score_map_channel(ctop, ph, pw, group_size, pooled_size):
    """Exercise 6.3: the input channel (ctop·group_size + gh)·group_size + gw that bin (ph, pw) reads."""
    gh = min(ph * group_size // pooled_size, group_size - 1)
    gw = min(pw * group_size // pooled_size, group_size - 1)
    return (ctop * group_size + gh) * group_size + gw


def roi_align_pool(image, roi, offset, output_size, sampling_ratio, gamma):
    """Exercise 6.1: out (C, P, P), each bin the mean of its sampling_ratio² samples at sub-bin centres."""
    x1, y1, x2, y2 = roi
    start_x, start_y = x1 - 0.5, y1 - 0.5  # pixel centres at integers: the box's edge is half a pixel before
    roi_width, roi_height = x2 - x1, y2 - y1
    bin_width, bin_height = roi_width / output_size, roi_height / output_size
    out = np.zeros((image.shape[0], output_size, output_size))
    for ph in range(output_size):
        for pw in range(output_size):
            shift_x = 0.0 if offset is None else gamma * roi_width * offset[0, ph, pw]
            shift_y = 0.0 if offset is None else gamma * roi_height * offset[1, ph, pw]
            samples = [roi_reference.bilinear(image,
                                              start_y + ph * bin_height + shift_y + (iy + 0.5) * bin_height / sampling_ratio,
                                              start_x + pw * bin_width + shift_x + (ix + 0.5) * bin_width / sampling_ratio)
                       for iy in range(sampling_ratio) for ix in range(sampling_ratio)]
            out[:, ph, pw] = np.mean(samples, axis=0)
    return out
