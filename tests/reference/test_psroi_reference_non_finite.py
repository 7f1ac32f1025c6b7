"""The position-sensitive RoI pooling reference on NaN and ±Inf RoI coordinates: they propagate
to the bins they reach as NaN (the specification: non-finite inputs propagate), and the other
RoIs keep their values. The one exception is the operator's own rule: a far corner at −Inf
makes a degenerate RoI, which the 0.1-pixel floor on its size turns into a finite one, as it
does for any far corner left of (or above) the near one."""

import numpy as np
import pytest

from dcn_numba.reference.deform_psroi_pool import deform_psroi_pool, deform_psroi_pool_backward

PARAMETERS = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2, part_size=2,
                  sample_per_part=2, trans_std=0.1)


NON_FINITE = [(c, v) for c in (1, 2, 3, 4) for v in (np.nan, np.inf, -np.inf) if (c, v) not in
              ((3, -np.inf), (4, -np.inf))]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("coordinate, value", NON_FINITE)
def test_non_finite_roi_coordinates_propagate(coordinate, value):
    rng = np.random.default_rng(coordinate)
    input = rng.standard_normal((1, 8, 6, 6))
    rois = np.array([[0, 1.0, 1.0, 4.0, 4.0], [0, 1.0, 1.0, 4.0, 4.0]])
    rois[0, coordinate] = value
    trans = rng.standard_normal((2, 2, 2, 2))
    output = deform_psroi_pool(input, rois, trans, **PARAMETERS)
    assert np.isnan(output[0]).any()
    assert np.isfinite(output[1]).all()
    clean = deform_psroi_pool(input, rois[1:], trans[1:], **PARAMETERS)
    np.testing.assert_array_equal(output[1], clean[0])
    grad_input, grad_trans = deform_psroi_pool_backward(np.ones_like(output), input, rois, trans, **PARAMETERS)
    assert grad_input.shape == input.shape
    assert np.isnan(grad_trans[0]).any()
    assert np.isfinite(grad_trans[1]).all()


@pytest.mark.parametrize("coordinate", [3, 4])
def test_far_corner_at_minus_infinity_is_a_degenerate_roi(coordinate):
    rng = np.random.default_rng(coordinate)
    input = rng.standard_normal((1, 8, 6, 6))
    trans = rng.standard_normal((1, 2, 2, 2))
    at_infinity = np.array([[0, 1.0, 1.0, 4.0, 4.0]])
    at_infinity[0, coordinate] = -np.inf
    degenerate = at_infinity.copy()
    degenerate[0, coordinate] = -100.0
    np.testing.assert_array_equal(deform_psroi_pool(input, at_infinity, trans, **PARAMETERS),
                                  deform_psroi_pool(input, degenerate, trans, **PARAMETERS))
