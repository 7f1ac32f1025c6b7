"""Deformable convolution v1/v2 kernels (docs/specification.md §1) for the CPU and CUDA, and their launchers.

A deformable convolution is an ordinary convolution whose im2col step samples the input at
learned fractional positions. Per batch chunk, with K = kh·kw taps and G weight groups:

    locate     for every sample s = (b, g, k) and output (i, j): where p = p0 + p_k + Δp falls on
               the input zero-padded by one pixel (top_left corner, l_y, l_x), once for all the
               channels of offset group g
    forward    col[b, c, k, i, j] = m · S(x[b, c], p)                         (deformable im2col)
               out[b, g] = weight_g · col[b, g]        weight_g (C_out/G, C_in/G·K), col[b, g] (C_in/G·K, H_out·W_out)
    backward   grad_weight_g += Σ_b grad_out[b, g] · col[b, g]ᵀ
               gcol[b, g] = weight_gᵀ · grad_out[b, g]                         (∂L/∂col)
               grad_input  += m · gcol · w_ab at each corner                   (deformable col2im)
               grad_offset  = Σ_{c in offset group} m · gcol · ∂S/∂p           (offset/mask gradient)
               grad_mask    = Σ_{c in offset group} gcol · S

S, ∂S/∂p and w_ab are the shared scalar functions of `sampling`. Reading a padded input makes
every corner of a valid sample an in-bounds read that is 0 in the padding, and grad_input is
accumulated on padded planes whose border is then dropped. The GEMMs run on the array module's
matmul (NumPy → BLAS, CuPy → cuBLAS), batched over the images of a chunk; a chunk holds as many
images as `max_col_buffer_bytes` allows for the column buffer, which never changes the results.

Shapes, every array flat and C-contiguous inside a kernel:
    padded (B, C_in, H + 2, W + 2), offset (B, 2·G_off·K, H_out, W_out), mask (B, G_off·K, H_out, W_out),
    top_left, l_y, l_x (B_chunk, G_off·K, H_out, W_out), col and gcol (B_chunk, C_in, K, H_out, W_out).
    A sample s = (b·G_off + g)·K + k numbers one (Δy, Δx) pair (offset channels 2s, 2s + 1 of
    the flat batch) and one mask channel.

Must match dcn_numba.reference.deform_conv (tests/test_deform_conv_kernels.py checks it).

Who owns which output:
    locate            CPU: one prange iteration per sample row (b, g, k)   CUDA: one thread per (b, g, k, i, j)
    im2col            CPU: one iteration per col row (b, c, k)             CUDA: one thread per col element
    col2im            CPU: one iteration per input plane (b, c): it alone writes that plane, so no races
                      CUDA: one thread per gcol element, atomic adds into its four corners
    offset/mask grad  CPU: one iteration per sample row (b, g, k)          CUDA: one thread per (b, g, k, i, j)
"""

from typing import NamedTuple

import numpy as np
from numba import cuda, prange

from .._arrays import array_module
from . import sampling
from ._targets import (COUNT, FLAG, FLAT, INDICES, KernelPair, cpu_kernel, cuda_kernel, for_cuda,
                       geometry_of, optional_argument, run)
from .sampling import (ONE, bilinear_blend, bilinear_slopes, corner_weight, dcn_column_value,
                       dcn_locate, dcn_located_or_not, dcn_offset_gradient_term, dcn_sample_index,
                       dcn_tap_position, padded_corner, padded_corners)

# How many bytes the column buffer of a batch chunk may take: a memory knob, results do not depend
# on it. On the CPU a chunk that fits the last-level cache is still there when its GEMM reads it;
# on a GPU bigger chunks make bigger GEMMs.
MAX_COL_BUFFER_BYTES = {"cpu": 1 << 24, "cuda": 1 << 28}


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


def conv_geometry(input, offset, weight, stride, padding, dilation):
    """The DeformConvGeometry of validated arrays and (h, w) pairs."""
    _, C_in, H, W = input.shape
    _, offset_channels, H_out, W_out = offset.shape
    kh, kw = weight.shape[2:]
    return DeformConvGeometry(C_in, H, W, offset_channels // (2 * kh * kw), kh, kw, H_out, W_out,
                              *stride, *padding, *dilation)


# ---------------------------------------------------------------------------------------------
# CPU kernels: parallel loops whose iterations own disjoint parts of the output
# ---------------------------------------------------------------------------------------------


@cpu_kernel
def locate_samples_cpu(n_samples, offset, top_left, l_y, l_x, geometry):
    """(top_left, l_y, l_x) of every sample: one iteration per sample row s = (b, g, k)."""
    HW_out = geometry.H_out * geometry.W_out
    for sample in prange(n_samples):
        for i in range(geometry.H_out):
            for j in range(geometry.W_out):
                p_y, p_x = dcn_tap_position(offset, sample, i, j, geometry)
                here = sample * HW_out + i * geometry.W_out + j
                top_left[here], l_y[here], l_x[here] = dcn_locate(p_y, p_x, geometry.H, geometry.W)


@cpu_kernel
def deformable_im2col_cpu(n_rows, padded, top_left, l_y, l_x, mask, use_mask, col, geometry):
    """col[b, c, k, i, j] = m · S(x[b, c], p) for the n_rows = B·C_in·K rows (b, c, k) of col.

    The inner loop blends every sample and then keeps the value of those that read no pixel
    (see `padded_corners`): without branches, over row slices, it vectorises."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    plane_size = (geometry.H + 2) * (geometry.W + 2)
    for row in prange(n_rows):
        image_channel = row // K  # b·C_in + c
        samples = dcn_sample_index(image_channel, row % K, geometry) * HW_out
        image = padded[image_channel * plane_size:(image_channel + 1) * plane_size]
        corners = top_left[samples:samples + HW_out]
        fraction_y = l_y[samples:samples + HW_out]
        fraction_x = l_x[samples:samples + HW_out]
        modulation = mask[samples:samples + HW_out] if use_mask else mask[:0]
        out = col[row * HW_out:(row + 1) * HW_out]
        for position in range(HW_out):
            v00, v01, v10, v11 = padded_corners(image, 0, corners[position], geometry.W)
            value = bilinear_blend(v00, v01, v10, v11, fraction_y[position], fraction_x[position])
            out[position] = dcn_column_value(value, corners[position],
                                             modulation[position] if use_mask else ONE)


@cpu_kernel
def deformable_col2im_cpu(n_planes, gcol, top_left, l_y, l_x, mask, use_mask, grad_padded, geometry):
    """grad_padded[b, c] += m · gcol · w_ab at the four corners of each valid sample, for the
    n_planes = B·C_in planes (b, c); each iteration accumulates into its own plane only."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    plane_size = (geometry.H + 2) * (geometry.W + 2)
    for image_channel in prange(n_planes):
        grad_image = grad_padded[image_channel * plane_size:(image_channel + 1) * plane_size]
        for k in range(K):
            samples = dcn_sample_index(image_channel, k, geometry) * HW_out
            row = (image_channel * K + k) * HW_out
            for position in range(HW_out):
                here = samples + position
                corner = top_left[here]
                if corner < 0:
                    continue
                grad_sample = gcol[row + position]
                if use_mask:
                    grad_sample *= mask[here]
                for which in range(4):
                    grad_image[padded_corner(corner, geometry.W, which)] += \
                        grad_sample * corner_weight(l_y[here], l_x[here], which)


@cpu_kernel
def offset_mask_gradient_cpu(n_samples, padded, gcol, top_left, l_y, l_x, mask, use_mask,
                             grad_offset, grad_mask, geometry):
    """grad_offset[b, g·2K + 2k + d] = Σ_c m · gcol · ∂S/∂p_d and grad_mask[b, g·K + k] = Σ_c gcol · S
    over the channels c of offset group g, for the n_samples = B·G_off·K rows (b, g, k); each
    iteration accumulates its own rows in float64 and stores them once. Branch-free inner loop,
    as in im2col."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.offset_groups
    plane_size = (geometry.H + 2) * (geometry.W + 2)
    for sample in prange(n_samples):
        image_group = sample // K  # b·G_off + g
        first_channel = (image_group // geometry.offset_groups) * geometry.C_in \
            + (image_group % geometry.offset_groups) * channels_per_group
        samples = sample * HW_out
        corners = top_left[samples:samples + HW_out]
        fraction_y = l_y[samples:samples + HW_out]
        fraction_x = l_x[samples:samples + HW_out]
        modulation = mask[samples:samples + HW_out] if use_mask else mask[:0]
        grad_p_y = np.zeros(HW_out, dtype=np.float64)
        grad_p_x = np.zeros(HW_out, dtype=np.float64)
        grad_m = np.zeros(HW_out, dtype=np.float64)
        for image_channel in range(first_channel, first_channel + channels_per_group):
            image = padded[image_channel * plane_size:(image_channel + 1) * plane_size]
            row = (image_channel * K + sample % K) * HW_out
            grad_samples = gcol[row:row + HW_out]
            for position in range(HW_out):
                corner = corners[position]
                m = modulation[position] if use_mask else ONE
                v00, v01, v10, v11 = padded_corners(image, 0, corner, geometry.W)
                d_y, d_x = bilinear_slopes(v00, v01, v10, v11, fraction_y[position], fraction_x[position])
                grad_p_y[position] += dcn_offset_gradient_term(grad_samples[position], m, d_y, corner)
                grad_p_x[position] += dcn_offset_gradient_term(grad_samples[position], m, d_x, corner)
                if use_mask:
                    value = bilinear_blend(v00, v01, v10, v11, fraction_y[position], fraction_x[position])
                    grad_m[position] += grad_samples[position] * dcn_located_or_not(value, corner)
        grad_offset[2 * samples:2 * samples + HW_out] = grad_p_y
        grad_offset[2 * samples + HW_out:2 * samples + 2 * HW_out] = grad_p_x
        if use_mask:
            grad_mask[samples:samples + HW_out] = grad_m


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops over the same index spaces, one thread per element
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(sampling)
GEOMETRY = geometry_of(DeformConvGeometry)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, GEOMETRY)
def locate_samples_cuda(n_items, offset, top_left, l_y, l_x, geometry):
    """(top_left, l_y, l_x) of every sample; one thread per (b, g, k, i, j)."""
    HW_out = geometry.H_out * geometry.W_out
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        position = here % HW_out
        p_y, p_x = gpu.dcn_tap_position(offset, here // HW_out, position // geometry.W_out,
                                        position % geometry.W_out, geometry)
        top_left[here], l_y[here], l_x[here] = gpu.dcn_locate(p_y, p_x, geometry.H, geometry.W)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_im2col_cuda(n_items, padded, top_left, l_y, l_x, mask, use_mask, col, geometry):
    """col[b, c, k, i, j] = m · S(x[b, c], p); one thread per element of col."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        image_channel = index // HW_out // K
        sample = gpu.dcn_sample_index(image_channel, index // HW_out % K, geometry)
        here = sample * HW_out + index % HW_out
        corner = top_left[here]
        v00, v01, v10, v11 = gpu.padded_corners(
            padded, image_channel * (geometry.H + 2) * (geometry.W + 2), corner, geometry.W)
        value = gpu.bilinear_blend(v00, v01, v10, v11, l_y[here], l_x[here])
        col[index] = gpu.dcn_column_value(value, corner, mask[here] if use_mask else gpu.ONE)


@cuda_kernel(COUNT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, GEOMETRY)
def deformable_col2im_cuda(n_items, gcol, top_left, l_y, l_x, mask, use_mask, grad_padded, geometry):
    """grad_padded[b, c] += m · gcol · w_ab at the four corners; one thread per gcol element."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        image_channel = index // HW_out // K
        sample = gpu.dcn_sample_index(image_channel, index // HW_out % K, geometry)
        here = sample * HW_out + index % HW_out
        corner = top_left[here]
        if corner < 0:
            continue
        grad_sample = gcol[index]
        if use_mask:
            grad_sample *= mask[here]
        plane = image_channel * (geometry.H + 2) * (geometry.W + 2)
        for which in range(4):
            # Atomic: the samples of other taps and outputs may share this pixel.
            cuda.atomic.add(grad_padded, plane + gpu.padded_corner(corner, geometry.W, which),
                            grad_sample * gpu.corner_weight(l_y[here], l_x[here], which))


@cuda_kernel(COUNT, FLAT, FLAT, INDICES, FLAT, FLAT, FLAT, FLAG, FLAT, FLAT, GEOMETRY)
def offset_mask_gradient_cuda(n_items, padded, gcol, top_left, l_y, l_x, mask, use_mask,
                              grad_offset, grad_mask, geometry):
    """grad_offset and grad_mask of one sample (b, g, k) at one output (i, j) per thread, summed
    in float64 registers over the channels of offset group g: each thread owns its three outputs."""
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    channels_per_group = geometry.C_in // geometry.offset_groups
    for here in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        sample = here // HW_out
        position = here % HW_out
        image_group = sample // K  # b·G_off + g
        first_channel = (image_group // geometry.offset_groups) * geometry.C_in \
            + (image_group % geometry.offset_groups) * channels_per_group
        corner = top_left[here]
        m = mask[here] if use_mask else gpu.ONE
        grad_p_y = 0.0
        grad_p_x = 0.0
        grad_m = 0.0
        for image_channel in range(first_channel, first_channel + channels_per_group):
            v00, v01, v10, v11 = gpu.padded_corners(
                padded, image_channel * (geometry.H + 2) * (geometry.W + 2), corner, geometry.W)
            d_y, d_x = gpu.bilinear_slopes(v00, v01, v10, v11, l_y[here], l_x[here])
            value = gpu.bilinear_blend(v00, v01, v10, v11, l_y[here], l_x[here])
            grad_sample = gcol[(image_channel * K + sample % K) * HW_out + position]
            grad_p_y += gpu.dcn_offset_gradient_term(grad_sample, m, d_y, corner)
            grad_p_x += gpu.dcn_offset_gradient_term(grad_sample, m, d_x, corner)
            grad_m += grad_sample * gpu.dcn_located_or_not(value, corner)
        grad_offset[2 * sample * HW_out + position] = grad_p_y
        grad_offset[(2 * sample + 1) * HW_out + position] = grad_p_x
        if use_mask:
            grad_mask[here] = grad_m


# ---------------------------------------------------------------------------------------------
# Launchers: the same chunked GEMM pipeline on either backend
# ---------------------------------------------------------------------------------------------

LOCATE = KernelPair(locate_samples_cpu, locate_samples_cuda)
IM2COL = KernelPair(deformable_im2col_cpu, deformable_im2col_cuda)
COL2IM = KernelPair(deformable_col2im_cpu, deformable_col2im_cuda)
OFFSET_MASK_GRADIENT = KernelPair(offset_mask_gradient_cpu, offset_mask_gradient_cuda)


def batch_chunks(batch, bytes_per_image, max_col_buffer_bytes):
    """(start, stop) ranges of images whose column buffer fits the budget (at least one image)."""
    size = max(1, max_col_buffer_bytes // max(1, bytes_per_image))
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]


def zero_padded(xp, input):
    """input (B, C, H, W) → (B, C, H + 2, W + 2) with a border of zeros: the image the DCNv2
    rule interpolates."""
    return xp.pad(input, ((0, 0), (0, 0), (1, 1), (1, 1)))


def weight_groups(weight, C_in):
    """weight (C_out, C_in/G, kh, kw) → (G, C_out/G, C_in/G·K): the GEMM matrix of each group."""
    C_out, group_channels, kh, kw = weight.shape
    G = C_in // group_channels
    return weight.reshape(G, C_out // G, group_channels * kh * kw)


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


def chunks(backend, geometry, offset, mask, max_col_buffer_bytes):
    """Yield each Chunk of the batch with its samples located. One set of buffers, sized for the
    largest chunk, serves every chunk in turn."""
    xp = array_module(offset)
    HW_out = geometry.H_out * geometry.W_out
    K = geometry.kh * geometry.kw
    samples_per_image = geometry.offset_groups * K  # rows (g, k) of H_out·W_out samples each
    col_per_image = geometry.C_in * K * HW_out
    budget = MAX_COL_BUFFER_BYTES[backend] if max_col_buffer_bytes is None else max_col_buffer_bytes
    ranges = batch_chunks(offset.shape[0], col_per_image * offset.itemsize, budget)
    largest = max((stop - start for start, stop in ranges), default=0)
    top_left = xp.empty(largest * samples_per_image * HW_out, dtype=np.int64)
    l_y = xp.empty(largest * samples_per_image * HW_out, dtype=offset.dtype)
    l_x = xp.empty(largest * samples_per_image * HW_out, dtype=offset.dtype)
    col = xp.empty(largest * col_per_image, dtype=offset.dtype)
    for start, stop in ranges:
        n_samples = (stop - start) * samples_per_image
        located = [table[:n_samples * HW_out] for table in (top_left, l_y, l_x)]
        run(backend, LOCATE, n_samples, n_samples * HW_out, offset[start:stop].reshape(-1), *located, geometry)
        mask_chunk, use_mask = optional_argument(
            xp, None if mask is None else mask[start:stop].reshape(-1), 1, offset.dtype)
        yield Chunk(start, stop, *located, mask_chunk, use_mask, col[:(stop - start) * col_per_image])


def deformable_im2col(backend, geometry, padded, chunk):
    """Fill chunk.col (B_chunk·C_in·K·H_out·W_out,) with m · S for the images of the chunk."""
    K = geometry.kh * geometry.kw
    n_rows = (chunk.stop - chunk.start) * geometry.C_in * K
    run(backend, IM2COL, n_rows, n_rows * geometry.H_out * geometry.W_out,
        padded[chunk.start:chunk.stop].reshape(-1), chunk.top_left, chunk.l_y, chunk.l_x, chunk.mask,
        chunk.use_mask, chunk.col, geometry)


def deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask, backend,
                  max_col_buffer_bytes=None):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_conv.
    max_col_buffer_bytes: the column buffer's budget, MAX_COL_BUFFER_BYTES[backend] when None."""
    xp = array_module(input)
    geometry = conv_geometry(input, offset, weight, stride, padding, dilation)
    weights = weight_groups(weight, geometry.C_in)
    G, group_outputs, group_taps = weights.shape
    HW_out = geometry.H_out * geometry.W_out
    padded = zero_padded(xp, input)
    output = xp.empty((input.shape[0], weight.shape[0], geometry.H_out, geometry.W_out), dtype=input.dtype)
    for chunk in chunks(backend, geometry, offset, mask, max_col_buffer_bytes):
        n = chunk.stop - chunk.start
        deformable_im2col(backend, geometry, padded, chunk)
        xp.matmul(weights, chunk.col.reshape(n, G, group_taps, HW_out),
                  out=output[chunk.start:chunk.stop].reshape(n, G, group_outputs, HW_out))
    if bias is not None:
        output += bias.reshape(1, -1, 1, 1)
    return output


def deform_conv2d_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask,
                           backend, max_col_buffer_bytes=None):
    """(grad_input, grad_offset, grad_weight, grad_bias, grad_mask) on the "cpu" or "cuda" backend.

    Per chunk the column buffer first holds col (for grad_weight), then, overwritten by the second
    GEMM, gcol (for col2im and the offset/mask gradient): one buffer serves both. grad_input is
    accumulated on zero-padded planes, whose border (the gradient of the padding) is dropped.
    """
    xp = array_module(input)
    geometry = conv_geometry(input, offset, weight, stride, padding, dilation)
    weights = weight_groups(weight, geometry.C_in)
    G, group_outputs, group_taps = weights.shape
    K = geometry.kh * geometry.kw
    HW_out = geometry.H_out * geometry.W_out
    padded = zero_padded(xp, input)
    grad_padded = xp.zeros_like(padded)
    grad_offset = xp.zeros_like(offset)
    grad_mask = None if mask is None else xp.zeros_like(mask)
    grad_weight_groups = xp.zeros_like(weights)
    for chunk in chunks(backend, geometry, offset, mask, max_col_buffer_bytes):
        start, stop, n = chunk.start, chunk.stop, chunk.stop - chunk.start
        deformable_im2col(backend, geometry, padded, chunk)
        columns = chunk.col.reshape(n, G, group_taps, HW_out)
        grad_out = grad_output[start:stop].reshape(n, G, group_outputs, HW_out)
        grad_weight_groups += xp.matmul(grad_out, columns.swapaxes(2, 3)).sum(axis=0)
        xp.matmul(weights.swapaxes(1, 2), grad_out, out=columns)  # the buffer now holds gcol = ∂L/∂col
        run(backend, COL2IM, n * geometry.C_in, chunk.col.size, chunk.col, chunk.top_left, chunk.l_y,
            chunk.l_x, chunk.mask, chunk.use_mask, grad_padded[start:stop].reshape(-1), geometry)
        grad_mask_chunk = chunk.mask if mask is None else grad_mask[start:stop].reshape(-1)
        n_samples = n * geometry.offset_groups * K
        run(backend, OFFSET_MASK_GRADIENT, n_samples, n_samples * HW_out, padded[start:stop].reshape(-1),
            chunk.col, chunk.top_left, chunk.l_y, chunk.l_x, chunk.mask, chunk.use_mask,
            grad_offset[start:stop].reshape(-1), grad_mask_chunk, geometry)
    grad_input = xp.ascontiguousarray(grad_padded[:, :, 1:-1, 1:-1])
    grad_bias = None if bias is None else grad_output.sum(axis=(0, 2, 3))
    return grad_input, grad_offset, grad_weight_groups.reshape(weight.shape), grad_bias, grad_mask
