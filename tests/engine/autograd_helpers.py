"""The check the engine's tests share: gradients of a function of Tensors against finite differences."""

import numpy as np

from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.reference.gradcheck import check_gradients


def check_tensor_function(fn, arrays, mode="elementwise", seed=0, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Run fn(**Tensors) on float64 `arrays` (name → array, each a Tensor requiring a gradient),
    backpropagate a random ∂L/∂out and compare every input's .grad with central finite
    differences of L = Σ ∂L/∂out · fn(...). Returns the output Tensor."""
    arrays = {name: np.asarray(a, dtype=np.float64) for name, a in arrays.items()}
    tensors = {name: Tensor(a.copy(), requires_grad=True) for name, a in arrays.items()}
    out = fn(**tensors)
    grad_output = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(grad_output)

    def evaluate(**values):
        with no_grad():
            return fn(**{name: Tensor(v) for name, v in values.items()}).data

    check_gradients(evaluate, arrays, grad_output, {n: t.grad for n, t in tensors.items()},
                    mode=mode, eps=eps, rtol=rtol, atol=atol, seed=seed)
    return out
