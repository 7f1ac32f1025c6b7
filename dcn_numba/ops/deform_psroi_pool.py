"""Position-sensitive deformable RoI pooling: the public functions (docs/specification.md §2.2).

    deform_psroi_pool(input, rois, trans=None, spatial_scale=1.0, output_dim=None, group_size=1,
                      pooled_size=7, part_size=None, sample_per_part=4, trans_std=0.1)

The original R-FCN operator with its argument names and rules (no_trans is trans=None). These
functions validate the arguments, pick the backend and hand the arrays to
dcn_numba.reference.deform_psroi_pool ("reference") or dcn_numba.kernels.deform_psroi_pool
("cpu", "cuda"). The count of kept samples that the backward divides by is recomputed there from
the RoIs and trans, so the backward takes the forward's arguments only.
"""

from dcn_numba.ops.checks import (MAX_SAMPLES_PER_AXIS, as_int, as_real, check_arrays, check_grad_output,
                                  check_output_bytes, check_rois, check_shape,
                                  prepare)
from dcn_numba.kernels import deform_psroi_pool as kernels
from dcn_numba.reference import deform_psroi_pool as reference


def _validate(input, rois, trans, spatial_scale, output_dim, group_size, pooled_size, part_size,
              sample_per_part, trans_std, grad_output=None):
    """Check every argument against docs/specification.md §2.2; return the array module and the parameters
    (spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part, trans_std),
    with output_dim and part_size resolved."""
    xp = check_arrays([("input", input, 4, "(B, output_dim·group_size², H, W)"), ("rois", rois, 2, "(N, 5)")],
                      [("trans", trans, 4, "(N, 2·num_classes, part_size, part_size)"),
                       ("grad_output", grad_output, 4, "(N, output_dim, pooled_size, pooled_size)")])
    spatial_scale = as_real(spatial_scale, "spatial_scale", positive=True)
    group_size = as_int(group_size, "group_size", 1)
    pooled_size = as_int(pooled_size, "pooled_size", 1)
    part_size = pooled_size if part_size is None or part_size == 0 else as_int(part_size, "part_size", 1)
    sample_per_part = as_int(sample_per_part, "sample_per_part", 1, MAX_SAMPLES_PER_AXIS)
    trans_std = as_real(trans_std, "trans_std")
    B, C, H, W = input.shape
    if min(H, W) < 1:
        raise ValueError(f"input has shape {tuple(input.shape)}, expected (B, C, H, W) with H, W >= 1")
    if output_dim is None:
        if C == 0 or C % group_size ** 2:
            raise ValueError(
                f"input has {C} channels, expected a positive multiple of group_size² = {group_size ** 2} "
                "(C = output_dim·group_size², output_dim being inferred)"
            )
        output_dim = C // group_size ** 2
    output_dim = as_int(output_dim, "output_dim", 1)
    if output_dim * group_size ** 2 != C:
        raise ValueError(
            f"input has {C} channels, expected output_dim·group_size² = {output_dim}·{group_size}² = "
            f"{output_dim * group_size ** 2} (one score map per output channel and bin group)"
        )
    check_rois(xp, rois, B)
    N = rois.shape[0]
    check_output_bytes((N, output_dim, pooled_size, pooled_size), input.itemsize, "the output",
                       "pooled_size, output_dim and the number of rois")
    if trans is not None:
        classes_times_two = trans.shape[1]
        if classes_times_two == 0 or classes_times_two % 2 or output_dim % (classes_times_two // 2):
            raise ValueError(
                f"trans has {classes_times_two} channels, expected 2·num_classes: an (x, y) pair per "
                f"class, num_classes dividing output_dim = {output_dim}"
            )
        check_shape(trans, "trans", (N, classes_times_two, part_size, part_size),
                    "(N, 2·num_classes, part_size, part_size), N from rois")
    if grad_output is not None:
        check_shape(grad_output, "grad_output", (N, output_dim, pooled_size, pooled_size),
                    "(N, output_dim, pooled_size, pooled_size): the output's shape")
    return xp, (spatial_scale, output_dim, group_size, pooled_size, part_size, sample_per_part,
                trans_std)


def deform_psroi_pool(input, rois, trans=None, spatial_scale=1.0, output_dim=None, group_size=1,
                      pooled_size=7, part_size=None, sample_per_part=4, trans_std=0.1, *,
                      backend=None):
    """Position-sensitive deformable RoI pooling (Dai et al. 2017), the original R-FCN operator.

    The RoI (x1, y1, x2, y2) is rounded to whole input pixels (halves away from zero) and scaled:
    start = (round(x1), round(y1))·s − 0.5, end = (round(x2) + 1, round(y2) + 1)·s − 0.5,
    roi_width = max(end_x − start_x, 0.1), roi_height likewise (s = spatial_scale). Cut into
    P × P bins (P = pooled_size), bin (ph, pw) of output channel ctop:
    * reads input channel (ctop·group_size + gh)·group_size + gw, with
      gh = floor(ph·group_size/P), gw = floor(pw·group_size/P): its position-sensitive score map;
    * starts at h_start = start_y + ph·bin_height + trans_std·roi_height·Δy and
      w_start = start_x + pw·bin_width + trans_std·roi_width·Δx (bin_height = roi_height/P,
      bin_width = roi_width/P), where Δx = trans[n, 2·class, part_h, part_w] and
      Δy = trans[n, 2·class + 1, part_h, part_w], class = ctop // (output_dim / num_classes),
      part_h = floor(ph·part_size/P), part_w likewise (Δ = 0 without trans);
    * averages the bilinear values at the sample_per_part² sub-bin starts
      (h_start + ih·bin_height/sample_per_part, w_start + iw·bin_width/sample_per_part),
      skipping samples more than half a pixel outside the image (w < −0.5, w > W − 0.5, same for
      h); a kept sample is clamped into the image and blends its floor and ceil neighbours. A bin
      with no kept sample is 0.

    With group_size = 1 and output_dim = C this is deformable RoI pooling with the original
    paper's conventions; with group_size = P and trans None, position-sensitive RoI pooling.

    Shapes:
        input  (B, output_dim·group_size², H, W)
        rois   (N, 5) rows (batch_index, x1, y1, x2, y2); batch_index an integer value in [0, B)
        trans  (N, 2·num_classes, part_size, part_size) or None (no_trans): per class, channel
               2·class holds Δx and 2·class + 1 holds Δy. Note the order, x first, the opposite of
               the deformable convolution's (dy, dx) offsets.
        output (N, output_dim, P, P)

    output_dim: None infers C / group_size². part_size: None or 0 means pooled_size. NaN or
    infinite trans give NaN outputs.
    backend: "reference", "cpu" or "cuda"; None picks "cuda" for CuPy arrays and "cpu" for NumPy ones.
    Float32 or float64, all arrays of one kind and dtype; the output is of that kind and dtype.
    Read-only NumPy arrays are copied once before the kernels run (`checks.prepare`).
    """
    xp, parameters = _validate(input, rois, trans, spatial_scale, output_dim, group_size,
                               pooled_size, part_size, sample_per_part, trans_std)
    backend, (input, rois, trans) = prepare(backend, xp, input, rois, trans)
    if backend == "reference":
        return reference.deform_psroi_pool(input, rois, trans, *parameters)
    return kernels.deform_psroi_pool(input, rois, trans, *parameters, backend)


def deform_psroi_pool_backward(grad_output, input, rois, trans=None, spatial_scale=1.0,
                               output_dim=None, group_size=1, pooled_size=7, part_size=None,
                               sample_per_part=4, trans_std=0.1, *, backend=None):
    """Gradients of deform_psroi_pool: (grad_input (B, C, H, W), grad_trans like trans).

    grad_output is ∂L/∂output (N, output_dim, P, P); the other arguments are those of the forward
    call. grad_trans is None when trans is None; the RoIs get no gradient. Each kept sample adds
    its value / count to its bin, so with share = grad_output[n, ctop, ph, pw] / count (bins with
    no kept sample pass nothing back):

        grad_input[b, c]                       += share · w_ab at each corner (a, b) the sample reads
        grad_trans[n, 2·class, part_h, part_w]     += trans_std·roi_width  · share · ∂value/∂w
        grad_trans[n, 2·class + 1, part_h, part_w] += trans_std·roi_height · share · ∂value/∂h

    with corner values U_ab (row a, column b), l = position − floor(position):
    ∂value/∂w = (1−l_y)(U01 − U00) + l_y(U11 − U10) and ∂value/∂h = (1−l_x)(U10 − U00) + l_x(U11 − U01).
    At an integer coordinate floor = ceil, so the slope along that axis is 0, as in the original
    operator. That is exact for a clamped coordinate, which does not move; at an interior integer,
    where the value has a kink, it is a convention.
    grad_output may be non-contiguous, such as the stride-0 broadcast of the gradient of a sum.
    """
    check_grad_output(grad_output, "(N, output_dim, P, P)")
    xp, parameters = _validate(input, rois, trans, spatial_scale, output_dim, group_size,
                               pooled_size, part_size, sample_per_part, trans_std, grad_output)
    backend, (grad_output, input, rois, trans) = prepare(
        backend, xp, grad_output, input, rois, trans)
    if backend == "reference":
        return reference.deform_psroi_pool_backward(grad_output, input, rois, trans, *parameters)
    return kernels.deform_psroi_pool_backward(grad_output, input, rois, trans, *parameters, backend)
