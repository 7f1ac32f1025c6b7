"""The neural-network Functions of the autograd engine, each forward followed by its backward.

Every Function here computes on the arrays of its inputs with their own array module (NumPy or
CuPy), so the same model runs on either. Convolution and pooling are vectorised with sliding
windows: a strided view (B, C, kh, kw, H_out, W_out) of the padded input that costs no copy
(`SlidingWindows.unfold`), and its adjoint, which adds every window's gradient back where the
window read it (`SlidingWindows.fold`).

The deformable Functions call the public operators' forward and hand-written backward. They run
on the backend chosen with the `backend(...)` context manager ("reference", "cpu" or "cuda"), or,
by default, on the one the array type implies (CPU kernels for NumPy, CUDA kernels for CuPy).
"""

import contextlib

import numpy as np

from ._arrays import array_module
from ._checks import BACKENDS, as_pair
from .autograd import Function, Tensor
from .deform_conv import deform_conv2d as deform_conv2d_forward, deform_conv2d_backward
from .deform_psroi_pool import deform_psroi_pool as deform_psroi_pool_forward, deform_psroi_pool_backward
from .deform_roi_pool import deform_roi_pool as deform_roi_pool_forward, deform_roi_pool_backward

_BACKEND = None


@contextlib.contextmanager
def backend(name):
    """Run the deformable Functions on backend `name` inside this block: "reference", "cpu",
    "cuda", or None to follow the array type. A whole model switches backend this way."""
    global _BACKEND
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    previous, _BACKEND = _BACKEND, name
    try:
        yield
    finally:
        _BACKEND = previous


def require_ndim(op, name, array, layout):
    """`array` has as many axes as `layout` names, e.g. '(B, C, H, W)'."""
    if array.ndim != len(layout.split(",")):
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(array.shape)}")


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
    labels (N,); ∂L/∂logits = (softmax − one_hot(labels)) / N · ∂L/∂L."""

    def forward(self, logits, labels):
        require_ndim("cross_entropy", "logits", logits, "(N, classes)")
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
# Convolution and pooling on sliding windows
# ---------------------------------------------------------------------------------------------


class SlidingWindows:
    """Where the kernel windows of a convolution or a pooling lie on a (B, C, H, W) input.

    Window (i, j), tap (ki, kj) reads the padded input at row i·stride_h + ki·dilation_h and
    column j·stride_w + kj·dilation_w, for H_out = floor((H + 2·pad_h − dil_h·(kh − 1) − 1) /
    stride_h) + 1 rows of windows (same for W).

    The windows are laid out (C, kh, kw, H_out, W_out, B), batch last: a tap of every window is
    then a slice whose contiguous runs hold a whole row of windows for the whole batch, which keeps
    the copies and the strided adds below fast. Results go back as (B, C, H, W) views of that
    memory, so that consecutive layers hand each other batch-last arrays without copying.
    """

    def __init__(self, op, input_shape, kernel_size, stride, padding, dilation):
        self.kernel_size = as_pair(kernel_size, f"{op}: kernel_size", 1)
        self.stride = as_pair(stride, f"{op}: stride", 1)
        self.padding = as_pair(padding, f"{op}: padding", 0)
        self.dilation = as_pair(dilation, f"{op}: dilation", 1)
        self.input_shape = tuple(input_shape)
        self.output_size = tuple(
            (size + 2 * pad - dil * (k - 1) - 1) // s + 1 for size, k, s, pad, dil in zip(
                input_shape[2:], self.kernel_size, self.stride, self.padding, self.dilation))
        if min(self.output_size) < 1:
            raise ValueError(f"{op}: input of spatial size {tuple(input_shape[2:])} with padding "
                             f"{self.padding} is smaller than the kernel's reach "
                             f"(kernel_size {self.kernel_size}, dilation {self.dilation})")

    def padded_shape(self):
        B, C, H, W = self.input_shape
        return C, H + 2 * self.padding[0], W + 2 * self.padding[1], B

    def unfold(self, xp, x, fill=0.0):
        """View (C, kh, kw, H_out, W_out, B) of every window of x (B, C, H, W) padded with `fill`."""
        (pad_h, pad_w), (B, C, H, W) = self.padding, x.shape
        padded = xp.full(self.padded_shape(), fill, dtype=x.dtype)
        padded[:, pad_h:pad_h + H, pad_w:pad_w + W] = x.transpose(1, 2, 3, 0)
        step_c, step_h, step_w, step_b = padded.strides
        (dil_h, dil_w), (stride_h, stride_w) = self.dilation, self.stride
        return xp.lib.stride_tricks.as_strided(
            padded, shape=(C, *self.kernel_size, *self.output_size, B),
            strides=(step_c, step_h * dil_h, step_w * dil_w, step_h * stride_h, step_w * stride_w,
                     step_b))

    def fold(self, xp, grad_windows):
        """The adjoint of `unfold` (col2im): ∂L/∂x (B, C, H, W) from ∂L/∂windows
        (C, kh, kw, H_out, W_out, B).

        Tap (ki, kj) of all windows is one strided slice of the padded image, so the loop adds
        kh·kw vectorised slices, and overlapping windows accumulate as they should.
        """
        B, C, H, W = self.input_shape
        (pad_h, pad_w), (H_out, W_out) = self.padding, self.output_size
        (dil_h, dil_w), (stride_h, stride_w) = self.dilation, self.stride
        grad = xp.zeros(self.padded_shape(), dtype=grad_windows.dtype)
        for ki in range(self.kernel_size[0]):
            for kj in range(self.kernel_size[1]):
                rows = slice(ki * dil_h, ki * dil_h + stride_h * (H_out - 1) + 1, stride_h)
                columns = slice(kj * dil_w, kj * dil_w + stride_w * (W_out - 1) + 1, stride_w)
                grad[:, rows, columns] += grad_windows[:, ki, kj]
        return grad[:, pad_h:pad_h + H, pad_w:pad_w + W].transpose(3, 0, 1, 2)


def batch_last(xp, array):
    """(B, C, ...) → a contiguous (C, ..., B) copy, or a free view when the memory already has
    that order (the outputs of this module do)."""
    return xp.ascontiguousarray(xp.moveaxis(array, 0, -1))


class Conv2d(Function):
    """out[b, co, i, j] = bias[co] + Σ_{c ∈ group of co, ki, kj} weight[co, c, ki, kj] · window
    (i, j) of x at channel c, tap (ki, kj); G = groups splits the channels into G independent
    convolutions.

    im2col: the windows are copied into columns (G, C/G·kh·kw, H_out·W_out·B), and each group is
    one GEMM, out = weight (G, C_out/G, C/G·kh·kw) @ columns. Backward with g = ∂L/∂out as rows
    (G, C_out/G, H_out·W_out·B): ∂L/∂weight = g @ columnsᵀ, ∂L/∂columns = weightᵀ @ g folded back
    onto the input (col2im), ∂L/∂bias = Σ_{b,i,j} g.
    """

    def forward(self, x, weight, bias, stride, padding, dilation, groups):
        require_ndim("conv2d", "input", x, "(B, C_in, H, W)")
        require_ndim("conv2d", "weight", weight, "(C_out, C_in/groups, kh, kw)")
        C_out, C_group = weight.shape[:2]
        if x.shape[1] != C_group * groups or C_out % groups:
            raise ValueError(f"conv2d: input {tuple(x.shape)} and weight {tuple(weight.shape)} do "
                             f"not match for groups={groups}: expected C_in = weight.shape[1]·groups"
                             f" = {C_group * groups} and C_out divisible by groups")
        if bias is not None and bias.shape != (C_out,):
            raise ValueError(f"conv2d: bias has shape {tuple(bias.shape)}, expected ({C_out},)")
        self.windows = SlidingWindows("conv2d", x.shape, weight.shape[2:], stride, padding, dilation)
        columns = self.xp.ascontiguousarray(self.windows.unfold(self.xp, x))
        self.columns = columns.reshape(groups, C_group * weight.shape[2] * weight.shape[3], -1)
        self.weight = weight.reshape(groups, C_out // groups, -1)
        out = (self.weight @ self.columns).reshape(C_out, *self.windows.output_size, x.shape[0])
        if bias is not None:
            out += bias.reshape(C_out, 1, 1, 1)
        return out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        x, weight, bias = self.inputs
        groups = self.weight.shape[0]
        rows = batch_last(self.xp, grad_output).reshape(groups, self.weight.shape[1], -1)
        grad_weight = (rows @ self.columns.transpose(0, 2, 1)).reshape(weight.shape)
        grad_bias = None if bias is None else rows.sum(axis=2).reshape(-1)
        grad_input = None
        if x.requires_grad:
            grad_columns = self.weight.transpose(0, 2, 1) @ rows
            grad_input = self.windows.fold(self.xp, grad_columns.reshape(
                x.shape[1], *self.windows.kernel_size, *self.windows.output_size, x.shape[0]))
        return grad_input, grad_weight, grad_bias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of x (B, C_in, H, W) with weight (C_out, C_in/groups, kh, kw) and an
    optional bias (C_out,): (B, C_out, H_out, W_out)."""
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


class MaxPool2d(Function):
    """out[b, c, i, j] = max of window (i, j) (padding reads −∞); ∂L/∂out goes to the window's
    first maximal element, the argmax kept by the forward pass."""

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("max_pool2d", "input", x, "(B, C, H, W)")
        self.windows = SlidingWindows("max_pool2d", x.shape, kernel_size, stride, padding, 1)
        windows = self.windows.unfold(self.xp, x, fill=-np.inf)
        kh, kw = self.windows.kernel_size
        # A running maximum over the kh·kw taps: each pass compares whole output-sized arrays.
        out = windows[:, 0, 0].copy()
        self.argmax = self.xp.zeros(out.shape, dtype=np.int32)
        for tap in range(1, kh * kw):
            candidate = windows[:, tap // kw, tap % kw]
            larger = candidate > out
            out = self.xp.where(larger, candidate, out)
            self.argmax = self.xp.where(larger, tap, self.argmax)
        return out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        kh, kw = self.windows.kernel_size
        taps = self.xp.arange(kh * kw, dtype=np.int32).reshape(kh, kw, 1, 1, 1)
        chosen = self.argmax[:, None, None] == taps
        grad_windows = chosen * batch_last(self.xp, grad_output)[:, None, None]
        return (self.windows.fold(self.xp, grad_windows),)


class AvgPool2d(Function):
    """out[b, c, i, j] = mean of the kh·kw taps of window (i, j), padding counted as zeros;
    each tap receives ∂L/∂out / (kh·kw)."""

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("avg_pool2d", "input", x, "(B, C, H, W)")
        self.windows = SlidingWindows("avg_pool2d", x.shape, kernel_size, stride, padding, 1)
        return self.windows.unfold(self.xp, x).mean(axis=(1, 2)).transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        kh, kw = self.windows.kernel_size
        share = batch_last(self.xp, grad_output)[:, None, None] / (kh * kw)
        windows_shape = (share.shape[0], kh, kw) + share.shape[3:]
        return (self.windows.fold(self.xp, self.xp.broadcast_to(share, windows_shape)),)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=kernel_size if stride is None else stride,
                           padding=padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=kernel_size if stride is None else stride,
                           padding=padding)


def adaptive_pooling_matrix(xp, size, output_size, dtype):
    """A (output_size, size) matrix whose row o averages the cells
    [floor(o·size/output_size), ceil((o + 1)·size/output_size)): adaptive pooling along one axis."""
    o = xp.arange(output_size)[:, None]
    cells = xp.arange(size)[None, :]
    inside = (cells >= o * size // output_size) & (cells < -(-(o + 1) * size // output_size))
    return (inside / inside.sum(axis=1, keepdims=True)).astype(dtype)


class AdaptiveAvgPool2d(Function):
    """Average pooling to a fixed output size: out = A_h @ x @ A_wᵀ with the pooling matrices
    A_h (H_out, H) and A_w (W_out, W); ∂L/∂x = A_hᵀ @ g @ A_w."""

    def forward(self, x, output_size):
        require_ndim("adaptive_avg_pool2d", "input", x, "(B, C, H, W)")
        out_h, out_w = as_pair(output_size, "adaptive_avg_pool2d: output_size", 1)
        self.rows = adaptive_pooling_matrix(self.xp, x.shape[2], out_h, x.dtype)
        self.columns = adaptive_pooling_matrix(self.xp, x.shape[3], out_w, x.dtype)
        return self.rows @ x @ self.columns.T

    def backward(self, grad_output):
        return (self.rows.T @ grad_output @ self.columns,)


def adaptive_avg_pool2d(x, output_size):
    return AdaptiveAvgPool2d.apply(x, output_size=output_size)


# ---------------------------------------------------------------------------------------------
# Batch normalisation, dropout, reshaping, linear
# ---------------------------------------------------------------------------------------------


class BatchNorm(Function):
    """Per channel (axis 1), over the N values of the other axes: x̂ = (x − μ) / sqrt(σ² + eps),
    out = weight·x̂ + bias.

    Training uses the batch's μ and (biased) σ², and moves the running estimates toward them:
    running ← (1 − momentum)·running + momentum·batch, with the unbiased variance. Evaluation uses
    the running estimates. Backward: ∂L/∂weight = Σ g·x̂ and ∂L/∂bias = Σ g (sums over the N values);
    ∂L/∂x = weight/sqrt(σ² + eps) · g in evaluation, and in training, where μ and σ² depend on x,
    ∂L/∂x = weight/sqrt(σ² + eps) · (g − mean g − x̂ · mean(g·x̂)).
    The work is done on rows (C, N), one per channel, in the batch-last order of `batch_last`.
    """

    def forward(self, x, weight, bias, running_mean, running_var, training, momentum, eps):
        C = x.shape[1] if x.ndim >= 2 else None
        for name, array in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                            ("running_var", running_var)):
            if x.ndim < 2 or array.shape != (C,):
                raise ValueError(f"batch_norm: {name} has shape {tuple(array.shape)} but input "
                                 f"{tuple(x.shape)} needs one value per channel of axis 1")
        rows = batch_last(self.xp, x)
        self.channel_first_shape, rows = rows.shape, rows.reshape(C, -1)
        if training:
            mean = rows.mean(axis=1)
            centred = rows - mean[:, None]
            var = (centred * centred).mean(axis=1)
            count = rows.shape[1]
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * var * count / max(count - 1, 1)
        else:
            centred, var = rows - running_mean[:, None], running_var
        self.training = training
        self.scale = weight / self.xp.sqrt(var + eps)
        self.x_hat = centred * (1 / self.xp.sqrt(var + eps))[:, None]
        out = weight[:, None] * self.x_hat + bias[:, None]
        return self.xp.moveaxis(out.reshape(self.channel_first_shape), -1, 0)

    def backward(self, grad_output):
        rows = batch_last(self.xp, grad_output).reshape(self.x_hat.shape)
        grad_bias = rows.sum(axis=1)
        grad_weight = (rows * self.x_hat).sum(axis=1)
        if self.training:
            count = rows.shape[1]
            rows = rows - (grad_bias[:, None] + self.x_hat * grad_weight[:, None]) / count
        grad_input = (self.scale[:, None] * rows).reshape(self.channel_first_shape)
        return self.xp.moveaxis(grad_input, -1, 0), grad_weight, grad_bias


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
    return x.reshape(x.shape[0], -1)


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
    """Deformable convolution (SPEC.md §1): `deform_conv2d` forward, `deform_conv2d_backward`
    for the gradients of input, offset, weight, bias and mask."""

    def forward(self, x, offset, weight, bias, mask, stride, padding, dilation):
        self.params = dict(stride=stride, padding=padding, dilation=dilation, backend=_BACKEND)
        return deform_conv2d_forward(x, offset, weight, bias, mask=mask, **self.params)

    def backward(self, grad_output):
        x, offset, weight, bias, mask = (t if t is None else t.data for t in self.inputs)
        return deform_conv2d_backward(grad_output, x, offset, weight, bias, mask=mask, **self.params)


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Deformable convolution of x (B, C_in, H, W) with offset (B, 2·G_off·kh·kw, H_out, W_out),
    channel g·2K + 2k + d with d = 0 for y; mask (B, G_off·kh·kw, H_out, W_out) for v2."""
    return DeformConv2d.apply(x, offset, weight, bias, mask, stride=stride, padding=padding,
                              dilation=dilation)


class DeformRoIPool(Function):
    """Deformable RoI pooling (SPEC.md §2a); the RoIs get no gradient."""

    def forward(self, x, offset, rois, **params):
        self.rois, self.params = rois, dict(params, backend=_BACKEND)
        return deform_roi_pool_forward(x, rois, offset, **self.params)

    def backward(self, grad_output):
        x, offset = (t if t is None else t.data for t in self.inputs)
        return deform_roi_pool_backward(grad_output, x, self.rois, offset, **self.params)


def deform_roi_pool(x, rois, offset=None, output_size=7, spatial_scale=1.0, sampling_ratio=0,
                    gamma=0.1):
    """Deformable RoI pooling of x (B, C, H, W) over rois (N, 5) rows (batch_index, x1, y1, x2,
    y2); offset (N, 2, PH, PW) is stored x first. Returns (N, C, PH, PW)."""
    rois = rois.data if isinstance(rois, Tensor) else rois
    return DeformRoIPool.apply(x, offset, rois=rois, output_size=output_size,
                               spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, gamma=gamma)


class DeformPSRoIPool(Function):
    """Position-sensitive deformable RoI pooling (SPEC.md §2b); the RoIs get no gradient."""

    def forward(self, x, trans, rois, **params):
        self.rois, self.params = rois, dict(params, backend=_BACKEND)
        return deform_psroi_pool_forward(x, rois, trans, **self.params)

    def backward(self, grad_output):
        x, trans = (t if t is None else t.data for t in self.inputs)
        return deform_psroi_pool_backward(grad_output, x, self.rois, trans, **self.params)


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
