"""Careless or hostile arguments get a clear error, before any work: the message names the
argument, what was given and what was expected."""

import numpy as np
import pytest

import dcn_numba
from dcn_numba.engine import nn
from dcn_numba.engine.autograd import Tensor

X = np.zeros((1, 2, 4, 4), np.float32)
ROI = np.array([[0, 0, 0, 3, 3]], np.float32)
OFFSET = np.zeros((1, 18, 2, 2), np.float32)
WEIGHT = np.zeros((2, 2, 3, 3), np.float32)


@pytest.mark.parametrize("layer, message", [
    (lambda: nn.DeformConv2d(3, 6, 3, groups=2), "groups = 2 must divide in_channels = 3"),
    (lambda: nn.DeformConv2d(4, 6, 3, groups=4), "groups = 4 must divide out_channels = 6"),
    (lambda: nn.DeformConv2d(4, 4, 3, offset_groups=3), "offset_groups = 3 must divide in_channels = 4"),
    (lambda: nn.Conv2d(3, 6, 3, groups=2), "groups = 2 must divide in_channels = 3"),
    (lambda: nn.Conv2d(0, 6, 3), "in_channels must be >= 1"),
])
def test_layers_refuse_channel_groups_that_do_not_divide(layer, message):
    with pytest.raises(ValueError, match=message):
        layer()


def test_layers_refuse_arrays_empty_batches_and_float16():
    layer = nn.DeformConv2d(2, 2, 3, padding=1)
    with pytest.raises(TypeError, match=r"input must be a dcn_numba Tensor, got numpy.ndarray"):
        layer(X)
    with pytest.raises(ValueError, match="a batch of 0 images"):
        layer(Tensor(np.zeros((0, 2, 4, 4), np.float32)))
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        layer.to(dtype=np.float16)


def test_roi_layers_pool_zero_rois():
    no_rois = np.zeros((0, 5), np.float32)
    pooled = nn.DeformRoIPool(2, 2, hidden_channels=4)(Tensor(X), no_rois)
    assert pooled.shape == (0, 2, 2, 2)
    pooled = nn.DeformPSRoIPool(8, 2, pooled_size=2)(Tensor(np.zeros((1, 8, 4, 4), np.float32)), no_rois)
    assert pooled.shape == (0, 2, 2, 2)


@pytest.mark.parametrize("call, error, message", [
    (lambda: dcn_numba.deform_conv2d_backward(None, X, OFFSET, WEIGHT), TypeError,
     r"grad_output must be a NumPy or CuPy array .* got None"),
    (lambda: dcn_numba.deform_roi_pool_backward(None, X, ROI, output_size=2), TypeError,
     r"grad_output must be a NumPy or CuPy array .* got None"),
    (lambda: dcn_numba.deform_psroi_pool_backward(None, X, ROI, pooled_size=2), TypeError,
     r"grad_output must be a NumPy or CuPy array .* got None"),
    (lambda: dcn_numba.deform_conv2d(Tensor(X), OFFSET, WEIGHT), TypeError,
     r"input must be a NumPy or CuPy array .* got Tensor .*dcn_numba.torch"),
    (lambda: dcn_numba.deform_conv2d(X, OFFSET, WEIGHT, stride=2**63), ValueError,
     "stride must be <= 1125899906842624"),
    (lambda: dcn_numba.deform_roi_pool(X, ROI, output_size=2, sampling_ratio=2**63), ValueError,
     "sampling_ratio must be <= 256"),
    (lambda: dcn_numba.deform_roi_pool(X, ROI, output_size=2, sampling_ratio=10**6), ValueError,
     "sampling_ratio must be <= 256"),
    (lambda: dcn_numba.deform_psroi_pool(X, ROI, pooled_size=2, sample_per_part=10**5), ValueError,
     "sample_per_part must be <= 256"),
    (lambda: dcn_numba.deform_roi_pool(X, ROI, output_size=2, spatial_scale=1e12), ValueError,
     "samples per axis under adaptive sampling"),
    (lambda: dcn_numba.deform_roi_pool(X, np.array([[0, 0, 0, 1e6, 1e6]], np.float32), output_size=2),
     ValueError, "samples per axis under adaptive sampling"),
    (lambda: dcn_numba.deform_roi_pool(X, ROI, output_size=10**6), ValueError,
     r"the output would have shape \(1, 2, 1000000, 1000000\)"),
    (lambda: dcn_numba.deform_psroi_pool(X, ROI, output_dim=2, pooled_size=10**6), ValueError,
     "the output would have shape"),
], ids=lambda value: "" if callable(value) or isinstance(value, type) else value[:40])
def test_the_ops_refuse_with_a_clear_message_before_any_work(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_read_only_inputs_run_on_the_simulated_cuda_backend():
    read_only = np.random.default_rng(0).standard_normal((1, 2, 4, 4))
    read_only.flags.writeable = False
    offset, weight = np.zeros((1, 18, 2, 2)), np.ones((2, 2, 3, 3))
    expected = dcn_numba.deform_conv2d(read_only, offset, weight, backend="reference")
    from helpers import to_backend, to_numpy
    output = dcn_numba.deform_conv2d(to_backend("cuda", read_only), to_backend("cuda", offset),
                                     to_backend("cuda", weight), backend="cuda")
    np.testing.assert_allclose(to_numpy(output), expected, rtol=1e-12, atol=1e-12)
