"""Convolution and pooling as autograd Functions on sliding windows, one tap at a time.

A window op reads, for every output position (i, j), a kh×kw window of the padded input. Tap
(ki, kj) of every window at once is a single strided slice of the padded input (rows ki·dil_h,
ki·dil_h + stride_h, ..., and likewise for columns), so each op is a short loop over the kh·kw
taps of whole-array operations:

    convolution   out = Σ_taps weight[:, :, ki, kj] @ tap         im2col + GEMM, cut by tap: the
                                                                  column matrix of im2col is the
                                                                  stack of the taps, and its GEMM
                                                                  the sum of the taps' GEMMs
    max pooling   out = running maximum over the taps
    avg pooling   out = Σ_taps tap / (kh·kw)

and each backward adds every tap's gradient back onto the slice it read (col2im). Cutting im2col
by tap keeps the work and the vectorisation while never materialising the kh·kw-times-larger
column matrix. Everything runs on NumPy or CuPy arrays, whichever the input is.

Layout: the padded input is (C, H + 2·pad_h, W + 2·pad_w, B), batch last, so that a tap is a
slice whose contiguous runs hold whole rows of windows for the whole batch, and a tap of C
channels is a (C, H_out·W_out·B) matrix once copied. Outputs go back as (B, C, H_out, W_out) views
of batch-last memory, which the next layer can read without copying.
"""

import numpy as np

from ._checks import as_pair
from .autograd import Function


def require_ndim(op, name, array, layout):
    """`array` has as many axes as `layout` names, e.g. '(B, C, H, W)'."""
    if array.ndim != len(layout.split(",")):
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(array.shape)}")


def batch_last(xp, array):
    """(B, C, ...) → a contiguous (C, ..., B) copy, or a free view when the memory already has
    that order (the outputs of this module do)."""
    return xp.ascontiguousarray(xp.moveaxis(array, 0, -1))


class SlidingWindows:
    """Where the kernel windows of a convolution or a pooling lie on a (B, C, H, W) input.

    Window (i, j), tap (ki, kj) reads the padded input at row i·stride_h + ki·dil_h and column
    j·stride_w + kj·dil_w, for H_out = floor((H + 2·pad_h − dil_h·(kh − 1) − 1) / stride_h) + 1
    rows of windows (same for W).
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

    @property
    def taps(self):
        """(ki, kj) for every tap, row by row: tap k = ki·kw + kj."""
        return [(ki, kj) for ki in range(self.kernel_size[0]) for kj in range(self.kernel_size[1])]

    def padded_zeros(self, xp, dtype):
        """A zero (C, H + 2·pad_h, W + 2·pad_w, B) array: the padded input's shape, batch last."""
        B, C, H, W = self.input_shape
        return xp.zeros((C, H + 2 * self.padding[0], W + 2 * self.padding[1], B), dtype=dtype)

    def pad(self, xp, x, fill=0.0):
        """x (B, C, H, W) padded with `fill`, batch last: (C, H + 2·pad_h, W + 2·pad_w, B)."""
        (pad_h, pad_w), (B, C, H, W) = self.padding, x.shape
        padded = self.padded_zeros(xp, x.dtype)
        if fill:
            padded[...] = fill
        padded[:, pad_h:pad_h + H, pad_w:pad_w + W] = x.transpose(1, 2, 3, 0)
        return padded

    def tap(self, ki, kj):
        """The index of what tap (ki, kj) of every window reads in a padded array: a view
        (C, H_out, W_out, B) of it, or the place its gradient goes back to."""
        (H_out, W_out), (dil_h, dil_w), (stride_h, stride_w) = self.output_size, self.dilation, self.stride
        rows = slice(ki * dil_h, ki * dil_h + stride_h * (H_out - 1) + 1, stride_h)
        columns = slice(kj * dil_w, kj * dil_w + stride_w * (W_out - 1) + 1, stride_w)
        return slice(None), rows, columns

    def unpad(self, grad_padded):
        """∂L/∂x (B, C, H, W) from the gradient of the padded input: the padding is dropped."""
        (pad_h, pad_w), (_, _, H, W) = self.padding, self.input_shape
        return grad_padded[:, pad_h:pad_h + H, pad_w:pad_w + W].transpose(3, 0, 1, 2)


class Conv2d(Function):
    """out[b, co, i, j] = bias[co] + Σ_{c ∈ group of co, ki, kj} weight[co, c, ki, kj] · tap
    (ki, kj) of window (i, j) at channel c; groups = G splits the channels into G independent
    convolutions.

    With every tap copied into a matrix (G, C/G, N), N = H_out·W_out·B, and weight_tap =
    weight[:, :, ki, kj] as (G, C_out/G, C/G): out = Σ_taps weight_tap @ tap. Backward, with
    g = ∂L/∂out as (G, C_out/G, N): ∂L/∂weight_tap = g @ tapᵀ, ∂L/∂tap = weight_tapᵀ @ g added back
    onto the padded input where the tap read it, ∂L/∂bias = Σ_{b,i,j} g.
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
        self.padded, self.groups = self.windows.pad(self.xp, x), groups
        out = 0
        for ki, kj in self.windows.taps:
            out = out + self.weight_tap(weight, ki, kj) @ self.tap_matrix(ki, kj)
        out = out.reshape(C_out, *self.windows.output_size, x.shape[0])
        if bias is not None:
            out += bias.reshape(C_out, 1, 1, 1)
        return out.transpose(3, 0, 1, 2)

    def weight_tap(self, weight, ki, kj):
        """weight[:, :, ki, kj] as (G, C_out/G, C/G)."""
        return weight[:, :, ki, kj].reshape(self.groups, -1, weight.shape[1])

    def tap_matrix(self, ki, kj):
        """What tap (ki, kj) reads for every window, copied into a (G, C/G, N) matrix."""
        tap = self.xp.ascontiguousarray(self.padded[self.windows.tap(ki, kj)])
        return tap.reshape(self.groups, tap.shape[0] // self.groups, -1)

    def backward(self, grad_output):
        x, weight, bias = (t.data for t in self.inputs[:2]) + (self.inputs[2],)
        rows = batch_last(self.xp, grad_output).reshape(self.groups, weight.shape[0] // self.groups, -1)
        grad_weight = self.xp.empty_like(weight)
        grad_padded = self.windows.padded_zeros(self.xp, x.dtype) if self.inputs[0].requires_grad else None
        for ki, kj in self.windows.taps:
            tap = self.tap_matrix(ki, kj)
            grad_weight[:, :, ki, kj] = (rows @ tap.transpose(0, 2, 1)).reshape(weight.shape[:2])
            if grad_padded is not None:
                grad_tap = self.weight_tap(weight, ki, kj).transpose(0, 2, 1) @ rows
                grad_padded[self.windows.tap(ki, kj)] += grad_tap.reshape(grad_padded[self.windows.tap(ki, kj)].shape)
        grad_input = None if grad_padded is None else self.windows.unpad(grad_padded)
        grad_bias = None if bias is None else rows.sum(axis=2).reshape(-1)
        return grad_input, grad_weight, grad_bias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of x (B, C_in, H, W) with weight (C_out, C_in/groups, kh, kw) and an
    optional bias (C_out,): (B, C_out, H_out, W_out)."""
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


class MaxPool2d(Function):
    """out[b, c, i, j] = max of window (i, j) (padding reads −∞); ∂L/∂out goes to the window's
    first maximal tap, the argmax kept by the forward pass."""

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("max_pool2d", "input", x, "(B, C, H, W)")
        self.windows = SlidingWindows("max_pool2d", x.shape, kernel_size, stride, padding, 1)
        padded = self.windows.pad(self.xp, x, fill=-np.inf)
        taps = self.windows.taps
        out = padded[self.windows.tap(*taps[0])].copy()
        self.argmax = self.xp.zeros(out.shape, dtype=np.int32)
        for k, (ki, kj) in enumerate(taps[1:], start=1):
            candidate = padded[self.windows.tap(ki, kj)]
            larger = candidate > out
            out = self.xp.where(larger, candidate, out)
            self.argmax = self.xp.where(larger, k, self.argmax)
        return out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        grad = batch_last(self.xp, grad_output)
        grad_padded = self.windows.padded_zeros(self.xp, grad.dtype)
        for k, (ki, kj) in enumerate(self.windows.taps):
            grad_padded[self.windows.tap(ki, kj)] += self.xp.where(self.argmax == k, grad, 0)
        return (self.windows.unpad(grad_padded),)


class AvgPool2d(Function):
    """out[b, c, i, j] = mean of the kh·kw taps of window (i, j), padding counted as zeros;
    each tap receives ∂L/∂out / (kh·kw)."""

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("avg_pool2d", "input", x, "(B, C, H, W)")
        self.windows = SlidingWindows("avg_pool2d", x.shape, kernel_size, stride, padding, 1)
        padded = self.windows.pad(self.xp, x)
        out = sum(padded[self.windows.tap(ki, kj)] for ki, kj in self.windows.taps)
        return (out / len(self.windows.taps)).transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        share = batch_last(self.xp, grad_output) / len(self.windows.taps)
        grad_padded = self.windows.padded_zeros(self.xp, share.dtype)
        for ki, kj in self.windows.taps:
            grad_padded[self.windows.tap(ki, kj)] += share
        return (self.windows.unpad(grad_padded),)


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
