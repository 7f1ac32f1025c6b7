"""dcn_numba.speed: the engine gives the same numbers with its CPU kernels (the default on NumPy
arrays) and on its plain path inside `plain_numpy()`, and the switch stays inside the block."""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba import speed
from dcn_numba.engine.autograd import Tensor


def conv_norm_pool_step(rng_seed):
    """Output and input, weight and BatchNorm gradients of conv2d → batch_norm → max_pool2d."""
    rng = np.random.default_rng(rng_seed)
    x = Tensor(rng.standard_normal((3, 2, 7, 6)), requires_grad=True)
    weight = Tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
    gamma, beta = Tensor(rng.uniform(0.5, 1.5, 4), requires_grad=True), Tensor(rng.standard_normal(4), requires_grad=True)
    hidden = F.conv2d(x, weight, stride=1, padding=1)
    hidden = F.batch_norm(hidden, gamma, beta, np.zeros(4), np.ones(4), training=True)
    out = F.max_pool2d(hidden, 2, padding=1)
    (out * Tensor(rng.standard_normal(out.shape))).sum().backward()
    return [out.data, x.grad, weight.grad, gamma.grad, beta.grad]


def test_plain_path_gives_the_kernels_numbers():
    assert speed.kernels_apply(np)
    with speed.plain_numpy():
        assert not speed.kernels_apply(np)
        plain = conv_norm_pool_step(0)
    assert speed.kernels_apply(np)
    fast = conv_norm_pool_step(0)
    for name, a, b in zip(["out", "grad x", "grad weight", "grad gamma", "grad beta"], plain, fast):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
