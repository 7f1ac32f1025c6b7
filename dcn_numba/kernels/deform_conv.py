"""Deformable convolution v1/v2 kernels (docs/specification.md §1) for the CPU and CUDA, and their launchers.

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

S, ∂S/∂p and w_ab are the shared scalar functions of `sampling`, and so are the layouts
(`dcn_table_index`, `dcn_column_index`, `dcn_padded_image`). Why channels last: every channel of
an offset group shares a sample's corners and weights, so with the channels of a pixel side by
side the innermost loops stream contiguous channels through fixed weights (vector loads on the
CPU, coalesced loads on a GPU). The channels of one weight group and one offset group form runs
of `channel_run` = gcd(C_in/G, C_in/G_off) consecutive channels, the innermost loops' length.
Reading a padded input makes every corner of a valid sample an in-bounds read that is 0 in the
padding, and grad_input is accumulated on padded images whose border is then dropped.

The targets differ in how they organise the GEMMs around the sampling. On the CPU one parallel
kernel runs the forward tile by tile: it samples a tile of output positions into a column block
private to its iteration and multiplies it by the weights while the block is still in the core's
cache (BLAS on that core's thread), so the column buffer of the whole layer never exists; the
backward does the same per tile (im2col, the two GEMMs, then col2im and the offset/mask gradient
in one pass), each iteration owning whole images and so every gradient of them. On a GPU im2col
fills the column buffer of a batch chunk, cuBLAS multiplies it, and col2im and the offset/mask
gradient are kernels of their own. Tile and chunk sizes change no result beyond the rounding of
grad_weight's sum.

Flat shapes inside the kernels (b counts the images of the chunk a kernel is given):
    padded (B, H + 2, W + 2, C_in), offset (B, 2·G_off·K, H_out, W_out), mask (B, G_off·K, H_out, W_out),
    top_left, l_y, l_x (B, H_out·W_out, G_off, K), col and gcol (B, G, H_out·W_out, K, C_in/G);
    a CPU tile holds the (G, positions, K, C_in/G) part of col of one image.

Must match dcn_numba.reference.deform_conv (tests/test_deform_conv_kernels.py checks it).

Who owns which output:
    layout            CPU: one prange iteration per row (b, y) of the image    CUDA: one thread per element
    locate            CPU: each tile its own samples                           CUDA: one thread per sample
    forward           CPU: one iteration per share of the tiles (positions of one image)
                      CUDA: im2col one thread per col element, then cuBLAS
    backward          CPU: one iteration per share of the images, tile by tile: it alone writes
                      those images' gradients, so no races; grad_weight is summed per iteration
                      CUDA: col2im one thread per gcol element, atomic adds into its four corners;
                      offset/mask gradient one thread per sample (b, position, g, k)
"""

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda, prange

from dcn_numba.runtime.arrays import array_module
from dcn_numba.kernels import sampling
from dcn_numba.kernels._targets import (COUNT, FLAG, FLAT, INDICES, KernelPair, cpu_kernel, cuda_kernel,
                                        for_cuda, geometry_of, optional_argument, run, run_cpu_calling_blas,
                                        run_cuda, shared)
from dcn_numba.kernels.sampling import (dcn_column_from_corners, dcn_column_index, dcn_input_gradient_term,
                                        dcn_locate, dcn_modulation, dcn_offset_mask_terms, dcn_padded_image,
                                        dcn_padded_pixel, dcn_sample_number, dcn_store_sample_gradient,
                                        dcn_table_index, dcn_tap_position, padded_corner)

# How many bytes the column buffer of a batch chunk may take on a GPU: a memory knob (results do
# not depend on it beyond rounding); bigger chunks make bigger cuBLAS GEMMs.
MAX_COL_BUFFER_BYTES = 1 << 28
# The column block of one CPU tile: small enough to stay in a core's cache (1–2 MB of L2 on
# current x86 server cores) between its sampling and its GEMMs, big enough to give those GEMMs
# hundreds of positions.
CPU_TILE_BYTES = 1 << 19


class DeformConvGeometry(NamedTuple):
    """Every size a kernel needs, passed to kernels as one tuple of integers."""

    C_in: int
    H: int
    W: int
    offset_groups: int
    kh: int
    kw: int
    H_out: int
    W_out: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    groups: int
    channel_run: int  # gcd(C_in/G, C_in/G_off): consecutive channels of one weight and one offset group


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
# CPU kernels: parallel loops whose iterations own disjoint parts of the output
# ---------------------------------------------------------------------------------------------


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


@shared
def tile_table_index(b, position, g, k, first, geometry):
    """Where sample (b, g, k) at an output position lies in the tables of a CPU tile whose first
    output position is `first`: its `dcn_table_index` counted from the tile's first entry."""
    return dcn_table_index(b, position, g, k, geometry) - dcn_table_index(b, first, 0, 0, geometry)


@shared
def locate_positions(offset, b, first, stop, tables, geometry):
    """(top_left, l_y, l_x) of every sample of image b at the output positions first..stop−1, into
    the worker's `tables` at `tile_table_index`: a CPU tile locates its own samples."""
    top_left, l_y, l_x = tables
    for position in range(first, stop):
        i, j = position // geometry.W_out, position % geometry.W_out
        for g in range(geometry.offset_groups):
            for k in range(geometry.kh * geometry.kw):
                p_y, p_x = dcn_tap_position(offset, dcn_sample_number(b, g, k, geometry), i, j, geometry)
                here = tile_table_index(b, position, g, k, first, geometry)
                top_left[here], l_y[here], l_x[here] = dcn_locate(p_y, p_x, geometry.H, geometry.W)


@shared
def corner_rows(padded, image, top_left, W, C, first_channel, length):
    """The four corners' values of channels first_channel..first_channel + length − 1 of a
    located sample, as four contiguous rows of the channels-last padded input (see
    `sampling.padded_corners` for a sample that reads no pixel)."""
    top_left = max(top_left, 0)
    start = image + first_channel
    v00 = start + padded_corner(top_left, W, 0) * C
    v01 = start + padded_corner(top_left, W, 1) * C
    v10 = start + padded_corner(top_left, W, 2) * C
    v11 = start + padded_corner(top_left, W, 3) * C
    return (padded[v00:v00 + length], padded[v01:v01 + length], padded[v10:v10 + length],
            padded[v11:v11 + length])


@shared
def worker_buffers(positions_per_tile, dtype, geometry):
    """A worker's own memory for one tile at a time: its column buffer (K·C_in values per output
    position) and the (top_left, l_y, l_x) tables of its located samples."""
    samples = positions_per_tile * geometry.offset_groups * geometry.kh * geometry.kw
    return (np.empty(positions_per_tile * geometry.kh * geometry.kw * geometry.C_in, dtype=dtype),
            np.empty(samples, dtype=np.int64), np.empty(samples, dtype=dtype), np.empty(samples, dtype=dtype))


@shared
def fill_columns(padded, tables, mask, use_mask, b, group, first, stop, columns, geometry):
    """The rows of weight group `group` in a tile's column buffer (G, positions, K, C_in/G) (see
    `dcn_column_index`): m · S for the output positions first..stop−1 of image b, their samples
    located in the tile's `tables`. The CPU's walk of im2col: per sample, its run of channels
    shares the corners' places and weights, and the innermost loop streams those contiguous
    channels (over row views, whose indices start at 0, so that Numba adds no negative-index
    wraparound and the loop vectorises)."""
    top_left, l_y, l_x = tables
    HW_out = geometry.H_out * geometry.W_out
    run_length = geometry.channel_run
    channels_per_group = geometry.C_in // geometry.groups
    channels_per_offset_group = geometry.C_in // geometry.offset_groups
    image = dcn_padded_image(b, geometry)
    for position in range(first, stop):
        for k in range(geometry.kh * geometry.kw):
            for channel_run in range(channels_per_group // run_length):
                first_channel = group * channels_per_group + channel_run * run_length
                g = first_channel // channels_per_offset_group
                here = tile_table_index(b, position, g, k, first, geometry)
                corner, fraction_y, fraction_x = top_left[here], l_y[here], l_x[here]
                m = dcn_modulation(mask, use_mask, dcn_sample_number(b, g, k, geometry), position, HW_out)
                v00, v01, v10, v11 = corner_rows(padded, image, corner, geometry.W, geometry.C_in,
                                                 first_channel, run_length)
                row = dcn_column_index(0, group, position - first, k, channel_run * run_length, stop - first,
                                       geometry)
                out = columns[row:row + run_length]
                for c in range(run_length):
                    out[c] = dcn_column_from_corners(v00[c], v01[c], v10[c], v11[c], fraction_y, fraction_x,
                                                     corner, m)


@shared
def sample_tile(padded, offset, mask, use_mask, b, first, stop, tables, columns, geometry):
    """What both passes do first with a tile (output positions first..stop−1 of image b): locate
    its samples into the worker's `tables`, then fill every weight group's rows of its column
    buffer with m · S."""
    locate_positions(offset, b, first, stop, tables, geometry)
    for group in range(geometry.groups):
        fill_columns(padded, tables, mask, use_mask, b, group, first, stop, columns, geometry)


@shared
def group_rows(columns, group, n, group_taps):
    """The rows (n, K·C_in/G) of weight group `group` in the column buffer of a tile of n output
    positions: the matrix its GEMMs read."""
    return columns[group * n * group_taps:(group + 1) * n * group_taps].reshape((n, group_taps))


@cpu_kernel
def deformable_conv_tiles_cpu(n_workers, n_tiles, padded, offset, mask, use_mask, weights, bias, use_bias,
                              output, positions_per_tile, geometry):
    """The forward, out[b, o, position] = Σ weight_group[o] · col[b, group, position] + bias[o],
    tile by tile: a tile is `positions_per_tile` output positions of one image, and each of the
    n_workers parallel iterations takes a contiguous share of the n_tiles tiles. For each tile
    a worker samples the tile's column block (G, positions, K·C_in/G) into memory of its own,
    allocated once for all its tiles, and multiplies it group by group (BLAS, on the worker's thread)
    while it is still in cache. Tiles are independent, so the results do not depend on
    n_workers. weights (G, C_out/G, K·C_in/G), laid out like the column rows (`weight_rows`)."""
    HW_out = geometry.H_out * geometry.W_out
    G, group_outputs, group_taps = weights.shape
    tiles_per_image = (HW_out + positions_per_tile - 1) // positions_per_tile
    for worker in prange(n_workers):
        columns, top_left, l_y, l_x = worker_buffers(positions_per_tile, weights.dtype, geometry)
        tables = (top_left, l_y, l_x)
        products = np.empty(group_outputs * positions_per_tile, dtype=weights.dtype)
        for tile in range(worker * n_tiles // n_workers, (worker + 1) * n_tiles // n_workers):
            b = tile // tiles_per_image
            first = tile % tiles_per_image * positions_per_tile
            stop = min(first + positions_per_tile, HW_out)
            n = stop - first
            sample_tile(padded, offset, mask, use_mask, b, first, stop, tables, columns, geometry)
            product = products[:group_outputs * n].reshape((group_outputs, n))
            for group in range(G):
                np.dot(weights[group], group_rows(columns, group, n, group_taps).T, product)
                for o in range(group_outputs):
                    channel = group * group_outputs + o
                    out = (b * G * group_outputs + channel) * HW_out + first
                    shift = bias[channel] if use_bias else product.dtype.type(0)
                    for position in range(n):
                        output[out + position] = product[o, position] + shift


@shared
def backpropagate_tile(padded, tables, mask, use_mask, b, first, stop, gcol, grad_padded, grad_offset, grad_mask,
                       geometry):
    """col2im and the offset/mask gradient of the output positions first..stop−1 of image b, whose
    gcol the tile holds as rows (G, positions, K·C_in/G), in one pass over each sample's runs of
    channels: grad_padded[b] += m · gcol · w_ab at the four corners of a valid sample, and
    ∂L/∂Δp_d = Σ_c m · gcol · ∂S/∂p_d, ∂L/∂m = Σ_c gcol · S over the channels of its offset group,
    summed in float64 and stored once."""
    top_left, l_y, l_x = tables
    HW_out = geometry.H_out * geometry.W_out
    run_length = geometry.channel_run
    channels_per_group = geometry.C_in // geometry.groups
    channels_per_offset_group = geometry.C_in // geometry.offset_groups
    n = stop - first
    image = dcn_padded_image(b, geometry)
    for position in range(first, stop):
        for g in range(geometry.offset_groups):
            for k in range(geometry.kh * geometry.kw):
                s = dcn_sample_number(b, g, k, geometry)
                here = tile_table_index(b, position, g, k, first, geometry)
                corner, fraction_y, fraction_x = top_left[here], l_y[here], l_x[here]
                m = dcn_modulation(mask, use_mask, s, position, HW_out)
                grad_p_y = 0.0
                grad_p_x = 0.0
                grad_m = 0.0
                for channel_run in range(channels_per_offset_group // run_length):
                    first_channel = g * channels_per_offset_group + channel_run * run_length
                    group = first_channel // channels_per_group
                    source = dcn_column_index(0, group, position - first, k,
                                              first_channel - group * channels_per_group, n, geometry)
                    grad_samples = gcol[source:source + run_length]
                    v00, v01, v10, v11 = corner_rows(padded, image, corner, geometry.W, geometry.C_in,
                                                     first_channel, run_length)
                    for c in range(run_length):
                        term_y, term_x, term_m = dcn_offset_mask_terms(
                            v00[c], v01[c], v10[c], v11[c], fraction_y, fraction_x, corner, m, grad_samples[c])
                        grad_p_y += term_y
                        grad_p_x += term_x
                        grad_m += term_m
                    if corner < 0:
                        continue  # a sample that reads no pixel sends no gradient to the input
                    for which in range(4):
                        target = image + padded_corner(corner, geometry.W, which) * geometry.C_in + first_channel
                        grad_pixel = grad_padded[target:target + run_length]
                        for c in range(run_length):
                            grad_pixel[c] += dcn_input_gradient_term(grad_samples[c], m, fraction_y, fraction_x,
                                                                     which)
                dcn_store_sample_gradient(grad_offset, grad_mask, use_mask, s, position, HW_out,
                                          grad_p_y, grad_p_x, grad_m)


@cpu_kernel(reassociate=True)
def deformable_conv_backward_cpu(n_workers, n_images, padded, offset, mask, use_mask, weights, grad_output,
                                 grad_padded, grad_offset, grad_mask, grad_weight_workers, positions_per_tile,
                                 geometry):
    """The backward, tile by tile as the forward (`deformable_conv_tiles_cpu`): each of the n_workers
    parallel iterations owns a contiguous share of the n_images images, and so every gradient of
    them, and for each tile of `positions_per_tile` output positions of its images
        locates the tile's samples and samples col (G, positions, K·C_in/G) into memory of its own,
        grad_weight_workers[worker, group] += grad_out_tile[group] · col[group]        (BLAS)
        gcol[group] = grad_out_tile[group]ᵀ · weight_group, over col                   (BLAS)
        col2im and the offset/mask gradient of the tile (`backpropagate_tile`),
    while the tile is in cache. The offset/mask sums may be reassociated (`cpu_kernel`) so that
    they vectorise."""
    HW_out = geometry.H_out * geometry.W_out
    G, group_outputs, group_taps = weights.shape
    for worker in prange(n_workers):
        columns, top_left, l_y, l_x = worker_buffers(positions_per_tile, weights.dtype, geometry)
        tables = (top_left, l_y, l_x)
        grads = np.empty(group_outputs * positions_per_tile, dtype=weights.dtype)
        product = np.empty((group_outputs, group_taps), dtype=weights.dtype)
        for b in range(worker * n_images // n_workers, (worker + 1) * n_images // n_workers):
            for first in range(0, HW_out, positions_per_tile):
                stop = min(first + positions_per_tile, HW_out)
                n = stop - first
                sample_tile(padded, offset, mask, use_mask, b, first, stop, tables, columns, geometry)
                grad_block = grads[:group_outputs * n].reshape((group_outputs, n))
                for group in range(G):
                    block = group_rows(columns, group, n, group_taps)
                    for o in range(group_outputs):
                        row = (b * G * group_outputs + group * group_outputs + o) * HW_out + first
                        grad_block[o] = grad_output[row:row + n]
                    np.dot(grad_block, block, product)
                    grad_weight_workers[worker, group] += product
                    np.dot(grad_block.T, weights[group], block)  # the tile now holds gcol = ∂L/∂col
                backpropagate_tile(padded, tables, mask, use_mask, b, first, stop, columns, grad_padded,
                                   grad_offset, grad_mask, geometry)


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops over the same index spaces, one thread per element
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(sampling)
GEOMETRY = geometry_of(DeformConvGeometry)


@cuda_kernel(COUNT, FLAT, FLAT, FLAG, GEOMETRY)
def channels_last_copy_cuda(n_items, planes, padded, to_padded, geometry):
    """padded[b, y + 1, x + 1, c] = planes[b, c, y, x] when to_padded, else the reverse; one
    thread per element of planes."""
    C, H, W = geometry.C_in, geometry.H, geometry.W
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, c, y, x = index // (C * H * W), index // (H * W) % C, index // W % H, index % W
        pixel = gpu.dcn_padded_image(b, geometry) + gpu.dcn_padded_pixel(y, x, W) * C + c
        if to_padded:
            padded[pixel] = planes[index]
        else:
            planes[index] = padded[pixel]


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, GEOMETRY)
def locate_samples_cuda(n_items, offset, top_left, l_y, l_x, geometry):
    """(top_left, l_y, l_x) of every sample; one thread per table entry (b, position, g, k)."""
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, position, g, k = gpu.dcn_table_coordinates(here, geometry)
        p_y, p_x = gpu.dcn_tap_position(offset, gpu.dcn_sample_number(b, g, k, geometry),
                                        position // geometry.W_out, position % geometry.W_out, geometry)
        top_left[here], l_y[here], l_x[here] = gpu.dcn_locate(p_y, p_x, geometry.H, geometry.W)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_im2col_cuda(n_items, padded, top_left, l_y, l_x, mask, use_mask, col, geometry):
    """col[b, group, position, k, c'] = m · S(x[b, c], p); one thread per element of col, the
    threads of a warp reading neighbouring channels of the same corners."""
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, group, position, k, channel_in_group, c, g = gpu.dcn_column_coordinates(index, geometry)
        here = gpu.dcn_table_index(b, position, g, k, geometry)
        m = gpu.dcn_modulation(mask, use_mask, gpu.dcn_sample_number(b, g, k, geometry), position, HW_out)
        corner = top_left[here]
        v00, v01, v10, v11 = gpu.padded_corners(padded, gpu.dcn_padded_image(b, geometry) + c, corner, geometry.W,
                                                geometry.C_in)
        col[index] = gpu.dcn_column_from_corners(v00, v01, v10, v11, l_y[here], l_x[here], corner, m)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_col2im_cuda(n_items, gcol, top_left, l_y, l_x, mask, use_mask, grad_padded, geometry):
    """grad_padded[b, ·, ·, c] += m · gcol · w_ab at the four corners; one thread per gcol element."""
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, group, position, k, channel_in_group, c, g = gpu.dcn_column_coordinates(index, geometry)
        here = gpu.dcn_table_index(b, position, g, k, geometry)
        corner = top_left[here]
        if corner < 0:
            continue
        m = gpu.dcn_modulation(mask, use_mask, gpu.dcn_sample_number(b, g, k, geometry), position, HW_out)
        image = gpu.dcn_padded_image(b, geometry) + c
        for which in range(4):
            # Atomic: the samples of other taps and outputs may share this pixel.
            cuda.atomic.add(grad_padded, image + gpu.padded_corner(corner, geometry.W, which) * geometry.C_in,
                            gpu.dcn_input_gradient_term(gcol[index], m, l_y[here], l_x[here], which))


@cuda_kernel(COUNT, FLAT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, FLAT, GEOMETRY)
def offset_mask_gradient_cuda(n_items, padded, gcol, top_left, l_y, l_x, mask, use_mask,
                              grad_offset, grad_mask, geometry):
    """grad_offset and grad_mask of one sample (b, g, k) at one output position per thread, summed
    in float64 registers over the channels of offset group g: each thread owns its three outputs."""
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.groups
    channels_per_offset_group = geometry.C_in // geometry.offset_groups
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, position, g, k = gpu.dcn_table_coordinates(here, geometry)
        s = gpu.dcn_sample_number(b, g, k, geometry)
        m = gpu.dcn_modulation(mask, use_mask, s, position, HW_out)
        corner, fraction_y, fraction_x = top_left[here], l_y[here], l_x[here]
        image = gpu.dcn_padded_image(b, geometry)
        grad_p_y = 0.0
        grad_p_x = 0.0
        grad_m = 0.0
        for c in range(g * channels_per_offset_group, (g + 1) * channels_per_offset_group):
            group = c // channels_per_group
            v00, v01, v10, v11 = gpu.padded_corners(padded, image + c, corner, geometry.W, geometry.C_in)
            term_y, term_x, term_m = gpu.dcn_offset_mask_terms(
                v00, v01, v10, v11, fraction_y, fraction_x, corner, m,
                gcol[gpu.dcn_column_index(b, group, position, k, c - group * channels_per_group, HW_out, geometry)])
            grad_p_y += term_y
            grad_p_x += term_x
            grad_m += term_m
        gpu.dcn_store_sample_gradient(grad_offset, grad_mask, use_mask, s, position, HW_out, grad_p_y, grad_p_x, grad_m)


# ---------------------------------------------------------------------------------------------
# Launchers: the layout, the located samples, then the forward or the chunked backward
# ---------------------------------------------------------------------------------------------

# The step both targets take alike; the GEMM pipelines (tiles on the CPU, chunks on a GPU) have
# kernels of their own on each target, over the same shared functions.
CHANNELS_LAST_COPY = KernelPair(channels_last_copy_cpu, channels_last_copy_cuda)


def batch_chunks(batch, bytes_per_image, max_col_buffer_bytes):
    """(start, stop) ranges of images whose column buffer fits the budget (at least one image)."""
    size = max(1, max_col_buffer_bytes // max(1, bytes_per_image))
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]


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


def located_samples(geometry, offset, start, stop, tables):
    """(top_left, l_y, l_x) of the images start:stop (GPU), in `tables`, buffers big enough."""
    size = (stop - start) * geometry.H_out * geometry.W_out * geometry.offset_groups * geometry.kh * geometry.kw
    located = tuple(table[:size] for table in tables)
    run_cuda(locate_samples_cuda, size, offset[start:stop].reshape(-1), *located, geometry)
    return located


class Chunk(NamedTuple):
    """The images start:stop of a call, their located samples and their column buffer."""

    start: int
    stop: int
    top_left: object
    l_y: object
    l_x: object
    mask: object
    use_mask: bool
    col: object


def chunks(geometry, offset, mask, max_col_buffer_bytes):
    """Yield each Chunk of the batch (GPU) with its samples located. One set of buffers, sized
    for the largest chunk, serves every chunk in turn."""
    xp = array_module(offset)
    HW_out = geometry.H_out * geometry.W_out
    K = geometry.kh * geometry.kw
    col_per_image = geometry.C_in * K * HW_out
    budget = MAX_COL_BUFFER_BYTES if max_col_buffer_bytes is None else max_col_buffer_bytes
    ranges = batch_chunks(offset.shape[0], col_per_image * offset.itemsize, budget)
    largest = max((stop - start for start, stop in ranges), default=0)
    table_size = largest * HW_out * geometry.offset_groups * K
    tables = (xp.empty(table_size, dtype=np.int64), xp.empty(table_size, dtype=offset.dtype),
              xp.empty(table_size, dtype=offset.dtype))
    col = xp.empty(largest * col_per_image, dtype=offset.dtype)
    for start, stop in ranges:
        located = located_samples(geometry, offset, start, stop, tables)
        mask_chunk, use_mask = optional_argument(
            xp, None if mask is None else mask[start:stop].reshape(-1), 1, offset.dtype)
        yield Chunk(start, stop, *located, mask_chunk, use_mask, col[:(stop - start) * col_per_image])


def padded_images(padded, geometry, start, stop):
    """The flat channels-last padded images start:stop."""
    per_image = (geometry.H + 2) * (geometry.W + 2) * geometry.C_in
    return padded[start * per_image:stop * per_image]


def deformable_im2col(geometry, padded, chunk):
    """Fill chunk.col (B_chunk·G·H_out·W_out·K·C_in/G,) with m · S for the images of the chunk (GPU)."""
    run_cuda(deformable_im2col_cuda, chunk.col.size, padded_images(padded, geometry, chunk.start, chunk.stop),
             chunk.top_left, chunk.l_y, chunk.l_x, chunk.mask, chunk.use_mask, chunk.col, geometry)


def positions_per_tile(geometry, itemsize, max_col_buffer_bytes):
    """How many output positions one CPU forward tile samples: its column block (K·C_in values
    per position) within CPU_TILE_BYTES, or within the given budget when that is smaller."""
    budget = CPU_TILE_BYTES if max_col_buffer_bytes is None else min(CPU_TILE_BYTES, max_col_buffer_bytes)
    per_position = geometry.kh * geometry.kw * geometry.C_in * itemsize
    return max(1, min(geometry.H_out * geometry.W_out, budget // per_position))


def forward_in_tiles(geometry, padded, offset, weights, bias, mask, output, max_col_buffer_bytes):
    """The CPU forward: locate, sample and multiply tile by tile in one kernel."""
    B = offset.shape[0]
    tile = positions_per_tile(geometry, offset.itemsize, max_col_buffer_bytes)
    n_tiles = B * -(-geometry.H_out * geometry.W_out // tile)
    mask, use_mask = optional_argument(np, None if mask is None else mask.reshape(-1), 1, offset.dtype)
    bias, use_bias = optional_argument(np, bias, 1, offset.dtype)
    run_cpu_calling_blas(deformable_conv_tiles_cpu, min(n_tiles, numba.get_num_threads()), n_tiles, padded,
                         offset.reshape(-1), mask, use_mask, weights, bias, use_bias, output.reshape(-1), tile,
                         geometry)


def forward_in_chunks(geometry, padded, offset, weights, bias, mask, output, max_col_buffer_bytes):
    """The GPU forward: im2col of a batch chunk, then one batched GEMM (cuBLAS) per chunk."""
    xp = array_module(offset)
    G, group_outputs, group_taps = weights.shape
    HW_out = geometry.H_out * geometry.W_out
    for chunk in chunks(geometry, offset, mask, max_col_buffer_bytes):
        n = chunk.stop - chunk.start
        deformable_im2col(geometry, padded, chunk)
        xp.matmul(weights, chunk.col.reshape(n, G, HW_out, group_taps).swapaxes(2, 3),
                  out=output[chunk.start:chunk.stop].reshape(n, G, group_outputs, HW_out))
    if bias is not None:
        output += bias.reshape(1, -1, 1, 1)


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, backend,
                  max_col_buffer_bytes=None):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_conv.
    max_col_buffer_bytes: on a GPU the column buffer's budget (MAX_COL_BUFFER_BYTES when None);
    on the CPU a cap on a tile's column block below CPU_TILE_BYTES."""
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


def backward_in_tiles(geometry, padded, offset, weights, grad_output, mask, max_col_buffer_bytes):
    """The CPU backward: (grad_padded, grad_offset, grad_weight rows, grad_mask) from one kernel
    over tiles. grad_weight is summed by each worker over its images, then over the workers in
    float64 (rounded once): its last bits depend on the number of threads."""
    B = offset.shape[0]
    tile = positions_per_tile(geometry, offset.itemsize, max_col_buffer_bytes)
    grad_padded = np.zeros_like(padded)
    grad_offset = np.empty_like(offset)  # every entry is written
    grad_mask = None if mask is None else np.empty_like(mask)
    mask_flat, use_mask = optional_argument(np, None if mask is None else mask.reshape(-1), 1, offset.dtype)
    grad_mask_flat = mask_flat if mask is None else grad_mask.reshape(-1)
    n_workers = min(B, numba.get_num_threads())
    partials = np.zeros((n_workers,) + weights.shape, dtype=weights.dtype)
    run_cpu_calling_blas(deformable_conv_backward_cpu, n_workers, B, padded, offset.reshape(-1), mask_flat, use_mask,
                         weights, grad_output.reshape(-1), grad_padded, grad_offset.reshape(-1), grad_mask_flat,
                         partials, tile, geometry)
    grad_weights = partials.sum(axis=0, dtype=np.float64).astype(weights.dtype)
    return grad_padded, grad_offset, grad_weights, grad_mask


def backward_in_chunks(geometry, padded, offset, weights, grad_output, mask, max_col_buffer_bytes):
    """The GPU backward, chunk by chunk: im2col, the two GEMMs (cuBLAS), col2im and the
    offset/mask gradient. Per chunk the column buffer first holds col (for grad_weight), then,
    overwritten by the second GEMM, gcol: one buffer serves both."""
    xp = array_module(offset)
    G, group_outputs, group_taps = weights.shape
    HW_out = geometry.H_out * geometry.W_out
    grad_padded = xp.zeros_like(padded)
    grad_offset = xp.zeros_like(offset)
    grad_mask = None if mask is None else xp.zeros_like(mask)
    grad_weights = xp.zeros_like(weights)
    for chunk in chunks(geometry, offset, mask, max_col_buffer_bytes):
        start, stop, n = chunk.start, chunk.stop, chunk.stop - chunk.start
        deformable_im2col(geometry, padded, chunk)
        rows = chunk.col.reshape(n, G, HW_out, group_taps)
        grad_out = grad_output[start:stop].reshape(n, G, group_outputs, HW_out)
        grad_weights += xp.matmul(grad_out, rows).sum(axis=0)
        xp.matmul(grad_out.swapaxes(2, 3), weights, out=rows)  # the buffer now holds gcol = ∂L/∂col
        run_cuda(deformable_col2im_cuda, chunk.col.size, chunk.col, chunk.top_left, chunk.l_y, chunk.l_x,
                 chunk.mask, chunk.use_mask, padded_images(grad_padded, geometry, start, stop), geometry)
        grad_mask_chunk = chunk.mask if mask is None else grad_mask[start:stop].reshape(-1)
        run_cuda(offset_mask_gradient_cuda, chunk.top_left.size, padded_images(padded, geometry, start, stop),
                 chunk.col, chunk.top_left, chunk.l_y, chunk.l_x, chunk.mask, chunk.use_mask,
                 grad_offset[start:stop].reshape(-1), grad_mask_chunk, geometry)
    return grad_padded, grad_offset, grad_weights, grad_mask


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
