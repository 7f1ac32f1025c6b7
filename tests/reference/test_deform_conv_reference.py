"""The NumPy reference of deformable convolution against hand-computed cases, identities that
hold for special offsets, and finite differences of all five gradients; its loops
(reference.deform_conv) against their vectorised twin (reference.deform_conv_vectorised), which
the "reference" backend runs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba import deform_conv2d, deform_conv2d_backward
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.reference import deform_conv as loops
from dcn_numba.reference import deform_conv_vectorised as vectorised


def output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def shifted_convolution(input, weight, bias, stride, padding, dilation, shift=(0, 0)):
    """An ordinary grouped convolution written as explicit loops over outputs and taps, reading
    pixel (y + dy, x + dx) for the regular grid position (y, x), 0 outside the image."""
    B, C_in, H, W = input.shape
    C_out, group_channels, kh, kw = weight.shape
    groups = C_in // group_channels
    H_out = output_size(H, kh, stride[0], padding[0], dilation[0])
    W_out = output_size(W, kw, stride[1], padding[1], dilation[1])
    margin = max(padding) + max(abs(shift[0]), abs(shift[1])) + max(kh, kw) * max(dilation) + 1
    canvas = np.zeros((B, C_in, H + 2 * margin, W + 2 * margin))
    canvas[:, :, margin:margin + H, margin:margin + W] = input
    output = np.zeros((B, C_out, H_out, W_out))
    for co in range(C_out):
        group = co // (C_out // groups)
        channels = slice(group * group_channels, (group + 1) * group_channels)
        for i in range(H_out):
            for j in range(W_out):
                for ki in range(kh):
                    for kj in range(kw):
                        y = i * stride[0] - padding[0] + ki * dilation[0] + shift[0] + margin
                        x = j * stride[1] - padding[1] + kj * dilation[1] + shift[1] + margin
                        output[:, co, i, j] += canvas[:, channels, y, x] @ weight[co, :, ki, kj]
    if bias is not None:
        output += bias[None, :, None, None]
    return output


def random_case(rng, B=2, C_in=4, C_out=6, H=5, W=6, kernel=(2, 3), groups=2, offset_groups=2,
                stride=(1, 2), padding=(1, 2), dilation=(2, 1)):
    kh, kw = kernel
    H_out = output_size(H, kh, stride[0], padding[0], dilation[0])
    W_out = output_size(W, kw, stride[1], padding[1], dilation[1])
    return dict(
        input=rng.standard_normal((B, C_in, H, W)),
        weight=rng.standard_normal((C_out, C_in // groups, kh, kw)),
        bias=rng.standard_normal(C_out),
        offset_shape=(B, 2 * offset_groups * kh * kw, H_out, W_out),
        mask_shape=(B, offset_groups * kh * kw, H_out, W_out),
        stride=stride, padding=padding, dilation=dilation,
    )


def off_grid_offsets(rng, shape):
    """Offsets whose sampling positions all lie 0.2 to 0.8 px from the pixel grid, so that no
    position is within finite-difference reach of an integer or of the −1 / H borders."""
    return rng.integers(-2, 3, size=shape) + rng.uniform(0.2, 0.8, size=shape)


CASES = [
    dict(),
    dict(groups=1, offset_groups=1, stride=(1, 1), padding=(0, 0), dilation=(1, 1), kernel=(3, 3)),
    dict(C_in=6, C_out=3, groups=3, offset_groups=2, kernel=(1, 1), padding=(0, 1)),
    dict(B=1, H=7, W=4, kernel=(3, 2), stride=(2, 1), padding=(2, 0), dilation=(1, 2), offset_groups=4),
]


@pytest.mark.parametrize("case", CASES)
def test_zero_offsets_give_an_ordinary_convolution(case):
    rng = np.random.default_rng(1)
    c = random_case(rng, **case)
    offset = np.zeros(c["offset_shape"])
    expected = shifted_convolution(c["input"], c["weight"], c["bias"], c["stride"], c["padding"],
                                   c["dilation"])
    actual = deform_conv2d(c["input"], offset, c["weight"], c["bias"], c["stride"], c["padding"],
                           c["dilation"], backend="reference")
    assert_close(actual, expected, rtol=1e-12, atol=1e-12, what="zero offsets")


@pytest.mark.parametrize("shift", [(1, 0), (0, -2), (-1, 3), (2, 2)])
@pytest.mark.parametrize("case", CASES[:2])
def test_integer_offsets_give_a_shifted_convolution(case, shift):
    rng = np.random.default_rng(2)
    c = random_case(rng, **case)
    offset = np.zeros(c["offset_shape"])
    offset[:, 0::2] = shift[0]
    offset[:, 1::2] = shift[1]
    expected = shifted_convolution(c["input"], c["weight"], c["bias"], c["stride"], c["padding"],
                                   c["dilation"], shift)
    actual = deform_conv2d(c["input"], offset, c["weight"], c["bias"], c["stride"], c["padding"],
                           c["dilation"], backend="reference")
    assert_close(actual, expected, rtol=1e-12, atol=1e-12, what=f"offsets {shift}")


def test_mask_of_ones_equals_v1():
    rng = np.random.default_rng(3)
    c = random_case(rng)
    offset = 2 * rng.standard_normal(c["offset_shape"])
    args = (c["input"], offset, c["weight"], c["bias"], c["stride"], c["padding"], c["dilation"])
    v1 = deform_conv2d(*args, backend="reference")
    v2 = deform_conv2d(*args, mask=np.ones(c["mask_shape"]), backend="reference")
    assert_close(v2, v1, rtol=1e-14, atol=1e-14, what="mask of ones")
    halved = deform_conv2d(*args, mask=np.full(c["mask_shape"], 0.5), backend="reference")
    assert_close(halved - c["bias"][None, :, None, None], 0.5 * (v1 - c["bias"][None, :, None, None]),
                 rtol=1e-12, atol=1e-12, what="mask of halves")


def test_offsets_far_outside_the_image_give_the_bias():
    rng = np.random.default_rng(4)
    c = random_case(rng)
    offset = np.where(rng.random(c["offset_shape"]) < 0.5, -1e4, 1e4)
    output = deform_conv2d(c["input"], offset, c["weight"], c["bias"], c["stride"], c["padding"],
                           c["dilation"], backend="reference")
    assert_close(output, np.broadcast_to(c["bias"][None, :, None, None], output.shape), what="far away")


def one_sample(image, p_y, p_x, mask=None):
    """The output of a 1×1 deformable convolution with weight 1 at output (0, 0) of `image`,
    sampling at (p_y, p_x)."""
    H, W = image.shape
    offset = np.zeros((1, 2, H, W))
    offset[0, 0, 0, 0] = p_y
    offset[0, 1, 0, 0] = p_x
    mask = None if mask is None else np.full((1, 1, H, W), mask)
    return deform_conv2d(image[None, None].astype(float), offset, np.ones((1, 1, 1, 1)), mask=mask,
                         backend="reference")[0, 0, 0, 0]


@pytest.mark.parametrize("p_y, p_x, expected", [
    (0.5, 0.25, 0.5 * 0.75 * 1 + 0.5 * 0.25 * 2 + 0.5 * 0.75 * 3 + 0.5 * 0.25 * 4),  # 2.25
    (1.0, 1.0, 4.0),  # a pixel centre reads the pixel
    (-0.5, 0.0, 0.5 * 1.0),  # half in the zero padding above the image
    (1.5, 1.0, 0.5 * 4.0),  # half in the zero padding below the image
    (0.0, -0.75, 0.25 * 1.0),  # a quarter of the way in from the left
    (-1.0, 0.0, 0.0),  # p_y = −1 is invalid: no sample at all
    (0.0, 2.0, 0.0),  # p_x = W is invalid
])
def test_hand_computed_samples_of_a_two_by_two_image(p_y, p_x, expected):
    image = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert one_sample(image, p_y, p_x) == pytest.approx(expected, abs=1e-15)
    assert one_sample(image, p_y, p_x, mask=0.5) == pytest.approx(0.5 * expected, abs=1e-15)


def test_hand_computed_gradients_of_one_sample():
    """S = 1 + 2·p_y + p_x inside [[1, 2], [3, 4]], so ∂S/∂p = (2, 1), and each corner gets its
    bilinear weight; at p_y = −1 exactly the sample is invalid and the rule gives no gradient."""
    image = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    weight = np.full((1, 1, 1, 1), 3.0)
    grad_output = np.zeros((1, 1, 2, 2))
    grad_output[0, 0, 0, 0] = 1.0
    offset = np.zeros((1, 2, 2, 2))
    offset[0, :, 0, 0] = (0.25, 0.5)
    mask = np.ones((1, 1, 2, 2))
    grad_input, grad_offset, grad_weight, grad_bias, grad_mask = deform_conv2d_backward(
        grad_output, image, offset, weight, np.zeros(1), mask=mask, backend="reference")
    assert_close(grad_offset[0, :, 0, 0], [3 * 2.0, 3 * 1.0], what="grad_offset")
    assert_close(grad_input[0, 0], 3 * np.array([[0.75 * 0.5, 0.75 * 0.5], [0.25 * 0.5, 0.25 * 0.5]]),
                 what="grad_input")
    assert_close(grad_mask[0, 0, 0, 0], 3 * (1 + 2 * 0.25 + 0.5), what="grad_mask")
    assert_close(grad_weight[0, 0, 0, 0], (1 + 2 * 0.25 + 0.5), what="grad_weight")
    assert_close(grad_bias, [1.0], what="grad_bias")

    offset[0, :, 0, 0] = (-1.0, 0.0)  # exactly on p_y = −1: invalid
    _, grad_offset, _, _, grad_mask = deform_conv2d_backward(
        grad_output, image, offset, weight, np.zeros(1), mask=mask, backend="reference")
    assert_close(grad_offset[0, :, 0, 0], [0.0, 0.0], what="grad_offset at p_y = -1")
    assert grad_mask[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_all_five_gradients_match_finite_differences(case, with_mask):
    rng = np.random.default_rng(5)
    c = random_case(rng, **case)
    inputs = dict(input=c["input"], offset=off_grid_offsets(rng, c["offset_shape"]),
                  weight=c["weight"], bias=c["bias"])
    if with_mask:
        inputs["mask"] = rng.uniform(0.1, 1.0, c["mask_shape"])
    geometry = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])

    def forward(**arrays):
        return deform_conv2d(**arrays, **geometry, backend="reference")

    grad_output = rng.standard_normal(forward(**inputs).shape)
    gradients = deform_conv2d_backward(grad_output, **inputs, **geometry, backend="reference")
    names = ["input", "offset", "weight", "bias", "mask"][:len(inputs)]
    analytic = dict(zip(names, gradients))
    check_gradients(forward, inputs, grad_output, analytic, mode="elementwise", rtol=1e-6, atol=1e-7)


def test_reference_computes_in_float64_and_returns_the_input_dtype():
    """float32 inputs give the float64 result of the same (float32-rounded) values, rounded once."""
    rng = np.random.default_rng(6)
    c = random_case(rng)
    offset = rng.standard_normal(c["offset_shape"])
    single_inputs = [a.astype(np.float32) for a in (c["input"], offset, c["weight"], c["bias"])]
    single = deform_conv2d(*single_inputs, c["stride"], c["padding"], c["dilation"], backend="reference")
    double = deform_conv2d(*[a.astype(np.float64) for a in single_inputs], c["stride"], c["padding"],
                           c["dilation"], backend="reference")
    assert single.dtype == np.float32
    np.testing.assert_array_equal(single, double.astype(np.float32))


def test_empty_batch_gives_empty_outputs_of_the_right_shape():
    rng = np.random.default_rng(7)
    c = random_case(rng, B=0)
    offset = np.zeros(c["offset_shape"])
    mask = np.zeros(c["mask_shape"])
    args = (c["input"], offset, c["weight"], c["bias"], c["stride"], c["padding"], c["dilation"], mask)
    output = deform_conv2d(*args, backend="reference")
    assert output.shape == (0, 6) + c["offset_shape"][2:]
    grads = deform_conv2d_backward(np.zeros(output.shape), *args, backend="reference")
    assert [g.shape for g in grads] == [c["input"].shape, offset.shape, c["weight"].shape, (6,), mask.shape]
    assert_close(grads[2], np.zeros_like(c["weight"]), what="grad_weight of an empty batch")


def test_empty_image_with_padding_samples_only_the_padding():
    """H = 0 with a 1×1 kernel and padding 1 has a 2 × (W + 2) output whose samples all lie
    outside the image: the output is the bias, no gradient reaches the (empty) input, and the
    offset and mask gradients are 0 (every sample is invalid)."""
    rng = np.random.default_rng(8)
    input = np.zeros((1, 2, 0, 3))
    offset = rng.uniform(-0.5, 0.5, (1, 2, 2, 5))
    mask = rng.uniform(0, 1, (1, 1, 2, 5))
    weight, bias = rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(3)
    for module in (loops, vectorised):
        output = module.deform_conv2d(input, offset, weight, bias, (1, 1), (1, 1), (1, 1), mask)
        assert_close(output, np.broadcast_to(bias[None, :, None, None], (1, 3, 2, 5)), what="H = 0 output")
        grads = module.deform_conv2d_backward(np.ones((1, 3, 2, 5)), input, offset, weight, bias,
                                              (1, 1), (1, 1), (1, 1), mask)
        assert grads[0].shape == input.shape
        assert_close(grads[1], np.zeros_like(offset), what="H = 0 grad_offset")
        assert_close(grads[4], np.zeros_like(mask), what="H = 0 grad_mask")
    assert deform_conv2d(input, offset, weight, bias, padding=1, mask=mask, backend="reference").shape == (1, 3, 2, 5)


def hostile_values(rng, shape, edge_values):
    """Standard normal values, about a fifth of them replaced by one of edge_values."""
    values = rng.standard_normal(shape)
    chosen = rng.random(shape) < 0.2
    values[chosen] = rng.choice(edge_values, size=int(chosen.sum()))
    return values


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       offset_groups=st.sampled_from([1, 2]), H=st.integers(1, 4), W=st.integers(1, 4),
       kh=st.integers(1, 3), kw=st.integers(1, 2), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), with_mask=st.booleans(), with_bias=st.booleans(),
       hostile=st.booleans())
def test_loops_and_vectorised_twin_agree(seed, B, groups, offset_groups, H, W, kh, kw, stride,
                                         padding, dilation, with_mask, with_bias, hostile):
    """Forward and all five gradients, on random cases; `hostile` puts samples exactly on the −1
    and H (or W) borders and on integers (integer offsets whose positions land there), and NaN
    or ±Inf in every array."""
    rng = np.random.default_rng(seed)
    H_out = output_size(H, kh, stride, padding, dilation)
    W_out = output_size(W, kw, stride, padding, dilation)
    if H_out < 1 or W_out < 1:
        return
    C_in, C_out = 2 * groups * offset_groups // min(groups, offset_groups), 2 * groups
    edges = [-1.0, float(H), float(W), 0.0, 1.0, np.nan, np.inf, -np.inf] if hostile else [0.5]
    shapes = dict(input=(B, C_in, H, W), offset=(B, 2 * offset_groups * kh * kw, H_out, W_out),
                  weight=(C_out, C_in // groups, kh, kw), bias=(C_out,),
                  mask=(B, offset_groups * kh * kw, H_out, W_out), grad_output=(B, C_out, H_out, W_out))
    arrays = {name: hostile_values(rng, shape, edges) for name, shape in shapes.items()}
    if hostile:  # integer offsets place many samples exactly on −1, 0, H − 1 and H
        arrays["offset"] = np.where(rng.random(shapes["offset"]) < 0.5,
                                    rng.integers(-3, 4, shapes["offset"]).astype(float), arrays["offset"])
    bias = arrays["bias"] if with_bias else None
    mask = arrays["mask"] if with_mask else None
    geometry = ((stride, stride), (padding, padding), (dilation, dilation))
    forward = [m.deform_conv2d(arrays["input"], arrays["offset"], arrays["weight"], bias, *geometry, mask)
               for m in (loops, vectorised)]
    np.testing.assert_allclose(forward[0], forward[1], rtol=1e-12, atol=1e-12, equal_nan=True)
    backward = [m.deform_conv2d_backward(arrays["grad_output"], arrays["input"], arrays["offset"],
                                         arrays["weight"], bias, *geometry, mask)
                for m in (loops, vectorised)]
    for name, by_loops, by_twin in zip(["input", "offset", "weight", "bias", "mask"], *backward):
        assert (by_loops is None) == (by_twin is None), name
        if by_loops is not None:
            np.testing.assert_allclose(by_loops, by_twin, rtol=1e-11, atol=1e-11, equal_nan=True,
                                       err_msg=f"grad_{name}")
