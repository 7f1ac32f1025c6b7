"""Position-sensitive deformable RoI pooling kernels (docs/specification.md §2.2) for the CPU and CUDA, and
their launchers.

The original R-FCN operator. For RoI n, output channel ctop and bin (ph, pw), reading input
channel c = (ctop·group_size + gh)·group_size + gw of image b = rois[n, 0]:

    forward    out[n, ctop, ph, pw] = Σ_kept value(x[b, c], h, w) / count, 0 if count = 0  (psroi_average)
    backward   grad_input[b, c] += grad_out[n, ctop, ph, pw] / count · w_ab at each corner read
               grad_trans[n, 2·class, part_h, part_w]     += trans_std·roi_width  · grad_out · ∂out/∂w_start
               grad_trans[n, 2·class + 1, part_h, part_w] += trans_std·roi_height · grad_out · ∂out/∂h_start

where the bin geometry is `deform_psroi_pool_math.psroi_bin`, count the number of kept samples
(recomputed by the backward, `psroi_count`), and the values, weights and slopes are the shared
scalar functions of `deform_psroi_pool_math`. trans is stored x first, then y, for each class.

Shapes: input and grad_input flat (B·C·H·W,) with C = output_dim·group_size², rois (N, 5),
trans and grad_trans (N, 2·num_classes, part_size, part_size) (an empty stand-in without trans,
so that both cases share one compiled kernel), output and grad_output (N, output_dim, P, P).
Every array is C-contiguous.

Must match dcn_numba.reference.deform_psroi_pool (tests/ops/test_deform_psroi_pool.py checks it).

Who owns which output:
    forward       CPU and CUDA: one prange iteration / one thread per output element (n, ctop, ph, pw)
    grad_input    CPU: one iteration per input plane (b, c): it alone writes that plane, so no races
                  CUDA: one thread per output element, atomic adds into the corners it read
    grad_trans    CPU: one iteration per (n, class): it alone writes trans[n, 2·class : 2·class + 2],
                  summing in float64
                  CUDA: one thread per output element, atomic adds
"""

from typing import NamedTuple

import numpy as np
from numba import cuda, prange

from dcn_numba.runtime.arrays import array_module
from dcn_numba.kernels import deform_psroi_pool_math
from dcn_numba.kernels._targets import (BINS, COUNT, FLAG, FLAT, ROWS, KernelPair, cpu_kernel, cuda_kernel,
                                        for_cuda, geometry_of, optional_argument, run)
from dcn_numba.kernels.bilinear import is_finite_position
from dcn_numba.kernels.deform_psroi_pool_math import (bin_cell, psroi_average, psroi_bin, psroi_corner, psroi_count,
                                                      psroi_is_skipped, psroi_output_index, psroi_plane,
                                                      psroi_sample_position, psroi_trans_gradient)


class PSRoIGeometry(NamedTuple):
    """The sizes and parameters every kernel needs, passed to kernels as one tuple."""

    C: int
    H: int
    W: int
    output_dim: int
    group_size: int
    pooled_size: int
    part_size: int
    sample_per_part: int
    channels_each_class: int
    spatial_scale: float
    trans_std: float


# ---------------------------------------------------------------------------------------------
# CPU kernels: parallel loops whose iterations own disjoint parts of the output
# ---------------------------------------------------------------------------------------------


@cpu_kernel
def deform_psroi_pool_forward_cpu(n_items, input, rois, trans, has_trans, output, geometry):
    """output[n, ctop, ph, pw] for the n_items = N·output_dim·P² output elements."""
    for index in prange(n_items):
        n, ctop, ph, pw = psroi_output_index(index, geometry)
        bin_ = psroi_bin(rois, trans, has_trans, n, ctop, ph, pw, geometry)
        output[n, ctop, ph, pw] = psroi_average(input, psroi_plane(bin_, geometry), geometry.H, geometry.W, bin_,
                                                geometry.sample_per_part)


@cpu_kernel
def deform_psroi_pool_grad_input_cpu(n_planes, rois, trans, has_trans, grad_output, grad_input,
                                     geometry):
    """grad_input[b, c] += grad_out / count · w_ab at every corner read, for the n_planes = B·C
    planes (b, c). Plane c is read only by output channel ctop = c // group_size² and by the bins
    whose score map (gh, gw) it is; each iteration writes its own plane."""
    H, W, G, P = geometry.H, geometry.W, geometry.group_size, geometry.pooled_size
    for image_channel in prange(n_planes):
        b = image_channel // geometry.C
        c = image_channel % geometry.C
        ctop, gh, gw = c // (G * G), c // G % G, c % G
        plane = image_channel * H * W
        for n in range(rois.shape[0]):
            if int(rois[n, 0]) != b:
                continue
            for ph in range(P):
                for pw in range(P):
                    if bin_cell(ph, P, G) != gh or bin_cell(pw, P, G) != gw:
                        continue
                    bin_ = psroi_bin(rois, trans, has_trans, n, ctop, ph, pw, geometry)
                    count = psroi_count(bin_, H, W, geometry.sample_per_part)
                    if count == 0:
                        continue
                    share = grad_output[n, ctop, ph, pw] / count
                    for ih in range(geometry.sample_per_part):
                        for iw in range(geometry.sample_per_part):
                            h, w = psroi_sample_position(bin_, ih, iw)
                            # Skipped samples and NaN ones read no pixel.
                            if psroi_is_skipped(h, w, H, W) or not is_finite_position(h, w):
                                continue
                            for corner in range(4):
                                target, weight = psroi_corner(plane, H, W, h, w, corner)
                                grad_input[target] += share * weight


@cpu_kernel
def deform_psroi_pool_grad_trans_cpu(n_items, input, rois, trans, grad_output, grad_trans, geometry):
    """grad_trans[n, 2·class : 2·class + 2] for the n_items = N·num_classes pairs (n, class),
    summing over the output channels of the class and the bins of each part cell in float64."""
    P = geometry.pooled_size
    num_classes = trans.shape[1] // 2
    for item in prange(n_items):
        n = item // num_classes
        class_id = item % num_classes
        first = class_id * geometry.channels_each_class
        grad = np.zeros((2, geometry.part_size, geometry.part_size), dtype=np.float64)  # (x, y) cells
        for ctop in range(first, first + geometry.channels_each_class):
            for ph in range(P):
                for pw in range(P):
                    bin_ = psroi_bin(rois, trans, True, n, ctop, ph, pw, geometry)
                    grad_x, grad_y = psroi_trans_gradient(input, bin_, grad_output[n, ctop, ph, pw], geometry)
                    grad[0, bin_.part_h, bin_.part_w] += grad_x
                    grad[1, bin_.part_h, bin_.part_w] += grad_y
        grad_trans[n, 2 * class_id:2 * class_id + 2] = grad


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops, one thread per output element (n, ctop, ph, pw)
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(deform_psroi_pool_math)
GEOMETRY = geometry_of(PSRoIGeometry)


@cuda_kernel(COUNT, FLAT, ROWS, BINS, FLAG, BINS, GEOMETRY)
def deform_psroi_pool_forward_cuda(n_items, input, rois, trans, has_trans, output, geometry):
    """output[n, ctop, ph, pw]; one thread per output element."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        n, ctop, ph, pw = gpu.psroi_output_index(index, geometry)
        bin_ = gpu.psroi_bin(rois, trans, has_trans, n, ctop, ph, pw, geometry)
        output[n, ctop, ph, pw] = gpu.psroi_average(input, gpu.psroi_plane(bin_, geometry), geometry.H, geometry.W,
                                                    bin_, geometry.sample_per_part)


@cuda_kernel(COUNT, ROWS, BINS, FLAG, BINS, FLAT, GEOMETRY)
def deform_psroi_pool_grad_input_cuda(n_items, rois, trans, has_trans, grad_output, grad_input,
                                      geometry):
    """grad_input contributions of one output element (n, ctop, ph, pw) per thread.

    Its walk over a bin's samples is the one of deform_roi_pool's grad_input kernels, under
    this op's rule: Numba compiles neither closures nor functions passed as arguments for CUDA, so
    each op writes the walk out with its own rule's functions."""
    H, W = geometry.H, geometry.W
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        n, ctop, ph, pw = gpu.psroi_output_index(index, geometry)
        bin_ = gpu.psroi_bin(rois, trans, has_trans, n, ctop, ph, pw, geometry)
        count = gpu.psroi_count(bin_, H, W, geometry.sample_per_part)
        if count == 0:
            continue
        plane = gpu.psroi_plane(bin_, geometry)
        share = grad_output[n, ctop, ph, pw] / count
        for ih in range(geometry.sample_per_part):
            for iw in range(geometry.sample_per_part):
                h, w = gpu.psroi_sample_position(bin_, ih, iw)
                # Skipped samples and NaN ones read no pixel.
                if gpu.psroi_is_skipped(h, w, H, W) or not gpu.is_finite_position(h, w):
                    continue
                for corner in range(4):
                    target, weight = gpu.psroi_corner(plane, H, W, h, w, corner)
                    # Atomic: other bins and RoIs read this pixel too.
                    cuda.atomic.add(grad_input, target, share * weight)


@cuda_kernel(COUNT, FLAT, ROWS, BINS, BINS, BINS, GEOMETRY)
def deform_psroi_pool_grad_trans_cuda(n_items, input, rois, trans, grad_output, grad_trans, geometry):
    """grad_trans contributions of one output element (n, ctop, ph, pw) per thread."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        n, ctop, ph, pw = gpu.psroi_output_index(index, geometry)
        bin_ = gpu.psroi_bin(rois, trans, True, n, ctop, ph, pw, geometry)
        grad_x, grad_y = gpu.psroi_trans_gradient(input, bin_, grad_output[n, ctop, ph, pw], geometry)
        # Atomic: every channel of the class and every bin of the part cell add into it.
        cuda.atomic.add(grad_trans, (n, 2 * bin_.class_id, bin_.part_h, bin_.part_w), grad_x)
        cuda.atomic.add(grad_trans, (n, 2 * bin_.class_id + 1, bin_.part_h, bin_.part_w), grad_y)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

FORWARD = KernelPair(deform_psroi_pool_forward_cpu, deform_psroi_pool_forward_cuda)
GRAD_INPUT = KernelPair(deform_psroi_pool_grad_input_cpu, deform_psroi_pool_grad_input_cuda)
GRAD_TRANS = KernelPair(deform_psroi_pool_grad_trans_cpu, deform_psroi_pool_grad_trans_cuda)


def psroi_geometry(input, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
                   sample_per_part, trans_std):
    """The PSRoIGeometry of a validated call (part_size already resolved). Sample positions are
    computed in float64 for either data type; NumPy float64 scalars keep them so under the CUDA
    simulator too, where float32 constants would otherwise narrow arithmetic on plain Python floats."""
    _, C, H, W = input.shape
    num_classes = 1 if trans is None else trans.shape[1] // 2
    return PSRoIGeometry(C, H, W, output_dim, group_size, pooled_size, part_size, sample_per_part,
                         output_dim // num_classes, np.float64(spatial_scale), np.float64(trans_std))


def deform_psroi_pool(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size,
                      part_size, sample_per_part, trans_std, backend):
    """Forward on the "cpu" or "cuda" backend; arguments as dcn_numba.reference.deform_psroi_pool."""
    xp = array_module(input)
    geometry = psroi_geometry(input, trans, spatial_scale, output_dim, group_size, pooled_size,
                              part_size, sample_per_part, trans_std)
    output = xp.empty((rois.shape[0], output_dim, pooled_size, pooled_size), dtype=input.dtype)
    trans, has_trans = optional_argument(xp, trans, 4, input.dtype)
    run(backend, FORWARD, output.size, output.size, input.reshape(-1), rois, trans, has_trans,
        output, geometry)
    return output


def deform_psroi_pool_backward(grad_output, input, rois, trans, spatial_scale, output_dim,
                               group_size, pooled_size, part_size, sample_per_part, trans_std,
                               backend):
    """(grad_input, grad_trans or None) on the "cpu" or "cuda" backend."""
    xp = array_module(input)
    geometry = psroi_geometry(input, trans, spatial_scale, output_dim, group_size, pooled_size,
                              part_size, sample_per_part, trans_std)
    grad_input = xp.zeros_like(input)
    grad_trans = None if trans is None else xp.zeros_like(trans)
    trans, has_trans = optional_argument(xp, trans, 4, input.dtype)
    run(backend, GRAD_INPUT, input.shape[0] * geometry.C, grad_output.size, rois, trans, has_trans,
        grad_output, grad_input.reshape(-1), geometry)
    if has_trans:
        run(backend, GRAD_TRANS, rois.shape[0] * (trans.shape[1] // 2), grad_output.size,
            input.reshape(-1), rois, trans, grad_output, grad_trans, geometry)
    return grad_input, grad_trans
