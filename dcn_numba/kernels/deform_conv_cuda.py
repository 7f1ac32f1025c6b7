"""The GPU pipeline of deformable convolution: batch chunks, whose column buffer cuBLAS multiplies
between kernels (the formulas and layouts of `deform_conv`'s docstring).

For each chunk of images whose column buffer fits MAX_COL_BUFFER_BYTES, one kernel locates every
sample, im2col fills the column buffer, and cuBLAS multiplies it by the weights; the backward
multiplies again into the same buffer, which then holds gcol, and col2im and the offset/mask
gradient are kernels of their own. Each kernel is a grid-stride loop over its index space.

Who owns which output:
    locate              one thread per sample (b, position, g, k)
    im2col              one thread per col element, the threads of a warp reading neighbouring channels
    col2im              one thread per gcol element, atomic adds into its four corners
    offset/mask grad    one thread per sample, summing over the channels of its offset group
"""

from typing import NamedTuple

import numpy as np
from numba import cuda

from dcn_numba.runtime.arrays import array_module
from dcn_numba.kernels import bilinear, deform_conv_layout, deform_conv_math
from dcn_numba.kernels._targets import COUNT, FLAG, FLAT, INDICES, cuda_kernel, for_cuda, optional_argument, run_cuda
from dcn_numba.kernels.deform_conv_layout import GEOMETRY

# How many bytes the column buffer of a batch chunk may take on a GPU: a memory knob (results do
# not depend on it beyond rounding); bigger chunks make bigger cuBLAS GEMMs.
MAX_COL_BUFFER_BYTES = 1 << 28

# The shared functions as the CUDA kernels reach them, one handle per module (`_targets.for_cuda`).
bilinear_gpu = for_cuda(bilinear)
layout_gpu = for_cuda(deform_conv_layout)
math_gpu = for_cuda(deform_conv_math)


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops over the index spaces, one thread per element
# ---------------------------------------------------------------------------------------------


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, GEOMETRY)
def locate_samples_cuda(n_items, offset, top_left, l_y, l_x, geometry):
    """(top_left, l_y, l_x) of every sample; one thread per table entry (b, position, g, k)."""
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, position, g, k = layout_gpu.dcn_table_coordinates(here, geometry)
        p_y, p_x = math_gpu.dcn_tap_position(offset, math_gpu.dcn_sample_number(b, g, k, geometry),
                                        position // geometry.W_out, position % geometry.W_out, geometry)
        top_left[here], l_y[here], l_x[here] = bilinear_gpu.dcn_locate(p_y, p_x, geometry.H, geometry.W)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_im2col_cuda(n_items, padded, top_left, l_y, l_x, mask, use_mask, col, geometry):
    """col[b, group, position, k, c'] = m · S(x[b, c], p); one thread per element of col, the
    threads of a warp reading neighbouring channels of the same corners."""
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, group, position, k, channel_in_group, c, g = layout_gpu.dcn_column_coordinates(index, geometry)
        here = layout_gpu.dcn_table_index(b, position, g, k, geometry)
        m = math_gpu.dcn_modulation(mask, use_mask, math_gpu.dcn_sample_number(b, g, k, geometry), position, HW_out)
        corner = top_left[here]
        v00, v01, v10, v11 = bilinear_gpu.padded_corners(padded, layout_gpu.dcn_padded_image(b, geometry) + c, corner, geometry.W,
                                                geometry.C_in)
        col[index] = math_gpu.dcn_column_from_corners(v00, v01, v10, v11, l_y[here], l_x[here], corner, m)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_col2im_cuda(n_items, gcol, top_left, l_y, l_x, mask, use_mask, grad_padded, geometry):
    """grad_padded[b, ·, ·, c] += m · gcol · w_ab at the four corners; one thread per gcol element."""
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, group, position, k, channel_in_group, c, g = layout_gpu.dcn_column_coordinates(index, geometry)
        here = layout_gpu.dcn_table_index(b, position, g, k, geometry)
        corner = top_left[here]
        if corner < 0:
            continue
        m = math_gpu.dcn_modulation(mask, use_mask, math_gpu.dcn_sample_number(b, g, k, geometry), position, HW_out)
        image = layout_gpu.dcn_padded_image(b, geometry) + c
        for which in range(4):
            # Atomic: the samples of other taps and outputs may share this pixel.
            cuda.atomic.add(grad_padded, image + bilinear_gpu.padded_corner(corner, geometry.W, which) * geometry.C_in,
                            math_gpu.dcn_input_gradient_term(gcol[index], m, l_y[here], l_x[here], which))


@cuda_kernel(COUNT, FLAT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, FLAT, GEOMETRY)
def offset_mask_gradient_cuda(n_items, padded, gcol, top_left, l_y, l_x, mask, use_mask,
                              grad_offset, grad_mask, geometry):
    """grad_offset and grad_mask of one sample (b, g, k) at one output position per thread, summed
    in float64 registers over the channels of offset group g: each thread owns its three outputs."""
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.groups
    channels_per_offset_group = geometry.C_in // geometry.offset_groups
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        b, position, g, k = layout_gpu.dcn_table_coordinates(here, geometry)
        s = math_gpu.dcn_sample_number(b, g, k, geometry)
        m = math_gpu.dcn_modulation(mask, use_mask, s, position, HW_out)
        corner, fraction_y, fraction_x = top_left[here], l_y[here], l_x[here]
        image = layout_gpu.dcn_padded_image(b, geometry)
        grad_p_y = 0.0
        grad_p_x = 0.0
        grad_m = 0.0
        for c in range(g * channels_per_offset_group, (g + 1) * channels_per_offset_group):
            group = c // channels_per_group
            v00, v01, v10, v11 = bilinear_gpu.padded_corners(padded, image + c, corner, geometry.W, geometry.C_in)
            term_y, term_x, term_m = math_gpu.dcn_offset_mask_terms(
                v00, v01, v10, v11, fraction_y, fraction_x, corner, m,
                gcol[layout_gpu.dcn_column_index(b, group, position, k, c - group * channels_per_group, HW_out, geometry)])
            grad_p_y += term_y
            grad_p_x += term_x
            grad_m += term_m
        math_gpu.dcn_store_sample_gradient(grad_offset, grad_mask, use_mask, s, position, HW_out, grad_p_y, grad_p_x, grad_m)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def batch_chunks(batch, bytes_per_image, max_col_buffer_bytes):
    """(start, stop) ranges of images whose column buffer fits the budget (at least one image)."""
    size = max(1, max_col_buffer_bytes // max(1, bytes_per_image))
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]


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
