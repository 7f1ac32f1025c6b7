"""Random DCNv3 and DCNv4 calls for the tests: shapes and parameters drawn by hypothesis, samples
placed a margin away from the pixel grid (where bilinear interpolation has kinks); and the names
and shapes of the published layers' state dicts, which both frameworks' layers must load."""

import math

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from dcn_numba.reference import dcnv3 as reference

PARAMETER_NAMES = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
                   "dilation_w", "group", "group_channels", "offset_scale", "remove_center")


def output_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def geometries(draw, max_size=5, max_group=2, max_channels=3, max_kernel=3):
    """(N, H, W) and the operator's parameters, with H_out, W_out >= 1."""
    kernel_h = draw(st.integers(1, max_kernel))
    kernel_w = draw(st.integers(1, max_kernel))
    odd = kernel_h % 2 == 1 and kernel_w % 2 == 1 and kernel_h * kernel_w > 1
    parameters = dict(
        kernel_h=kernel_h, kernel_w=kernel_w,
        stride_h=draw(st.integers(1, 2)), stride_w=draw(st.integers(1, 2)),
        pad_h=draw(st.integers(0, 2)), pad_w=draw(st.integers(0, 2)),
        dilation_h=draw(st.integers(1, 2)), dilation_w=draw(st.integers(1, 2)),
        group=draw(st.integers(1, max_group)), group_channels=draw(st.integers(1, max_channels)),
        offset_scale=draw(st.sampled_from([0.5, 1.0, 1.6])),
        remove_center=int(odd and draw(st.booleans())))
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(1, max_size)), draw(st.integers(1, max_size))
    assume(output_size(H, kernel_h, parameters["stride_h"], parameters["pad_h"], parameters["dilation_h"]) >= 1)
    assume(output_size(W, kernel_w, parameters["stride_w"], parameters["pad_w"], parameters["dilation_w"]) >= 1)
    return (N, H, W), parameters


def taps_count(parameters):
    return parameters["kernel_h"] * parameters["kernel_w"] - parameters["remove_center"]


def off_grid_offsets(rng, shape, parameters, low=-2):
    """Offsets (N, H_out, W_out, G·P·2) that put every sample 0.2 to 0.8 px from the pixel grid,
    at whole-pixel positions from `low` to size (so some samples fall outside the image): the
    location is linear in Δ with slope s, so Δ = (target − location at Δ = 0) / s."""
    N, H, W = shape
    p = parameters
    H_out = output_size(H, p["kernel_h"], p["stride_h"], p["pad_h"], p["dilation_h"])
    W_out = output_size(W, p["kernel_w"], p["stride_w"], p["pad_w"], p["dilation_w"])
    P = taps_count(p)
    offset = np.zeros((N, H_out, W_out, p["group"], P, 2))
    for index, (i_x, i_y) in enumerate(reference.taps(p["kernel_h"], p["kernel_w"], p["remove_center"])):
        h = np.arange(H_out)[None, :, None, None]
        w = np.arange(W_out)[None, None, :, None]
        still_y = reference.sampling_location(h, p["stride_h"], p["pad_h"], p["kernel_h"],
                                              p["dilation_h"], i_y, 0.0, p["offset_scale"])
        still_x = reference.sampling_location(w, p["stride_w"], p["pad_w"], p["kernel_w"],
                                              p["dilation_w"], i_x, 0.0, p["offset_scale"])
        size = (N, H_out, W_out, p["group"])
        target_y = rng.integers(low, H + 1, size) + rng.uniform(0.2, 0.8, size)
        target_x = rng.integers(low, W + 1, size) + rng.uniform(0.2, 0.8, size)
        offset[..., index, 0] = (target_x - still_x) / p["offset_scale"]
        offset[..., index, 1] = (target_y - still_y) / p["offset_scale"]
    return offset.reshape(N, H_out, W_out, -1)


def random_call(rng, shape, parameters):
    """{input, offset, mask, grad_output} as float64 arrays for a DCNv3 call."""
    N, H, W = shape
    C = parameters["group"] * parameters["group_channels"]
    offset = off_grid_offsets(rng, shape, parameters)
    H_out, W_out = offset.shape[1:3]
    return dict(input=rng.standard_normal((N, H, W, C)), offset=offset,
                mask=rng.uniform(-1, 1, (N, H_out, W_out, parameters["group"] * taps_count(parameters))),
                grad_output=rng.standard_normal((N, H_out, W_out, C)))


def packed(offset, mask, group, rng=None):
    """DCNv4's offset_mask from DCNv3's offset and mask: per group 2P offsets then P mask values,
    rows padded to a multiple of 8 (with random values when `rng` is given: they must not be read)."""
    N, H_out, W_out, GP = mask.shape
    P = GP // group
    rows = np.concatenate([offset.reshape(N, H_out, W_out, group, 2 * P),
                           mask.reshape(N, H_out, W_out, group, P)], axis=-1).reshape(N, H_out, W_out, 3 * GP)
    width = reference.pad8(3 * GP)
    padding = np.zeros((N, H_out, W_out, width - 3 * GP))
    if rng is not None:
        padding = rng.standard_normal(padding.shape)
    return np.concatenate([rows, padding], axis=-1)


def published_dcnv3_shapes(C, G, k=3, dk=3, remove_center=0, center_feature_scale=False):
    """The names and shapes of the state dict of InternImage's DCNv3 layer (ops_dcnv3/modules/dcnv3.py:
    dw_conv = Sequential(conv, Sequential(to_channels_last, LayerNorm), GELU))."""
    P = k * k - remove_center
    shapes = {"dw_conv.0.weight": (C, 1, dk, dk), "dw_conv.0.bias": (C,),
              "dw_conv.1.1.weight": (C,), "dw_conv.1.1.bias": (C,),
              "offset.weight": (G * P * 2, C), "offset.bias": (G * P * 2,),
              "mask.weight": (G * P, C), "mask.bias": (G * P,),
              "input_proj.weight": (C, C), "input_proj.bias": (C,),
              "output_proj.weight": (C, C), "output_proj.bias": (C,)}
    if center_feature_scale:
        shapes.update({"center_feature_scale_proj_weight": (G, C), "center_feature_scale_proj_bias": (G,)})
    return shapes


def published_dcnv4_shapes(C, G, k=3, dk=None, remove_center=0, center_feature_scale=False, output_bias=True):
    """The names and shapes of the state dict of DCNv4's layer (DCNv4_op/DCNv4/modules/dcnv4.py)."""
    width = math.ceil(3 * G * (k * k - remove_center) / 8) * 8
    shapes = {"offset_mask.weight": (width, C), "offset_mask.bias": (width,),
              "value_proj.weight": (C, C), "value_proj.bias": (C,), "output_proj.weight": (C, C)}
    if output_bias:
        shapes["output_proj.bias"] = (C,)
    if dk is not None:
        shapes.update({"offset_mask_dw.weight": (C, 1, dk, dk), "offset_mask_dw.bias": (C,)})
    if center_feature_scale:
        shapes.update({"center_feature_scale_proj_weight": (G, C), "center_feature_scale_proj_bias": (G,)})
    return shapes
