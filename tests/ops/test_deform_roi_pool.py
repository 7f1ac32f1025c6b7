"""Deformable RoI pooling (docs/specification.md §2.1): the reference against an independent brute-force RoIAlign
and hand-computed cases, its gradients against finite differences, and the CPU and CUDA kernels
(simulated without a GPU) against the reference."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcn_numba import deform_roi_pool_backward
from dcn_numba import deform_roi_pool
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.reference.deform_roi_pool import bin_samples
from roi_helpers import linear_image, random_rois, tent
from helpers import BACKENDS, KERNEL_BACKENDS, to_backend, to_numpy, assert_op_matches_reference

TOLERANCE = {np.float64: 1e-10, np.float32: 2e-4}


def brute_force_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, offset=None,
                          gamma=0.1):
    """RoIAlign (aligned) as a weighted sum over every pixel. The clamping rule is 'clip the
    position into [0, size − 1]', the validity rule '−1 ≤ p ≤ size' on each axis; both are
    separable, so a bin's average is aᵀ·x_c·b with a (H,) and b (W,) the summed row and column
    weights of its samples."""
    B, C, H, W = input.shape
    PH, PW = output_size
    output = np.zeros((len(rois), C, PH, PW))
    for n, (b, x1, y1, x2, y2) in enumerate(np.asarray(rois, dtype=np.float64)):
        roi_h, roi_w = (y2 - y1) * spatial_scale, (x2 - x1) * spatial_scale
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / PH), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / PW), 0)
        for ph in range(PH):
            for pw in range(PW):
                dx, dy = (0.0, 0.0) if offset is None else offset[n, :, ph, pw]
                ys = y1 * spatial_scale - 0.5 + gamma * roi_h * dy \
                    + (ph + (np.arange(grid_h) + 0.5) / grid_h) * roi_h / PH
                xs = x1 * spatial_scale - 0.5 + gamma * roi_w * dx \
                    + (pw + (np.arange(grid_w) + 0.5) / grid_w) * roi_w / PW
                rows = sum((tent(np.clip(y, 0, H - 1), H) for y in ys if -1 <= y <= H), np.zeros(H))
                columns = sum((tent(np.clip(x, 0, W - 1), W) for x in xs if -1 <= x <= W), np.zeros(W))
                output[n, :, ph, pw] = np.einsum("i,cij,j->c", rows, input[int(b)], columns) \
                    / max(grid_h * grid_w, 1)
    return output


# ---------------------------------------------------------------------------------------------
# The reference against independent computations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
def test_reference_without_offsets_is_a_brute_force_roi_align(seed, sampling_ratio):
    rng = np.random.default_rng(seed)
    B, C, H, W, scale = 2, 3, 7, 9, [1.0, 0.5, 0.25, 2.0][seed]
    input = rng.standard_normal((B, C, H, W))
    rois = random_rois(rng, 6, B, H, W, scale, degenerate=seed % 2 == 1)
    for offset in (None, np.zeros((6, 2, 3, 2))):
        output = deform_roi_pool(input, rois, offset, (3, 2), scale, sampling_ratio, backend="reference")
        assert_close(output, brute_force_roi_align(input, rois, (3, 2), scale, sampling_ratio),
                     rtol=1e-12, atol=1e-12, what="reference vs brute force")


@pytest.mark.parametrize("seed", range(3))
def test_reference_with_offsets_is_a_brute_force_roi_align_of_moved_bins(seed):
    rng = np.random.default_rng(seed)
    input = rng.standard_normal((2, 2, 6, 8))
    rois = random_rois(rng, 5, 2, 6, 8, 1.0)
    offset = rng.standard_normal((5, 2, 2, 3))
    output = deform_roi_pool(input, rois, offset, (2, 3), 1.0, 2, gamma=0.3, backend="reference")
    assert_close(output, brute_force_roi_align(input, rois, (2, 3), 1.0, 2, offset, gamma=0.3),
                 rtol=1e-12, atol=1e-12, what="reference vs brute force with offsets")


def test_hand_computed_bin_and_its_offset():
    # RoI (1, 1)–(3, 3): start 0.5, a 2×2 bin, samples at 1 and 2 on each axis: 11, 12, 21, 22.
    input = linear_image(4, 5)
    rois = np.array([[0, 1.0, 1.0, 3.0, 3.0]])
    assert deform_roi_pool(input, rois, output_size=1, sampling_ratio=2, backend="reference")[0, 0, 0, 0] == 16.5
    # Δx = 0.25 with γ = 1 moves the bin by γ·roi_width·Δx = 0.5 px to the right: +0.5.
    offset = np.array([[[[0.25]], [[0.0]]]])
    assert deform_roi_pool(input, rois, offset, 1, 1.0, 2, 1.0, backend="reference")[0, 0, 0, 0] == 17.0
    # Δy = −0.25 moves it 0.5 px up: −5.
    offset = np.array([[[[0.0]], [[-0.25]]]])
    assert deform_roi_pool(input, rois, offset, 1, 1.0, 2, 1.0, backend="reference")[0, 0, 0, 0] == 11.5


def test_hand_computed_roi_partly_and_wholly_outside():
    input = linear_image(4, 4)
    # Start x = −4, roi_width 5, two bins of 2.5, one sample each at x = −2.75 (beyond −1: 0) and
    # x = −0.25 (clamped to column 0); y1 = y2 = 1.5: height 0, the sample sits on row 1.
    rois = np.array([[0, -3.5, 1.5, 1.5, 1.5], [0, 6.0, 6.0, 8.0, 8.0]])
    output = deform_roi_pool(input, rois, output_size=(1, 2), sampling_ratio=1, backend="reference")
    np.testing.assert_array_equal(output[0, 0], [[0.0, 10.0]])
    np.testing.assert_array_equal(output[1], 0.0)  # every sample beyond x = W, y = H
    # Near the far edge: y in (H − 1, H] reads row H − 1 for both corners.
    rois = np.array([[0, 1.5, 3.8, 1.5, 3.8]])
    assert deform_roi_pool(input, rois, output_size=1, sampling_ratio=1, backend="reference")[0, 0, 0, 0] == 31.0


def test_degenerate_roi_pools_zero_with_adaptive_sampling():
    input = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    rois = np.array([[0, 3.0, 1.0, 1.0, 3.0], [0, 1.0, 3.0, 3.0, 1.0]])  # x2 < x1, y2 < y1
    np.testing.assert_array_equal(deform_roi_pool(input, rois, output_size=2, backend="reference"), 0.0)


# ---------------------------------------------------------------------------------------------
# Gradients of the reference against finite differences
# ---------------------------------------------------------------------------------------------


def off_grid_case(seed, N=3, B=2, C=2, H=5, W=6, output_size=(2, 3), sampling_ratio=2, gamma=0.5):
    """A float64 problem whose sample coordinates all lie more than 1e-4 px from an integer
    (where the clamps, the −1/H borders and the bilinear kinks are), much farther than a
    finite-difference step moves them (γ·roi_size·ε·|u| ≤ 1e-5 px)."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        rois = random_rois(rng, N, B, H, W, 1.0, outside=1.5)
        offset = 0.5 * rng.standard_normal((N, 2, *output_size))
        positions = np.array([p for n in range(N) for _, _, bin_positions in bin_samples(
            rois[n], offset[n], output_size, 1.0, sampling_ratio, gamma) for p in bin_positions])
        if np.abs(positions - np.round(positions)).min() > 1e-4:
            break
    else:
        raise AssertionError("no off-grid case found")
    inputs = dict(input=rng.standard_normal((B, C, H, W)), offset=offset)
    params = dict(output_size=output_size, sampling_ratio=sampling_ratio, gamma=gamma)
    return inputs, rois, rng.standard_normal((N, C, *output_size)), params


@pytest.mark.parametrize("seed", range(3))
def test_reference_gradients_match_finite_differences(seed):
    inputs, rois, grad_output, params = off_grid_case(seed)

    def forward(input, offset):
        return deform_roi_pool(input, rois, offset, **params, backend="reference")

    grad_input, grad_offset = deform_roi_pool_backward(grad_output, inputs["input"], rois,
                                                       inputs["offset"], **params, backend="reference")
    assert np.abs(grad_offset).max() > 0  # the case exercises the offset gradient
    check_gradients(forward, inputs, grad_output, dict(input=grad_input, offset=grad_offset),
                    rtol=1e-6, atol=1e-8)


def test_offset_gradient_is_zero_where_the_clamp_holds_the_sample():
    # Every sample in (−1, 0) on y: clamped to row 0, so moving it vertically changes nothing.
    input = np.random.default_rng(1).standard_normal((1, 1, 4, 4))
    rois = np.array([[0, 1.2, -0.3, 2.6, 0.1]])
    offset = np.zeros((1, 2, 1, 1))
    _, grad_offset = deform_roi_pool_backward(np.ones((1, 1, 1, 1)), input, rois, offset, 1, 1.0, 2,
                                              backend="reference")
    assert grad_offset[0, 1, 0, 0] == 0.0 and grad_offset[0, 0, 0, 0] != 0.0


def test_cpu_gradients_match_finite_differences_in_a_random_direction():
    """A realistic float64 layer: both gradients along random directions."""
    inputs, rois, grad_output, params = off_grid_case(7, N=6, B=2, C=8, H=12, W=12,
                                                      output_size=(7, 7), sampling_ratio=0, gamma=0.1)

    def forward(input, offset):
        return deform_roi_pool(input, rois, offset, **params, backend="cpu")

    grad_input, grad_offset = deform_roi_pool_backward(grad_output, inputs["input"], rois,
                                                       inputs["offset"], **params, backend="cpu")
    for seed in range(3):
        check_gradients(forward, inputs, grad_output, dict(input=grad_input, offset=grad_offset),
                        mode="random", rtol=1e-6, atol=1e-6, seed=seed)


# ---------------------------------------------------------------------------------------------
# The kernels against the reference
# ---------------------------------------------------------------------------------------------


@st.composite
def roi_pool_cases(draw):
    """A random valid call, tiny enough for the CUDA simulator."""
    return dict(
        B=draw(st.integers(1, 2)), C=draw(st.integers(1, 3)), H=draw(st.integers(1, 6)),
        W=draw(st.integers(1, 6)), N=draw(st.integers(0, 3)),
        output_size=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        spatial_scale=draw(st.sampled_from([0.25, 0.5, 1.0, 1.5])),
        sampling_ratio=draw(st.sampled_from([-1, 0, 1, 2])), gamma=draw(st.sampled_from([0.1, 1.0])),
        with_offset=draw(st.booleans()), integer_rois=draw(st.booleans()),
        degenerate=draw(st.booleans()), dtype=draw(st.sampled_from([np.float32, np.float64])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_arrays(case):
    """input, rois, offset and grad_output of a case, in its dtype. Integer RoIs put samples on
    pixel centres and the clamp borders."""
    rng = np.random.default_rng(case["seed"])
    B, C, H, W, N = case["B"], case["C"], case["H"], case["W"], case["N"]
    rois = random_rois(rng, N, B, H, W, case["spatial_scale"], degenerate=case["degenerate"])
    if case["integer_rois"]:
        rois = np.round(rois)
    arrays = dict(input=rng.standard_normal((B, C, H, W)), rois=rois,
                  offset=rng.standard_normal((N, 2, *case["output_size"])) if case["with_offset"] else None,
                  grad_output=rng.standard_normal((N, C, *case["output_size"])))
    return {name: None if a is None else a.astype(case["dtype"]) for name, a in arrays.items()}


def assert_matches_reference(backend, case):
    """Forward and both gradients of `backend` against the reference computed in float64."""
    params = {k: case[k] for k in ("output_size", "spatial_scale", "sampling_ratio", "gamma")}
    assert_op_matches_reference(backend, deform_roi_pool, deform_roi_pool_backward, make_arrays(case),
                                params, ["grad_input", "grad_offset"], TOLERANCE[case["dtype"]])


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=roi_pool_cases())
def test_cpu_kernels_match_the_reference(case):
    assert_matches_reference("cpu", case)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=roi_pool_cases())
def test_cuda_kernels_match_the_reference(case):
    assert_matches_reference("cuda", case)


BASE_CASE = dict(B=2, C=3, H=5, W=6, N=3, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=0,
                 gamma=0.1, with_offset=True, integer_rois=False, degenerate=False, dtype=np.float64,
                 seed=5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("changes", [
    dict(N=0),
    dict(with_offset=False, integer_rois=True, dtype=np.float32),
    dict(degenerate=True, sampling_ratio=2),
    dict(H=1, W=1, spatial_scale=0.25),
    dict(C=20, N=2),  # the CPU grad_input kernel splits the channels into blocks
])
def test_named_cases_match_the_reference(backend, changes):
    assert_matches_reference(backend, {**BASE_CASE, **changes})


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rois_give_empty_outputs_and_zero_gradients(backend):
    input = to_backend(backend, np.ones((2, 3, 4, 4)))
    rois = to_backend(backend, np.zeros((0, 5)))
    offset = to_backend(backend, np.zeros((0, 2, 2, 2)))
    output = deform_roi_pool(input, rois, offset, output_size=2, backend=backend)
    assert output.shape == (0, 3, 2, 2)
    grad_input, grad_offset = deform_roi_pool_backward(
        to_backend(backend, np.zeros((0, 3, 2, 2))), input, rois, offset, output_size=2, backend=backend)
    assert grad_offset.shape == (0, 2, 2, 2)
    np.testing.assert_array_equal(to_numpy(grad_input), np.zeros((2, 3, 4, 4)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stride_zero_grad_output_and_non_contiguous_input(backend):
    arrays = make_arrays(BASE_CASE)
    params = dict(output_size=(2, 3), spatial_scale=0.5)
    input_t = np.ascontiguousarray(arrays["input"].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    grad_output = np.broadcast_to(np.float64(1.0), arrays["grad_output"].shape)  # ∂(out.sum())/∂out
    assert not input_t.flags.c_contiguous
    gradients = deform_roi_pool_backward(to_backend(backend, grad_output), to_backend(backend, input_t),
                                         to_backend(backend, arrays["rois"]),
                                         to_backend(backend, arrays["offset"]), **params, backend=backend)
    expected = deform_roi_pool_backward(np.ones(grad_output.shape), arrays["input"], arrays["rois"],
                                        arrays["offset"], **params, backend="reference")
    for name, actual, wanted in zip(["grad_input", "grad_offset"], gradients, expected):
        assert_close(to_numpy(actual), wanted, rtol=1e-10, atol=1e-10, what=f"{name} of views")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_offset_makes_its_bin_nan_and_nothing_else(backend):
    arrays = make_arrays(BASE_CASE)
    arrays["offset"][1, 0, 1, 2] = np.nan
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    params = dict(output_size=(2, 3), spatial_scale=0.5)
    output = to_numpy(deform_roi_pool(moved["input"], moved["rois"], moved["offset"], **params,
                                      backend=backend))
    expected_nan = np.zeros(output.shape, dtype=bool)
    expected_nan[1, :, 1, 2] = True
    np.testing.assert_array_equal(np.isnan(output), expected_nan)
    _, grad_offset = deform_roi_pool_backward(moved["grad_output"], moved["input"], moved["rois"],
                                              moved["offset"], **params, backend=backend)
    assert np.isnan(to_numpy(grad_offset)).sum() == 2 and np.isnan(to_numpy(grad_offset)[1, :, 1, 2]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_keep_the_input_dtype_and_backends_agree(backend):
    case = {**BASE_CASE, "dtype": np.float32}
    arrays = make_arrays(case)
    output = deform_roi_pool(to_backend(backend, arrays["input"]), to_backend(backend, arrays["rois"]),
                             to_backend(backend, arrays["offset"]), (2, 3), 0.5, backend=backend)
    assert output.dtype == np.float32
    default = deform_roi_pool(arrays["input"], arrays["rois"], arrays["offset"], (2, 3), 0.5)
    assert_close(to_numpy(output), default, rtol=2e-4, atol=2e-4, what=f"{backend} vs backend=None")
