"""Deformable RoI pooling kernels (docs/specification.md §2.1) for the CPU and CUDA, and their launchers.

RoIAlign (aligned) with a learned shift per bin. For RoI n, channel c and bin (ph, pw):

    forward    out[n, c, ph, pw] = Σ_{iy, ix} B(x[b, c], y, x) / n_ij            (roi_align_average)
    backward   grad_input[b, c]  += grad_out[n, c, ph, pw] / n_ij · w_ab at each corner read
               grad_offset[n, :, ph, pw] = γ·(roi_width, roi_height) · Σ_c grad_out · ∂out/∂(x, y)
                                                                                (roi_align_offset_gradient)

where b = rois[n, 0], the bin geometry is `deform_roi_pool_math.roi_align_bin` and B, w_ab, ∂B/∂p are
the shared scalar functions of `deform_roi_pool_math`. The offsets are stored x first, then y.

Shapes: input and grad_input flat (B·C·H·W,) on a GPU; on the CPU `pixels` and `grad_pixels`
(B, H·W, C), the same with the channels last, so that one computation of a sample's corners and
weights serves a contiguous row of channels; rois (N, 5), offset and grad_offset (N, 2, PH, PW)
(an empty stand-in without offsets, so that both cases share one compiled kernel), output and
grad_output (N, C, PH, PW). Every array is C-contiguous.

Must match dcn_numba.reference.deform_roi_pool (tests/ops/test_deform_roi_pool.py checks it).

Who owns which output:
    forward       CPU: one prange iteration per RoI bin (n, ph, pw), its channels as one row
                  CUDA: one thread per output element (n, c, ph, pw)
    grad_input    CPU: one iteration per image b and block of channels: it alone writes those
                  channels of image b, so no races
                  CUDA: one thread per output element, atomic adds into the corners it read
    grad_offset   CPU and CUDA: one iteration / one thread per RoI bin (n, ph, pw), summing over
                  the channels
"""

from typing import NamedTuple

import numpy as np
from numba import cuda, prange

from dcn_numba.runtime.arrays import array_module
from dcn_numba.kernels import deform_roi_pool_math
from dcn_numba.kernels._targets import (BINS, COUNT, FLAG, FLAT, ROWS, KernelPair, cpu_helper, cpu_kernel, cuda_kernel,
                                        for_cuda, geometry_of, optional_argument, run)
from dcn_numba.kernels.deform_roi_pool_math import (roi_align_bin, roi_align_bin_index, roi_align_corner,
                                                     roi_align_corner_gradient, roi_align_count, roi_align_is_valid,
                                                     roi_align_offset_from_start, roi_align_outside_value,
                                                     roi_align_sample_position)


class RoIAlignGeometry(NamedTuple):
    """The sizes and parameters every kernel needs, passed to kernels as one tuple."""

    C: int
    H: int
    W: int
    PH: int
    PW: int
    spatial_scale: float
    sampling_ratio: int
    gamma: float


# ---------------------------------------------------------------------------------------------
# CPU kernels: parallel loops whose iterations own disjoint parts of the output
# ---------------------------------------------------------------------------------------------


@cpu_helper
def add_to_every_channel(totals, value):
    """totals[c] += value for every channel c (a sample outside the image: 0 or NaN)."""
    for c in range(totals.size):
        totals[c] += value


@cpu_helper
def add_weighted_row(totals, weight, row):
    """totals[c] += weight · row[c]: one corner of a sample, for every channel at once."""
    for c in range(totals.size):
        totals[c] += weight * row[c]


@cpu_kernel
def deform_roi_pool_forward_cpu(n_bins, pixels, rois, offset, has_offset, output, geometry):
    """output[n, :, ph, pw] for the n_bins = N·PH·PW bins (n, ph, pw), from `pixels`, the input
    with its channels last (B, H·W, C): a sample's corners and weights, computed once, serve a
    contiguous row of C channels. The channel totals accumulate in float64, stored once."""
    H, W, C = geometry.H, geometry.W, geometry.C
    for roi_bin in prange(n_bins):
        n, ph, pw = roi_align_bin_index(roi_bin, geometry)
        bin_ = roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        image = pixels[bin_.batch]
        totals = np.zeros(C, dtype=np.float64)
        for iy in range(bin_.grid_h):
            for ix in range(bin_.grid_w):
                y, x = roi_align_sample_position(bin_, iy, ix)
                if not roi_align_is_valid(y, x, H, W):
                    add_to_every_channel(totals, roi_align_outside_value(y, x))
                    continue
                for corner in range(4):
                    pixel, weight = roi_align_corner(0, H, W, y, x, corner)
                    add_weighted_row(totals, weight, image[pixel])
        count = roi_align_count(bin_)
        for c in range(C):
            output[n, c, ph, pw] = totals[c] / count


CHANNELS_PER_TASK = 64  # the channels one CPU grad_input task owns: a few tasks per image and core


@cpu_kernel
def deform_roi_pool_grad_input_cpu(n_tasks, rois, offset, has_offset, grad_output, grad_pixels, geometry):
    """grad_pixels[b, pixel, c] += grad_out[n, c, ph, pw] / n_ij · w_ab at every corner read, for
    the n_tasks = B·ceil(C / CHANNELS_PER_TASK) tasks (image b, block of channels), over the RoIs
    of image b; each task alone writes its channels of image b, so no two tasks collide.
    grad_pixels (B, H·W, C), channels last like the forward's input."""
    H, W, C = geometry.H, geometry.W, geometry.C
    tasks_per_image = -(-C // CHANNELS_PER_TASK)
    for task in prange(n_tasks):
        b = task // tasks_per_image
        first = task % tasks_per_image * CHANNELS_PER_TASK
        last = min(first + CHANNELS_PER_TASK, C)
        block = grad_pixels[b, :, first:last]  # (H·W, the task's channels)
        share = np.empty(last - first, dtype=np.float64)  # grad_out[n, first:last, ph, pw] / n_ij
        for n in range(rois.shape[0]):
            if int(rois[n, 0]) != b:
                continue
            for ph in range(geometry.PH):
                for pw in range(geometry.PW):
                    bin_ = roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
                    count = roi_align_count(bin_)
                    for k in range(last - first):
                        share[k] = grad_output[n, first + k, ph, pw] / count
                    for iy in range(bin_.grid_h):
                        for ix in range(bin_.grid_w):
                            y, x = roi_align_sample_position(bin_, iy, ix)
                            if not roi_align_is_valid(y, x, H, W):
                                continue
                            for corner in range(4):
                                pixel, weight = roi_align_corner(0, H, W, y, x, corner)
                                row = block[pixel]
                                for k in range(last - first):
                                    row[k] += share[k] * weight


@cpu_kernel
def deform_roi_pool_grad_offset_cpu(n_bins, pixels, rois, offset, grad_output, grad_offset, geometry):
    """grad_offset[n, :, ph, pw] = γ·(roi_width, roi_height)·Σ_c grad_out[n, c, ph, pw]·∂out/∂(x, y)
    for the n_bins = N·PH·PW bins (n, ph, pw), from the channels-last input as the forward reads
    it: ∂out/∂y and ∂out/∂x of every channel are gathered as two float64 vectors, then summed
    against grad_out. Each iteration writes its own two elements."""
    H, W, C = geometry.H, geometry.W, geometry.C
    for roi_bin in prange(n_bins):
        n, ph, pw = roi_align_bin_index(roi_bin, geometry)
        bin_ = roi_align_bin(rois, offset, True, n, ph, pw, geometry)
        image = pixels[bin_.batch]
        out_d_y = np.zeros(C, dtype=np.float64)  # n_ij · ∂out[n, c, ph, pw]/∂y for every channel c
        out_d_x = np.zeros(C, dtype=np.float64)
        for iy in range(bin_.grid_h):
            for ix in range(bin_.grid_w):
                y, x = roi_align_sample_position(bin_, iy, ix)
                if not roi_align_is_valid(y, x, H, W):
                    outside = roi_align_outside_value(y, x)
                    add_to_every_channel(out_d_y, outside)
                    add_to_every_channel(out_d_x, outside)
                    continue
                for corner in range(4):
                    pixel, weight_d_y, weight_d_x = roi_align_corner_gradient(0, H, W, y, x, corner)
                    add_weighted_row(out_d_y, weight_d_y, image[pixel])
                    add_weighted_row(out_d_x, weight_d_x, image[pixel])
        grad_y = 0.0
        grad_x = 0.0
        for c in range(C):
            grad_y += grad_output[n, c, ph, pw] * out_d_y[c]
            grad_x += grad_output[n, c, ph, pw] * out_d_x[c]
        count = roi_align_count(bin_)
        grad_offset[n, 0, ph, pw], grad_offset[n, 1, ph, pw] = roi_align_offset_from_start(
            bin_, geometry.gamma, grad_x / count, grad_y / count)


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops over the same index spaces
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(deform_roi_pool_math)
GEOMETRY = geometry_of(RoIAlignGeometry)


@cuda_kernel(COUNT, FLAT, ROWS, BINS, FLAG, BINS, GEOMETRY)
def deform_roi_pool_forward_cuda(n_items, input, rois, offset, has_offset, output, geometry):
    """output[n, c, ph, pw]; one thread per output element."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        n, c, ph, pw = gpu.roi_align_output_index(index, geometry)
        bin_ = gpu.roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        output[n, c, ph, pw] = gpu.roi_align_average(input, gpu.roi_align_plane(bin_, c, geometry), geometry.H,
                                                     geometry.W, bin_)


@cuda_kernel(COUNT, ROWS, BINS, FLAG, BINS, FLAT, GEOMETRY)
def deform_roi_pool_grad_input_cuda(n_items, rois, offset, has_offset, grad_output, grad_input,
                                    geometry):
    """grad_input contributions of one output element (n, c, ph, pw) per thread.

    Its walk over a bin's samples is the one of deform_psroi_pool's grad_input kernels, under
    another rule: Numba compiles neither closures nor functions passed as arguments for CUDA, so
    each op writes the walk out with its own rule's functions."""
    H, W = geometry.H, geometry.W
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        n, c, ph, pw = gpu.roi_align_output_index(index, geometry)
        bin_ = gpu.roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        plane = gpu.roi_align_plane(bin_, c, geometry)
        share = grad_output[n, c, ph, pw] / gpu.roi_align_count(bin_)
        for iy in range(bin_.grid_h):
            for ix in range(bin_.grid_w):
                y, x = gpu.roi_align_sample_position(bin_, iy, ix)
                if not gpu.roi_align_is_valid(y, x, H, W):
                    continue
                for corner in range(4):
                    target, weight = gpu.roi_align_corner(plane, H, W, y, x, corner)
                    # Atomic: other bins, RoIs and samples read this pixel too.
                    cuda.atomic.add(grad_input, target, share * weight)


@cuda_kernel(COUNT, FLAT, ROWS, BINS, BINS, BINS, GEOMETRY)
def deform_roi_pool_grad_offset_cuda(n_bins, input, rois, offset, grad_output, grad_offset, geometry):
    """grad_offset[n, :, ph, pw]; one thread per RoI bin (n, ph, pw)."""
    for roi_bin in range(cuda.grid(1), n_bins, cuda.gridsize(1)):
        n, ph, pw = gpu.roi_align_bin_index(roi_bin, geometry)
        grad_offset[n, 0, ph, pw], grad_offset[n, 1, ph, pw] = gpu.roi_align_offset_gradient(
            input, rois, offset, grad_output, n, ph, pw, geometry)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

FORWARD = KernelPair(deform_roi_pool_forward_cpu, deform_roi_pool_forward_cuda)
GRAD_INPUT = KernelPair(deform_roi_pool_grad_input_cpu, deform_roi_pool_grad_input_cuda)
GRAD_OFFSET = KernelPair(deform_roi_pool_grad_offset_cpu, deform_roi_pool_grad_offset_cuda)


def target_layout(backend, planes):
    """planes (B, C, H, W) as the backend's kernels read them: channels last, (B, H·W, C), on the
    CPU, where a sample's corners and weights serve a contiguous row of channels; flat
    (B·C·H·W,) on a GPU, where a thread reads one plane."""
    if backend == "cpu":
        B, C, H, W = planes.shape
        return np.ascontiguousarray(planes.transpose(0, 2, 3, 1)).reshape(B, H * W, C)
    return planes.reshape(-1)


def from_target_layout(backend, array, shape):
    """The inverse of `target_layout`: `array` laid out as planes of `shape` (B, C, H, W)."""
    if backend == "cpu":
        B, C, H, W = shape
        return np.ascontiguousarray(array.reshape(B, H, W, C).transpose(0, 3, 1, 2))
    return array.reshape(shape)


def roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma):
    """The RoIAlignGeometry of a validated call. Sample positions are computed in float64 for
    either data type; NumPy float64 scalars keep them so under the CUDA simulator too, where
    float32 constants would otherwise narrow arithmetic on plain Python floats."""
    _, C, H, W = input.shape
    return RoIAlignGeometry(C, H, W, *output_size, np.float64(spatial_scale), int(sampling_ratio),
                            np.float64(gamma))


def deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, backend):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_roi_pool."""
    xp = array_module(input)
    geometry = roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma)
    output = xp.empty((rois.shape[0], geometry.C, geometry.PH, geometry.PW), dtype=input.dtype)
    offset, has_offset = optional_argument(xp, offset, 4, input.dtype)
    run(backend, FORWARD, rois.shape[0] * geometry.PH * geometry.PW, output.size, target_layout(backend, input), rois,
        offset, has_offset, output, geometry)
    return output


def deform_roi_pool_backward(grad_output, input, rois, offset, output_size, spatial_scale,
                             sampling_ratio, gamma, backend):
    """(grad_input, grad_offset or None) on the "cpu" or "cuda" backend."""
    xp = array_module(input)
    geometry = roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma)
    grad_offset = None if offset is None else xp.zeros_like(offset)
    offset, has_offset = optional_argument(xp, offset, 4, input.dtype)
    grad_input = target_layout(backend, xp.zeros_like(input))
    n_tasks = input.shape[0] * -(-geometry.C // CHANNELS_PER_TASK)
    run(backend, GRAD_INPUT, n_tasks, grad_output.size, rois, offset, has_offset, grad_output, grad_input, geometry)
    if has_offset:
        n_bins = rois.shape[0] * geometry.PH * geometry.PW
        run(backend, GRAD_OFFSET, n_bins, n_bins, target_layout(backend, input), rois, offset, grad_output,
            grad_offset, geometry)
    return from_target_layout(backend, grad_input, input.shape), grad_offset
