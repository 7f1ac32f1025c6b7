"""What the implementations are held to: dcn_numba's reference, or a hand-computed value; the
documented conventions that other implementations follow where the reference does not, each
expressed through the reference at moved sample positions; and how a result is judged."""

import dataclasses

import numpy as np

import dcn_numba
from dcn_numba.ops.locations import regular_grid, sampling_locations


TOLERANCE = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-4}
"""Largest absolute error accepted, relative to max(1, largest |expected| value), by the
dtype an implementation returns."""


def reference_forward(case):
    """The forward output the implementations are held to: the hand-computed one where the case
    has it, dcn_numba's NumPy reference otherwise."""
    if case.hand is not None:
        return case.hand
    return getattr(dcn_numba, case.op)(**case.arrays, **case.parameters, backend="reference")


def grad_output_for(case, output):
    """The ∂L/∂output every implementation's backward gets for `case`: fixed random values."""
    return np.random.default_rng(0).standard_normal(output.shape)


def reference_backward(case, grad_output):
    """dcn_numba's reference gradients of `case` for `grad_output`."""
    return getattr(dcn_numba, case.op + "_backward")(grad_output, **case.arrays, **case.parameters,
                                                     backend="reference")


def _moved_samples(case, move):
    """`case` with every deformable convolution sample moved: `move(coordinate, size)` gives the
    new coordinate along an axis of that size (rows: H, columns: W); returns the new arrays."""
    arrays, parameters = case.arrays, case.parameters
    kernel_size = arrays["weight"].shape[2:]
    offset = arrays["offset"]
    locations = sampling_locations(offset, kernel_size, **parameters)
    H, W = arrays["input"].shape[2:]
    moved = np.stack([move(locations[..., 0], H), move(locations[..., 1], W)], axis=-1)
    grid = regular_grid(kernel_size, offset.shape[2:], **parameters)
    new_offset = (moved - grid).transpose(0, 1, 2, 5, 3, 4).reshape(offset.shape)
    return dict(arrays, offset=new_offset)


def dcnv1_forward(case):
    """The MXNet DCNv1 rule: a sample is read only if 0 ≤ p ≤ size − 1 after clamping to the last
    row (column), with no zero padding. It is the DCNv2 rule at a moved point: a coordinate in
    (−1, 0) moves to −1 (reads 0) and one in (size − 1, size) to size − 1 (the last row)."""
    def move(p, size):
        return np.where((p > -1) & (p < 0), -1.0, np.where((p > size - 1) & (p < size), size - 1.0, p))

    arrays = _moved_samples(case, move)
    return dcn_numba.deform_conv2d(**arrays, **case.parameters, backend="reference")


def gradient_at_minus_one(case, grad_output):
    """Offset gradients of samples exactly on p = −1 taken from the inside: the derivative formula
    without the validity test, as torchvision computes it (the DCNv2 rule gives 0 there). Since
    ∂S/∂p_y depends on l_x only, it is the reference's gradient at −1 + 1e−9."""
    def move(p, size):
        return np.where(p == -1.0, -1.0 + 1e-9, p)

    arrays = _moved_samples(case, move)
    return dcn_numba.deform_conv2d_backward(grad_output, **arrays, **case.parameters,
                                            backend="reference")


@dataclasses.dataclass
class Convention:
    """A documented rule another implementation follows where dcn_numba follows another one:
    `expected(case)` (forward) or `expected(case, grad_output)` (backward) is what that rule
    gives, `about` says what it is."""

    name: str
    op: str
    quantity: str
    expected: callable
    about: str


CONVENTIONS = [
    Convention("MXNet DCNv1 rule", "deform_conv2d", "forward", dcnv1_forward,
               "samples in (-1, 0) read 0 and samples in (size-1, size) read the last row or "
               "column (no zero padding); dcn_numba follows the zero-padded DCNv2 rule, where "
               "both blend with zero pixels beyond the edge"),
    Convention("gradient at exactly -1", "deform_conv2d", "backward", gradient_at_minus_one,
               "samples exactly on p = -1 get the offset gradient of the bilinear formula "
               "without the validity test; dcn_numba follows the DCNv2 rule: an invalid sample "
               "(p <= -1) passes no offset or mask gradient"),
]


def max_error(result, expected):
    """max |result − expected| (inf when the shapes differ or one is None and the other not)."""
    if result is None or expected is None:
        return 0.0 if result is None and expected is None else np.inf
    result = np.asarray(result)
    if result.shape != np.shape(expected):
        return np.inf
    return float(np.max(np.abs(result - expected), initial=0.0))


def within_tolerance(results, expecteds):
    """True when every result matches its expected array at the tolerance of its dtype."""
    for result, expected in zip(results, expecteds):
        error = max_error(result, expected)
        dtype = np.asarray(result).dtype if result is not None else np.dtype(np.float64)
        scale = max(1.0, float(np.max(np.abs(expected), initial=0.0))) if expected is not None else 1.0
        if not error <= TOLERANCE.get(dtype, TOLERANCE[np.dtype(np.float32)]) * scale:
            return False
    return True


def judge(case, quantity, results, expecteds, convention_input):
    """'agrees', the name of the convention the results follow instead, or 'MISMATCH'."""
    if within_tolerance(results, expecteds):
        return "agrees"
    for convention in CONVENTIONS:
        if convention.op == case.op and convention.quantity == quantity:
            expected = convention.expected(case, *convention_input)
            expected = expected if isinstance(expected, tuple) else (expected,)
            if within_tolerance(results, expected):
                return convention.name
    return "MISMATCH"
