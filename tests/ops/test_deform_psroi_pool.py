"""Position-sensitive deformable RoI pooling (docs/specification.md §2.2): the reference against an independent
position-sensitive average pooling and hand-computed cases, its gradients against finite
differences, and the CPU and CUDA kernels (simulated without a GPU) against the reference."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcn_numba import deform_psroi_pool_backward
from dcn_numba import deform_psroi_pool
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from roi_helpers import linear_image, random_rois, tent
from helpers import BACKENDS, KERNEL_BACKENDS, to_backend, to_numpy, assert_op_matches_reference

TOLERANCE = {np.float64: 1e-10, np.float32: 2e-4}


def c_round(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def sample_grid(roi, ph, pw, pooled_size, sample_per_part, spatial_scale, shift=(0.0, 0.0)):
    """Row and column coordinates (hs, ws) of the samples of bin (ph, pw), moved by `shift`, a
    fraction (x, y) of the RoI's size."""
    _, x1, y1, x2, y2 = roi
    start_x, start_y = c_round(x1) * spatial_scale - 0.5, c_round(y1) * spatial_scale - 0.5
    roi_w = max((c_round(x2) + 1) * spatial_scale - 0.5 - start_x, 0.1)
    roi_h = max((c_round(y2) + 1) * spatial_scale - 0.5 - start_y, 0.1)
    steps = np.arange(sample_per_part) / sample_per_part
    hs = start_y + shift[1] * roi_h + (ph + steps) * roi_h / pooled_size
    ws = start_x + shift[0] * roi_w + (pw + steps) * roi_w / pooled_size
    return hs, ws


def brute_force_ps_pooling(input, rois, output_dim, group_size, pooled_size, sample_per_part,
                           spatial_scale, trans=None, trans_std=0.1, part_size=None):
    """Position-sensitive average pooling as a weighted sum over every pixel: bin (ph, pw) of
    output channel ctop reads score map (ctop, gh, gw) of input channels viewed as
    (output_dim, group_size, group_size); samples beyond half a pixel outside are dropped, the
    others clipped into the image. Dropping and clipping are separable, so a bin's sum is
    aᵀ·x·b with a, b the summed row and column weights of the kept samples."""
    B, C, H, W = input.shape
    P, G, part_size = pooled_size, group_size, part_size or pooled_size
    maps = input.reshape(B, output_dim, G, G, H, W)
    num_classes = 1 if trans is None else trans.shape[1] // 2
    output = np.zeros((len(rois), output_dim, P, P))
    for n, roi in enumerate(np.asarray(rois, dtype=np.float64)):
        for ctop in range(output_dim):
            class_id = ctop // (output_dim // num_classes)
            for ph in range(P):
                for pw in range(P):
                    shift = (0.0, 0.0)
                    if trans is not None:
                        cell = (ph * part_size // P, pw * part_size // P)
                        shift = trans_std * trans[n, 2 * class_id:2 * class_id + 2, cell[0], cell[1]]
                    hs, ws = sample_grid(roi, ph, pw, P, sample_per_part, spatial_scale, shift)
                    hs, ws = hs[(hs >= -0.5) & (hs <= H - 0.5)], ws[(ws >= -0.5) & (ws <= W - 0.5)]
                    if len(hs) * len(ws) == 0:
                        continue
                    rows = sum(tent(np.clip(h, 0, H - 1), H) for h in hs)
                    columns = sum(tent(np.clip(w, 0, W - 1), W) for w in ws)
                    score_map = maps[int(roi[0]), ctop, ph * G // P, pw * G // P]
                    output[n, ctop, ph, pw] = rows @ score_map @ columns / (len(hs) * len(ws))
    return output


# ---------------------------------------------------------------------------------------------
# The reference against independent computations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_reference_without_trans_is_position_sensitive_average_pooling(seed):
    rng = np.random.default_rng(seed)
    P, output_dim, spp, scale = 3, 2, [1, 2, 3, 4][seed], [1.0, 0.5, 0.25, 2.0][seed]
    B, H, W = 2, 7, 8
    input = rng.standard_normal((B, output_dim * P * P, H, W))
    rois = random_rois(rng, 5, B, H, W, scale, degenerate=seed % 2 == 1)
    output = deform_psroi_pool(input, rois, None, scale, output_dim, group_size=P, pooled_size=P,
                               sample_per_part=spp, backend="reference")
    assert_close(output, brute_force_ps_pooling(input, rois, output_dim, P, P, spp, scale),
                 rtol=1e-12, atol=1e-12, what="reference vs position-sensitive pooling")


@pytest.mark.parametrize("group_size, part_size, num_classes", [(1, 2, 3), (2, 3, 1), (3, None, 3)])
def test_reference_with_trans_is_brute_force_pooling_of_moved_bins(group_size, part_size, num_classes):
    rng = np.random.default_rng(group_size)
    P, output_dim, B, H, W = 3, 3, 2, 6, 7
    input = rng.standard_normal((B, output_dim * group_size ** 2, H, W))
    rois = random_rois(rng, 4, B, H, W, 1.0)
    trans = rng.standard_normal((4, 2 * num_classes, part_size or P, part_size or P))
    output = deform_psroi_pool(input, rois, trans, 1.0, output_dim, group_size, P, part_size, 2,
                               trans_std=0.3, backend="reference")
    expected = brute_force_ps_pooling(input, rois, output_dim, group_size, P, 2, 1.0, trans, 0.3,
                                      part_size)
    assert_close(output, expected, rtol=1e-12, atol=1e-12, what="reference vs brute force with trans")


def test_hand_computed_bin_and_its_trans():
    # RoI (1, 1)–(2, 2) covers pixels 1..2: start 0.5, size 2, samples at 0.5 and 1.5 per axis.
    input = linear_image(4, 5)
    rois = np.array([[0, 1.0, 1.0, 2.0, 2.0]])
    kwargs = dict(pooled_size=1, sample_per_part=2, backend="reference")
    assert deform_psroi_pool(input, rois, **kwargs)[0, 0, 0, 0] == 11.0
    # Δx = 0.25 with trans_std 1 moves the bin by 0.25·roi_width = 0.5 px: +0.5.
    trans = np.array([[[[0.25]], [[0.0]]]])
    assert deform_psroi_pool(input, rois, trans, trans_std=1.0, **kwargs)[0, 0, 0, 0] == 11.5
    # Δy = 0.25 moves it 0.5 px down: +5.
    trans = np.array([[[[0.0]], [[0.25]]]])
    assert deform_psroi_pool(input, rois, trans, trans_std=1.0, **kwargs)[0, 0, 0, 0] == 16.0


def test_roi_corners_round_half_away_from_zero():
    # round(0.5) = 1 and round(1.4) = 1: the RoI is pixel (1, 1), start 0.5, size 1, samples at
    # 0.5 and 1.0 per axis: mean position (0.75, 0.75). Rounding halves to even would give 0.
    input = linear_image(4, 4)
    rois = np.array([[0, 0.5, 0.5, 1.4, 1.4]])
    output = deform_psroi_pool(input, rois, pooled_size=1, sample_per_part=2, backend="reference")
    assert output[0, 0, 0, 0] == 8.25


def test_hand_computed_roi_partly_and_wholly_outside():
    input = linear_image(4, 4)
    # x from −2.5, width 4, samples at w = −2.5 (skipped: beyond −0.5) and −0.5 (kept, clamped to
    # column 0); rows 0.5 and 1.0: two kept samples, 5 and 10.
    rois = np.array([[0, -2.0, 1.0, 1.0, 1.0], [0, 6.0, 6.0, 8.0, 8.0]])
    output = deform_psroi_pool(input, rois, pooled_size=1, sample_per_part=2, backend="reference")
    assert output[0, 0, 0, 0] == 7.5
    assert output[1, 0, 0, 0] == 0.0  # no sample kept


def test_degenerate_roi_is_one_tenth_of_a_pixel_wide():
    # x1 = 3 > x2 = 1: roi_width = max(1.5 − 2.5, 0.1) = 0.1, samples at w = 2.5 and 2.55;
    # rows 0.5 and 1.0 as above: value at the mean position (0.75, 2.525).
    input = linear_image(4, 4)
    rois = np.array([[0, 3.0, 1.0, 1.0, 1.0]])
    output = deform_psroi_pool(input, rois, pooled_size=1, sample_per_part=2, backend="reference")
    assert output[0, 0, 0, 0] == pytest.approx(10.025, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradients of the reference against finite differences
# ---------------------------------------------------------------------------------------------


def off_grid_case(seed, N=3, B=2, output_dim=2, group_size=2, H=5, W=6, pooled_size=2,
                  part_size=2, num_classes=2, sample_per_part=2, trans_std=0.5):
    """A float64 problem whose sample coordinates all lie more than 1e-4 px from an integer or a
    half-integer (the clamps, the skip borders −0.5 and size − 0.5, the bilinear kinks), much
    farther than a finite-difference step moves them."""
    P = pooled_size
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        rois = random_rois(rng, N, B, H, W, 1.0, outside=1.5)
        trans = 0.5 * rng.standard_normal((N, 2 * num_classes, part_size, part_size))
        coordinates = [np.concatenate(sample_grid(rois[n], ph, pw, P, sample_per_part, 1.0,
                                                  trans_std * trans[n, 2 * k:2 * k + 2, ph * part_size // P,
                                                                    pw * part_size // P]))
                       for n in range(N) for k in range(num_classes) for ph in range(P) for pw in range(P)]
        doubled = 2 * np.concatenate(coordinates)
        if np.abs(doubled - np.round(doubled)).min() > 2e-4:
            break
    else:
        raise AssertionError("no off-grid case found")
    inputs = dict(input=rng.standard_normal((B, output_dim * group_size ** 2, H, W)), trans=trans)
    params = dict(output_dim=output_dim, group_size=group_size, pooled_size=P, part_size=part_size,
                  sample_per_part=sample_per_part, trans_std=trans_std)
    return inputs, rois, rng.standard_normal((N, output_dim, P, P)), params


@pytest.mark.parametrize("seed", range(2))
def test_reference_gradients_match_finite_differences(seed):
    inputs, rois, grad_output, params = off_grid_case(seed)

    def forward(input, trans):
        return deform_psroi_pool(input, rois, trans, **params, backend="reference")

    grad_input, grad_trans = deform_psroi_pool_backward(grad_output, inputs["input"], rois,
                                                        inputs["trans"], **params, backend="reference")
    assert np.abs(grad_trans).max() > 0  # the case exercises the trans gradient
    check_gradients(forward, inputs, grad_output, dict(input=grad_input, trans=grad_trans),
                    rtol=1e-6, atol=1e-8)


def test_trans_gradient_is_zero_on_integer_coordinates():
    # One sample per bin exactly on pixel (1, 1): floor = ceil on both axes, so both slopes are 0.
    input = np.random.default_rng(2).standard_normal((1, 1, 4, 4))
    rois = np.array([[0, 1.0, 1.0, 1.0, 1.0]])
    trans = np.array([[[[0.5]], [[0.5]]]])  # shift 0.5·roi size = 0.5 px: start 0.5 → 1.0
    _, grad_trans = deform_psroi_pool_backward(np.ones((1, 1, 1, 1)), input, rois, trans,
                                               pooled_size=1, sample_per_part=1, trans_std=1.0,
                                               backend="reference")
    np.testing.assert_array_equal(grad_trans, 0.0)


def test_cpu_gradients_match_finite_differences_in_a_random_direction():
    """A realistic float64 layer: both gradients along random directions."""
    inputs, rois, grad_output, params = off_grid_case(
        7, N=6, B=2, output_dim=4, group_size=3, H=12, W=12, pooled_size=3, part_size=3,
        num_classes=2, sample_per_part=3, trans_std=0.1)

    def forward(input, trans):
        return deform_psroi_pool(input, rois, trans, **params, backend="cpu")

    grad_input, grad_trans = deform_psroi_pool_backward(grad_output, inputs["input"], rois,
                                                        inputs["trans"], **params, backend="cpu")
    for seed in range(3):
        check_gradients(forward, inputs, grad_output, dict(input=grad_input, trans=grad_trans),
                        mode="random", rtol=1e-6, atol=1e-6, seed=seed)


# ---------------------------------------------------------------------------------------------
# The kernels against the reference
# ---------------------------------------------------------------------------------------------


@st.composite
def psroi_pool_cases(draw):
    """A random valid call, tiny enough for the CUDA simulator."""
    output_dim = draw(st.integers(1, 3))
    return dict(
        B=draw(st.integers(1, 2)), H=draw(st.integers(1, 6)), W=draw(st.integers(1, 6)),
        N=draw(st.integers(0, 3)), output_dim=output_dim, group_size=draw(st.integers(1, 3)),
        pooled_size=draw(st.integers(1, 3)), part_size=draw(st.sampled_from([None, 1, 2, 3])),
        sample_per_part=draw(st.integers(1, 3)),
        num_classes=draw(st.sampled_from([1, output_dim])),
        spatial_scale=draw(st.sampled_from([0.25, 0.5, 1.0, 1.5])),
        trans_std=draw(st.sampled_from([0.1, 1.0])), with_trans=draw(st.booleans()),
        integer_rois=draw(st.booleans()), degenerate=draw(st.booleans()),
        dtype=draw(st.sampled_from([np.float32, np.float64])), seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_arrays(case):
    """input, rois, trans and grad_output of a case, in its dtype."""
    rng = np.random.default_rng(case["seed"])
    B, H, W, N, P = case["B"], case["H"], case["W"], case["N"], case["pooled_size"]
    part_size = case["part_size"] or P
    rois = random_rois(rng, N, B, H, W, case["spatial_scale"], degenerate=case["degenerate"])
    if case["integer_rois"]:
        rois = np.round(rois)
    trans_shape = (N, 2 * case["num_classes"], part_size, part_size)
    arrays = dict(input=rng.standard_normal((B, case["output_dim"] * case["group_size"] ** 2, H, W)),
                  rois=rois, trans=rng.standard_normal(trans_shape) if case["with_trans"] else None,
                  grad_output=rng.standard_normal((N, case["output_dim"], P, P)))
    return {name: None if a is None else a.astype(case["dtype"]) for name, a in arrays.items()}


def parameters(case):
    return {k: case[k] for k in ("spatial_scale", "output_dim", "group_size", "pooled_size",
                                 "part_size", "sample_per_part", "trans_std")}


def assert_matches_reference(backend, case):
    """Forward and both gradients of `backend` against the reference computed in float64."""
    assert_op_matches_reference(backend, deform_psroi_pool, deform_psroi_pool_backward, make_arrays(case),
                                parameters(case), ["grad_input", "grad_trans"], TOLERANCE[case["dtype"]])


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=psroi_pool_cases())
def test_cpu_kernels_match_the_reference(case):
    assert_matches_reference("cpu", case)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=psroi_pool_cases())
def test_cuda_kernels_match_the_reference(case):
    assert_matches_reference("cuda", case)


BASE_CASE = dict(B=2, H=5, W=6, N=3, output_dim=2, group_size=2, pooled_size=3, part_size=2,
                 sample_per_part=2, num_classes=2, spatial_scale=0.5, trans_std=0.1, with_trans=True,
                 integer_rois=False, degenerate=False, dtype=np.float64, seed=5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("changes", [
    dict(N=0),
    dict(with_trans=False, integer_rois=True, dtype=np.float32),
    dict(degenerate=True, group_size=3, part_size=None, num_classes=1),
    dict(H=1, W=1, spatial_scale=0.25),
])
def test_named_cases_match_the_reference(backend, changes):
    assert_matches_reference(backend, {**BASE_CASE, **changes})


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rois_give_empty_outputs_and_zero_gradients(backend):
    input = to_backend(backend, np.ones((2, 4, 4, 4)))
    rois = to_backend(backend, np.zeros((0, 5)))
    trans = to_backend(backend, np.zeros((0, 2, 2, 2)))
    kwargs = dict(output_dim=1, group_size=2, pooled_size=2, backend=backend)
    assert deform_psroi_pool(input, rois, trans, **kwargs).shape == (0, 1, 2, 2)
    grad_input, grad_trans = deform_psroi_pool_backward(
        to_backend(backend, np.zeros((0, 1, 2, 2))), input, rois, trans, **kwargs)
    assert grad_trans.shape == (0, 2, 2, 2)
    np.testing.assert_array_equal(to_numpy(grad_input), np.zeros((2, 4, 4, 4)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_stride_zero_grad_output_and_non_contiguous_input(backend):
    arrays = make_arrays(BASE_CASE)
    params = parameters(BASE_CASE)
    input_t = np.ascontiguousarray(arrays["input"].transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    grad_output = np.broadcast_to(np.float64(1.0), arrays["grad_output"].shape)  # ∂(out.sum())/∂out
    assert not input_t.flags.c_contiguous
    gradients = deform_psroi_pool_backward(to_backend(backend, grad_output), to_backend(backend, input_t),
                                           to_backend(backend, arrays["rois"]),
                                           to_backend(backend, arrays["trans"]), **params, backend=backend)
    expected = deform_psroi_pool_backward(np.ones(grad_output.shape), arrays["input"], arrays["rois"],
                                          arrays["trans"], **params, backend="reference")
    for name, actual, wanted in zip(["grad_input", "grad_trans"], gradients, expected):
        assert_close(to_numpy(actual), wanted, rtol=1e-10, atol=1e-10, what=f"{name} of views")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nan_trans_makes_its_bins_nan_and_nothing_else(backend):
    case = {**BASE_CASE, "num_classes": 1, "part_size": 1, "spatial_scale": 1.0}
    arrays = make_arrays(case)
    arrays["rois"][2] = [1, 1.0, 1.0, 4.0, 3.0]  # wholly inside: every bin keeps its samples
    arrays["trans"][2, 1, 0, 0] = np.nan  # Δy of the single part cell of RoI 2
    moved = {name: to_backend(backend, a) for name, a in arrays.items()}
    params = parameters(case)
    output = to_numpy(deform_psroi_pool(moved["input"], moved["rois"], moved["trans"], **params,
                                        backend=backend))
    np.testing.assert_array_equal(np.isnan(output).any(axis=(1, 2, 3)), [False, False, True])
    assert np.isnan(output[2]).all()
    _, grad_trans = deform_psroi_pool_backward(moved["grad_output"], moved["input"], moved["rois"],
                                               moved["trans"], **params, backend=backend)
    np.testing.assert_array_equal(np.isnan(to_numpy(grad_trans)).any(axis=(1, 2, 3)), [False, False, True])
