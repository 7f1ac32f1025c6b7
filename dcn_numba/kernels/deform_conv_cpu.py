"""The CPU pipeline of deformable convolution: cache-sized tiles, sampled and multiplied inside one
parallel kernel per pass (the formulas and layouts of `deform_conv`'s docstring).

One parallel kernel runs the forward tile by tile: a tile is a run of output positions of one
image, and each prange iteration samples its tiles into a column block of its own and multiplies
it by the weights while the block is still in the core's cache (BLAS on that core's thread), so
the column buffer of the whole layer never exists. The backward does the same per tile (im2col,
the two GEMMs, then col2im and the offset/mask gradient in one pass), each iteration owning whole
images and so every gradient of them. Each tile locates its own samples, into tables of its
iteration's.

Who owns which output:
    forward     one prange iteration per share of the tiles (positions of one image)
    backward    one iteration per share of the images, tile by tile: it alone writes those
                images' gradients, so no races; grad_weight is summed per iteration
"""

import numba
import numpy as np
from numba import prange

from dcn_numba.kernels._targets import cpu_helper, cpu_kernel, optional_argument, run_cpu_calling_blas
from dcn_numba.kernels.bilinear import dcn_locate, padded_corner
from dcn_numba.kernels.deform_conv_layout import dcn_column_index, dcn_padded_image, dcn_table_index
from dcn_numba.kernels.deform_conv_math import (dcn_column_from_corners, dcn_input_gradient_term, dcn_modulation,
                                                dcn_offset_mask_terms, dcn_sample_number, dcn_store_sample_gradient,
                                                dcn_tap_position)


# The column block of one CPU tile: small enough to stay in a core's cache (1–2 MB of L2 on
# current x86 server cores) between its sampling and its GEMMs, big enough to give those GEMMs
# hundreds of positions.
CPU_TILE_BYTES = 1 << 19


# ---------------------------------------------------------------------------------------------
# CPU kernels: parallel loops whose iterations own disjoint tiles
# ---------------------------------------------------------------------------------------------


@cpu_helper
def tile_table_index(b, position, g, k, first, geometry):
    """Where sample (b, g, k) at an output position lies in the tables of a CPU tile whose first
    output position is `first`: its `dcn_table_index` counted from the tile's first entry."""
    return dcn_table_index(b, position, g, k, geometry) - dcn_table_index(b, first, 0, 0, geometry)


@cpu_helper
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


@cpu_helper
def corner_rows(padded, image, top_left, W, C, first_channel, length):
    """The four corners' values of channels first_channel..first_channel + length − 1 of a
    located sample, as four contiguous rows of the channels-last padded input (see
    `bilinear.padded_corners` for a sample that reads no pixel)."""
    top_left = max(top_left, 0)
    start = image + first_channel
    v00 = start + padded_corner(top_left, W, 0) * C
    v01 = start + padded_corner(top_left, W, 1) * C
    v10 = start + padded_corner(top_left, W, 2) * C
    v11 = start + padded_corner(top_left, W, 3) * C
    return (padded[v00:v00 + length], padded[v01:v01 + length], padded[v10:v10 + length],
            padded[v11:v11 + length])


@cpu_helper
def worker_buffers(positions_per_tile, dtype, geometry):
    """A worker's own memory for one tile at a time: its column buffer (K·C_in values per output
    position) and the (top_left, l_y, l_x) tables of its located samples."""
    samples = positions_per_tile * geometry.offset_groups * geometry.kh * geometry.kw
    return (np.empty(positions_per_tile * geometry.kh * geometry.kw * geometry.C_in, dtype=dtype),
            np.empty(samples, dtype=np.int64), np.empty(samples, dtype=dtype), np.empty(samples, dtype=dtype))


@cpu_helper
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


@cpu_helper
def sample_tile(padded, offset, mask, use_mask, b, first, stop, tables, columns, geometry):
    """What both passes do first with a tile (output positions first..stop−1 of image b): locate
    its samples into the worker's `tables`, then fill every weight group's rows of its column
    buffer with m · S."""
    locate_positions(offset, b, first, stop, tables, geometry)
    for group in range(geometry.groups):
        fill_columns(padded, tables, mask, use_mask, b, group, first, stop, columns, geometry)


@cpu_helper
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


@cpu_helper
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
# Launchers
# ---------------------------------------------------------------------------------------------


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
