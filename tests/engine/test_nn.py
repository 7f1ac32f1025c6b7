"""Layers, state dicts, optimizers, schedules and sampling locations."""

import math

import numpy as np
import pytest

from dcn_numba import deform_psroi_pool
from dcn_numba import deform_roi_pool
from dcn_numba.engine import functional as F
from dcn_numba.engine import nn
from dcn_numba.engine.autograd import Tensor
from dcn_numba.reference.gradcheck import assert_close
from dcn_numba.ops.locations import regular_grid, sampling_locations, trace_back
from dcn_numba.engine.optim import SGD, Adam, CosineSchedule, StepSchedule

rng = np.random.default_rng(2)


def image(*shape):
    return Tensor(rng.standard_normal(shape).astype(np.float32))


class Small(nn.Module):
    def __init__(self):
        self.body = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0)),
                                  nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5))
        self.heads = [nn.Linear(3, 2, rng=np.random.default_rng(1)),
                      nn.Linear(2, 1, bias=False, rng=np.random.default_rng(2))]

    def forward(self, x):
        x = F.flatten(F.adaptive_avg_pool2d(self.body(x), 1))
        for head in self.heads:
            x = head(x)
        return x


# ---------------------------------------------------------------------------------------------
# Module: parameters, buffers, modes, state dicts
# ---------------------------------------------------------------------------------------------


def test_parameters_and_buffers_are_found_by_name():
    model = Small()
    assert [name for name, _ in model.named_parameters()] == [
        "body.layers.0.weight", "body.layers.0.bias", "body.layers.1.weight", "body.layers.1.bias",
        "heads.0.weight", "heads.0.bias", "heads.1.weight"]
    assert [name for name, _ in model.named_buffers()] == [
        "body.layers.1.running_mean", "body.layers.1.running_var"]
    assert model.num_parameters() == 3 * 2 * 9 + 3 + 3 + 3 + 3 * 2 + 2 + 2


def test_train_and_eval_reach_every_module():
    model = Small().eval()
    assert not any(module.training for module in model.modules())
    x = image(4, 2, 5, 5)
    assert_close(model(x).data, model(x).data)        # dropout and batch statistics are off
    model.train()
    assert all(module.training for module in model.modules())


def test_state_dict_round_trip_through_npz(tmp_path):
    model, other = Small(), Small()
    model(image(4, 2, 5, 5))                          # moves the running statistics
    for parameter in other.parameters():
        parameter.data += 1
    model.save(tmp_path / "model.npz")
    other.load(tmp_path / "model.npz")
    for (name, mine), (_, theirs) in zip(model.state_dict().items(), other.state_dict().items()):
        assert_close(theirs, mine, rtol=0, atol=0, what=name)
    x = image(3, 2, 5, 5)
    assert_close(other.eval()(x).data, model.eval()(x).data, rtol=0, atol=0)


def test_state_dict_holds_copies():
    model = Small()
    state = model.state_dict()
    state["heads.0.bias"][...] = 5
    assert not np.any(model.heads[0].bias.data == 5)


def test_load_state_dict_names_missing_unexpected_and_misshaped_entries():
    model = Small()
    state = model.state_dict()
    del state["heads.1.weight"]
    state["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing keys \['heads.1.weight'\], unexpected keys \['extra'\]"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["heads.0.weight"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"heads.0.weight has shape \(2, 4\), expected \(2, 3\)"):
        model.load_state_dict(state)


def test_to_dtype_converts_parameters_and_buffers():
    model = Small().to(dtype=np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert all(b.dtype == np.float64 for _, b in model.named_buffers())
    assert model(Tensor(np.zeros((2, 2, 4, 4)))).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def test_layers_compute_their_functional_op():
    x = image(2, 4, 6, 6)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, rng=rng)
    assert_close(conv(x).data, F.conv2d(x, conv.weight, conv.bias, 2, 1, 1, 2).data)
    linear = nn.Linear(4, 3, rng=rng)
    flat = image(5, 4)
    assert_close(linear(flat).data, flat.data @ linear.weight.data.T + linear.bias.data, rtol=1e-6)
    assert_close(nn.MaxPool2d(2)(x).data, F.max_pool2d(x, 2).data)
    assert_close(nn.AvgPool2d(3, 1, 1)(x).data, F.avg_pool2d(x, 3, 1, 1).data)
    assert_close(nn.AdaptiveAvgPool2d(2)(x).data, F.adaptive_avg_pool2d(x, 2).data)
    assert nn.Flatten()(x).shape == (2, 144)


def test_dropout_layer_is_seeded_and_off_in_evaluation():
    x = Tensor(np.ones((4, 50), dtype=np.float32))
    first, second = nn.Dropout(0.5, seed=3), nn.Dropout(0.5, seed=3)
    assert_close(first(x).data, second(x).data)
    assert 0.3 < float((first(x).data == 0).mean()) < 0.7
    assert first.eval()(x) is x


def test_layer_shape_errors_name_the_layer_and_the_shapes():
    with pytest.raises(ValueError, match=r"BatchNorm2d: input must be \(B, C, H, W\), got shape \(2, 3\)"):
        nn.BatchNorm2d(3)(image(2, 3))
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(3,\) but input \(2, 4, 2, 2\)"):
        nn.BatchNorm2d(3)(image(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"linear: input \(2, 5\) has 5 features but weight \(3, 4\)"):
        nn.Linear(4, 3)(image(2, 5))
    with pytest.raises(ValueError, match=r"conv2d: input \(1, 2, 5, 5\) and weight \(4, 3, 3, 3\)"):
        nn.Conv2d(3, 4, 3)(image(1, 2, 5, 5))
    with pytest.raises(ValueError, match=r"DeformPSRoIPool: in_channels = 10, expected output_dim·"):
        nn.DeformPSRoIPool(10, output_dim=2, pooled_size=2)


def test_deform_conv2d_starts_as_an_ordinary_convolution():
    layer = nn.DeformConv2d(3, 4, 3, padding=1, rng=np.random.default_rng(5))
    plain = nn.Conv2d(3, 4, 3, padding=1)
    plain.weight.data[...], plain.bias.data[...] = layer.weight.data, 1.5
    layer.bias.data[...] = 1.5
    x = image(2, 3, 5, 5)
    assert_close(layer(x).data, plain(x).data, rtol=1e-5, atol=1e-6)
    assert layer.last_offset.shape == (2, 18, 5, 5) and not layer.last_offset.any()
    assert layer.offset_conv.weight.shape == (18, 3, 3, 3)


def test_modulated_deform_conv2d_starts_at_half_the_convolution():
    layer = nn.DeformConv2d(2, 3, 3, stride=2, offset_groups=2, modulated=True,
                            rng=np.random.default_rng(6))
    x = image(1, 2, 7, 7)
    plain = F.conv2d(x, layer.weight, None, stride=2).data
    assert_close(layer(x).data, 0.5 * plain + layer.bias.data.reshape(1, 3, 1, 1), rtol=1e-5, atol=1e-6)
    assert layer.last_mask.shape == (1, 2 * 9, 3, 3)
    assert_close(layer.last_mask, np.full((1, 18, 3, 3), 0.5))


def test_deform_conv2d_trains_its_offset_branch():
    layer = nn.DeformConv2d(2, 2, 3, padding=1, rng=np.random.default_rng(7))
    layer.offset_conv.bias.data[...] = 0.3       # off the integer grid, where gradients are one-sided
    layer(image(1, 2, 5, 5)).sum().backward()
    assert np.abs(layer.offset_conv.weight.grad).max() > 0


def test_deform_roi_pool_layer_starts_as_roi_align_pooling():
    layer = nn.DeformRoIPool(3, output_size=2, spatial_scale=0.5, sampling_ratio=2,
                             hidden_channels=8, rng=np.random.default_rng(8))
    x = image(2, 3, 8, 8)
    rois = np.array([[0, 1.0, 2.0, 9.0, 12.0], [1, 4.0, 0.0, 15.0, 7.0]], dtype=np.float32)
    out = layer(x, rois)
    expected = deform_roi_pool(x.data, rois, None, 2, 0.5, 2)
    assert_close(out.data, expected, rtol=1e-6)
    assert layer.last_offset.shape == (2, 2, 2, 2) and not layer.last_offset.any()
    out.sum().backward()
    assert np.abs(layer.offset_fc[-1].weight.grad).max() > 0      # the offsets will learn


def test_deform_psroi_pool_layer_starts_as_position_sensitive_pooling():
    layer = nn.DeformPSRoIPool(2 * 3 * 3, output_dim=2, pooled_size=3, spatial_scale=0.5,
                               sample_per_part=2, rng=np.random.default_rng(9))
    x = image(1, 18, 8, 8)
    rois = np.array([[0, 1.0, 2.0, 9.0, 12.0], [0, 4.0, 0.0, 15.0, 7.0]], dtype=np.float32)
    out = layer(x, rois)
    expected = deform_psroi_pool(x.data, rois, None, 0.5, 2, group_size=3, pooled_size=3,
                                 sample_per_part=2)
    assert_close(out.data, expected, rtol=1e-6)
    assert layer.last_trans.shape == (2, 2, 3, 3) and not layer.last_trans.any()


# ---------------------------------------------------------------------------------------------
# Sampling locations
# ---------------------------------------------------------------------------------------------


def test_zero_offsets_give_the_regular_dilated_grid_by_hand():
    # 2×2 kernel, stride 2, padding 1, dilation (1, 3): output (0, 1) samples rows -1, 0 and
    # columns 2·1 − 1 + {0, 3} = 1, 4; tap order k = ki·kw + kj.
    locations = sampling_locations(np.zeros((1, 8, 2, 2)), 2, stride=2, padding=1, dilation=(1, 3))
    assert locations.shape == (1, 1, 4, 2, 2, 2)
    assert_close(locations[0, 0, :, 0, 1], [[-1, 1], [-1, 4], [0, 1], [0, 4]])
    assert_close(locations[0, 0, 3, 1, 0], [2, 2])


def test_offsets_move_each_tap_y_first_per_group():
    offset = np.zeros((2, 2 * 2 * 9, 3, 3))
    offset[1, 2 * 9 + 2 * 4 + 0, 1, 2] = 0.25     # group 1, centre tap, dy
    offset[1, 2 * 9 + 2 * 4 + 1, 1, 2] = -1.5     # group 1, centre tap, dx
    locations = sampling_locations(offset, 3, padding=1)
    assert locations.shape == (2, 2, 9, 3, 3, 2)
    assert_close(locations[1, 1, 4, 1, 2], [1.25, 0.5])
    assert_close(locations[1, 0, 4, 1, 2], [1.0, 2.0])


def test_sampling_locations_rejects_a_bad_offset_shape():
    with pytest.raises(ValueError, match=r"offset has shape \(1, 10, 3, 3\), expected .*18"):
        sampling_locations(np.zeros((1, 10, 3, 3)), 3)


def test_layers_report_their_sampling_locations():
    conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    deform = nn.DeformConv2d(1, 2, 3, stride=2, padding=1)
    x = image(2, 1, 6, 5)
    with pytest.raises(RuntimeError, match="forward pass first"):
        deform.sampling_locations()
    conv(x), deform(x)
    expected = np.broadcast_to(regular_grid(3, (3, 3), 2, 1), (2, 1, 9, 3, 3, 2))
    assert_close(conv.sampling_locations(), expected)
    assert_close(deform.sampling_locations(), expected)


def test_trace_back_through_two_layers_by_hand():
    # Layer 1: 1×2 kernel over a 1×3 map; layer 2: 1×2 kernel over layer 1's 1×2 output.
    first = sampling_locations(np.zeros((1, 4, 1, 2)), (1, 2))          # taps at x = j, j + 1
    second = sampling_locations(np.full((1, 4, 1, 1), 0.3), (1, 2))     # shifted by (0.3, 0.3)
    points = trace_back([first, second], 0, 0, 0)
    # Layer 2 reads (0.3, 0.3) and (0.3, 1.3), rounded to layer-1 positions (0, 0) and (0, 1),
    # which read x = {0, 1} and {1, 2} on row 0.
    assert_close(points, [[0, 0], [0, 1], [0, 1], [0, 2]])


# ---------------------------------------------------------------------------------------------
# Optimizers and schedules
# ---------------------------------------------------------------------------------------------


def parameter(values, grad):
    p = Tensor(np.array(values, dtype=np.float64), requires_grad=True)
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_sgd_with_momentum_and_weight_decay_by_hand():
    p = parameter([1.0, -2.0], [0.5, 0.5])
    optimizer = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    optimizer.step()          # g = grad + 0.01·p = (0.51, 0.48); v = g
    assert_close(p.data, [1.0 - 0.051, -2.0 - 0.048])
    previous = p.data.copy()
    optimizer.step()          # v = 0.9·v + (grad + 0.01·p)
    velocity = 0.9 * np.array([0.51, 0.48]) + np.array([0.5, 0.5]) + 0.01 * previous
    assert_close(p.data, previous - 0.1 * velocity)


def test_sgd_nesterov_by_hand():
    p = parameter([1.0], [2.0])
    optimizer = SGD([p], lr=0.1, momentum=0.5, nesterov=True)
    optimizer.step()          # v = 2, step along g + μ·v = 3
    assert_close(p.data, [0.7])
    optimizer.step()          # v = 0.5·2 + 2 = 3, step along 2 + 1.5
    assert_close(p.data, [0.35])


def test_adam_by_hand():
    p = parameter([1.0], [0.2])
    optimizer = Adam([p], lr=0.01, betas=(0.8, 0.9), eps=0.0)
    optimizer.step()          # bias-corrected m̂ = g, v̂ = g²: a step of exactly lr
    assert_close(p.data, [0.99])
    p.grad = np.array([-0.4])
    optimizer.step()
    m = (0.8 * 0.2 * 0.2 + 0.2 * -0.4) / (1 - 0.8 ** 2)
    v = (0.9 * 0.1 * 0.04 + 0.1 * 0.16) / (1 - 0.9 ** 2)
    assert_close(p.data, [0.99 - 0.01 * m / math.sqrt(v)])


def test_optimizers_skip_parameters_without_gradient_and_zero_grad_clears():
    p, q = parameter([1.0], [1.0]), parameter([1.0], [1.0])
    q.grad = None
    optimizer = SGD([p, q], lr=0.5)
    optimizer.step()
    assert_close(p.data, [0.5])
    assert_close(q.data, [1.0])
    optimizer.zero_grad()
    assert p.grad is None


def test_optimizer_errors():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match=r"nesterov=True needs momentum > 0"):
        SGD([parameter([1.0], [1.0])], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"lr must be >= 0, got -1"):
        Adam([parameter([1.0], [1.0])], lr=-1)


def test_cosine_schedule_with_warmup():
    optimizer = SGD([parameter([1.0], [0.0])], lr=1.0)
    schedule = CosineSchedule(optimizer, total_steps=6, warmup_steps=2, final_lr=0.1)
    rates = [schedule.step() for _ in range(7)]
    cosine = [0.1 + 0.9 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert rates == pytest.approx([0.5, 1.0] + cosine)
    assert optimizer.lr == pytest.approx(0.1)


def test_step_schedule():
    optimizer = SGD([parameter([1.0], [0.0])], lr=0.8)
    schedule = StepSchedule(optimizer, step_size=2, gamma=0.5)
    assert [schedule.step() for _ in range(5)] == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2])
