"""Deformable convolution v1 and v2 (docs/specification.md §1) as plain loops, forward and backward.

The reference a reader steps through first: one loop over the outputs and taps, one sample at a
time, with the specification's names

    p = p0 + p_n + Δp          p0 = (i·stride_h − pad_h, j·stride_w − pad_w), p_n = (ki·dil_h, kj·dil_w)
    col[b, c, k, i, j] = Δm · S(x[b, c], p)                               (Δm = 1 for v1)
    out[b, co, i, j]  = bias[co] + Σ_{c in the group of co, k} weight[co, c_local, k] · col[b, c, k, i, j]

and the names of dcn_numba.kernels.bilinear where a function means the same thing (dcn_is_valid,
dcn_pixel, dcn_corners, bilinear_blend, bilinear_slopes, corner_weight), transcribed here in
plain Python so that the reference does not depend on the kernels it checks. Everything is
computed in float64 and returned in the input's dtype.

It is slow: a Python step per sample and channel. `deform_conv_vectorised` computes the same
numbers with array operations, for the tests that need speed (the "reference" backend runs it);
tests/reference/test_deform_conv_reference.py checks that the two agree.

Shapes (K = kh·kw taps, G weight groups, G_off offset groups):

    input   (B, C_in, H, W)               weight  (C_out, C_in/G, kh, kw)     bias (C_out,)
    offset  (B, 2·G_off·K, H_out, W_out)  mask    (B, G_off·K, H_out, W_out)  (None for v1)

Offset channel g·2K + 2k holds Δp_y of tap k of offset group g, the next one Δp_x; mask channel
g·K + k holds Δm. Input channel c belongs to offset group c // (C_in / G_off). Arguments are
already validated (dcn_numba.ops.deform_conv does that).
"""

import math

import numpy as np


def dcn_is_valid(p_y, p_x, H, W):
    """The DCNv2 validity test: −1 < p_y < H and −1 < p_x < W (False for NaN positions)."""
    return -1 < p_y < H and -1 < p_x < W


def is_finite_position(p_y, p_x):
    """Both coordinates are finite numbers."""
    return math.isfinite(p_y) and math.isfinite(p_x)


def dcn_pixel(plane, y, x):
    """x_c(y, x) at integer coordinates, 0 outside the image (the zero padding of the rule)."""
    H, W = plane.shape
    return plane[y, x] if 0 <= y < H and 0 <= x < W else 0.0


def dcn_corners(plane, p_y, p_x):
    """(v00, v01, v10, v11, l_y, l_x) of a valid position: the pixels (y0|y0+1, x0|x0+1) around it,
    y0 = floor(p_y), x0 = floor(p_x), and l = p − floor(p)."""
    y0, x0 = math.floor(p_y), math.floor(p_x)
    return (dcn_pixel(plane, y0, x0), dcn_pixel(plane, y0, x0 + 1),
            dcn_pixel(plane, y0 + 1, x0), dcn_pixel(plane, y0 + 1, x0 + 1), p_y - y0, p_x - x0)


def corner_weight(l_y, l_x, corner):
    """Bilinear weight of corner 0..3 = (y0,x0), (y0,x0+1), (y0+1,x0), (y0+1,x0+1):
    (1−l_y)(1−l_x), (1−l_y)·l_x, l_y·(1−l_x), l_y·l_x."""
    w_y = l_y if corner >= 2 else 1 - l_y
    w_x = l_x if corner % 2 == 1 else 1 - l_x
    return w_y * w_x


def bilinear_blend(v00, v01, v10, v11, l_y, l_x):
    """S = Σ_corner corner_weight · v."""
    return sum(corner_weight(l_y, l_x, corner) * v for corner, v in enumerate((v00, v01, v10, v11)))


def bilinear_slopes(v00, v01, v10, v11, l_y, l_x):
    """(∂S/∂p_y, ∂S/∂p_x) = ((1−l_x)(v10 − v00) + l_x(v11 − v01), (1−l_y)(v01 − v00) + l_y(v11 − v10));
    floor() makes it the right-sided derivative at integer coordinates."""
    return ((1 - l_x) * (v10 - v00) + l_x * (v11 - v01), (1 - l_y) * (v01 - v00) + l_y * (v11 - v10))


def S(plane, p_y, p_x):
    """The bilinear sample of one channel plane (H, W) at p: 0 for an invalid position, NaN for a
    non-finite one (so that bad offsets propagate instead of vanishing)."""
    if not dcn_is_valid(p_y, p_x, *plane.shape):
        return 0.0 if is_finite_position(p_y, p_x) else math.nan
    return bilinear_blend(*dcn_corners(plane, p_y, p_x))


def S_gradient(plane, p_y, p_x):
    """(∂S/∂p_y, ∂S/∂p_x): (0, 0) for an invalid position (the DCNv2 rule), NaN for a non-finite one."""
    if not dcn_is_valid(p_y, p_x, *plane.shape):
        return (0.0, 0.0) if is_finite_position(p_y, p_x) else (math.nan, math.nan)
    return bilinear_slopes(*dcn_corners(plane, p_y, p_x))


class Layer:
    """The sizes and hyper-parameters of one call, and the index arithmetic between its arrays."""

    def __init__(self, input, offset, weight, stride, padding, dilation):
        self.B, self.C_in, self.H, self.W = input.shape
        self.C_out, self.C_per_group, self.kh, self.kw = weight.shape
        self.K = self.kh * self.kw
        self.H_out, self.W_out = offset.shape[2:]
        self.G = self.C_in // self.C_per_group
        self.G_off = offset.shape[1] // (2 * self.K)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def samples(self):
        """Every sample (b, g, k, i, j): image b, offset group g, tap k, output position (i, j)."""
        for b in range(self.B):
            for g in range(self.G_off):
                for k in range(self.K):
                    for i in range(self.H_out):
                        for j in range(self.W_out):
                            yield b, g, k, i, j

    def p(self, offset, b, g, k, i, j):
        """(p_y, p_x) = p0 + p_n + Δp of one sample."""
        ki, kj = divmod(k, self.kw)
        p0 = (i * self.stride[0] - self.padding[0], j * self.stride[1] - self.padding[1])
        p_n = (ki * self.dilation[0], kj * self.dilation[1])
        delta_p = (offset[b, g * 2 * self.K + 2 * k, i, j], offset[b, g * 2 * self.K + 2 * k + 1, i, j])
        return p0[0] + p_n[0] + delta_p[0], p0[1] + p_n[1] + delta_p[1]

    def delta_m(self, mask, b, g, k, i, j):
        """Δm of one sample: the mask (v2) or 1 (v1)."""
        return 1.0 if mask is None else mask[b, g * self.K + k, i, j]

    def offset_group_channels(self, g):
        """The input channels that sample at the positions of offset group g."""
        per_group = self.C_in // self.G_off
        return range(g * per_group, (g + 1) * per_group)

    def weight_group_channels(self, co):
        """The input channels c (with c_local = c − first) that output channel co reads."""
        first = co // (self.C_out // self.G) * self.C_per_group
        return range(first, first + self.C_per_group), first


def columns(layer, input, offset, mask):
    """col[b, c, k, i, j] = Δm · S(x[b, c], p), (B, C_in, K, H_out, W_out)."""
    col = np.zeros((layer.B, layer.C_in, layer.K, layer.H_out, layer.W_out))
    for b, g, k, i, j in layer.samples():
        p_y, p_x = layer.p(offset, b, g, k, i, j)
        for c in layer.offset_group_channels(g):
            col[b, c, k, i, j] = layer.delta_m(mask, b, g, k, i, j) * S(input[b, c], p_y, p_x)
    return col


def as_float64(*arrays):
    """The arrays in float64 (None stays None): the reference computes in double precision."""
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask):
    """out[b, co, i, j] = bias[co] + Σ_{c in the group of co, k} weight[co, c_local, k] · col[b, c, k, i, j]."""
    x, offset, weight, bias, mask = as_float64(input, offset, weight, bias, mask)
    layer = Layer(x, offset, weight, stride, padding, dilation)
    col = columns(layer, x, offset, mask)
    w = weight.reshape(layer.C_out, layer.C_per_group, layer.K)
    out = np.zeros((layer.B, layer.C_out, layer.H_out, layer.W_out))
    for b in range(layer.B):
        for co in range(layer.C_out):
            channels, first = layer.weight_group_channels(co)
            for i in range(layer.H_out):
                for j in range(layer.W_out):
                    out[b, co, i, j] = 0.0 if bias is None else bias[co]
                    for c in channels:
                        for k in range(layer.K):
                            out[b, co, i, j] += w[co, c - first, k] * col[b, c, k, i, j]
    return out.astype(input.dtype)


def gradient_columns(layer, weight, grad_out):
    """gcol[b, c, k, i, j] = ∂L/∂col = Σ_{co reading channel c} weight[co, c_local, k] · grad_out[b, co, i, j]."""
    w = weight.reshape(layer.C_out, layer.C_per_group, layer.K)
    gcol = np.zeros((layer.B, layer.C_in, layer.K, layer.H_out, layer.W_out))
    for co in range(layer.C_out):
        channels, first = layer.weight_group_channels(co)
        for c in channels:
            for k in range(layer.K):
                gcol[:, c, k] += w[co, c - first, k] * grad_out[:, co]
    return gcol


def scatter_to_corners(grad_plane, p_y, p_x, share):
    """grad_input of one valid sample: corner (a, b) inside the image receives share · corner_weight."""
    H, W = grad_plane.shape
    y0, x0 = math.floor(p_y), math.floor(p_x)
    l_y, l_x = p_y - y0, p_x - x0
    for corner in range(4):
        y, x = y0 + corner // 2, x0 + corner % 2
        if 0 <= y < H and 0 <= x < W:
            grad_plane[y, x] += share * corner_weight(l_y, l_x, corner)


def deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) for ∂L/∂out = grad_output:

    * grad_bias[co] = Σ_{b,i,j} grad_out[b, co, i, j] (None without a bias);
    * grad_weight[co, c_local, k] = Σ_{b,i,j} grad_out[b, co, i, j] · col[b, c, k, i, j];
    * per sample and channel c of its offset group, with gcol = ∂L/∂col:
      grad_input: a valid sample scatters Δm·gcol·corner_weight into each in-image corner;
      grad_offset (Δp_y, Δp_x) += Δm·gcol·(∂S/∂p_y, ∂S/∂p_x); grad_mask (Δm) += gcol·S (None for v1).
    """
    grad_out, x, offset, weight, bias, mask = as_float64(grad_output, input, offset, weight, bias, mask)
    layer = Layer(x, offset, weight, stride, padding, dilation)
    col = columns(layer, x, offset, mask)
    gcol = gradient_columns(layer, weight, grad_out)

    grad_bias = None if bias is None else grad_out.sum(axis=(0, 2, 3))
    grad_weight = np.zeros((layer.C_out, layer.C_per_group, layer.K))
    for co in range(layer.C_out):
        channels, first = layer.weight_group_channels(co)
        for c in channels:
            for k in range(layer.K):
                grad_weight[co, c - first, k] = np.sum(grad_out[:, co] * col[:, c, k])

    grad_input = np.zeros_like(x)
    grad_offset = np.zeros_like(offset)
    grad_mask = None if mask is None else np.zeros_like(mask)
    for b, g, k, i, j in layer.samples():
        p_y, p_x = layer.p(offset, b, g, k, i, j)
        delta_m = layer.delta_m(mask, b, g, k, i, j)
        for c in layer.offset_group_channels(g):
            if dcn_is_valid(p_y, p_x, layer.H, layer.W):
                scatter_to_corners(grad_input[b, c], p_y, p_x, delta_m * gcol[b, c, k, i, j])
            dS_dp_y, dS_dp_x = S_gradient(x[b, c], p_y, p_x)
            grad_offset[b, g * 2 * layer.K + 2 * k, i, j] += delta_m * gcol[b, c, k, i, j] * dS_dp_y
            grad_offset[b, g * 2 * layer.K + 2 * k + 1, i, j] += delta_m * gcol[b, c, k, i, j] * dS_dp_x
            if grad_mask is not None:
                grad_mask[b, g * layer.K + k, i, j] += gcol[b, c, k, i, j] * S(x[b, c], p_y, p_x)

    dtype = input.dtype
    return (grad_input.astype(dtype), grad_offset.astype(dtype), grad_weight.reshape(weight.shape).astype(dtype),
            None if grad_bias is None else grad_bias.astype(dtype),
            None if grad_mask is None else grad_mask.astype(dtype))
