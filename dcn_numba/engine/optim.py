"""Optimizers that update parameters in place from their `.grad`, and learning-rate schedules.

An optimizer's `lr` is a plain attribute: a schedule sets it before each step. A parameter may
carry an `lr_multiplier` attribute (set by `set_lr_multiplier`; 1 when absent): it learns at
lr·lr_multiplier, as a layer's `lr_mult` does in the paper's code (its offset branches).
"""

import math
import numbers


def set_lr_multiplier(parameters, multiplier):
    """Make every Tensor of `parameters` learn at multiplier × the optimizer's learning rate."""
    if not (isinstance(multiplier, numbers.Real) and multiplier >= 0):
        raise ValueError(f"lr multiplier must be a number >= 0, got {multiplier!r}")
    for parameter in parameters:
        parameter.lr_multiplier = float(multiplier)


def lr_multiplier(parameter):
    """The factor on the learning rate of one parameter (1 unless `set_lr_multiplier` set one)."""
    return getattr(parameter, "lr_multiplier", 1.0)


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        self.lr = lr
        self.state = [None] * len(self.params)

    def zero_grad(self):
        for parameter in self.params:
            parameter.grad = None

    def gradients(self, weight_decay):
        """(index, parameter, g) for every parameter with a gradient, g = ∂L/∂p + weight_decay·p
        (L2 regularisation folded into the gradient)."""
        for index, parameter in enumerate(self.params):
            if parameter.grad is not None:
                grad = parameter.grad
                yield index, parameter, grad + weight_decay * parameter.data if weight_decay else grad


class SGD(Optimizer):
    """Stochastic gradient descent with momentum μ: v ← μ·v + g, then p ← p − lr·v, or with
    Nesterov momentum p ← p − lr·(g + μ·v). v starts at 0; lr is times the parameter's multiplier."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if nesterov and momentum <= 0:
            raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def step(self):
        for index, parameter, grad in self.gradients(self.weight_decay):
            if self.momentum:
                velocity = self.state[index]
                velocity = grad.copy() if velocity is None else self.momentum * velocity + grad
                self.state[index] = velocity
                grad = grad + self.momentum * velocity if self.nesterov else velocity
            parameter.data -= self.lr * lr_multiplier(parameter) * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): moving averages m ← β1·m + (1 − β1)·g and v ← β2·v + (1 − β2)·g²,
    bias-corrected after t steps, p ← p − lr · m̂ / (sqrt(v̂) + eps). Adam's step is about lr
    whatever the size of the gradient, so a multiplier is the way to slow a branch down."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.steps = 0

    def step(self):
        self.steps += 1
        beta1, beta2 = self.betas
        for index, parameter, grad in self.gradients(self.weight_decay):
            m, v = self.state[index] or (0.0, 0.0)
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad * grad
            self.state[index] = m, v
            m_hat = m / (1 - beta1 ** self.steps)
            v_hat = v / (1 - beta2 ** self.steps)
            parameter.data -= self.lr * lr_multiplier(parameter) * m_hat / ((v_hat ** 0.5) + self.eps)


class CosineSchedule:
    """lr(t) = final_lr + (base_lr − final_lr)·(1 + cos(π·t/T))/2 over T = total_steps, after a
    linear warm-up from 0 over warmup_steps; base_lr is the optimizer's lr when created.
    Call `step()` once per optimizer step, before it."""

    def __init__(self, optimizer, total_steps, warmup_steps=0, final_lr=0.0):
        if total_steps < 1 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got "
                             f"total_steps={total_steps!r}, warmup_steps={warmup_steps!r}")
        self.optimizer, self.base_lr, self.final_lr = optimizer, optimizer.lr, final_lr
        self.total_steps, self.warmup_steps, self.steps = total_steps, warmup_steps, 0

    def lr_at(self, step):
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 1.0)
        return self.final_lr + (self.base_lr - self.final_lr) * (1 + math.cos(math.pi * progress)) / 2

    def step(self):
        self.optimizer.lr = self.lr_at(self.steps)
        self.steps += 1
        return self.optimizer.lr


class StepSchedule:
    """lr = base_lr · gamma^floor(t / step_size): divide the rate by 1/gamma every step_size steps."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size!r}")
        self.optimizer, self.base_lr, self.step_size, self.gamma = optimizer, optimizer.lr, step_size, gamma
        self.steps = 0

    def lr_at(self, step):
        return self.base_lr * self.gamma ** (step // self.step_size)

    def step(self):
        self.optimizer.lr = self.lr_at(self.steps)
        self.steps += 1
        return self.optimizer.lr
