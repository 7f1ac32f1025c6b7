"""Scalar sampling mathematics shared by the CPU and CUDA kernels (SPEC.md §1 and §2).

Each function is one formula, compiled once by `shared` for both targets. Images are read
from flat arrays: `plane` is the flat index of pixel (0, 0) of one (H, W) channel plane, so
pixel (y, x) lives at `plane + y·W + x`. Flat 64-bit indices keep big tensors addressable.
"""

import math

from ._targets import shared

# ---------------------------------------------------------------------------------------------
# Deformable convolution (SPEC.md §1): bilinear interpolation on an image zero-padded by one pixel
# ---------------------------------------------------------------------------------------------


@shared
def dcn_is_valid(p_y, p_x, H, W):
    """The DCNv2 validity test: -1 < p_y < H and -1 < p_x < W (False for NaN positions)."""
    return p_y > -1.0 and p_y < H and p_x > -1.0 and p_x < W


@shared
def is_finite_position(p_y, p_x):
    """Both coordinates are finite numbers."""
    return not (math.isnan(p_y) or math.isnan(p_x) or math.isinf(p_y) or math.isinf(p_x))


@shared
def dcn_pixel(data, plane, H, W, y, x):
    """x_c(y, x) at integer coordinates, 0 outside the image (the zero padding of the rule)."""
    if y >= 0 and y < H and x >= 0 and x < W:
        return data[plane + y * W + x]
    return 0.0


@shared
def corner_weight(l_y, l_x, corner):
    """Bilinear weight of corner 0..3 = (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
    (1−l_y)(1−l_x), (1−l_y)·l_x, l_y·(1−l_x), l_y·l_x, with l = p − floor(p)."""
    w_y = l_y if corner >= 2 else 1.0 - l_y
    w_x = l_x if corner % 2 == 1 else 1.0 - l_x
    return w_y * w_x


@shared
def dcn_sample(data, plane, H, W, p_y, p_x):
    """S(x_c, p_y, p_x): bilinear blend of the four corners around (p_y, p_x), corners outside
    the image reading 0; 0 for an invalid position, NaN for a NaN or infinite one (so that bad
    offsets propagate instead of vanishing)."""
    if not dcn_is_valid(p_y, p_x, H, W):
        return 0.0 if is_finite_position(p_y, p_x) else math.nan
    y0 = math.floor(p_y)
    x0 = math.floor(p_x)
    l_y = p_y - y0
    l_x = p_x - x0
    y0 = int(y0)
    x0 = int(x0)
    value = 0.0
    for corner in range(4):
        value += corner_weight(l_y, l_x, corner) * dcn_pixel(
            data, plane, H, W, y0 + corner // 2, x0 + corner % 2
        )
    return value


@shared
def dcn_sample_gradient(data, plane, H, W, p_y, p_x):
    """(∂S/∂p_y, ∂S/∂p_x) with v_ab the corner values (0 outside the image):
    ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01),  ∂S/∂p_x = (1−l_y)(v01 − v00) + l_y(v11 − v10).
    (0, 0) for an invalid position (the MSRA/mmcv convention), NaN for a non-finite one. floor()
    makes this the right-sided derivative at integer coordinates."""
    if not dcn_is_valid(p_y, p_x, H, W):
        if is_finite_position(p_y, p_x):
            return 0.0, 0.0
        return math.nan, math.nan
    y0 = math.floor(p_y)
    x0 = math.floor(p_x)
    l_y = p_y - y0
    l_x = p_x - x0
    y0 = int(y0)
    x0 = int(x0)
    v00 = dcn_pixel(data, plane, H, W, y0, x0)
    v01 = dcn_pixel(data, plane, H, W, y0, x0 + 1)
    v10 = dcn_pixel(data, plane, H, W, y0 + 1, x0)
    v11 = dcn_pixel(data, plane, H, W, y0 + 1, x0 + 1)
    d_y = (1.0 - l_x) * (v10 - v00) + l_x * (v11 - v01)
    d_x = (1.0 - l_y) * (v01 - v00) + l_y * (v11 - v10)
    return d_y, d_x


@shared
def dcn_corner_index(plane, H, W, p_y, p_x, corner):
    """Flat index of corner 0..3 of a valid position, or -1 when that corner is outside the
    image (it received a zero, so it gets no gradient)."""
    y = int(math.floor(p_y)) + corner // 2
    x = int(math.floor(p_x)) + corner % 2
    if y >= 0 and y < H and x >= 0 and x < W:
        return plane + y * W + x
    return -1


@shared
def fractional_part(p):
    """l = p − floor(p), the interpolation weight toward the higher corner."""
    return p - math.floor(p)
