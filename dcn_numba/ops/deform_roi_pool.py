"""Deformable RoI pooling: the public functions (docs/specification.md §2.1).

    deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, sampling_ratio=0, gamma=0.1)

RoIAlign (aligned) whose bins each move by a learned offset, with the argument names and layouts
of the common deformable RoI pooling operator. These functions validate the arguments, pick the
backend and hand the arrays to dcn_numba.reference.deform_roi_pool ("reference") or
dcn_numba.kernels.deform_roi_pool ("cpu", "cuda").
"""

from dcn_numba.ops.checks import (MAX_SAMPLES_PER_AXIS, as_int, as_pair, as_real, check_adaptive_grid,
                                  check_arrays, check_grad_output, check_output_bytes,
                                  check_rois, check_shape, prepare)
from dcn_numba.kernels import deform_roi_pool as kernels
from dcn_numba.reference import deform_roi_pool as reference


def _validate(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma,
              grad_output=None):
    """Check every argument against docs/specification.md §2.1; return the array module and the parameters."""
    xp = check_arrays([("input", input, 4, "(B, C, H, W)"), ("rois", rois, 2, "(N, 5)")],
                      [("offset", offset, 4, "(N, 2, PH, PW)"), ("grad_output", grad_output, 4, "(N, C, PH, PW)")])
    output_size = as_pair(output_size, "output_size", 1)
    parameters = (output_size, as_real(spatial_scale, "spatial_scale", positive=True),
                  as_int(sampling_ratio, "sampling_ratio", maximum=MAX_SAMPLES_PER_AXIS),
                  as_real(gamma, "gamma"))
    B, C, H, W = input.shape
    if min(H, W) < 1:
        raise ValueError(f"input has shape {tuple(input.shape)}, expected (B, C, H, W) with H, W >= 1")
    check_rois(xp, rois, B)
    check_adaptive_grid(xp, rois, parameters[1], output_size, parameters[2])
    N = rois.shape[0]
    check_output_bytes((N, C, *output_size), input.itemsize, "the output",
                       "output_size, the number of rois and input's channels")
    if offset is not None:
        check_shape(offset, "offset", (N, 2, *output_size),
                    "(N, 2, PH, PW): one (dx, dy) pair per bin, x first, N from rois, (PH, PW) = output_size")
    if grad_output is not None:
        check_shape(grad_output, "grad_output", (N, C, *output_size), "(N, C, PH, PW): the output's shape")
    return xp, parameters


def deform_roi_pool(input, rois, offset=None, output_size=7, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1, *, backend=None):
    """Deformable RoI pooling (Dai et al. 2017): RoIAlign (aligned) plus a learned shift per bin.

        out[n, c, ph, pw] = Σ_{iy, ix} B(x[b, c], y, x) / max(grid_h·grid_w, 1),   b = rois[n, 0]

    The RoI (x1, y1, x2, y2) in input-image coordinates becomes start = (x1, y1)·s − 0.5 and
    roi_width = (x2 − x1)·s, roi_height = (y2 − y1)·s on the feature map (s = spatial_scale; no
    rounding, no clamping). Bin (ph, pw) measures bin_height = roi_height/PH by
    bin_width = roi_width/PW and starts at

        y: start_y + ph·bin_height + γ·roi_height·offset[n, 1, ph, pw]
        x: start_x + pw·bin_width  + γ·roi_width ·offset[n, 0, ph, pw]

    It averages grid_h × grid_w samples at its sub-bin centres; grid = sampling_ratio, or
    ceil(roi_height/PH) × ceil(roi_width/PW) when sampling_ratio ≤ 0 (adaptive; a RoI with
    x2 < x1 or y2 < y1 then has empty bins and pools 0). This is the seed paper's
    y(i, j) = Σ_{p ∈ bin(i, j)} x(p0 + p + Δp_ij) / n_ij with Δp_ij = γ·Δp̂_ij ∘ (w, h).

    B is the RoIAlign bilinear: 0 if y < −1, y > H, x < −1 or x > W; otherwise the position is
    clamped to ≥ 0, and from the last row (column) on both corners are that row (column).
    With offset None (or zero) this is RoIAlign with aligned=True.

    Shapes:
        input  (B, C, H, W)
        rois   (N, 5) rows (batch_index, x1, y1, x2, y2); batch_index an integer value in [0, B)
        offset (N, 2, PH, PW) or None: channel 0 holds Δx, channel 1 Δy. Note the order, x first,
               the opposite of the deformable convolution's (dy, dx) offsets.
        output (N, C, PH, PW)

    output_size: (PH, PW), an int or a pair. gamma: the scale γ of the offsets. NaN or infinite
    offsets give NaN outputs.
    backend: "reference", "cpu" or "cuda"; None picks "cuda" for CuPy arrays and "cpu" for NumPy ones.
    Float32 or float64, all arrays of one kind and dtype; the output is of that kind and dtype.
    Read-only NumPy arrays are copied once before the kernels run (`checks.prepare`).
    """
    xp, parameters = _validate(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)
    backend, (input, rois, offset) = prepare(backend, xp, input, rois, offset)
    if backend == "reference":
        return reference.deform_roi_pool(input, rois, offset, *parameters)
    return kernels.deform_roi_pool(input, rois, offset, *parameters, backend)


def deform_roi_pool_backward(grad_output, input, rois, offset=None, output_size=7, spatial_scale=1.0,
                             sampling_ratio=0, gamma=0.1, *, backend=None):
    """Gradients of deform_roi_pool: (grad_input (B, C, H, W), grad_offset (N, 2, PH, PW)).

    grad_output is ∂L/∂output (N, C, PH, PW); the other arguments are those of the forward call.
    grad_offset is None when offset is None; the RoIs get no gradient. Each sample of bin
    (ph, pw) adds B/n_ij to the output, so with share = grad_output[n, c, ph, pw] / n_ij:

        grad_input[b, c]         += share · w_ab at each corner (a, b) the sample reads
        grad_offset[n, 0, ph, pw] = γ·roi_width  · Σ_c Σ_samples share · ∂B/∂x
        grad_offset[n, 1, ph, pw] = γ·roi_height · Σ_c Σ_samples share · ∂B/∂y

    with corner values v_ab (row a, column b) ∂B/∂y = slope_y·[(1−l_x)(v10 − v00) + l_x(v11 − v01)]
    and ∂B/∂x = slope_x·[(1−l_y)(v01 − v00) + l_y(v11 − v10)]. This is the exact derivative of the
    forward: slope is 0 where a clamped coordinate does not move (y ≤ 0, or from the last row on;
    likewise for x), and samples outside the valid range get 0. Some public implementations use a
    formula that keeps the unclamped slope in those zones, so their offset gradients differ there.
    grad_output may be non-contiguous, such as the stride-0 broadcast of the gradient of a sum.
    """
    check_grad_output(grad_output, "(N, C, PH, PW)")
    xp, parameters = _validate(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma,
                               grad_output)
    backend, (grad_output, input, rois, offset) = prepare(
        backend, xp, grad_output, input, rois, offset)
    if backend == "reference":
        return reference.deform_roi_pool_backward(grad_output, input, rois, offset, *parameters)
    return kernels.deform_roi_pool_backward(grad_output, input, rois, offset, *parameters, backend)
