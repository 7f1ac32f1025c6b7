"""Deformable convolution v1/v2 on the CPU and CUDA (docs/specification.md §1): the launchers.

A deformable convolution is an ordinary convolution whose im2col step samples the input at
learned fractional positions. With K = kh·kw taps, G weight groups and G_off offset groups:

    layout     padded[b, y, x, c]: the input zero-padded by one pixel, channels last
    locate     for every sample (b, g, k) at every output position: where p = p0 + p_k + Δp falls
               on the padded input (top_left corner, l_y, l_x), once for all the channels of
               offset group g
    forward    col[b, group, position, k, c'] = m · S(x[b, c], p)              (deformable im2col)
               out[b, group] = weight_group · col[b, group]ᵀ
                   weight_group (C_out/G, K·C_in/G), col[b, group] (H_out·W_out, K·C_in/G)
    backward   grad_weight_group += Σ_b grad_out[b, group] · col[b, group]
               gcol[b, group] = grad_out[b, group]ᵀ · weight_group              (∂L/∂col)
               grad_input  += m · gcol · w_ab at each corner                   (deformable col2im)
               grad_offset  = Σ_{c in offset group} m · gcol · ∂S/∂p           (offset/mask gradient)
               grad_mask    = Σ_{c in offset group} gcol · S

The formulas are `deform_conv_math`'s (S, ∂S/∂p and w_ab `bilinear`'s), the layouts
`deform_conv_layout`'s. Reading a padded input makes every corner of a valid sample an in-bounds
read that is 0 in the padding, and grad_input is accumulated on padded images whose border is
then dropped. The layout step is a KernelPair (one prange iteration per row (b, y) of the image on
the CPU, one thread per element on a GPU). The GEMMs around the sampling are organised
differently on each target, in a module each: `deform_conv_cpu` samples cache-sized tiles and
multiplies them inside one parallel kernel, `deform_conv_cuda` fills the column buffer of a batch
chunk for cuBLAS. Tile and chunk sizes change no result beyond the rounding of grad_weight's sum.

Must match dcn_numba.reference.deform_conv (tests/kernels/test_deform_conv_kernels.py checks it).
"""

import math

from numba import cuda, prange

from dcn_numba.runtime.arrays import array_module
from dcn_numba.kernels import deform_conv_layout
from dcn_numba.kernels._targets import COUNT, FLAG, FLAT, KernelPair, cpu_kernel, cuda_kernel, for_cuda, run
from dcn_numba.kernels.deform_conv_cpu import backward_in_tiles, forward_in_tiles
from dcn_numba.kernels.deform_conv_cuda import backward_in_chunks, forward_in_chunks
from dcn_numba.kernels.deform_conv_layout import GEOMETRY, DeformConvGeometry, dcn_padded_image, dcn_padded_pixel


def conv_geometry(input, offset, weight, stride, padding, dilation):
    """The DeformConvGeometry of validated arrays and (h, w) pairs."""
    _, C_in, H, W = input.shape
    _, offset_channels, H_out, W_out = offset.shape
    kh, kw = weight.shape[2:]
    offset_groups = offset_channels // (2 * kh * kw)
    groups = C_in // weight.shape[1]
    return DeformConvGeometry(C_in, H, W, offset_groups, kh, kw, H_out, W_out, *stride, *padding,
                              *dilation, groups, math.gcd(C_in // groups, C_in // offset_groups))


# ---------------------------------------------------------------------------------------------
# The layout step, which both targets take alike: a KernelPair
# ---------------------------------------------------------------------------------------------

layout_gpu = for_cuda(deform_conv_layout)  # the layout's functions as the CUDA kernel reaches them


@cpu_kernel
def channels_last_copy_cpu(n_rows, planes, padded, to_padded, geometry):
    """padded[b, y + 1, x + 1, c] = planes[b, c, y, x] when to_padded (the border of `padded` is
    left as it is: zeros), else planes[b, c, y, x] = padded[b, y + 1, x + 1, c] (the adjoint,
    without the border: the gradient of the padding is dropped); per row (b, y), n_rows = B·H."""
    C, H, W = geometry.C_in, geometry.H, geometry.W
    for row in prange(n_rows):
        b, y = row // H, row % H
        image = dcn_padded_image(b, geometry)
        for c in range(C):
            plane_row = ((b * C + c) * H + y) * W
            for x in range(W):
                pixel = image + dcn_padded_pixel(y, x, W) * C + c
                if to_padded:
                    padded[pixel] = planes[plane_row + x]
                else:
                    planes[plane_row + x] = padded[pixel]


@cuda_kernel(COUNT, FLAT, FLAT, FLAG, GEOMETRY)
def channels_last_copy_cuda(n_items, planes, padded, to_padded, geometry):
    """padded[b, y + 1, x + 1, c] = planes[b, c, y, x] when to_padded, else the reverse; one
    thread per element of planes."""
    C, H, W = geometry.C_in, geometry.H, geometry.W
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, c, y, x = index // (C * H * W), index // (H * W) % C, index // W % H, index % W
        pixel = layout_gpu.dcn_padded_image(b, geometry) + layout_gpu.dcn_padded_pixel(y, x, W) * C + c
        if to_padded:
            padded[pixel] = planes[index]
        else:
            planes[index] = padded[pixel]


CHANNELS_LAST_COPY = KernelPair(channels_last_copy_cpu, channels_last_copy_cuda)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def channels_last_padded(backend, geometry, input):
    """input (B, C_in, H, W) → (B, H + 2, W + 2, C_in), channels last with a border of zeros: the
    image the DCNv2 rule interpolates, flat."""
    xp = array_module(input)
    B = input.shape[0]
    padded = xp.zeros(B * (geometry.H + 2) * (geometry.W + 2) * geometry.C_in, dtype=input.dtype)
    run(backend, CHANNELS_LAST_COPY, B * geometry.H, input.size, input.reshape(-1), padded, True, geometry)
    return padded


def weight_rows(weight, groups):
    """weight (C_out, C_in/G, kh, kw) → (G, C_out/G, K·C_in/G) laid out (tap, channel), as the rows
    of col: the GEMM matrix of each group."""
    xp = array_module(weight)
    C_out, group_channels, kh, kw = weight.shape
    rows = weight.reshape(groups, C_out // groups, group_channels, kh * kw).transpose(0, 1, 3, 2)
    return xp.ascontiguousarray(rows).reshape(groups, C_out // groups, kh * kw * group_channels)


def weight_from_rows(rows, weight_shape):
    """The inverse of `weight_rows`: (G, C_out/G, K·C_in/G) → (C_out, C_in/G, kh, kw)."""
    xp = array_module(rows)
    C_out, group_channels, kh, kw = weight_shape
    G = rows.shape[0]
    return xp.ascontiguousarray(
        rows.reshape(G, C_out // G, kh * kw, group_channels).transpose(0, 1, 3, 2)).reshape(weight_shape)


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, backend,
                  max_col_buffer_bytes=None):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_conv.
    max_col_buffer_bytes: on a GPU the column buffer's budget (deform_conv_cuda.MAX_COL_BUFFER_BYTES
    when None); on the CPU a cap on a tile's column block below deform_conv_cpu.CPU_TILE_BYTES."""
    xp = array_module(input)
    geometry = conv_geometry(input, offset, weight, stride, padding, dilation)
    weights = weight_rows(weight, geometry.groups)
    padded = channels_last_padded(backend, geometry, input)
    output = xp.empty((input.shape[0], weight.shape[0], geometry.H_out, geometry.W_out), dtype=input.dtype)
    if backend == "cpu":
        forward_in_tiles(geometry, padded, offset, weights, bias, mask, output, max_col_buffer_bytes)
    else:
        forward_in_chunks(geometry, padded, offset, weights, bias, mask, output, max_col_buffer_bytes)
    return output


def deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask,
                           backend, max_col_buffer_bytes=None):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) on the "cpu" or "cuda" backend.

    grad_input is accumulated on the channels-last padded images, whose border (the gradient of
    the padding) is dropped when they are laid out back as (B, C_in, H, W).
    """
    xp = array_module(input)
    geometry = conv_geometry(input, offset, weight, stride, padding, dilation)
    weights = weight_rows(weight, geometry.groups)
    padded = channels_last_padded(backend, geometry, input)
    backward = backward_in_tiles if backend == "cpu" else backward_in_chunks
    grad_padded, grad_offset, grad_weights, grad_mask = backward(
        geometry, padded, offset, weights, grad_output, mask, max_col_buffer_bytes)
    grad_input = xp.empty_like(input)
    run(backend, CHANNELS_LAST_COPY, input.shape[0] * geometry.H, input.size, grad_input.reshape(-1), grad_padded,
        False, geometry)
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3))
    return grad_input, grad_offset, weight_from_rows(grad_weights, weight.shape), grad_bias, grad_mask
