"""Per-parameter learning-rate multipliers: they scale exactly the update of the parameters that
carry one, in both optimisers, and the layers' offset branches carry theirs."""

import numpy as np
import pytest

from dcn_numba.engine import nn
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.optim import SGD, Adam, lr_multiplier, set_lr_multiplier

OPTIMIZERS = {
    "sgd": lambda params: SGD(params, lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda params: SGD(params, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda params: Adam(params, lr=0.05),
}
# With weight decay the gradient depends on the parameter, so only a first step scales exactly.
DECAYING = {
    "sgd": lambda params: SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda params: Adam(params, lr=0.05, weight_decay=0.01),
}


def parameters(rng):
    return [Tensor(rng.standard_normal(shape), requires_grad=True) for shape in ((3, 4), (5,), (2, 2))]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_multiplier_scales_exactly_the_update_of_its_parameter(name):
    """Same start, same gradients for three steps: the multiplied parameter moves by 0.25 × what
    it moves without a multiplier (the optimiser's state does not depend on the rate), the others
    exactly as without."""
    plain, scaled = parameters(np.random.default_rng(0)), parameters(np.random.default_rng(0))
    set_lr_multiplier([scaled[1]], 0.25)
    start = [p.data.copy() for p in plain]
    optimizers = OPTIMIZERS[name](plain), OPTIMIZERS[name](scaled)
    gradients = np.random.default_rng(1)
    for _ in range(3):
        for a, b in zip(plain, scaled):
            a.grad = gradients.standard_normal(a.shape)
            b.grad = a.grad.copy()
        for optimizer in optimizers:
            optimizer.step()
    np.testing.assert_array_equal(scaled[0].data, plain[0].data)
    np.testing.assert_array_equal(scaled[2].data, plain[2].data)
    np.testing.assert_allclose(scaled[1].data - start[1], 0.25 * (plain[1].data - start[1]), rtol=1e-10)
    assert not np.allclose(scaled[1].data, plain[1].data)


@pytest.mark.parametrize("name", list(DECAYING))
def test_first_step_with_weight_decay_is_scaled_exactly(name):
    plain, scaled = parameters(np.random.default_rng(2)), parameters(np.random.default_rng(2))
    set_lr_multiplier(scaled[:2], 0.1)
    start = [p.data.copy() for p in plain]
    for a, b in zip(plain, scaled):
        a.grad = np.random.default_rng(3).standard_normal(a.shape)
        b.grad = a.grad.copy()
    DECAYING[name](plain).step()
    DECAYING[name](scaled).step()
    for index in (0, 1):
        np.testing.assert_allclose(scaled[index].data - start[index], 0.1 * (plain[index].data - start[index]),
                                   rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(scaled[2].data, plain[2].data)


def test_adam_with_zero_multiplier_freezes_the_parameter():
    (a,) = parameters(np.random.default_rng(4))[:1]
    before = a.data.copy()
    set_lr_multiplier([a], 0)
    optimizer = Adam([a], lr=1.0)
    a.grad = np.ones(a.shape)
    optimizer.step()
    np.testing.assert_array_equal(a.data, before)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), "0.1", None])
def test_bad_multipliers_are_named(bad):
    with pytest.raises(ValueError, match=r"lr multiplier must be a number >= 0, got"):
        set_lr_multiplier(parameters(np.random.default_rng(0)), bad)


def multipliers(module):
    return {name: lr_multiplier(p) for name, p in module.named_parameters()}


def test_offset_branches_carry_their_multiplier_and_nothing_else_does():
    conv = nn.DeformConv2d(2, 3, 3, padding=1, modulated=True, offset_lr_multiplier=0.5)
    assert multipliers(conv) == {"weight": 1.0, "bias": 1.0, "offset_conv.weight": 0.5, "offset_conv.bias": 0.5,
                                 "mask_conv.weight": 0.5, "mask_conv.bias": 0.5}
    roi = nn.DeformRoIPool(2, 2, hidden_channels=4, offset_lr_multiplier=0.01)
    assert set(multipliers(roi).values()) == {0.01} and len(multipliers(roi)) == 6
    ps = nn.DeformPSRoIPool(8, 2, pooled_size=2, offset_lr_multiplier=0.1)
    assert multipliers(ps) == {"trans_conv.weight": 0.1, "trans_conv.bias": 0.1}
    # by default the branches learn at the optimizer's rate
    assert set(multipliers(nn.DeformConv2d(2, 3, 3)).values()) == {1.0}
