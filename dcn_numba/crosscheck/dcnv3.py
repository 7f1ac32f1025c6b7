"""The DCNv3 and DCNv4 cross-check: a battery of cases for the two operators (docs/specification.md
§3), dcn_numba's backends, and a second, independent implementation: DCNv3 written with PyTorch's
`grid_sample` from the published formulas (an adapter; it needs torch).

    python -m dcn_numba.crosscheck --op dcnv3 IMPLEMENTATION [IMPLEMENTATION ...]

IMPLEMENTATION is "reference", "cpu", "cuda", "torch-grid-sample", or
"torch-grid-sample-upstream-pads" (the same with the padding of InternImage's pure-PyTorch
function, which pads the rows by pad_w and the columns by pad_h). Every case runs the forward and
the backward (torch's through autograd, in float64) and compares them with the reference, and with
the hand-computed values where a case has them. A difference is explained when the results
follow, instead, one of the documented conventions below; the exit status is 1 when any result
differs without an explanation or an implementation fails on a case.

Where the grid_sample formulation differs from dcn_numba by convention:
* it has no validity test: a sample exactly on p = −1 passes the offset gradient of the bilinear
  formula to its offset (with the corner at 0 inside the image), where the DCNv2 rule gives 0
  ("gradient at exactly -1"). This shows where grid_sample's normalised coordinate of that point is
  exact (the battery's case pads 6 pixels to 8); elsewhere rounding moves the point a little to
  either side. Values agree everywhere: grid_sample's zero padding reads 0 wherever the rule
  says a sample is invalid;
* it maps pixel positions p to grid_sample's [−1, 1] with align_corners=False,
  x = (2p + 1) / W − 1, and computes in the tensor's dtype;
* with the upstream padding, pad_h ≠ pad_w computes the operator with the two pads exchanged
  ("pads exchanged"), or fails on mismatched shapes (shown as n/a here) when the exchange changes
  H_out or W_out.
"""

import numpy as np

import dcn_numba
from dcn_numba.crosscheck.adapters import Implementation, NotApplicable
from dcn_numba.crosscheck.battery import Case
from dcn_numba.crosscheck.conventions import Convention, max_error, within_tolerance
from dcn_numba.crosscheck.report import Row, table
from dcn_numba.reference import dcnv3 as reference

OPS = ("dcnv3", "dcnv4")
BUILT_IN = ("reference", "cpu", "cuda", "torch-grid-sample", "torch-grid-sample-upstream-pads")
GRADIENTS = {"dcnv3": ("input", "offset", "mask"), "dcnv4": ("input", "offset_mask")}
UNIT = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
            group=1, group_channels=3, offset_scale=1.0, remove_center=0)

# ---------------------------------------------------------------------------------------------
# The battery


def _output_size(size, kernel, stride, pad, dilation):
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _output_sizes(H, W, parameters):
    """(H_out, W_out) of a call on an H×W input."""
    p = parameters
    return (_output_size(H, p["kernel_h"], p["stride_h"], p["pad_h"], p["dilation_h"]),
            _output_size(W, p["kernel_w"], p["stride_w"], p["pad_w"], p["dilation_w"]))


def _random_case(name, rng, shape, op="dcnv3", spread=2.0, integer_offsets=False, softmax=None, **changes):
    """A DCNv3 (or DCNv4) case on input (N, H, W, C): random input, offsets in ±spread (whole
    numbers when integer_offsets), mask values in (0, 1)."""
    parameters = dict(UNIT, **changes)
    N, H, W = shape
    G, D = parameters["group"], parameters["group_channels"]
    P = parameters["kernel_h"] * parameters["kernel_w"] - parameters["remove_center"]
    H_out, W_out = _output_sizes(H, W, parameters)
    offset_shape = (N, H_out, W_out, G * P * 2)
    offset = (rng.integers(-spread, spread + 1, offset_shape).astype(np.float64) if integer_offsets
              else rng.uniform(-spread, spread, offset_shape))
    arrays = dict(input=rng.standard_normal((N, H, W, G * D)), offset=offset,
                  mask=rng.uniform(0, 1, (N, H_out, W_out, G * P)))
    if op == "dcnv4":
        groups = np.concatenate([offset.reshape(N, H_out, W_out, G, 2 * P),
                                 arrays["mask"].reshape(N, H_out, W_out, G, P)], axis=-1)
        width = reference.pad8(3 * G * P)
        offset_mask = np.zeros((N, H_out, W_out, width))
        offset_mask[..., :3 * G * P] = groups.reshape(N, H_out, W_out, 3 * G * P)
        arrays = dict(input=arrays["input"], offset_mask=offset_mask)
        parameters["softmax"] = softmax
    return Case(name, op, arrays, parameters)


def _shifted(image, dy, dx):
    """image[:, y + dy, x + dx] at every (y, x), 0 where that pixel lies outside: the hand value of
    a sample moved by whole pixels."""
    N, H, W, C = image.shape
    canvas = np.zeros((N, H + 8, W + 8, C))
    canvas[:, 4:4 + H, 4:4 + W] = image
    return canvas[:, 4 + dy:4 + dy + H, 4 + dx:4 + dx + W]


def _one_tap_case(name, image, tap, pair, hand, **changes):
    """DCNv3 with one group whose mask is 1 at tap `tap` and 0 elsewhere, every offset pair = (Δx, Δy)."""
    parameters = dict(UNIT, **changes)
    N, H, W, _ = image.shape
    P = 9 - parameters["remove_center"]
    offset = np.tile(np.asarray(pair, dtype=np.float64), (N, H, W, P))
    mask = np.zeros((N, H, W, P))
    mask[..., tap] = 1.0
    return Case(name, "dcnv3", dict(input=image, offset=offset, mask=mask), parameters, hand=hand)


def battery():
    """The cases, the same on every run: hand-computed ones for each convention of §3 (tap order,
    x-first offsets, offset_scale, remove_center), then random ones: offset_scale ≠ 1 with
    dilation, unequal pads, samples exactly on −1, groups, DCNv4 with and without softmax."""
    rng = np.random.default_rng(2023)
    image = rng.standard_normal((1, 4, 5, 3))
    cases = [
        _one_tap_case("hand: tap 1 is one column left (column-major)", image, 1, (0.0, 0.0), _shifted(image, 0, -1)),
        _one_tap_case("hand: offset (1, 0) moves along x (x first)", image, 4, (1.0, 0.0), _shifted(image, 0, 1)),
        _one_tap_case("hand: offset_scale 2 doubles the grid", image, 7, (0.0, 0.0), _shifted(image, 0, 2),
                      offset_scale=2.0),
        _one_tap_case("hand: remove_center, tap 4 is one row down", image, 4, (0.0, 0.0), _shifted(image, 1, 0),
                      remove_center=1),
        _random_case("offset_scale 0.6, dilation (2, 1), stride 2", rng, (2, 7, 6), offset_scale=0.6,
                     dilation_h=2, stride_h=2, stride_w=2, group=2, group_channels=2),
        _random_case("unequal pads (0, 2)", rng, (1, 5, 6), pad_h=0, pad_w=2, group=2, group_channels=2),
        _random_case("unequal pads (1, 2), stride 3", rng, (1, 7, 7), pad_h=1, pad_w=2, stride_h=3, stride_w=3),
        # 6 + 2 padding = 8 pixels: grid_sample's normalised coordinates of whole pixels are exact
        _random_case("samples exactly on -1 (integer offsets)", rng, (1, 6, 6), integer_offsets=True, spread=1),
        _random_case("3 groups, 2x3 kernel, offset_scale 1.5", rng, (2, 5, 5), group=3, group_channels=2,
                     kernel_h=2, kernel_w=3, offset_scale=1.5),
        _random_case("DCNv4, no softmax", rng, (1, 5, 4), op="dcnv4", softmax=False, group=2, group_channels=2),
        _random_case("DCNv4, softmax, remove_center", rng, (2, 4, 4), op="dcnv4", softmax=True, group=2,
                     group_channels=2, remove_center=1, offset_scale=1.3),
    ]
    return cases


# ---------------------------------------------------------------------------------------------
# The conventions that other implementations follow where dcn_numba follows another


def _moved_to_inside(case):
    """The case's arrays with every sample exactly on p = −1 moved to −1 + 1e−9: the reference's
    gradient there is the bilinear formula's without the validity test (∂S/∂p along one axis
    depends on the other axis's fraction only)."""
    parameters = reference.Parameters(**{name: case.parameters[name] for name in reference.Parameters._fields})
    arrays = dict(case.arrays)
    P = parameters.kernel_h * parameters.kernel_w - parameters.remove_center
    if case.op == "dcnv4":
        offset, mask = reference.unpack_offset_mask(arrays["offset_mask"], parameters.group, P)
    else:
        offset = arrays["offset"]
    N, H_out, W_out = offset.shape[:3]
    moved = offset.reshape(N, H_out, W_out, parameters.group, P, 2).copy()
    for g in range(parameters.group):
        for p, tap in enumerate(reference.taps(parameters.kernel_h, parameters.kernel_w, parameters.remove_center)):
            p_y, p_x = reference.tap_locations(offset, g, p, tap, parameters)
            moved[..., g, p, 0] += np.where(p_x == -1.0, 1e-9 / parameters.offset_scale, 0.0)
            moved[..., g, p, 1] += np.where(p_y == -1.0, 1e-9 / parameters.offset_scale, 0.0)
    moved = moved.reshape(offset.shape)
    if case.op == "dcnv4":
        arrays["offset_mask"] = arrays["offset_mask"].copy()
        arrays["offset_mask"][..., :3 * parameters.group * P] = np.concatenate(
            [moved.reshape(N, H_out, W_out, parameters.group, 2 * P),
             mask.reshape(N, H_out, W_out, parameters.group, P)], axis=-1).reshape(N, H_out, W_out, -1)
    else:
        arrays["offset"] = moved
    return arrays


def gradient_at_minus_one(case, grad_output):
    return getattr(dcn_numba, case.op + "_backward")(grad_output, **_moved_to_inside(case), **case.parameters,
                                                     backend="reference")


def _pads_exchanged(case):
    """The case's parameters with pad_h and pad_w exchanged, or None when that changes the
    output's size (the convention then cannot hold)."""
    exchanged = dict(case.parameters, pad_h=case.parameters["pad_w"], pad_w=case.parameters["pad_h"])
    H, W = case.arrays["input"].shape[1:3]
    same = _output_sizes(H, W, case.parameters) == _output_sizes(H, W, exchanged)
    return exchanged if same else None


def pads_exchanged_forward(case):
    exchanged = _pads_exchanged(case)
    return None if exchanged is None else getattr(dcn_numba, case.op)(**case.arrays, **exchanged, backend="reference")


def pads_exchanged_backward(case, grad_output):
    exchanged = _pads_exchanged(case)
    return None if exchanged is None else getattr(dcn_numba, case.op + "_backward")(
        grad_output, **case.arrays, **exchanged, backend="reference")


CONVENTIONS = [Convention("gradient at exactly -1", op, "backward", gradient_at_minus_one,
                          "samples exactly on p = -1 get the offset gradient of the bilinear formula "
                          "without the validity test; dcn_numba follows the DCNv2 rule: an invalid sample "
                          "(p <= -1) passes no offset or mask gradient") for op in OPS]
CONVENTIONS += [Convention("pads exchanged", op, quantity, expected,
                           "InternImage's pure-PyTorch function pads the rows by pad_w and the columns by "
                           "pad_h (F.pad lists the last axis first); dcn_numba pads the rows by pad_h")
                for op in OPS for quantity, expected in (("forward", pads_exchanged_forward),
                                                         ("backward", pads_exchanged_backward))]


# ---------------------------------------------------------------------------------------------
# Running a case


def judge(case, quantity, results, expecteds, convention_input):
    """'agrees', the name of the convention the results follow instead, or 'MISMATCH'."""
    if within_tolerance(results, expecteds):
        return "agrees"
    for convention in CONVENTIONS:
        if convention.op == case.op and convention.quantity == quantity:
            expected = convention.expected(case, *convention_input)  # None: it cannot hold here
            if expected is not None and within_tolerance(
                    results, expected if isinstance(expected, tuple) else (expected,)):
                return convention.name
    return "MISMATCH"


def _attempt(row, what, function, *args, **kwargs):
    """function(...), or None with row.failure set (NotApplicable leaves the row n/a)."""
    try:
        return function(*args, **kwargs)
    except NotApplicable:
        return None
    except Exception as error:  # reported in the table with the case's name, then exit 1
        row.failure = f"{what} raised {type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"
        return None


def run_case(implementation, case):
    """Run `case` on `implementation`; compare with the reference (or the hand values) and the
    conventions."""
    row = Row(implementation.name, case.name, case.op)
    reference_op = getattr(dcn_numba, case.op)
    expected = case.hand if case.hand is not None else reference_op(**case.arrays, **case.parameters,
                                                                       backend="reference")
    output = _attempt(row, "forward", implementation.forward[case.op], **case.arrays, **case.parameters)
    if output is None:
        return row
    row.forward_error = max_error(output, expected)
    row.forward = judge(case, "forward", [output], [expected], ())
    grad_output = np.random.default_rng(0).standard_normal(expected.shape)
    gradients = _attempt(row, "backward", implementation.backward[case.op], grad_output, **case.arrays,
                         **case.parameters)
    if gradients is None:
        return row
    expected_gradients = getattr(dcn_numba, case.op + "_backward")(grad_output, **case.arrays, **case.parameters,
                                                                   backend="reference")
    row.gradient_error = max(max_error(g, e) for g, e in zip(gradients, expected_gradients))
    row.gradients = judge(case, "backward", list(gradients), list(expected_gradients), (grad_output,))
    return row


# ---------------------------------------------------------------------------------------------
# The implementations


def dcn_numba_backend(backend):
    """dcn_numba's dcnv3 and dcnv4 on `backend`."""
    def with_backend(function):
        return lambda *args, **kwargs: function(*args, **kwargs, backend=backend)

    return Implementation(backend, forward={op: with_backend(getattr(dcn_numba, op)) for op in OPS},
                          backward={op: with_backend(getattr(dcn_numba, op + "_backward")) for op in OPS})


def grid_sample_formulation(upstream_pads=False):
    """(dcnv3, dcnv4): the two operators on torch tensors, written with
    torch.nn.functional.grid_sample from the published formulas, with the arguments of
    dcn_numba.dcnv3 and dcn_numba.dcnv4 (no backend). With upstream_pads the input is padded as
    InternImage's pure-PyTorch function pads it: rows by pad_w, columns by pad_h."""
    import torch
    import torch.nn.functional as F

    def dcnv3(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
              dilation_w, group, group_channels, offset_scale, remove_center):
        row_pad, column_pad = (pad_w, pad_h) if upstream_pads else (pad_h, pad_w)
        value = F.pad(input, [0, 0, column_pad, column_pad, row_pad, row_pad])  # the input zero-padded
        N, H, W, _ = value.shape
        H_out, W_out = offset.shape[1:3]
        unpadded = dict(kernel_h=kernel_h, kernel_w=kernel_w, stride_h=stride_h, stride_w=stride_w, pad_h=0,
                        pad_w=0, dilation_h=dilation_h, dilation_w=dilation_w)
        if _output_sizes(H, W, unpadded) != (H_out, W_out):
            raise NotApplicable("the padded input gives another output size: the published function fails")
        taps = reference.taps(kernel_h, kernel_w, remove_center)
        i_x = torch.tensor([tap[0] for tap in taps], dtype=input.dtype)
        i_y = torch.tensor([tap[1] for tap in taps], dtype=input.dtype)
        c_x, c_y = dilation_w * (kernel_w - 1) // 2, dilation_h * (kernel_h - 1) // 2
        # p = p0 − c·s + (i·dil + Δ)·s on the padded input, where p0 = c + out·stride
        p0_x = c_x + torch.arange(W_out, dtype=input.dtype) * stride_w
        p0_y = c_y + torch.arange(H_out, dtype=input.dtype) * stride_h
        delta = offset.view(N, H_out, W_out, group, len(taps), 2)
        p_x = p0_x[None, None, :, None, None] - c_x * offset_scale + (i_x * dilation_w + delta[..., 0]) * offset_scale
        p_y = p0_y[None, :, None, None, None] - c_y * offset_scale + (i_y * dilation_h + delta[..., 1]) * offset_scale
        grid = torch.stack(((2 * p_x + 1) / W - 1, (2 * p_y + 1) / H - 1), dim=-1)
        grid = grid.permute(0, 3, 1, 2, 4, 5).reshape(N * group, H_out * W_out, len(taps), 2)
        planes = value.view(N, H, W, group, group_channels).permute(0, 3, 4, 1, 2)
        samples = F.grid_sample(planes.reshape(N * group, group_channels, H, W), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (N·G, D, H_out·W_out, P)
        weights = mask.view(N, H_out * W_out, group, len(taps)).permute(0, 2, 1, 3)
        output = (samples * weights.reshape(N * group, 1, H_out * W_out, len(taps))).sum(-1)
        return output.view(N, group, group_channels, H_out, W_out).permute(0, 3, 4, 1, 2).reshape(N, H_out, W_out, -1)

    def dcnv4(input, offset_mask, softmax=False, **parameters):
        group = parameters["group"]
        P = parameters["kernel_h"] * parameters["kernel_w"] - parameters["remove_center"]
        N, H_out, W_out = offset_mask.shape[:3]
        groups = offset_mask[..., :3 * group * P].reshape(N, H_out, W_out, group, 3 * P)
        mask = groups[..., 2 * P:]
        if softmax:
            mask = torch.softmax(mask, dim=-1)
        return dcnv3(input, groups[..., :2 * P].reshape(N, H_out, W_out, -1),
                     mask.reshape(N, H_out, W_out, -1), **parameters)

    return dcnv3, dcnv4


def torch_grid_sample(upstream_pads):
    """The grid_sample formulation as an Implementation: NumPy float64 arrays in and out, gradients
    by torch's autograd."""
    import torch

    def forward(op, names):
        def run(**arguments):
            tensors = {name: torch.tensor(arguments.pop(name)) for name in names}
            with torch.no_grad():
                return op(**tensors, **arguments).numpy()
        return run

    def backward(op, names):
        def run(grad_output, **arguments):
            tensors = {name: torch.tensor(arguments.pop(name), requires_grad=True) for name in names}
            op(**tensors, **arguments).backward(torch.tensor(grad_output))
            return tuple(tensors[name].grad.numpy() for name in names)
        return run

    name = "torch-grid-sample-upstream-pads" if upstream_pads else "torch-grid-sample"
    ops = dict(zip(OPS, grid_sample_formulation(upstream_pads)))
    return Implementation(name, forward={op: forward(f, GRADIENTS[op]) for op, f in ops.items()},
                          backward={op: backward(f, GRADIENTS[op]) for op, f in ops.items()})


def implementation(name):
    """The Implementation called `name` on the command line."""
    if name in ("reference", "cpu", "cuda"):
        return dcn_numba_backend(name)
    if name in ("torch-grid-sample", "torch-grid-sample-upstream-pads"):
        return torch_grid_sample(upstream_pads=name.endswith("upstream-pads"))
    raise ValueError(f"unknown implementation {name!r}: expected one of {', '.join(BUILT_IN)}")


def report(rows):
    """The table of dcn_numba.crosscheck, and the 'about' line of each convention of this battery
    that a row names (unless the table already explains a convention of that name)."""
    text = table(rows)
    named = {verdict for row in rows for verdict in (row.forward, row.gradients)}
    about = {c.name: c.about for c in CONVENTIONS if c.name in named and f"\n{c.name}: " not in text}
    return "\n\n".join([text, *(f"{name}: {line}" for name, line in about.items())])

