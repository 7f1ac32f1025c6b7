"""Solutions to the exercises of notebook 1, Sampling off the grid."""

import numpy as np


def bilinear(image, p_y, p_x):
    """S(p) from its four corners, for a p whose four corners are all inside `image`."""
    y0, x0 = int(np.floor(p_y)), int(np.floor(p_x))
    l_y, l_x = p_y - y0, p_x - x0
    return ((1 - l_y) * (1 - l_x) * image[y0, x0] + (1 - l_y) * l_x * image[y0, x0 + 1]
            + l_y * (1 - l_x) * image[y0 + 1, x0] + l_y * l_x * image[y0 + 1, x0 + 1])


def sample_zero_padded(image, p_y, p_x):
    """Exercise 1.1: S(p) by the DCNv2 rule, bilinear interpolation on the image zero-padded by one pixel."""
    H, W = image.shape
    if not (-1 < p_y < H and -1 < p_x < W):
        return 0.0
    return bilinear(np.pad(image, 1), p_y + 1, p_x + 1)
