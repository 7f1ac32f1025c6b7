"""The NumPy reference of DCNv3 and DCNv4 (docs/specification.md §3): hand-computed cases for every
convention (identity, tap order, x-first offsets, offset_scale, remove_center, unequal pads,
groups), the identity with a depthwise deformable convolution of §1, finite differences of every
gradient over random shapes and parameters, DCNv4's packing and softmax, non-finite values."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcn_numba.reference import dcnv3 as reference
from dcn_numba.reference import deform_conv_vectorised
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcnv3_helpers import geometries, packed, random_call, taps_count

UNIT = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1,
            dilation_w=1, group=1, group_channels=2, offset_scale=1.0, remove_center=0)


def one_tap(input, tap, offset_pair=(0.0, 0.0), **changes):
    """DCNv3 of `input` (N, H, W, C) with one group whose mask is 1 at tap `tap` and 0 elsewhere,
    every tap moved by offset_pair = (Δx, Δy)."""
    parameters = dict(UNIT, group_channels=input.shape[3], **changes)
    N, H, W, _ = input.shape
    H_out = (H + 2 * parameters["pad_h"] - parameters["dilation_h"] * (parameters["kernel_h"] - 1) - 1) \
        // parameters["stride_h"] + 1
    W_out = (W + 2 * parameters["pad_w"] - parameters["dilation_w"] * (parameters["kernel_w"] - 1) - 1) \
        // parameters["stride_w"] + 1
    P = taps_count(parameters)
    offset = np.tile(np.asarray(offset_pair, dtype=np.float64), (N, H_out, W_out, P))
    mask = np.zeros((N, H_out, W_out, P))
    mask[..., tap] = 1.0
    return reference.dcnv3(input, offset, mask, **parameters)


@pytest.fixture
def image():
    return np.random.default_rng(3).standard_normal((2, 4, 5, 3))


def shifted(image, dy, dx):
    """image[:, y + dy, x + dx] at every (y, x), 0 where that pixel lies outside."""
    N, H, W, C = image.shape
    canvas = np.zeros((N, H + 8, W + 8, C))
    canvas[:, 4:4 + H, 4:4 + W] = image
    return canvas[:, 4 + dy:4 + dy + H, 4 + dx:4 + dx + W]


def test_the_centre_tap_alone_reproduces_the_input(image):
    assert_close(one_tap(image, 4), image, rtol=0, atol=1e-15)


def test_a_1x1_kernel_with_mask_1_reproduces_the_input(image):
    assert_close(one_tap(image, 0, kernel_h=1, kernel_w=1, pad_h=0, pad_w=0), image, rtol=0, atol=1e-15)


def test_taps_are_numbered_column_major(image):
    """p = i_x·kh + i_y: tap 1 is (i_x, i_y) = (0, 1), one column left of the centre; tap 3 is
    (1, 0), one row up (row-major numbering would swap the two)."""
    assert reference.taps(3, 3, 0)[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert_close(one_tap(image, 1), shifted(image, 0, -1), rtol=0, atol=1e-15)
    assert_close(one_tap(image, 3), shifted(image, -1, 0), rtol=0, atol=1e-15)


def test_offsets_are_x_first(image):
    assert_close(one_tap(image, 4, (1.0, 0.0)), shifted(image, 0, 1), rtol=0, atol=1e-15)
    assert_close(one_tap(image, 4, (0.0, 1.0)), shifted(image, 1, 0), rtol=0, atol=1e-15)


def test_half_a_pixel_blends_two_neighbours_and_zero_beyond_the_edge(image):
    """Δx = 0.5: the mean of a pixel and its right neighbour; in the last column the neighbour is
    the zero padding of the DCNv2 rule, so the value is half the last pixel."""
    expected = (image + shifted(image, 0, 1)) / 2
    assert_close(one_tap(image, 4, (0.5, 0.0)), expected, rtol=0, atol=1e-15)
    assert_close(expected[:, :, -1], image[:, :, -1] / 2, rtol=0, atol=1e-15)


def test_offset_scale_scales_the_grid_and_the_offset(image):
    """s = 2: tap 7 = (i_x, i_y) = (2, 1) samples p_x = w − 2 + 2·2 = w + 2; at the centre tap an
    offset Δx = 0.5 moves the sample by s·0.5 = 1 pixel."""
    assert_close(one_tap(image, 7, offset_scale=2.0), shifted(image, 0, 2), rtol=0, atol=1e-15)
    assert_close(one_tap(image, 4, (0.5, 0.0), offset_scale=2.0), shifted(image, 0, 1), rtol=0, atol=1e-15)


def test_remove_center_drops_the_centre_and_renumbers(image):
    """Without the centre, P = 8 and tap 4 is the former tap 5 = (1, 2), one row down."""
    assert reference.taps(3, 3, 1) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert_close(one_tap(image, 4, remove_center=1), shifted(image, 1, 0), rtol=0, atol=1e-15)
    assert_close(one_tap(image, 3, remove_center=1), shifted(image, -1, 0), rtol=0, atol=1e-15)


def test_unequal_pads_apply_to_their_own_axes(image):
    """pad_h = 0, pad_w = 2: H_out = H − 2, W_out = W + 2 and the centre tap of output (h, w)
    reads pixel (h + 1, w − 1)."""
    output = one_tap(image, 4, pad_h=0, pad_w=2)
    N, H, W, C = image.shape
    assert output.shape == (N, H - 2, W + 2, C)
    expected = np.zeros(output.shape)
    expected[:, :, 1:W + 1] = image[:, 1:H - 1]
    assert_close(output, expected, rtol=0, atol=1e-15)


def test_each_group_has_its_own_offsets_and_mask():
    """Two groups of two channels: group 0 moves right, group 1 down."""
    image = np.random.default_rng(4).standard_normal((1, 4, 5, 4))
    N, H, W, C = image.shape
    offset = np.zeros((N, H, W, 2, 9, 2))
    offset[..., 0, :, 0] = 1.0
    offset[..., 1, :, 1] = 1.0
    mask = np.zeros((N, H, W, 2, 9))
    mask[..., 4] = 1.0
    output = reference.dcnv3(image, offset.reshape(N, H, W, -1), mask.reshape(N, H, W, -1),
                             **dict(UNIT, group=2, group_channels=2))
    assert_close(output[..., :2], shifted(image, 0, 1)[..., :2], rtol=0, atol=1e-15)
    assert_close(output[..., 2:], shifted(image, 1, 0)[..., 2:], rtol=0, atol=1e-15)


def as_deform_conv2d(call, parameters):
    """The arrays of §1's deform_conv2d that compute the same as DCNv3: a depthwise convolution
    (groups = C) with weight 1, offset groups = G, each tap (i_x, i_y) of §1's row-major number
    k = i_y·kw + i_x moved to where §3.3 puts DCNv3's tap, y first, its mask m (0 for a removed
    centre)."""
    p = parameters
    N, H_out, W_out = call["offset"].shape[:3]
    G, kh, kw = p["group"], p["kernel_h"], p["kernel_w"]
    C = call["input"].shape[3]
    offset = np.zeros((N, G, kh * kw, 2, H_out, W_out))
    mask = np.zeros((N, G, kh * kw, H_out, W_out))
    mask_v3 = call["mask"].reshape(N, H_out, W_out, G, -1)
    for g in range(G):
        for number, (i_x, i_y) in enumerate(reference.taps(kh, kw, p["remove_center"])):
            p_y, p_x = reference.tap_locations(call["offset"], g, number, (i_x, i_y), reference.Parameters(**p))
            k = i_y * kw + i_x
            grid_y = np.arange(H_out)[:, None] * p["stride_h"] - p["pad_h"] + i_y * p["dilation_h"]
            grid_x = np.arange(W_out)[None, :] * p["stride_w"] - p["pad_w"] + i_x * p["dilation_w"]
            offset[:, g, k, 0] = p_y - grid_y
            offset[:, g, k, 1] = p_x - grid_x
            mask[:, g, k] = mask_v3[..., g, number]
    return dict(input=call["input"].transpose(0, 3, 1, 2), offset=offset.reshape(N, -1, H_out, W_out),
                weight=np.ones((C, 1, kh, kw)), bias=None, stride=(p["stride_h"], p["stride_w"]),
                padding=(p["pad_h"], p["pad_w"]), dilation=(p["dilation_h"], p["dilation_w"]),
                mask=mask.reshape(N, -1, H_out, W_out))


@settings(max_examples=25, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2**32 - 1))
def test_dcnv3_is_a_depthwise_deformable_convolution_with_moved_taps(geometry, seed):
    """Forward and gradients equal those of §1's reference; ∂L/∂Δ of DCNv3 is s times §1's, since
    §1's offset is the DCNv3 location minus the regular grid, s·Δ plus a constant."""
    shape, parameters = geometry
    call = random_call(np.random.default_rng(seed), shape, parameters)
    conv = as_deform_conv2d(call, parameters)
    output = reference.dcnv3(call["input"], call["offset"], call["mask"], **parameters)
    assert_close(output, deform_conv_vectorised.deform_conv2d(**conv).transpose(0, 2, 3, 1),
                 rtol=1e-12, atol=1e-12)

    grad_output = call["grad_output"]
    grad_input, grad_offset, grad_mask = reference.dcnv3_backward(
        grad_output, call["input"], call["offset"], call["mask"], **parameters)
    conv_grads = deform_conv_vectorised.deform_conv2d_backward(grad_output.transpose(0, 3, 1, 2), **conv)
    assert_close(grad_input, conv_grads[0].transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    N, H_out, W_out = call["offset"].shape[:3]
    G, kh, kw = parameters["group"], parameters["kernel_h"], parameters["kernel_w"]
    conv_offset = conv_grads[1].reshape(N, G, kh * kw, 2, H_out, W_out)
    conv_mask = conv_grads[4].reshape(N, G, kh * kw, H_out, W_out)
    order = [i_y * kw + i_x for i_x, i_y in reference.taps(kh, kw, parameters["remove_center"])]
    s = parameters["offset_scale"]
    expected_offset = s * conv_offset[:, :, order][:, :, :, ::-1].transpose(0, 4, 5, 1, 2, 3)
    assert_close(grad_offset, expected_offset.reshape(grad_offset.shape), rtol=1e-12, atol=1e-12)
    assert_close(grad_mask, conv_mask[:, :, order].transpose(0, 3, 4, 1, 2).reshape(grad_mask.shape),
                 rtol=1e-12, atol=1e-12)


def dcnv3_gradients_match_finite_differences(call, parameters, mode):
    def forward(input, offset, mask):
        return reference.dcnv3(input, offset, mask, **parameters)

    analytic = reference.dcnv3_backward(call["grad_output"], call["input"], call["offset"],
                                        call["mask"], **parameters)
    check_gradients(forward, dict(input=call["input"], offset=call["offset"], mask=call["mask"]),
                    call["grad_output"], dict(zip(("input", "offset", "mask"), analytic)), mode=mode)


@settings(max_examples=30, deadline=None)
@given(geometry=geometries(), seed=st.integers(0, 2**32 - 1))
def test_dcnv3_gradients_match_finite_differences_in_a_random_direction(geometry, seed):
    shape, parameters = geometry
    dcnv3_gradients_match_finite_differences(random_call(np.random.default_rng(seed), shape, parameters),
                                             parameters, "random")


@pytest.mark.parametrize("shape, changes", [
    ((1, 2, 3), dict()),
    ((1, 3, 2), dict(group=2, group_channels=1, remove_center=1, offset_scale=1.3, pad_h=0, pad_w=2)),
    ((1, 3, 3), dict(kernel_h=2, kernel_w=3, stride_h=2, dilation_w=2, offset_scale=0.7)),
])
def test_dcnv3_gradients_match_finite_differences_element_by_element(shape, changes):
    parameters = dict(UNIT, **changes)
    call = random_call(np.random.default_rng(7), shape, parameters)
    dcnv3_gradients_match_finite_differences(call, parameters, "elementwise")


def dcnv4_call(seed, shape, parameters):
    rng = np.random.default_rng(seed)
    call = random_call(rng, shape, parameters)
    return call, packed(call["offset"], call["mask"], parameters["group"], rng)


@settings(max_examples=20, deadline=None)
@given(geometry=geometries(), softmax=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dcnv4_gradients_match_finite_differences_in_a_random_direction(geometry, softmax, seed):
    shape, parameters = geometry
    call, offset_mask = dcnv4_call(seed, shape, parameters)

    def forward(input, offset_mask):
        return reference.dcnv4(input, offset_mask, **parameters, softmax=softmax)

    analytic = reference.dcnv4_backward(call["grad_output"], call["input"], offset_mask, **parameters,
                                        softmax=softmax)
    check_gradients(forward, dict(input=call["input"], offset_mask=offset_mask), call["grad_output"],
                    dict(input=analytic[0], offset_mask=analytic[1]), mode="random")


@pytest.mark.parametrize("softmax", [False, True])
def test_dcnv4_gradients_match_finite_differences_element_by_element(softmax):
    """Including the padding channels, which the forward never reads: their gradient is 0."""
    assert reference.pad8(48) == 48 and reference.pad8(27) == 32
    parameters = dict(UNIT, group_channels=2, offset_scale=1.2)
    call, offset_mask = dcnv4_call(12, (1, 2, 2), parameters)
    assert offset_mask.shape[3] == 32  # 3·G·P = 27 channels, padded to 32

    def forward(input, offset_mask):
        return reference.dcnv4(input, offset_mask, **parameters, softmax=softmax)

    analytic = reference.dcnv4_backward(call["grad_output"], call["input"], offset_mask, **parameters,
                                        softmax=softmax)
    assert np.all(analytic[1][..., 27:] == 0)
    check_gradients(forward, dict(input=call["input"], offset_mask=offset_mask), call["grad_output"],
                    dict(input=analytic[0], offset_mask=analytic[1]))


@settings(max_examples=15, deadline=None)
@given(geometry=geometries(), softmax=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_dcnv4_is_dcnv3_on_the_unpacked_offset_mask(geometry, softmax, seed):
    """Packing puts each group's 2P offsets, then its P mask values, side by side; the padding is
    never read; softmax normalises each group's mask over its taps first."""
    shape, parameters = geometry
    call, offset_mask = dcnv4_call(seed, shape, parameters)
    mask = call["mask"]
    if softmax:
        N, H_out, W_out, GP = mask.shape
        grouped = np.exp(mask.reshape(N, H_out, W_out, parameters["group"], -1))
        mask = (grouped / grouped.sum(axis=-1, keepdims=True)).reshape(mask.shape)
    expected = reference.dcnv3(call["input"], call["offset"], mask, **parameters)
    output = reference.dcnv4(call["input"], offset_mask, **parameters, softmax=softmax)
    assert_close(output, expected, rtol=1e-12, atol=1e-12)
    offset, unpacked_mask = reference.unpack_offset_mask(offset_mask, parameters["group"], taps_count(parameters))
    assert np.array_equal(offset, call["offset"]) and np.array_equal(unpacked_mask, call["mask"])


def test_non_finite_offsets_give_nan_and_far_offsets_give_zero(image):
    """A NaN or infinite offset makes its sample NaN (S = NaN), so the outputs of that group at
    that position, and its offset and mask gradients, are NaN; grad_input is untouched by it. An
    offset far outside samples zeros. A NaN mask gives NaN even where S = 0 (m · 0)."""
    N, H, W, C = image.shape
    parameters = dict(UNIT, group_channels=C)
    offset = np.zeros((N, H, W, 18))
    mask = np.full((N, H, W, 9), 0.1)
    for bad in (np.nan, np.inf):
        spoiled = offset.copy()
        spoiled[0, 1, 2, 8] = bad  # Δx of tap 4 at output (1, 2) of image 0
        output = reference.dcnv3(image, spoiled, mask, **parameters)
        assert np.isnan(output[0, 1, 2]).all()
        assert np.isfinite(np.delete(output.reshape(-1, C), 1 * W + 2, axis=0)).all()
        grad_input, grad_offset, grad_mask = reference.dcnv3_backward(np.ones_like(output), image,
                                                                      spoiled, mask, **parameters)
        assert np.isnan(grad_offset[0, 1, 2, 8:10]).all() and np.isnan(grad_mask[0, 1, 2, 4])
        assert np.isfinite(grad_input).all()
    far = offset + 1e6
    assert np.array_equal(reference.dcnv3(image, far, mask, **parameters), np.zeros(image.shape))
    nan_mask = mask.copy()
    nan_mask[0, 0, 0, 0] = np.nan  # tap 0 of output (0, 0) reads (−1, −1): outside
    assert np.isnan(reference.dcnv3(image, offset, nan_mask, **parameters)[0, 0, 0]).all()


def test_softmax_and_its_backward():
    """Each group's weights are positive and sum to 1; the backward is the softmax's Jacobian."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((1, 2, 2, 6)) * 50  # large values: the max shift keeps exp finite
    m = reference.grouped_softmax(logits, 2)
    assert_close(m.reshape(1, 2, 2, 2, 3).sum(axis=-1), np.ones((1, 2, 2, 2)), rtol=0, atol=1e-12)
    grad = rng.standard_normal(m.shape)
    small = logits / 50
    analytic = reference.grouped_softmax_backward(grad, reference.grouped_softmax(small, 2), 2)
    check_gradients(lambda logits: reference.grouped_softmax(logits, 2), dict(logits=small), grad,
                    dict(logits=analytic))
