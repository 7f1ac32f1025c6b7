"""One precision rule on every backend (kernels/bilinear.py): a sum a kernel owns accumulates in
float64 and is rounded to the data's dtype once. So a float32 result of either kernel backend is
the float64 reference rounded, within an ulp or two, even over 256 samples a bin; and the
tutorials' sampler `dcn_sample` equals the kernels' path (locate on the padded image, blend)."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dcn_numba
from dcn_numba.kernels import bilinear
from helpers import KERNEL_BACKENDS, to_backend, to_numpy

RNG = np.random.default_rng(0)
IMAGE = RNG.standard_normal((1, 2, 9, 9)) + 100.0  # a large mean makes float32 sums lose digits
ROIS = np.array([[0, 0.3, 0.7, 7.9, 8.2], [0, 2.0, 1.0, 6.5, 5.0]])


def assert_rounded_once(backend, output, exact):
    """Each element within two float32 ulps of the float64 result."""
    error = np.abs(to_numpy(output).astype(np.float64) - exact)
    ulps = error / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2, f"{backend}: {ulps.max():.1f} ulps from the float64 result"


def test_deform_roi_pool_rounds_once_on_every_backend():
    offset = 0.3 * RNG.standard_normal((2, 2, 2, 2))
    exact = dcn_numba.deform_roi_pool(IMAGE, ROIS, offset, output_size=2, sampling_ratio=16,
                                      backend="reference")
    for backend in KERNEL_BACKENDS:
        arrays = [to_backend(backend, a.astype(np.float32)) for a in (IMAGE, ROIS, offset)]
        output = dcn_numba.deform_roi_pool(*arrays, output_size=2, sampling_ratio=16, backend=backend)
        assert_rounded_once(backend, output, exact)


def test_deform_psroi_pool_rounds_once_on_every_backend():
    image = np.concatenate([IMAGE, IMAGE], axis=1)
    exact = dcn_numba.deform_psroi_pool(image, ROIS, output_dim=1, group_size=2, pooled_size=2,
                                        sample_per_part=16, backend="reference")
    for backend in KERNEL_BACKENDS:
        arrays = [to_backend(backend, a.astype(np.float32)) for a in (image, ROIS)]
        output = dcn_numba.deform_psroi_pool(*arrays, output_dim=1, group_size=2, pooled_size=2,
                                             sample_per_part=16, backend=backend)
        assert_rounded_once(backend, output, exact)


def kernels_path(image, H, W, p_y, p_x):
    """S and ∂S/∂p as the convolution kernels compute them: locate the sample on the image
    zero-padded by one pixel, read its corners there, blend (or take the unlocated value)."""
    padded = np.pad(image.reshape(H, W), 1).ravel()
    top_left, l_y, l_x = bilinear.dcn_locate(p_y, p_x, H, W)
    corners = bilinear.padded_corners(padded, 0, top_left, W, 1)
    value = bilinear.dcn_located_or_not(bilinear.bilinear_blend(*corners, l_y, l_x), top_left)
    slopes = [bilinear.dcn_located_or_not(slope, top_left)
              for slope in bilinear.bilinear_slopes(*corners, l_y, l_x)]
    return value, slopes


coordinate = st.one_of(st.floats(-2.5, 6.5), st.integers(-2, 6).map(float),
                       st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 5.0, 4.0]))


@settings(max_examples=150, deadline=None)
@given(p_y=coordinate, p_x=coordinate)
def test_the_tutorials_sampler_equals_the_kernels_path(p_y, p_x):
    H, W = 5, 4
    image = np.arange(1.0, H * W + 1)
    value, slopes = kernels_path(image, H, W, p_y, p_x)
    np.testing.assert_allclose(bilinear.dcn_sample(image, 0, H, W, p_y, p_x), value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bilinear.dcn_sample_gradient(image, 0, H, W, p_y, p_x), slopes,
                               rtol=1e-12, atol=1e-12)
