"""dcn_numba.speed: the engine gives the same numbers with the speed layer's Functions (which the
training commands switch on, and so does tests/conftest.py) and with its own inside
`plain_numpy()`, the switch stays inside the block, and nothing changes until a command switches
the layer on."""

import subprocess
import sys

import numpy as np

from dcn_numba import speed
from dcn_numba.engine import functional as F
from dcn_numba.engine import windows
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.mode import implementation


def conv_norm_pool_step(rng_seed):
    """The Functions that ran, then the output and the input, weight and BatchNorm gradients, of
    conv2d → batch_norm → max_pool2d."""
    rng = np.random.default_rng(rng_seed)
    x = Tensor(rng.standard_normal((3, 2, 7, 6)), requires_grad=True)
    weight = Tensor(rng.standard_normal((4, 2, 3, 3)), requires_grad=True)
    gamma, beta = Tensor(rng.uniform(0.5, 1.5, 4), requires_grad=True), Tensor(rng.standard_normal(4), requires_grad=True)
    convolved = F.conv2d(x, weight, stride=1, padding=1)
    normalised = F.batch_norm(convolved, gamma, beta, np.zeros(4), np.ones(4), training=True)
    out = F.max_pool2d(normalised, 2, padding=1)
    (out * Tensor(rng.standard_normal(out.shape))).sum().backward()
    ran = [type(t.creator) for t in (convolved, normalised, out)]
    return ran, [out.data, x.grad, weight.grad, gamma.grad, beta.grad]


def test_plain_path_gives_the_kernels_numbers():
    speed.switch_on()
    with speed.plain_numpy():
        assert implementation(windows.Conv2d, np) is windows.Conv2d
        plain_ran, plain = conv_norm_pool_step(0)
    assert implementation(windows.Conv2d, np) is speed.windows.Conv2d
    fast_ran, fast = conv_norm_pool_step(0)
    assert plain_ran == [windows.Conv2d, F.BatchNorm, windows.MaxPool2d]
    assert fast_ran == [speed.windows.Conv2d, speed.normalization.BatchNorm, speed.windows.MaxPool2d]
    for name, a, b in zip(["out", "grad x", "grad weight", "grad gamma", "grad beta"], plain, fast):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)


def test_every_faster_implementation_subclasses_the_function_it_replaces():
    for function, faster in speed.IMPLEMENTATIONS:
        assert issubclass(faster, function) and faster is not function, faster


ENGINE_ALONE = """
import numpy as np
from dcn_numba.engine import windows
from dcn_numba.engine.mode import FASTER, implementation
from dcn_numba import speed
print(len(FASTER), implementation(windows.Conv2d, np).__module__)
speed.switch_on()
print(len(FASTER), implementation(windows.Conv2d, np).__module__)
"""


def test_importing_the_engine_and_the_speed_layer_changes_nothing_until_it_is_switched_on():
    run = subprocess.run([sys.executable, "-c", ENGINE_ALONE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "dcn_numba.engine.windows", str(len(speed.IMPLEMENTATIONS)),
                                  "dcn_numba.speed.windows"]
