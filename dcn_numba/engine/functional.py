"""The neural-network Functions of the autograd engine, each forward followed by its backward.

Every Function here computes on the arrays of its inputs with their own array module (NumPy or
CuPy), so the same model runs on either. Convolution and pooling, vectorised on sliding windows,
live in `dcn_numba.engine.windows` and are imported here, so that this module offers every Function.

The deformable Functions call the public operators' forward and hand-written backward. They run
on the backend chosen with the `backend(...)` context manager ("reference", "cpu" or "cuda"), or,
by default, on the one the array type implies (CPU kernels for NumPy, CUDA kernels for CuPy).

The optional speed layer (`dcn_numba.speed`) registers faster versions of BatchNorm and of the
deformable Functions for NumPy arrays; what is here is the code a reader steps through.
"""

import math

from dcn_numba.runtime.arrays import array_module
from dcn_numba.ops.checks import BACKENDS
from dcn_numba.engine.autograd import Function, Tensor
from dcn_numba.engine.mode import changed, mode
from dcn_numba.ops.deform_conv import deform_conv2d as deform_conv2d_forward, deform_conv2d_backward
from dcn_numba.ops.deform_psroi_pool import (deform_psroi_pool as deform_psroi_pool_forward,
                                             deform_psroi_pool_backward)
from dcn_numba.ops.deform_roi_pool import deform_roi_pool as deform_roi_pool_forward, deform_roi_pool_backward
from dcn_numba.engine.windows import adaptive_avg_pool2d, avg_pool2d, conv2d, max_pool2d

__all__ = [
    "backend", "relu", "sigmoid", "tanh", "log_softmax", "cross_entropy", "conv2d", "max_pool2d",
    "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "dropout", "flatten", "linear",
    "deform_conv2d", "deform_roi_pool", "deform_psroi_pool",
]

def backend(name):
    """Run the deformable Functions on backend `name` inside this block: "reference", "cpu",
    "cuda", or None to follow the array type. A whole model switches backend this way."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    return changed(backend=name)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------


class ReLU(Function):
    """out = max(x, 0); ∂L/∂x = ∂L/∂out where x > 0, else 0."""

    def forward(self, x):
        self.positive = x > 0
        return self.xp.maximum(x, 0)

    def backward(self, grad_output):
        return (grad_output * self.positive,)


class Sigmoid(Function):
    """out = 1 / (1 + e^−x), computed as (1 + tanh(x/2)) / 2, which never overflows;
    ∂L/∂x = ∂L/∂out · out · (1 − out)."""

    def forward(self, x):
        self.out = 0.5 * (1 + self.xp.tanh(0.5 * x))
        return self.out

    def backward(self, grad_output):
        return (grad_output * self.out * (1 - self.out),)


class Tanh(Function):
    """out = tanh x; ∂L/∂x = ∂L/∂out · (1 − out²)."""

    def forward(self, x):
        self.out = self.xp.tanh(x)
        return self.out

    def backward(self, grad_output):
        return (grad_output * (1 - self.out * self.out),)


def relu(x):
    return ReLU.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def tanh(x):
    return Tanh.apply(x)


# ---------------------------------------------------------------------------------------------
# Log-softmax and cross-entropy
# ---------------------------------------------------------------------------------------------


def log_softmax_array(xp, x, axis):
    """log softmax(x) = x − m − log Σ e^(x − m) along `axis`, with m = max x so that no
    exponential overflows."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    """out = log softmax(x) along `axis`; ∂L/∂x = g − softmax · Σ g, with softmax = e^out."""

    def forward(self, x, axis):
        self.out, self.axis = log_softmax_array(self.xp, x, axis), axis
        return self.out

    def backward(self, grad_output):
        total = grad_output.sum(axis=self.axis, keepdims=True)
        return (grad_output - self.xp.exp(self.out) * total,)


class CrossEntropy(Function):
    """L = −(1/N) Σ_n log softmax(logits_n)[label_n] for logits (N, classes) and integer
    labels (N,); ∂L/∂logits = (softmax − one_hot(labels)) / N, times the incoming gradient."""

    def forward(self, logits, labels):
        if logits.ndim != 2:
            raise ValueError(f"cross_entropy: logits must be (N, classes), got shape {tuple(logits.shape)}")
        if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
            raise ValueError(f"cross_entropy: labels must be integers of shape {logits.shape[:1]} "
                             f"(one per row of logits {tuple(logits.shape)}), got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise ValueError(f"cross_entropy: labels must lie in [0, {logits.shape[1]}) for "
                             f"{logits.shape[1]} classes, got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        self.log_probabilities = log_softmax_array(self.xp, logits, axis=1)
        self.labels, self.rows = labels, self.xp.arange(len(labels))
        return -self.log_probabilities[self.rows, labels].mean()

    def backward(self, grad_output):
        grad = self.xp.exp(self.log_probabilities)
        grad[self.rows, self.labels] -= 1
        return grad * (grad_output / len(self.labels)), None


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, labels):
    """Mean cross-entropy of logits (N, classes) against integer labels (N,): a scalar Tensor."""
    labels = labels if isinstance(labels, Tensor) else Tensor(labels)
    return CrossEntropy.apply(logits, labels)


# ---------------------------------------------------------------------------------------------
# Batch normalisation, dropout, reshaping, linear
# ---------------------------------------------------------------------------------------------


def channel_rows(xp, x):
    """x (B, C, ...) as a matrix (C, N) with one row per channel, the batch last in each row: a
    free view when x is a view of batch-last memory (the window ops return such views), a copy
    otherwise. Per-channel sums are then row sums over contiguous memory."""
    return xp.moveaxis(x, 0, -1).reshape(x.shape[1], -1)


def from_channel_rows(xp, rows, shape):
    """The inverse of `channel_rows`: rows (C, N) back to `shape` (B, C, ...), as a view."""
    return xp.moveaxis(rows.reshape(shape[1:] + shape[:1]), -1, 0)


class BatchNorm(Function):
    """Per channel (axis 1), over the N values of the other axes: x̂ = (x − μ) / sqrt(σ² + eps),
    out = weight·x̂ + bias.

    Training uses the batch's μ and (biased) σ², and moves the running estimates toward them:
    running ← (1 − momentum)·running + momentum·batch, with the unbiased variance. Evaluation uses
    the running estimates. Backward: ∂L/∂weight = Σ g·x̂ and ∂L/∂bias = Σ g (sums over the N values);
    ∂L/∂x = weight/sqrt(σ² + eps) · g in evaluation, and in training, where μ and σ² depend on x,
    ∂L/∂x = weight/sqrt(σ² + eps) · (g − mean g − x̂ · mean(g·x̂)).

    Each channel is a row (`channel_rows`). Only μ and 1/sqrt(σ² + eps) are kept for the
    backward pass, which works from the input again: one full-size array less to hold between
    the passes. The passes over the rows are the methods after `backward` (the speed layer fuses
    them into CPU kernels).
    """

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        C = x.shape[1] if x.ndim >= 2 else None
        for name, array in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                            ("running_var", running_var)):
            if x.ndim < 2 or array.shape != (C,):
                raise ValueError(f"batch_norm: {name} has shape {tuple(array.shape)} but input "
                                 f"{tuple(x.shape)} needs one value per channel of axis 1")
        xp, rows = self.xp, channel_rows(self.xp, x)
        if training:
            self.mean, var = self.moments(rows)
            count = rows.shape[1]
            running_mean *= 1 - momentum
            running_mean += momentum * self.mean
            running_var *= 1 - momentum
            running_var += momentum * var * count / max(count - 1, 1)
        else:
            self.mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
        self.inverse_std = 1 / xp.sqrt(var + eps)
        self.training, self.scale = training, weight * self.inverse_std
        return from_channel_rows(xp, self.normalized(rows, bias), x.shape)

    def backward(self, grad_output):
        xp, x = self.xp, self.inputs[0].data
        g, rows = channel_rows(xp, grad_output), channel_rows(xp, x)
        grad_bias, grad_centred, centred = self.gradient_sums(g, rows)
        grad_weight = grad_centred * self.inverse_std  # Σ g·x̂
        if not self.training:
            return grad_output * self.scale.reshape((-1,) + (1,) * (x.ndim - 2)), grad_weight, grad_bias
        # scale·(g − mean g − x̂·mean(g·x̂)) with x̂ = (x − μ)·inverse_std is
        # scale·g + slope·(x − μ) + offset, with these per-channel constants:
        count = g.shape[1]
        slope = -self.scale * self.inverse_std * grad_weight / count
        offset = -self.scale * grad_bias / count
        return (from_channel_rows(xp, self.input_gradient(g, rows, centred, slope, offset), x.shape), grad_weight,
                grad_bias)

    def moments(self, rows):
        """(mean, biased variance) of each row of rows (C, N), the variance from centred values."""
        mean = rows.mean(axis=1)
        centred = rows - mean[:, None]
        return mean, self.xp.einsum("cn,cn->c", centred, centred) / rows.shape[1]

    def normalized(self, rows, bias):
        """(rows − μ) · scale + bias, per channel row."""
        out = rows - self.mean[:, None]
        out *= self.scale[:, None]
        out += bias[:, None]
        return out

    def gradient_sums(self, g, rows):
        """(Σ_n g, Σ_n g · (x − μ), x − μ) per channel row: the two sums of the backward pass, and
        the centred rows, which `input_gradient` reuses."""
        centred = rows - self.mean[:, None]
        return g.sum(axis=1), self.xp.einsum("cn,cn->c", g, centred), centred

    def input_gradient(self, g, rows, centred, slope, offset):
        """∂L/∂x in training, scale · g + slope · (x − μ) + offset per channel row, written over
        `centred`."""
        grad_input = centred
        grad_input *= slope[:, None]
        grad_input += g * self.scale[:, None]
        grad_input += offset[:, None]
        return grad_input


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalisation of x (B, C, ...) with per-channel weight and bias Tensors (C,);
    running_mean and running_var are arrays (C,), updated in place when training."""
    return BatchNorm.apply(x, weight, bias, running_mean=running_mean, running_var=running_var,
                           training=training, momentum=momentum, eps=eps)


def dropout(x, p, training=True, rng=None):
    """Inverted dropout: each element is kept with probability 1 − p and scaled by 1/(1 − p),
    so that evaluation (the identity) sees the same expected value. A product with a constant
    random mask, so its gradient is the same mask."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p!r}")
    if not training or p == 0:
        return x
    rng = rng or array_module(x.data).random.default_rng()
    keep = (rng.random(x.shape) >= p).astype(x.dtype) / (1 - p)
    return x * Tensor(keep)


def flatten(x):
    """(B, ...) → (B, product of the other sizes)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit: -1 is ambiguous for B = 0


def linear(x, weight, bias=None):
    """x (..., in) @ weightᵀ (in, out) + bias (out,): weight is stored (out, in)."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear: input {tuple(x.shape)} has {x.shape[-1]} features but weight "
                         f"{tuple(weight.shape)} expects {weight.shape[-1]} (weight is (out, in))")
    out = x @ weight.T
    return out if bias is None else out + bias


# ---------------------------------------------------------------------------------------------
# Deformable operators: the public forward and hand-written backward
# ---------------------------------------------------------------------------------------------


class DeformConv2d(Function):
    """Deformable convolution (docs/specification.md §1): `deform_conv2d` forward, `deform_conv2d_backward`
    for the gradients of input, offset, weight, bias and mask."""

    def forward(self, x, offset, weight, bias, mask, stride, padding, dilation):
        self.params = dict(stride=stride, padding=padding, dilation=dilation, backend=mode().backend)
        return deform_conv2d_forward(x, offset, weight, bias, mask=mask, **self.params)

    def backward(self, grad_output):
        x, offset, weight, bias, mask = (t if t is None else t.data for t in self.inputs)
        return deform_conv2d_backward(grad_output, x, offset, weight, bias, mask=mask, **self.params)


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution of x (B, C_in, H, W) with offset (B, 2·G_off·kh·kw, H_out, W_out),
    channel g·2K + 2k + d with d = 0 for y; mask (B, G_off·kh·kw, H_out, W_out) for v2."""
    return DeformConv2d.apply(x, offset, weight, bias, mask, stride=stride, padding=padding,
                              dilation=dilation)


class RoIPooling(Function):
    """A deformable RoI pooling op as a Function: its public forward (`operator`) on x and the
    bins' offsets over the RoIs, its hand-written backward (`operator_backward`); the RoIs get no
    gradient."""

    def forward(self, x, offset, rois, **params):
        self.rois, self.params = rois, dict(params, backend=mode().backend)
        return self.operator(x, rois, offset, **self.params)

    def backward(self, grad_output):
        x, offset = (t if t is None else t.data for t in self.inputs)
        return self.operator_backward(grad_output, x, self.rois, offset, **self.params)


class DeformRoIPool(RoIPooling):
    """Deformable RoI pooling (docs/specification.md §2.1)."""

    operator = staticmethod(deform_roi_pool_forward)
    operator_backward = staticmethod(deform_roi_pool_backward)


def deform_roi_pool(x, rois, offset=None, output_size=7, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1):
    """Deformable RoI pooling of x (B, C, H, W) over rois (N, 5) rows (batch_index, x1, y1, x2,
    y2); offset (N, 2, PH, PW) is stored x first. Returns (N, C, PH, PW)."""
    rois = rois.data if isinstance(rois, Tensor) else rois
    return DeformRoIPool.apply(x, offset, rois=rois, output_size=output_size,
                               spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, gamma=gamma)


class DeformPSRoIPool(RoIPooling):
    """Position-sensitive deformable RoI pooling (docs/specification.md §2.2); trans are its offsets."""

    operator = staticmethod(deform_psroi_pool_forward)
    operator_backward = staticmethod(deform_psroi_pool_backward)


def deform_psroi_pool(x, rois, trans=None, spatial_scale=1.0, output_dim=None, group_size=1,
                      pooled_size=7, part_size=None, sample_per_part=4, trans_std=0.1):
    """Position-sensitive deformable RoI pooling of x (B, output_dim·group_size², H, W) over rois
    (N, 5); trans (N, 2·num_classes, part_size, part_size) is stored x first. Returns
    (N, output_dim, pooled_size, pooled_size)."""
    rois = rois.data if isinstance(rois, Tensor) else rois
    return DeformPSRoIPool.apply(
        x, trans, rois=rois, spatial_scale=spatial_scale, output_dim=output_dim,
        group_size=group_size, pooled_size=pooled_size, part_size=part_size,
        sample_per_part=sample_per_part, trans_std=trans_std)
