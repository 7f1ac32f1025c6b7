"""The battery of cases the cross-check runs: hand-computed values, samples exactly on −1 and H,
samples inside the edge pixels, offset and weight groups, stride, padding and dilation, masks,
non-contiguous inputs, RoIs partly outside the image, degenerate RoIs."""

import dataclasses

import numpy as np

from dcn_numba.ops.deform_conv import output_size


@dataclasses.dataclass
class Case:
    """One call of an op: its tensors (float64 NumPy arrays), its other arguments, and, for the
    hand-computed cases, the forward output worked out by hand."""

    name: str
    op: str
    arrays: dict
    parameters: dict
    hand: np.ndarray = None


def _conv_case(name, rng, input_shape, weight_shape, *, stride=1, padding=0, dilation=1,
               offset_groups=1, offsets=(-2.0, 2.0), integer_offsets=False, mask=False,
               bias=True):
    """A deformable convolution case with random input and weight, and offsets drawn uniformly
    from `offsets` (whole numbers when `integer_offsets`)."""
    B, C_in, H, W = input_shape
    C_out, _, kh, kw = weight_shape
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    H_out = output_size(H, kh, sh, ph, dh)
    W_out = output_size(W, kw, sw, pw, dw)
    K = kh * kw
    low, high = offsets
    offset_shape = (B, 2 * offset_groups * K, H_out, W_out)
    offset = (rng.integers(low, high + 1, offset_shape).astype(np.float64) if integer_offsets
              else rng.uniform(low, high, offset_shape))
    arrays = dict(input=rng.standard_normal(input_shape), offset=offset,
                  weight=rng.standard_normal(weight_shape),
                  bias=rng.standard_normal(C_out) if bias else None,
                  mask=rng.uniform(0, 1, (B, offset_groups * K, H_out, W_out)) if mask else None)
    return Case(name, "deform_conv2d", arrays, dict(stride=stride, padding=padding, dilation=dilation))


def _hand_cases():
    """Two 1×1 deformable convolutions on x = [[0, 1, 2], [3, 4, 5], [6, 7, 8]] whose outputs are
    worked out by hand. Offset (0.5, 0.5): each output is the mean of a 2×2 block, the pixels
    beyond the last row and column reading 0. Offset (−0.5, 0) with mask 0.5: half the mean of a
    pixel and the one above it, row −1 reading 0."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    weight = np.ones((1, 1, 1, 1))
    half = np.full((1, 2, 3, 3), 0.5)
    up = np.concatenate([np.full((1, 1, 3, 3), -0.5), np.zeros((1, 1, 3, 3))], axis=1)
    unit = dict(stride=1, padding=0, dilation=1)
    return [
        Case("hand: 2x2 means, zero beyond the edge", "deform_conv2d",
             dict(input=x, offset=half, weight=weight, bias=None, mask=None), unit,
             hand=np.array([[[[2.0, 3.0, 1.75], [5.0, 6.0, 3.25], [3.25, 3.75, 2.0]]]])),
        Case("hand: half-pixel up, mask 0.5", "deform_conv2d",
             dict(input=x, offset=up, weight=weight, bias=None, mask=np.full((1, 1, 3, 3), 0.5)),
             unit, hand=np.array([[[[0.0, 0.25, 0.5], [0.75, 1.25, 1.75], [2.25, 2.75, 3.25]]]])),
    ]


def _rois(rng, count, batch_size, width, height, *, outside=0.0, degenerate=False):
    """(count, 5) RoIs (batch_index, x1, y1, x2, y2) of images `width`×`height`; corners may lie
    up to `outside` pixels beyond the image; degenerate ones have x2 < x1 or zero height."""
    x = np.sort(rng.uniform(-outside, width - 1 + outside, (count, 2)), axis=1)
    y = np.sort(rng.uniform(-outside, height - 1 + outside, (count, 2)), axis=1)
    if degenerate:
        x = x[:, ::-1]
        y[:, 1] = y[:, 0]
    batch_index = rng.integers(0, batch_size, count).astype(np.float64)
    return np.stack([batch_index, x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def battery():
    """The cases, the same on every run (fixed seeds): hand-computed values, samples exactly on
    −1 and H, samples in (−1, 0) and (H − 1, H), offset and weight groups, stride, padding and
    dilation, masks, non-contiguous inputs, RoIs partly outside the image, degenerate RoIs."""
    rng = np.random.default_rng(2017)
    cases = _hand_cases()
    cases.append(_conv_case("samples exactly on -1 and H", rng, (1, 2, 4, 4), (2, 2, 3, 3),
                            padding=1, offsets=(-1, 1), integer_offsets=True, mask=True))
    cases.append(_conv_case("samples in (-1, 0) and (H-1, H)", rng, (1, 2, 4, 5), (2, 2, 3, 3),
                            padding=1, offsets=(-0.9, 0.9)))
    cases.append(_conv_case("offset groups 2, weight groups 2", rng, (2, 4, 5, 5), (4, 2, 3, 3),
                            padding=1, offset_groups=2, mask=True))
    cases.append(_conv_case("stride (2, 1), padding (1, 2), dilation (2, 1)", rng, (1, 2, 7, 6),
                            (3, 2, 3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                            bias=False))
    cases.append(_conv_case("modulated, offsets up to 3 pixels", rng, (2, 3, 5, 4), (2, 3, 2, 3),
                            offsets=(-3, 3), mask=True))
    strided = _conv_case("non-contiguous inputs", rng, (1, 2, 5, 6), (2, 2, 3, 3), padding=1,
                         mask=True)
    strided.arrays = {name: None if a is None else np.asfortranarray(a)  # C-contiguous: no
                      for name, a in strided.arrays.items()}
    strided.arrays["input"] = np.swapaxes(strided.arrays["input"].swapaxes(2, 3).copy(), 2, 3)
    cases.append(strided)

    input = rng.standard_normal((2, 3, 6, 7))
    roi = dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=2, gamma=0.1)
    rois = _rois(rng, 4, 2, 7, 6, outside=2.0)
    cases.append(Case("RoIAlign: no offset, RoIs partly outside", "deform_roi_pool",
                      dict(input=input, rois=rois, offset=None), roi))
    cases.append(Case("deformable bins, RoIs partly outside", "deform_roi_pool",
                      dict(input=input, rois=rois, offset=rng.uniform(-1, 1, (4, 2, 2, 3))), roi))
    cases.append(Case("deformable bins, adaptive sampling, scale 0.5", "deform_roi_pool",
                      dict(input=input, rois=_rois(rng, 3, 2, 14, 12),
                           offset=rng.uniform(-1, 1, (3, 2, 2, 2))),
                      dict(output_size=2, spatial_scale=0.5, sampling_ratio=0, gamma=0.2)))
    cases.append(Case("degenerate RoIs", "deform_roi_pool",
                      dict(input=input, rois=_rois(rng, 3, 2, 7, 6, degenerate=True),
                           offset=rng.uniform(-1, 1, (3, 2, 2, 3))), roi))

    scores = rng.standard_normal((2, 8, 6, 7))
    ps = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2, part_size=2,
              sample_per_part=2, trans_std=0.1)
    cases.append(Case("position-sensitive, no trans", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 3, 2, 7, 6), trans=None), ps))
    cases.append(Case("position-sensitive parts, RoIs partly outside", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 4, 2, 7, 6, outside=2.0),
                           trans=rng.uniform(-1, 1, (4, 4, 2, 2))), ps))
    cases.append(Case("deformable parts, one class, degenerate RoIs", "deform_psroi_pool",
                      dict(input=rng.standard_normal((2, 9, 6, 7)),
                           rois=_rois(rng, 3, 2, 7, 6, degenerate=True),
                           trans=rng.uniform(-1, 1, (3, 2, 3, 3))),
                      dict(ps, group_size=3, output_dim=1, pooled_size=3, part_size=3)))
    cases.append(Case("deformable RoI pooling, original conventions", "deform_psroi_pool",
                      dict(input=scores, rois=_rois(rng, 3, 2, 7, 6, outside=1.0),
                           trans=rng.uniform(-1, 1, (3, 2, 3, 3))),
                      dict(ps, group_size=1, output_dim=8, pooled_size=3, part_size=3,
                           sample_per_part=3)))
    return cases
