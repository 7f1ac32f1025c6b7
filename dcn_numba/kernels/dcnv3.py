"""DCNv3 kernels (docs/specification.md §3) for the CPU and CUDA, and their launchers; DCNv4 runs
on them after its offset_mask is unpacked (dcn_numba.ops.dcnv3).

With G groups of D channels, P taps and go = ∂L/∂out:

    layout     padded[n, y, x, c]: the channels-last input zero-padded by one pixel
    forward    out[n, h, w, g·D + d] = Σ_p m · S(x[n, :, :, g·D + d], p)
    backward   grad_input  += m · go · w_ab at each corner of each valid sample
               grad_offset  = s · Σ_d m · go_d · ∂S_d/∂p   (x first)
               grad_mask    = Σ_d go_d · S_d

where p is the location of §3.3 (`dcnv3_math.dcnv3_sample_location`) and S, ∂S/∂p, w_ab are the
bilinear functions of §1 (`bilinear`, `deform_conv_math`). A sample's location and corner weights serve every
channel of its group; with the channels last, those channels are contiguous in memory. Reading a
padded input makes every corner of a valid sample an in-bounds read (0 in the padding), and
grad_input is accumulated on a padded gradient whose border is then dropped.

Flat shapes inside the kernels: padded and grad_padded (N·(H + 2)·(W + 2)·C,), offset
(N·H_out·W_out·G·P·2,), mask (N·H_out·W_out·G·P,), output and grad_output
(N·H_out·W_out·C,), as laid out in `dcnv3_math`. Every array is C-contiguous.

Must match dcn_numba.reference.dcnv3 (tests/kernels/test_dcnv3_kernels.py checks it).

Who owns which output:
    forward     CPU: one prange iteration per output row (n, h): at each of its positions the
                G·P samples are located first, then each group's channels, a contiguous row, are
                summed over the group's P samples in float64
                CUDA: one thread per output element (n, h, w, c), summed in float64
    backward    CPU: one iteration per image and group (n, g): it alone writes group g's channels
                of image n in grad_input, so no races, and its samples' offset and mask gradients
                CUDA: one thread per sample group (n, h, w, g): its offset and mask gradients,
                summed over the group's channels in float64, and atomic adds into the corners

The CPU kernels let the compiler fuse a multiplication and an addition into one multiply-add
(`cpu_kernel(contract=True)`), as the CUDA compiler does by default: 8-9% faster at the
benchmark's shape (benchmarks/RESULTS.md), and a difference from the reference in the last bits
only.
"""

import numpy as np
from numba import cuda, prange

from dcn_numba.kernels import bilinear, dcnv3_math, deform_conv_math
from dcn_numba.kernels._targets import (COUNT, FLAT, cpu_helper, cpu_kernel, cuda_kernel, for_cuda, geometry_of,
                                        run_cpu, run_cuda, shared)
from dcn_numba.kernels.dcnv3_math import (DCNv3Geometry, dcnv3_corner_index, dcnv3_locate, dcnv3_sample_location,
                                          dcnv3_output_coordinates, dcnv3_padded_image, dcnv3_sample_number,
                                          dcnv3_store_sample_gradient, dcnv3_tap)
# The bilinear mathematics of §1: the DCNv2 rule on a zero-padded channels-last image.
from dcn_numba.kernels.deform_conv_math import (dcn_column_from_corners, dcn_input_gradient_term,
                                                dcn_offset_mask_terms)
from dcn_numba.reference.dcnv3 import Parameters, taps_of
from dcn_numba.runtime.arrays import array_module

# ---------------------------------------------------------------------------------------------
# CPU kernels: parallel loops whose iterations own disjoint parts of the output
# ---------------------------------------------------------------------------------------------


@cpu_helper
def tap_table(geometry):
    """(i_x, i_y) of the G·P samples k = g·P + p of one output position, as two arrays: built once
    per kernel iteration rather than per sample, because `dcnv3_tap` divides twice."""
    samples = geometry.group * geometry.taps
    tap_x = np.empty(samples, dtype=np.int64)
    tap_y = np.empty(samples, dtype=np.int64)
    for k in range(samples):
        tap_x[k], tap_y[k] = dcnv3_tap(k % geometry.taps, geometry)
    return tap_x, tap_y


@cpu_helper
def row_tables(geometry, groups, dtype):
    """Empty tables for the located samples of `groups` groups at each position of one output row:
    (p_y, p_x) in float64, then top_left (int64) and the weights l_y, l_x in the data's dtype."""
    size = geometry.W_out * groups * geometry.taps
    return (np.empty(size, dtype=np.float64), np.empty(size, dtype=np.float64),
            np.empty(size, dtype=np.int64), np.empty(size, dtype=dtype), np.empty(size, dtype=dtype))


@cpu_helper
def locate_row(padded, offset, n, h, first_group, groups, tap_x, tap_y, tables, geometry):
    """Locate the samples of groups first_group … first_group + groups − 1 at every position w of
    output row (n, h) into `tables` (`row_tables`): sample i = (g − first_group)·P + p of position w
    at j = w·S + i, S = groups·P. Two passes, as `dcnv3_locate_sample` takes its two steps: the
    locations (`dcnv3_sample_location`), then the pixels and weights (`dcnv3_locate`); each pass
    is a loop that vectorises, where one loop doing both does not."""
    p_y, p_x, top_lefts, l_y, l_x = tables
    S = groups * geometry.taps
    first_tap = first_group * geometry.taps
    for w in range(geometry.W_out):
        first_sample = dcnv3_sample_number((n * geometry.H_out + h) * geometry.W_out + w, first_group, 0,
                                           geometry)
        for i in range(S):
            p_y[w * S + i], p_x[w * S + i] = dcnv3_sample_location(offset, first_sample + i, h, w,
                                                                   tap_x[first_tap + i], tap_y[first_tap + i],
                                                                   geometry)
    for j in range(top_lefts.size):
        top_lefts[j], l_y[j], l_x[j] = dcnv3_locate(padded, p_y[j], p_x[j], geometry)


@cpu_helper
def corner_starts(image, top_left, g, geometry):
    """Flat indices of the first of group g's D channels at the four corners of a located sample,
    as unsigned integers: Numba wraps negative signed indices around, and that test on every read
    keeps the channel loops from vectorising. A sample that reads no pixel reads the image's first
    corners, in bounds and meaningless, as `bilinear.padded_corners` does."""
    top_left = max(top_left, 0)
    D = geometry.group_channels
    return (np.uint64(dcnv3_corner_index(image, top_left, 0, g * D, geometry)),
            np.uint64(dcnv3_corner_index(image, top_left, 1, g * D, geometry)),
            np.uint64(dcnv3_corner_index(image, top_left, 2, g * D, geometry)),
            np.uint64(dcnv3_corner_index(image, top_left, 3, g * D, geometry)))


@cpu_helper
def scatter_corner_pair(grad_padded, grad_output, grad_row, first, second, corner, m, l_y, l_x, D):
    """grad_input += m · go · w of corners `corner` and `corner` + 1 of a valid sample, the two
    pixels side by side in one row, whose group's D channels start at `first` and `second` in
    grad_padded (`corner_starts`): both in one loop, so that fewer loops are entered per sample,
    and still few enough arrays for the loop to vectorise (all four in one loop are too many)."""
    for d in range(np.uint64(D)):
        grad_padded[first + d] += dcn_input_gradient_term(grad_output[grad_row + d], m, l_y, l_x, corner)
        grad_padded[second + d] += dcn_input_gradient_term(grad_output[grad_row + d], m, l_y, l_x, corner + 1)


@cpu_kernel(contract=True)
def dcnv3_forward_cpu(n_rows, padded, offset, mask, output, geometry):
    """The n_rows = N·H_out output rows: the row's samples located first (`locate_row`), then at
    each position each group's D channels summed over its P samples, a sample's location and
    corner weights serving the contiguous row of its group's channels."""
    C, D, P, G = geometry.C, geometry.group_channels, geometry.taps, geometry.group
    for row in prange(n_rows):
        n, h = row // geometry.H_out, row % geometry.H_out
        image = dcnv3_padded_image(n, geometry)
        tap_x, tap_y = tap_table(geometry)
        tables = row_tables(geometry, G, padded.dtype)
        locate_row(padded, offset, n, h, 0, G, tap_x, tap_y, tables, geometry)
        top_lefts, l_ys, l_xs = tables[2:]
        totals = np.empty(D, dtype=np.float64)
        for w in range(geometry.W_out):
            position = row * geometry.W_out + w
            first_sample = dcnv3_sample_number(position, 0, 0, geometry)
            for g in range(G):
                totals[:] = 0.0
                for k in range(g * P, (g + 1) * P):
                    j = w * G * P + k
                    top_left, l_y, l_x = top_lefts[j], l_ys[j], l_xs[j]
                    m = mask[np.uint64(first_sample + k)]
                    v00, v01, v10, v11 = corner_starts(image, top_left, g, geometry)
                    for d in range(np.uint64(D)):
                        totals[d] += dcn_column_from_corners(padded[v00 + d], padded[v01 + d], padded[v10 + d],
                                                             padded[v11 + d], l_y, l_x, top_left, m)
                first_channel = np.uint64(position * C + g * D)
                for d in range(np.uint64(D)):
                    output[first_channel + d] = totals[d]


@cpu_kernel(reassociate=True, contract=True)
def dcnv3_backward_cpu(n_tasks, padded, offset, mask, grad_output, grad_padded, grad_offset,
                       grad_mask, geometry):
    """Every gradient of the n_tasks = N·G tasks (image n, group g): the offset and mask gradients
    of its samples, each summed over the group's channels in float64, and grad_input of its
    channels (grad_padded), which this task alone writes. Each output row's samples of group g are
    located first (`locate_row`)."""
    C, D, P = geometry.C, geometry.group_channels, geometry.taps
    for task in prange(n_tasks):
        n, g = task // geometry.group, task % geometry.group
        image = dcnv3_padded_image(n, geometry)
        tap_x, tap_y = tap_table(geometry)
        tables = row_tables(geometry, 1, padded.dtype)
        top_lefts, l_ys, l_xs = tables[2:]
        for h in range(geometry.H_out):
            locate_row(padded, offset, n, h, g, 1, tap_x, tap_y, tables, geometry)
            for w in range(geometry.W_out):
                position = (n * geometry.H_out + h) * geometry.W_out + w
                grad_row = np.uint64(position * C + g * D)
                for p in range(P):
                    sample = dcnv3_sample_number(position, g, p, geometry)
                    j = w * P + p
                    top_left, l_y, l_x = top_lefts[j], l_ys[j], l_xs[j]
                    m = mask[np.uint64(sample)]
                    v00, v01, v10, v11 = corner_starts(image, top_left, g, geometry)
                    total_y = 0.0
                    total_x = 0.0
                    total_m = 0.0
                    for d in range(np.uint64(D)):
                        term_y, term_x, term_m = dcn_offset_mask_terms(
                            padded[v00 + d], padded[v01 + d], padded[v10 + d], padded[v11 + d], l_y, l_x,
                            top_left, m, grad_output[grad_row + d])
                        total_y += term_y
                        total_x += term_x
                        total_m += term_m
                    dcnv3_store_sample_gradient(grad_offset, grad_mask, sample, total_y, total_x, total_m,
                                                geometry)
                    if top_left < 0:
                        continue  # a sample that reads no pixel scatters nothing
                    scatter_corner_pair(grad_padded, grad_output, grad_row, v00, v01, 0, m, l_y, l_x, D)
                    scatter_corner_pair(grad_padded, grad_output, grad_row, v10, v11, 2, m, l_y, l_x, D)


# ---------------------------------------------------------------------------------------------
# CUDA kernels: grid-stride loops
# ---------------------------------------------------------------------------------------------

gpu = for_cuda(dcnv3_math)
# The shared functions as the CUDA kernels reach them, one handle per module (`_targets.for_cuda`).
bilinear_gpu = for_cuda(bilinear)
math_gpu = for_cuda(deform_conv_math)
GEOMETRY = geometry_of(DCNv3Geometry)


@cuda_kernel(COUNT, FLAT, FLAT, FLAT, FLAT, GEOMETRY)
def dcnv3_forward_cuda(n_items, padded, offset, mask, output, geometry):
    """output[n, h, w, c]; one thread per output element."""
    W, C = geometry.W, geometry.C
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        position, c = index // C, index % C
        g = c // geometry.group_channels
        h, w = gpu.dcnv3_output_coordinates(position, geometry)
        image = gpu.dcnv3_padded_image(position // (geometry.H_out * geometry.W_out), geometry)
        total = 0.0
        for p in range(geometry.taps):
            i_x, i_y = gpu.dcnv3_tap(p, geometry)
            sample = gpu.dcnv3_sample_number(position, g, p, geometry)
            top_left, l_y, l_x = gpu.dcnv3_locate_sample(padded, offset, sample, h, w, i_x, i_y, geometry)
            v00, v01, v10, v11 = bilinear_gpu.padded_corners(padded, image + c, top_left, W, C)
            total += math_gpu.dcn_column_from_corners(v00, v01, v10, v11, l_y, l_x, top_left, mask[sample])
        output[index] = total


@cuda_kernel(COUNT, FLAT, FLAT, FLAT, FLAT, FLAT, FLAT, FLAT, GEOMETRY)
def dcnv3_backward_cuda(n_items, padded, offset, mask, grad_output, grad_padded, grad_offset,
                        grad_mask, geometry):
    """The gradients of one sample group (position, g) per thread: its P samples' offset and mask
    gradients, each summed over the group's channels in float64, and their grad_input shares."""
    W, C, D = geometry.W, geometry.C, geometry.group_channels
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        position, g = index // geometry.group, index % geometry.group
        h, w = gpu.dcnv3_output_coordinates(position, geometry)
        image = gpu.dcnv3_padded_image(position // (geometry.H_out * geometry.W_out), geometry)
        for p in range(geometry.taps):
            i_x, i_y = gpu.dcnv3_tap(p, geometry)
            sample = gpu.dcnv3_sample_number(position, g, p, geometry)
            top_left, l_y, l_x = gpu.dcnv3_locate_sample(padded, offset, sample, h, w, i_x, i_y, geometry)
            m = mask[sample]
            total_y = 0.0
            total_x = 0.0
            total_m = 0.0
            for c in range(g * D, (g + 1) * D):
                v00, v01, v10, v11 = bilinear_gpu.padded_corners(padded, image + c, top_left, W, C)
                term_y, term_x, term_m = math_gpu.dcn_offset_mask_terms(
                    v00, v01, v10, v11, l_y, l_x, top_left, m, grad_output[position * C + c])
                total_y += term_y
                total_x += term_x
                total_m += term_m
            gpu.dcnv3_store_sample_gradient(grad_offset, grad_mask, sample, total_y, total_x, total_m,
                                            geometry)
            if top_left < 0:
                continue
            for corner in range(4):
                for c in range(g * D, (g + 1) * D):
                    # Atomic: samples of other positions and taps reach this pixel too.
                    cuda.atomic.add(grad_padded, gpu.dcnv3_corner_index(image, top_left, corner, c, geometry),
                                    math_gpu.dcn_input_gradient_term(grad_output[position * C + c], m,
                                                                         l_y, l_x, corner))


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def dcnv3_geometry(input, offset, *parameters):
    """The DCNv3Geometry of a validated call, `parameters` as reference.dcnv3.Parameters.
    offset_scale is made a NumPy float64, so that locations are computed in float64 under the
    CUDA simulator too (a Python float would be narrowed by the float32 constants of the
    bilinear functions)."""
    parameters = Parameters(*parameters)
    parameters = parameters._replace(offset_scale=np.float64(parameters.offset_scale),
                                     remove_center=int(parameters.remove_center))
    N, H, W, C = input.shape
    H_out, W_out = offset.shape[1:3]
    return DCNv3Geometry(N, H, W, C, H_out, W_out, taps_of(parameters), *parameters)


def zero_padded(xp, input):
    """input (N, H, W, C) → (N, H + 2, W + 2, C), one pixel of zeros around, as a flat array."""
    return xp.pad(input, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1)


def dcnv3(input, offset, mask, *parameters, backend):
    """Forward on the "cpu" or "cuda" backend; `parameters` as dcn_numba.reference.dcnv3.dcnv3."""
    xp = array_module(input)
    geometry = dcnv3_geometry(input, offset, *parameters)
    output = xp.empty((geometry.N, geometry.H_out, geometry.W_out, geometry.C), dtype=input.dtype)
    arrays = (zero_padded(xp, input), offset.reshape(-1), mask.reshape(-1), output.reshape(-1))
    if backend == "cpu":
        run_cpu(dcnv3_forward_cpu, geometry.N * geometry.H_out, *arrays, geometry)
    else:
        run_cuda(dcnv3_forward_cuda, output.size, *arrays, geometry)
    return output


def dcnv3_backward(grad_output, input, offset, mask, *parameters, backend):
    """(grad_input, grad_offset, grad_mask) on the "cpu" or "cuda" backend."""
    xp = array_module(input)
    geometry = dcnv3_geometry(input, offset, *parameters)
    N, H, W, C = input.shape
    grad_padded = xp.zeros((N, H + 2, W + 2, C), dtype=input.dtype)
    grad_offset = xp.empty_like(offset)
    grad_mask = xp.empty_like(mask)
    arrays = (zero_padded(xp, input), offset.reshape(-1), mask.reshape(-1), grad_output.reshape(-1),
              grad_padded.reshape(-1), grad_offset.reshape(-1), grad_mask.reshape(-1))
    if backend == "cpu":
        run_cpu(dcnv3_backward_cpu, N * geometry.group, *arrays, geometry)
    else:
        run_cuda(dcnv3_backward_cuda, N * geometry.H_out * geometry.W_out * geometry.group, *arrays,
                 geometry)
    grad_input = xp.ascontiguousarray(grad_padded[:, 1:H + 1, 1:W + 1])
    return grad_input, grad_offset, grad_mask
