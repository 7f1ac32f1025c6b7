"""Non-finite values (NaN, +inf, −inf) in any argument give the same result on every backend:
the reference, the CPU kernels and the CUDA kernels agree element by element, NaN where the
reference has NaN, including a NaN mask at a sample that reads outside the image (m · 0 = NaN)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba import (deform_conv2d, deform_conv2d_backward, deform_psroi_pool_backward,
                       deform_roi_pool_backward)
from dcn_numba import deform_psroi_pool
from dcn_numba import deform_roi_pool
from helpers import KERNEL_BACKENDS, to_backend, to_numpy

BAD_VALUES = [np.nan, np.inf, -np.inf]


def spoil(rng, array, fraction=0.3):
    """A copy of `array` with about `fraction` of its elements replaced by NaN or ±inf."""
    spoiled = array.copy()
    where = rng.random(array.shape) < fraction
    spoiled[where] = rng.choice(BAD_VALUES, size=int(where.sum()))
    return spoiled


def assert_same_everywhere(backend, actual, expected, what):
    """Equal to the reference, NaN where it is NaN, the same infinity where it is infinite."""
    for name, got, wanted in zip(what, actual, expected):
        if wanted is None:
            assert got is None, f"{backend} {name}"
            continue
        got = to_numpy(got)
        assert np.array_equal(np.isnan(got), np.isnan(wanted)), f"{backend} {name}: NaN pattern differs"
        assert np.array_equal(np.isposinf(got), np.isposinf(wanted)), f"{backend} {name}: +inf differs"
        finite = np.isfinite(wanted)
        np.testing.assert_allclose(got[finite], wanted[finite], rtol=1e-9, atol=1e-9,
                                   err_msg=f"{backend} {name}")


def run_everywhere(forward, backward, arrays, names, parameters):
    """Forward and backward of one call on the reference and on both kernel backends."""
    expected = [forward(*arrays[1:], **parameters, backend="reference")]
    expected += list(backward(*arrays, **parameters, backend="reference"))
    for backend in KERNEL_BACKENDS:
        moved = [to_backend(backend, a) for a in arrays]
        actual = [forward(*moved[1:], **parameters, backend=backend)]
        actual += list(backward(*moved, **parameters, backend=backend))
        assert_same_everywhere(backend, actual, expected, names)


CONV_ARGUMENTS = ["input", "offset", "weight", "bias", "mask"]


@settings(max_examples=12, deadline=None)
@given(spoiled=st.sampled_from(CONV_ARGUMENTS), seed=st.integers(0, 2**32 - 1))
def test_deform_conv2d_non_finite_values_agree_on_every_backend(spoiled, seed):
    rng = np.random.default_rng(seed)
    arrays = dict(input=rng.standard_normal((1, 2, 4, 4)),
                  # Offsets of ±3 send many samples outside the image, where S = 0.
                  offset=3 * rng.standard_normal((1, 18, 4, 4)),
                  weight=rng.standard_normal((2, 2, 3, 3)), bias=rng.standard_normal(2),
                  mask=rng.random((1, 9, 4, 4)))
    arrays[spoiled] = spoil(rng, arrays[spoiled])
    grad_output = rng.standard_normal((1, 2, 4, 4))
    run_everywhere(lambda x, offset, weight, bias, mask, **k:
                   deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, **k),
                   lambda grad, x, offset, weight, bias, mask, **k:
                   deform_conv2d_backward(grad, x, offset, weight, bias, padding=1, mask=mask, **k),
                   [grad_output, *arrays.values()],
                   ["output", "grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"], {})


def test_a_nan_mask_at_a_sample_outside_the_image_gives_nan_on_every_backend():
    """The case that once differed: every sample lies outside the image, so S = 0, and m = NaN."""
    x = np.ones((1, 1, 3, 3))
    offset = np.full((1, 2, 3, 3), 10.0)
    weight = np.ones((1, 1, 1, 1))
    mask = np.full((1, 1, 3, 3), np.nan)
    for backend in ["reference", *KERNEL_BACKENDS]:
        output = deform_conv2d(*(to_backend(backend, a) for a in (x, offset, weight)),
                               mask=to_backend(backend, mask), backend=backend)
        assert np.isnan(to_numpy(output)).all(), backend


@settings(max_examples=8, deadline=None)
@given(spoiled=st.sampled_from(["input", "offset"]), seed=st.integers(0, 2**32 - 1))
def test_deform_roi_pool_non_finite_values_agree_on_every_backend(spoiled, seed):
    rng = np.random.default_rng(seed)
    arrays = dict(input=rng.standard_normal((1, 2, 5, 5)),
                  rois=np.array([[0, 0.5, 0.5, 4.0, 3.5], [0, -1.0, 1.0, 6.0, 4.0]]),
                  offset=rng.standard_normal((2, 2, 2, 2)))
    arrays[spoiled] = spoil(rng, arrays[spoiled])
    run_everywhere(deform_roi_pool, deform_roi_pool_backward,
                   [rng.standard_normal((2, 2, 2, 2)), *arrays.values()],
                   ["output", "grad_input", "grad_offset"], dict(output_size=2, sampling_ratio=2))


@settings(max_examples=8, deadline=None)
@given(spoiled=st.sampled_from(["input", "trans"]), seed=st.integers(0, 2**32 - 1))
def test_deform_psroi_pool_non_finite_values_agree_on_every_backend(spoiled, seed):
    rng = np.random.default_rng(seed)
    arrays = dict(input=rng.standard_normal((1, 8, 5, 5)),
                  rois=np.array([[0, 0.0, 0.0, 4.0, 3.0], [0, 1.0, 1.0, 6.0, 4.0]]),
                  trans=rng.standard_normal((2, 2, 2, 2)))
    arrays[spoiled] = spoil(rng, arrays[spoiled])
    run_everywhere(deform_psroi_pool, deform_psroi_pool_backward,
                   [rng.standard_normal((2, 2, 2, 2)), *arrays.values()],
                   ["output", "grad_input", "grad_trans"],
                   dict(output_dim=2, group_size=2, pooled_size=2, sample_per_part=2))
