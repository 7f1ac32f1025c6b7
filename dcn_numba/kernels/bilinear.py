"""Bilinear sampling and the DCNv2 boundary rule: the scalar mathematics that every op's kernels
share (docs/specification.md §1, and the corners of §2).

Each function is one formula, compiled once by `shared` for the CPU and the CUDA kernels. Images
are read from flat arrays: `plane` is the flat index of pixel (0, 0) of one (H, W) channel plane,
so pixel (y, x) lives at `plane + y·W + x`. Flat 64-bit indices keep big tensors addressable.

A sample at p = (p_y, p_x) blends four pixels, v00 = x(y0, x0), v01 = x(y0, x1), v10 = x(y1, x0),
v11 = x(y1, x1), with the weights of `corner_weight` and l = p − floor(p). Three ways to choose
those corners follow, in this order:

* the DCNv2 rule on one plane (`dcn_sample`, `dcn_sample_gradient`): a sample is valid when
  −1 < p_y < H and −1 < p_x < W; its corners are y0 = floor(p_y), y1 = y0 + 1 (likewise for x),
  and pixels outside the image read 0. The tutorials and tests sample single positions with it;
* the same rule on an image zero-padded by one pixel, the way the convolution's kernels read it:
  each sample is located once (`dcn_locate`, for every channel of its offset group), and its
  four corners are in-bounds reads (`padded_corners`) that are 0 in the padding;
* corners that a RoI op's clamping rule chose (`corners_blend`, `corners_slopes`); the rules
  themselves are in `deform_roi_pool_math` and `deform_psroi_pool_math`.

The precision rule, for every op and both targets: a sum that one kernel iteration or thread
owns (a bin's average over its samples, a gradient summed over channels or samples) accumulates
in float64, from 0.0, and is rounded to the data's dtype once, when stored. Sums spread over
iterations or threads (gradients scattered into input planes, CUDA atomics) add in the dtype of
the array they add into. The convolution's bilinear sample, one blend feeding a GEMM in the data's
dtype, is computed in that dtype (the typed constants below).
"""

import math

import numpy as np

from dcn_numba.kernels._targets import shared

# Constants typed float32, so that arithmetic keeps the precision of the data: float32 with float32
# data (a float64 literal would promote every product to float64 and halve the SIMD width of the
# CPU loops), float64 with float64 data.
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
NAN = np.float32(np.nan)


@shared
def fractional_part(p):
    """l = p − floor(p), the interpolation weight toward the higher corner."""
    return p - math.floor(p)


@shared
def corner_weight(l_y, l_x, corner):
    """Bilinear weight of corner 0..3 = (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
    (1−l_y)(1−l_x), (1−l_y)·l_x, l_y·(1−l_x), l_y·l_x, with l = p − floor(p)."""
    w_y = l_y if corner >= 2 else ONE - l_y
    w_x = l_x if corner % 2 == 1 else ONE - l_x
    return w_y * w_x


@shared
def corner_weight_gradient(l_y, l_x, corner):
    """(∂w/∂l_y, ∂w/∂l_x) for the bilinear weight w of corner 0..3 (see `corner_weight`):
    ∓(1−l_x or l_x) and ∓(1−l_y or l_y), positive toward the high corner."""
    w_y = l_y if corner >= 2 else 1.0 - l_y
    w_x = l_x if corner % 2 == 1 else 1.0 - l_x
    sign_y = 1.0 if corner >= 2 else -1.0
    sign_x = 1.0 if corner % 2 == 1 else -1.0
    return sign_y * w_x, sign_x * w_y


@shared
def bilinear_blend(v00, v01, v10, v11, l_y, l_x):
    """S = Σ_corner corner_weight · v = (1−l_y)(1−l_x)·v00 + (1−l_y)l_x·v01 + l_y(1−l_x)·v10 + l_y·l_x·v11."""
    return (corner_weight(l_y, l_x, 0) * v00 + corner_weight(l_y, l_x, 1) * v01
            + corner_weight(l_y, l_x, 2) * v10 + corner_weight(l_y, l_x, 3) * v11)


@shared
def bilinear_slopes(v00, v01, v10, v11, l_y, l_x):
    """(∂S/∂p_y, ∂S/∂p_x) of `bilinear_blend` (∂l/∂p = 1):
    ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01),  ∂S/∂p_x = (1−l_y)(v01 − v00) + l_y(v11 − v10).
    floor() makes this the right-sided derivative at integer coordinates."""
    return ((ONE - l_x) * (v10 - v00) + l_x * (v11 - v01),
            (ONE - l_y) * (v01 - v00) + l_y * (v11 - v10))


@shared
def dcn_is_valid(p_y, p_x, H, W):
    """The DCNv2 validity test: -1 < p_y < H and -1 < p_x < W (False for NaN positions)."""
    return p_y > -1.0 and p_y < H and p_x > -1.0 and p_x < W


@shared
def is_finite_position(p_y, p_x):
    """Both coordinates are finite numbers."""
    return not (math.isnan(p_y) or math.isnan(p_x) or math.isinf(p_y) or math.isinf(p_x))


# ---------------------------------------------------------------------------------------------
# The DCNv2 rule on one plane
# ---------------------------------------------------------------------------------------------


@shared
def dcn_pixel(data, plane, H, W, y, x):
    """x_c(y, x) at integer coordinates, 0 outside the image (the zero padding of the rule)."""
    if y >= 0 and y < H and x >= 0 and x < W:
        return data[plane + y * W + x]
    return 0.0


@shared
def dcn_corners(data, plane, H, W, p_y, p_x):
    """(v00, v01, v10, v11, l_y, l_x) of a valid position on an unpadded (H, W) plane."""
    y0 = int(math.floor(p_y))
    x0 = int(math.floor(p_x))
    return (dcn_pixel(data, plane, H, W, y0, x0), dcn_pixel(data, plane, H, W, y0, x0 + 1),
            dcn_pixel(data, plane, H, W, y0 + 1, x0), dcn_pixel(data, plane, H, W, y0 + 1, x0 + 1),
            fractional_part(p_y), fractional_part(p_x))


@shared
def dcn_sample(data, plane, H, W, p_y, p_x):
    """S(x_c, p_y, p_x): bilinear blend of the four corners around (p_y, p_x), corners outside
    the image reading 0; 0 for an invalid position, NaN for a NaN or infinite one (so that bad
    offsets propagate instead of vanishing)."""
    if not dcn_is_valid(p_y, p_x, H, W):
        return 0.0 if is_finite_position(p_y, p_x) else math.nan
    v00, v01, v10, v11, l_y, l_x = dcn_corners(data, plane, H, W, p_y, p_x)
    return bilinear_blend(v00, v01, v10, v11, l_y, l_x)


@shared
def dcn_sample_gradient(data, plane, H, W, p_y, p_x):
    """(∂S/∂p_y, ∂S/∂p_x) (see `bilinear_slopes`) with corner values 0 outside the image;
    (0, 0) for an invalid position (the convention of the original DCNv2 operator), NaN for a
    non-finite one."""
    if not dcn_is_valid(p_y, p_x, H, W):
        if is_finite_position(p_y, p_x):
            return 0.0, 0.0
        return math.nan, math.nan
    v00, v01, v10, v11, l_y, l_x = dcn_corners(data, plane, H, W, p_y, p_x)
    return bilinear_slopes(v00, v01, v10, v11, l_y, l_x)


# ---------------------------------------------------------------------------------------------
# The DCNv2 rule on an image zero-padded by one pixel (the convolution's kernels)
# ---------------------------------------------------------------------------------------------


# Where a sample falls on the padded image: `top_left` ≥ 0 is the flat pixel index of its corner
# (y0, x0) within a padded (H+2)×(W+2) image (times C_in on the channels-last input); these two
# negative values mark samples that read no pixel.
OUTSIDE = -1  # an invalid sample: S = 0, no gradient
NOT_A_NUMBER = -2  # a sample at a NaN or infinite position: S = NaN


@shared
def dcn_locate(p_y, p_x, H, W):
    """(top_left, l_y, l_x) of position p on the image zero-padded by one pixel:
    top_left = (y0 + 1)·(W + 2) + (x0 + 1) with y0 = floor(p_y), x0 = floor(p_x), and
    l = p − floor(p); for an invalid position top_left is OUTSIDE (NOT_A_NUMBER if p is not
    finite) and l = 0."""
    if not dcn_is_valid(p_y, p_x, H, W):
        return (OUTSIDE if is_finite_position(p_y, p_x) else NOT_A_NUMBER), 0.0, 0.0
    y0 = math.floor(p_y)
    x0 = math.floor(p_x)
    return (int(y0) + 1) * (W + 2) + int(x0) + 1, p_y - y0, p_x - x0


@shared
def dcn_unlocated_value(top_left):
    """S (and each slope) of a sample that reads no pixel: 0, or NaN at a non-finite position."""
    return NAN if top_left == NOT_A_NUMBER else ZERO


@shared
def dcn_located_or_not(located_value, top_left):
    """S or a slope of S of one sample: `located_value`, computed from its corners, when it reads
    pixels (top_left ≥ 0), else `dcn_unlocated_value`."""
    return located_value if top_left >= 0 else dcn_unlocated_value(top_left)


@shared
def padded_corner(top_left, W, corner):
    """Index, within a padded image of width W + 2, of corner 0..3 (y0|y0+1, x0|x0+1)."""
    return top_left + (corner // 2) * (W + 2) + corner % 2


@shared
def padded_corners(padded, base, top_left, W, pixel_stride):
    """(v00, v01, v10, v11) of a padded image whose pixel q lives at base + q·pixel_stride: base is
    the image's first value of the channel read and pixel_stride its number of channels on a
    channels-last image (1 on a single plane).

    A sample that reads no pixel (top_left < 0) reads the image's first corners instead, in
    bounds and meaningless: kernels blend every sample, then keep `dcn_unlocated_value` for
    those. Reading unconditionally leaves the CPU loops without branches, so that they vectorise.
    """
    top_left = max(top_left, 0)
    return (padded[base + padded_corner(top_left, W, 0) * pixel_stride],
            padded[base + padded_corner(top_left, W, 1) * pixel_stride],
            padded[base + padded_corner(top_left, W, 2) * pixel_stride],
            padded[base + padded_corner(top_left, W, 3) * pixel_stride])


# ---------------------------------------------------------------------------------------------
# Corners chosen by a rule of the RoI ops
# ---------------------------------------------------------------------------------------------


@shared
def corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner):
    """Flat index of corner 0..3 = (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)."""
    row = y_high if corner >= 2 else y_low
    column = x_high if corner % 2 == 1 else x_low
    return plane + row * W + column


@shared
def corners_blend(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x):
    """Σ_corner corner_weight · value over the four corners (y_low|y_high, x_low|x_high) that a
    RoI rule chose for a position, l being the weights toward the high corners."""
    value = 0.0
    for corner in range(4):
        weight = corner_weight(l_y, l_x, corner)
        value += weight * data[corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner)]
    return value


@shared
def corners_slopes(data, plane, W, y_low, y_high, x_low, x_high, l_y, l_x):
    """(∂/∂l_y, ∂/∂l_x) of `corners_blend`: Σ_corner (∂w/∂l_y, ∂w/∂l_x) · value
    (`corner_weight_gradient`), which the RoI kernels also apply corner by corner."""
    d_y = 0.0
    d_x = 0.0
    for corner in range(4):
        value = data[corner_pixel(plane, W, y_low, y_high, x_low, x_high, corner)]
        weight_d_y, weight_d_x = corner_weight_gradient(l_y, l_x, corner)
        d_y += weight_d_y * value
        d_x += weight_d_x * value
    return d_y, d_x
