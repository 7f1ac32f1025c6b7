"""Deformable RoI pooling kernels (SPEC.md §2a) for the CPU and CUDA, and their launchers.

RoIAlign (aligned) with a learned shift per bin. For RoI n, channel c and bin (ph, pw):

    forward    out[n, c, ph, pw] = Σ_{iy, ix} B(x[b, c], y, x) / n_ij
    backward   grad_input[b, c]  += grad_out[n, c, ph, pw] / n_ij · w_ab at each corner read
               grad_offset[n, 0, ph, pw] = γ·roi_width  · Σ_c grad_out[n, c, ph, pw] · ∂out/∂x_start
               grad_offset[n, 1, ph, pw] = γ·roi_height · Σ_c grad_out[n, c, ph, pw] · ∂out/∂y_start

where b = rois[n, 0], the bin geometry is `sampling.roi_align_bin` and B, w_ab, ∂B/∂p are the
shared scalar functions of `sampling`. The offsets are stored x first, then y. The samples of a
bin are the same for all C channels: the CPU kernels read the input with its channels last, so
that one computation of a sample's corners and weights serves a contiguous vector of channels.

Shapes: input and grad_input flat (B·C·H·W,) for the CUDA kernels; for the CPU kernels, pixels
and grad_pixels (B, H·W, C), the same with the channels last (`channels_last`); rois (N, 5),
offset and grad_offset (N, 2, PH, PW) (an empty stand-in without offsets, so that both cases
share one compiled kernel), output and grad_output (N, C, PH, PW). Every array is C-contiguous.

Must match dcn_numba.reference.deform_roi_pool (tests/test_deform_roi_pool.py checks it).

Who owns which output:
    forward       CPU: one prange iteration per RoI bin (n, ph, pw), its channels as one vector
                  CUDA: one thread per output element (n, c, ph, pw)
    grad_input    CPU: one iteration per image b and block of channels: it alone writes those
                  channels of image b, so no races
                  CUDA: one thread per output element, atomic adds into the corners it read
    grad_offset   CPU: one iteration per RoI bin (n, ph, pw), summing over the channels
                  CUDA: the same thread as grad_input, atomic adds over the channels
"""

from typing import NamedTuple

import numba
import numpy as np
from numba import cuda, prange, types

from .._arrays import array_module, cuda_stream
from . import sampling
from ._targets import cpu_kernel, for_cuda, launch
from .sampling import (is_finite_position, roi_align_bin, roi_align_bin_index, roi_align_corner,
                       roi_align_corner_gradient, roi_align_count, roi_align_is_valid,
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


@cpu_kernel
def deform_roi_pool_forward_cpu(n_bins, pixels, rois, offset, has_offset, output, geometry):
    """output[n, :, ph, pw] for the n_bins = N·PH·PW bins (n, ph, pw), from `pixels`, the input
    with its channels last: each sample adds weight · (C channels of a corner pixel) for its four
    corners, the geometry computed once for all the channels."""
    H, W, C = geometry.H, geometry.W, geometry.C
    for roi_bin in prange(n_bins):
        n, ph, pw = roi_align_bin_index(roi_bin, geometry)
        bin_ = roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        image = pixels[bin_.batch]
        totals = np.zeros(C, dtype=pixels.dtype)
        for iy in range(bin_.grid_h):
            for ix in range(bin_.grid_w):
                y, x = roi_align_sample_position(bin_, iy, ix)
                if not roi_align_is_valid(y, x, H, W):
                    if not is_finite_position(y, x):  # a NaN sample makes its bin NaN
                        totals[:] = np.nan
                    continue
                for corner in range(4):
                    pixel, weight = roi_align_corner(0, H, W, y, x, corner)
                    for c in range(C):  # in the data's precision, float32 or float64
                        totals[c] += pixels.dtype.type(weight) * image[pixel, c]
        count = roi_align_count(bin_)
        for c in range(C):
            output[n, c, ph, pw] = totals[c] / count


@cpu_kernel
def deform_roi_pool_grad_input_cpu(n_tasks, channels_per_task, rois, offset, has_offset, grad_output,
                                   grad_pixels, geometry):
    """grad_pixels[b, pixel, c] += grad_out[n, c, ph, pw] / n_ij · w_ab at every corner read, for
    the n_tasks = B·ceil(C / channels_per_task) tasks (image b, block of channels), over the RoIs
    of image b; each task alone writes its channels of image b, so no two tasks collide."""
    H, W, C = geometry.H, geometry.W, geometry.C
    tasks_per_image = -(-C // channels_per_task)
    for task in prange(n_tasks):
        b = task // tasks_per_image
        first = task % tasks_per_image * channels_per_task
        last = min(first + channels_per_task, C)
        block = grad_pixels[b, :, first:last]  # (H·W, channels of the task)
        share = np.empty(last - first, dtype=grad_pixels.dtype)  # grad_out[n, first:last, ph, pw] / n_ij
        for n in range(rois.shape[0]):
            if int(rois[n, 0]) != b:
                continue
            for ph in range(geometry.PH):
                for pw in range(geometry.PW):
                    bin_ = roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
                    for k in range(last - first):
                        share[k] = grad_output[n, first + k, ph, pw] / roi_align_count(bin_)
                    for iy in range(bin_.grid_h):
                        for ix in range(bin_.grid_w):
                            y, x = roi_align_sample_position(bin_, iy, ix)
                            if not roi_align_is_valid(y, x, H, W):
                                continue
                            for corner in range(4):
                                pixel, weight = roi_align_corner(0, H, W, y, x, corner)
                                row = block[pixel]
                                for k in range(last - first):
                                    row[k] += grad_pixels.dtype.type(weight) * share[k]


@cpu_kernel
def deform_roi_pool_grad_offset_cpu(n_bins, pixels, rois, offset, grad_output, grad_offset, geometry):
    """grad_offset[n, :, ph, pw] = γ·(roi_width, roi_height)·Σ_c grad_out[n, c, ph, pw]·∂out/∂(x, y)
    for the n_bins = N·PH·PW bins (n, ph, pw); each iteration writes its own two elements.
    ∂out/∂y (and ∂out/∂x) is gathered for all the channels at once, as a vector, like the forward."""
    H, W, C = geometry.H, geometry.W, geometry.C
    for roi_bin in prange(n_bins):
        n, ph, pw = roi_align_bin_index(roi_bin, geometry)
        bin_ = roi_align_bin(rois, offset, True, n, ph, pw, geometry)
        image = pixels[bin_.batch]
        out_d_y = np.zeros(C, dtype=pixels.dtype)  # n_ij · ∂out[n, c, ph, pw]/∂y for every channel c
        out_d_x = np.zeros(C, dtype=pixels.dtype)
        for iy in range(bin_.grid_h):
            for ix in range(bin_.grid_w):
                y, x = roi_align_sample_position(bin_, iy, ix)
                if not roi_align_is_valid(y, x, H, W):
                    if not is_finite_position(y, x):  # a NaN sample makes its bin's gradient NaN
                        out_d_y[:] = np.nan
                        out_d_x[:] = np.nan
                    continue
                for corner in range(4):
                    pixel, weight_d_y, weight_d_x = roi_align_corner_gradient(0, H, W, y, x, corner)
                    for c in range(C):
                        out_d_y[c] += pixels.dtype.type(weight_d_y) * image[pixel, c]
                        out_d_x[c] += pixels.dtype.type(weight_d_x) * image[pixel, c]
        grad_y = 0.0
        grad_x = 0.0
        for c in range(C):
            grad_y += grad_output[n, c, ph, pw] * out_d_y[c]
            grad_x += grad_output[n, c, ph, pw] * out_d_x[c]
        count = roi_align_count(bin_)
        grad_offset[n, 0, ph, pw] = geometry.gamma * bin_.roi_width * grad_x / count
        grad_offset[n, 1, ph, pw] = geometry.gamma * bin_.roi_height * grad_y / count


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops, one thread per output element (n, c, ph, pw)
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(sampling)


@cuda.jit
def deform_roi_pool_forward_cuda(n_items, input, rois, offset, has_offset, output, geometry):
    """output[n, c, ph, pw]; one thread per output element."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        pw = index % geometry.PW
        ph = index // geometry.PW % geometry.PH
        c = index // (geometry.PH * geometry.PW) % geometry.C
        n = index // (geometry.PH * geometry.PW * geometry.C)
        bin_ = gpu.roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        plane = (bin_.batch * geometry.C + c) * geometry.H * geometry.W
        output[n, c, ph, pw] = gpu.roi_align_average(input, plane, geometry.H, geometry.W, bin_)


@cuda.jit
def deform_roi_pool_backward_cuda(n_items, input, rois, offset, has_offset, grad_output,
                                  grad_input, grad_offset, geometry):
    """grad_input and grad_offset contributions of one output element (n, c, ph, pw) per thread."""
    H, W = geometry.H, geometry.W
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        pw = index % geometry.PW
        ph = index // geometry.PW % geometry.PH
        c = index // (geometry.PH * geometry.PW) % geometry.C
        n = index // (geometry.PH * geometry.PW * geometry.C)
        bin_ = gpu.roi_align_bin(rois, offset, has_offset, n, ph, pw, geometry)
        plane = (bin_.batch * geometry.C + c) * H * W
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
        if has_offset:
            d_y, d_x = gpu.roi_align_average_gradient(input, plane, H, W, bin_)
            # Atomic: the threads of all C channels add into the offset of this bin.
            cuda.atomic.add(grad_offset, (n, 0, ph, pw),
                            geometry.gamma * bin_.roi_width * grad_output[n, c, ph, pw] * d_x)
            cuda.atomic.add(grad_offset, (n, 1, ph, pw),
                            geometry.gamma * bin_.roi_height * grad_output[n, c, ph, pw] * d_y)


def cuda_kernel_signatures():
    """(name, CUDA kernel, argument types) of every kernel above in float32 and float64, for
    compiling them ahead of time (tests/test_compile.py)."""
    geometry = numba.typeof(RoIAlignGeometry(1, 1, 1, 1, 1, 1.0, 0, 0.1))
    signatures = []
    for dtype in (types.float32, types.float64):
        flat, rois, bins = dtype[::1], dtype[:, ::1], dtype[:, :, :, ::1]
        signatures += [
            (f"deform_roi_pool_forward_cuda[{dtype}]", deform_roi_pool_forward_cuda,
             (types.int64, flat, rois, bins, types.boolean, bins, geometry)),
            (f"deform_roi_pool_backward_cuda[{dtype}]", deform_roi_pool_backward_cuda,
             (types.int64, flat, rois, bins, types.boolean, bins, flat, bins, geometry)),
        ]
    return signatures


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma):
    """The RoIAlignGeometry of a validated call. Sample positions are computed in float64 for
    either data type; NumPy float64 scalars keep them so under the CUDA simulator too, where
    float32 constants would otherwise narrow arithmetic on plain Python floats."""
    _, C, H, W = input.shape
    return RoIAlignGeometry(C, H, W, *output_size, np.float64(spatial_scale), int(sampling_ratio),
                            np.float64(gamma))


def offset_or_stand_in(xp, offset, dtype):
    """(offset, True), or an empty stand-in and False, so that one compiled kernel serves both."""
    if offset is None:
        return xp.empty((0, 2, 1, 1), dtype=dtype), False
    return offset, True


def channels_last(input):
    """pixels (B, H·W, C), a copy of input (B, C, H, W) with the C channels of each pixel side by
    side: the layout of the CPU kernels, in which one sample's corners and weights serve a
    contiguous vector of channels."""
    B, C, H, W = input.shape
    return np.ascontiguousarray(input.reshape(B, C, H * W).transpose(0, 2, 1))


def channels_per_task(B, C):
    """Channels per task of the CPU grad_input kernel: as many as possible, since every task
    computes the geometry of all the samples of its image, while leaving two tasks per thread."""
    tasks_per_image = -(-2 * numba.get_num_threads() // max(B, 1))
    return max(1, -(-C // tasks_per_image))


def deform_roi_pool(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, backend):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_roi_pool."""
    xp = array_module(input)
    geometry = roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma)
    N = rois.shape[0]
    output = xp.empty((N, geometry.C, geometry.PH, geometry.PW), dtype=input.dtype)
    offset, has_offset = offset_or_stand_in(xp, offset, input.dtype)
    if backend == "cpu":
        deform_roi_pool_forward_cpu(N * geometry.PH * geometry.PW, channels_last(input), rois, offset,
                                    has_offset, output, geometry)
    else:
        launch(deform_roi_pool_forward_cuda, output.size, cuda_stream(), input.reshape(-1), rois,
               offset, has_offset, output, geometry)
    return output


def deform_roi_pool_backward(grad_output, input, rois, offset, output_size, spatial_scale,
                             sampling_ratio, gamma, backend):
    """(grad_input, grad_offset or None) on the "cpu" or "cuda" backend."""
    xp = array_module(input)
    geometry = roi_align_geometry(input, output_size, spatial_scale, sampling_ratio, gamma)
    grad_offset = None if offset is None else xp.zeros_like(offset)
    offset, has_offset = offset_or_stand_in(xp, offset, input.dtype)
    if backend == "cpu":
        B, C, H, W = input.shape
        grad_pixels = np.zeros((B, H * W, C), dtype=input.dtype)
        per_task = channels_per_task(B, C)
        deform_roi_pool_grad_input_cpu(B * -(-C // per_task), per_task, rois, offset, has_offset,
                                       grad_output, grad_pixels, geometry)
        grad_input = np.ascontiguousarray(grad_pixels.transpose(0, 2, 1)).reshape(B, C, H, W)
        if has_offset:
            deform_roi_pool_grad_offset_cpu(rois.shape[0] * geometry.PH * geometry.PW,
                                            channels_last(input), rois, offset, grad_output,
                                            grad_offset, geometry)
    else:
        grad_input = xp.zeros_like(input)
        launch(deform_roi_pool_backward_cuda, grad_output.size, cuda_stream(), input.reshape(-1),
               rois, offset, has_offset, grad_output, grad_input.reshape(-1),
               offset if grad_offset is None else grad_offset, geometry)
    return grad_input, grad_offset
