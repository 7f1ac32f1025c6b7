"""Bad arguments to both RoI pooling ops: each error names the argument, what was received and
what was expected."""

import numpy as np
import pytest

from dcn_numba import (deform_psroi_pool_backward, deform_roi_pool_backward)
from dcn_numba import deform_psroi_pool
from dcn_numba import deform_roi_pool

INPUT = np.zeros((2, 8, 5, 6))  # B = 2, C = 8 = output_dim 2 · group_size 2²
ROIS = np.array([[0, 0.0, 0.0, 3.0, 3.0], [1, 1.0, 1.0, 4.0, 2.0]])


def roi_pool(**changes):
    arguments = dict(input=INPUT, rois=ROIS, offset=np.zeros((2, 2, 2, 3)), output_size=(2, 3))
    arguments.update(changes)
    return deform_roi_pool(**arguments)


def psroi_pool(**changes):
    arguments = dict(input=INPUT, rois=ROIS, trans=np.zeros((2, 2, 2, 2)), output_dim=2, group_size=2,
                     pooled_size=2)
    arguments.update(changes)
    return deform_psroi_pool(**arguments)


BATCH_INDEX_ERRORS = [
    (np.array([[0, 0.0, 0.0, 1.0, 1.0], [2, 0.0, 0.0, 1.0, 1.0]]), r"rois\[1, 0\] = 2\.0 .*\[0, 2\)"),
    (np.array([[-1, 0.0, 0.0, 1.0, 1.0]]), r"rois\[0, 0\] = -1\.0 .*integer value in \[0, 2\)"),
    (np.array([[0.5, 0.0, 0.0, 1.0, 1.0]]), r"rois\[0, 0\] = 0\.5 is not a batch index"),
    (np.array([[np.nan, 0.0, 0.0, 1.0, 1.0]]), r"rois\[0, 0\] = nan"),
]


@pytest.mark.parametrize("op", [roi_pool, psroi_pool])
@pytest.mark.parametrize("rois, message", BATCH_INDEX_ERRORS)
def test_batch_index_must_be_an_integer_value_in_range(op, rois, message):
    with pytest.raises(ValueError, match=message):
        op(rois=rois, **{"offset" if op is roi_pool else "trans": None})


@pytest.mark.parametrize("op", [roi_pool, psroi_pool])
def test_rois_must_be_n_by_5(op):
    with pytest.raises(ValueError, match=r"rois has shape \(2, 4\), expected \(N, 5\)"):
        op(rois=ROIS[:, :4])
    with pytest.raises(ValueError, match=r"rois must have 2 dimensions \(N, 5\), got shape \(5,\)"):
        op(rois=ROIS[0])


@pytest.mark.parametrize("op", [roi_pool, psroi_pool])
@pytest.mark.parametrize("scale", [0.0, -1.0, np.inf])
def test_spatial_scale_must_be_positive(op, scale):
    with pytest.raises(ValueError, match=rf"spatial_scale must be a finite number > 0, got {scale!r}"):
        op(spatial_scale=scale)


@pytest.mark.parametrize("op", [roi_pool, psroi_pool])
def test_arrays_must_share_a_float_dtype(op):
    with pytest.raises(TypeError, match="rois has dtype float32 but input has float64"):
        op(rois=ROIS.astype(np.float32))
    with pytest.raises(TypeError, match="input must be float32 or float64, got int64"):
        op(input=INPUT.astype(np.int64))


@pytest.mark.parametrize("op", [roi_pool, psroi_pool])
def test_empty_feature_map_is_refused(op):
    with pytest.raises(ValueError, match=r"input has shape \(2, 8, 0, 6\), expected .* H, W >= 1"):
        op(input=np.zeros((2, 8, 0, 6)))


@pytest.mark.parametrize("offset, expected", [
    (np.zeros((2, 2, 3, 3)), r"offset has shape \(2, 2, 3, 3\), expected \(2, 2, 2, 3\)"),
    (np.zeros((1, 2, 2, 3)), r"offset has shape \(1, 2, 2, 3\), expected \(2, 2, 2, 3\)"),
    (np.zeros((2, 2, 2)), r"offset must have 4 dimensions \(N, 2, PH, PW\)"),
])
def test_offset_must_match_the_rois_and_the_output_size(offset, expected):
    with pytest.raises(ValueError, match=expected):
        roi_pool(offset=offset)


@pytest.mark.parametrize("changes, error, expected", [
    (dict(output_size=0), ValueError, r"output_size must be >= 1"),
    (dict(output_size=(2, 3, 4)), TypeError, r"output_size must be an int or a pair of ints"),
    (dict(sampling_ratio=1.5), TypeError, r"sampling_ratio must be an int, got 1\.5"),
    (dict(gamma="big"), TypeError, r"gamma must be a real number, got 'big'"),
    (dict(backend="gpu"), ValueError, r"backend must be one of"),
])
def test_roi_pool_parameters(changes, error, expected):
    with pytest.raises(error, match=expected):
        roi_pool(**changes)


def test_roi_pool_grad_output_must_have_the_output_shape():
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 8, 2, 2\), expected \(2, 8, 2, 3\)"):
        deform_roi_pool_backward(np.zeros((2, 8, 2, 2)), INPUT, ROIS, None, output_size=(2, 3))


@pytest.mark.parametrize("changes, expected", [
    (dict(output_dim=3), r"input has 8 channels, expected output_dim·group_size² = 3·2² = 12"),
    (dict(group_size=3), r"input has 8 channels, expected output_dim·group_size² = 2·3² = 18"),
    (dict(output_dim=None, group_size=3, trans=None), r"input has 8 channels, expected a positive multiple of group_size² = 9"),
    (dict(output_dim=0), r"output_dim must be >= 1, got 0"),
])
def test_channels_must_be_output_dim_times_group_size_squared(changes, expected):
    with pytest.raises(ValueError, match=expected):
        psroi_pool(**changes)


@pytest.mark.parametrize("trans, expected", [
    (np.zeros((2, 2, 3, 3)), r"trans has shape \(2, 2, 3, 3\), expected \(2, 2, 2, 2\)"),
    (np.zeros((3, 2, 2, 2)), r"trans has shape \(3, 2, 2, 2\), expected \(2, 2, 2, 2\)"),
    (np.zeros((2, 3, 2, 2)), r"trans has 3 channels, expected 2·num_classes"),
    (np.zeros((2, 6, 2, 2)), r"trans has 6 channels, .*num_classes dividing output_dim = 2"),
    (np.zeros((2, 2, 2)), r"trans must have 4 dimensions"),
])
def test_trans_must_match_the_rois_classes_and_part_size(trans, expected):
    with pytest.raises(ValueError, match=expected):
        psroi_pool(trans=trans)


@pytest.mark.parametrize("changes, error, expected", [
    (dict(sample_per_part=0), ValueError, r"sample_per_part must be >= 1, got 0"),
    (dict(pooled_size=0, trans=None), ValueError, r"pooled_size must be >= 1, got 0"),
    (dict(group_size=0), ValueError, r"group_size must be >= 1, got 0"),
    (dict(part_size=-1), ValueError, r"part_size must be >= 1, got -1"),
    (dict(trans_std=np.nan), ValueError, r"trans_std must be a finite number, got nan"),
    (dict(pooled_size=2.0), TypeError, r"pooled_size must be an int, got 2\.0"),
])
def test_psroi_pool_parameters(changes, error, expected):
    with pytest.raises(error, match=expected):
        psroi_pool(**changes)


def test_psroi_pool_grad_output_must_have_the_output_shape():
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 2, 3, 3\), expected \(2, 2, 2, 2\)"):
        deform_psroi_pool_backward(np.zeros((2, 2, 3, 3)), INPUT, ROIS, None, output_dim=2,
                                   group_size=2, pooled_size=2)
