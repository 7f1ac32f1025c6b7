"""im2col, col2im and max pooling as single-threaded CPU kernels, and the engine's window Functions
(`dcn_numba.engine.windows`) that use them on NumPy arrays.

im2col and col2im work on the batch-last window layout (C, kh, kw, rows, W_out, B) of
`SlidingWindows`, for a block of `rows` consecutive rows of windows starting at window row
`first_row`: window (first_row + i, j), tap (ki, kj) reads the input at `tap_coordinate` along
each axis. Every kernel's innermost loop runs over the batch, the contiguous axis of the windows
and (for the outputs of the window ops) of the input, so that it vectorises.

They replace NumPy's strided copy and its kh·kw strided adds because they make one pass where
NumPy makes several (no zero-padded copy of the input; one read of each gradient tap). They
are serial on purpose (see `serial_kernel`). NumPy arrays only: the Functions below must give the
numbers of the engine's (tests/engine/test_functional.py checks it).
"""

import numpy as np

from dcn_numba.engine import windows
from dcn_numba.kernels._targets import cpu_helper, serial_kernel


@cpu_helper
def tap_coordinate(window, tap, stride, dilation, pad):
    """The input coordinate, along one axis, that tap `tap` of window `window` reads:
    window·stride + tap·dilation − pad (pad = 0 on the padded input)."""
    return window * stride + tap * dilation - pad


@cpu_helper
def pooling_tap(i, j, tap, kw, stride_h, stride_w, pad_h, pad_w):
    """(row, column) of the input that tap `tap` = ki·kw + kj of pooling window (i, j) reads."""
    return (tap_coordinate(i, tap // kw, stride_h, 1, pad_h),
            tap_coordinate(j, tap % kw, stride_w, 1, pad_w))


@serial_kernel
def unfold_windows(x, first_row, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, columns):
    """im2col: columns[c, ki, kj, i, j, b] = x[c, (first_row + i)·stride_h + ki·dil_h − pad_h,
    j·stride_w + kj·dil_w − pad_w, b], 0 where that position lies in the padding.

    x (C, H, W, B), batch last like the windows (contiguous, so that Numba compiles the batch
    loop as a vectorised copy); columns (C, kh, kw, rows, W_out, B) is written whole.
    """
    C, H, W, B = x.shape
    kh, kw, rows, W_out = columns.shape[1:5]
    for c in range(C):
        for ki in range(kh):
            for kj in range(kw):
                for i in range(rows):
                    row = tap_coordinate(first_row + i, ki, stride_h, dil_h, pad_h)
                    for j in range(W_out):
                        column = tap_coordinate(j, kj, stride_w, dil_w, pad_w)
                        if 0 <= row < H and 0 <= column < W:
                            for b in range(B):
                                columns[c, ki, kj, i, j, b] = x[c, row, column, b]
                        else:
                            for b in range(B):
                                columns[c, ki, kj, i, j, b] = 0


@serial_kernel
def fold_windows(grad_windows, first_row, stride_h, stride_w, dil_h, dil_w, grad_padded):
    """col2im, the adjoint of `unfold_windows` on the padded input: grad_padded[c,
    (first_row + i)·stride_h + ki·dil_h, j·stride_w + kj·dil_w, b] += grad_windows[c, ki, kj, i,
    j, b] for every window (first_row + i, j) and tap (ki, kj).

    grad_windows (C, kh, kw, rows, W_out, B) with any strides (a broadcast view works);
    grad_padded (C, H + 2·pad_h, W + 2·pad_w, B), accumulated into: overlapping windows, and
    consecutive blocks of rows, add into the same cells.
    """
    C, kh, kw, rows, W_out, B = grad_windows.shape
    for c in range(C):
        for ki in range(kh):
            for kj in range(kw):
                for i in range(rows):
                    row = tap_coordinate(first_row + i, ki, stride_h, dil_h, 0)
                    for j in range(W_out):
                        column = tap_coordinate(j, kj, stride_w, dil_w, 0)
                        for b in range(B):
                            grad_padded[c, row, column, b] += grad_windows[c, ki, kj, i, j, b]


@serial_kernel
def max_pool_windows(x, kh, kw, stride_h, stride_w, pad_h, pad_w, out, argmax):
    """out[c, i, j, b] = the largest of the taps x[c, i·stride_h + ki − pad_h, j·stride_w + kj − pad_w,
    b] of window (i, j), taps in the padding counting as −∞, and argmax[c, i, j, b] = ki·kw + kj
    of the first tap holding it, or −1 when a tap is NaN (then out is NaN, as NumPy's max).

    x (C, H, W, B); out (C, H_out, W_out, B) and argmax (same shape, integers) are written whole.
    A window whose taps are all −∞ keeps tap 0 as its argmax: the first tap equal to the maximum.
    """
    C, H, W, B = x.shape
    H_out, W_out = out.shape[1:3]
    for c in range(C):
        for i in range(H_out):
            for j in range(W_out):
                for b in range(B):
                    out[c, i, j, b] = -np.inf
                    argmax[c, i, j, b] = 0
                for tap in range(kh * kw):
                    row, column = pooling_tap(i, j, tap, kw, stride_h, stride_w, pad_h, pad_w)
                    if not (0 <= row < H and 0 <= column < W):
                        continue
                    # Selects instead of branches, so that the batch loop vectorises. A NaN is
                    # never larger, so once out is NaN it stays NaN.
                    for b in range(B):
                        value = x[c, row, column, b]
                        is_nan = value != value
                        larger = value > out[c, i, j, b]
                        out[c, i, j, b] = value if larger or is_nan else out[c, i, j, b]
                        argmax[c, i, j, b] = tap if larger else (-1 if is_nan else argmax[c, i, j, b])


@serial_kernel
def max_pool_scatter(grad_out, argmax, kh, kw, stride_h, stride_w, pad_h, pad_w, grad_input):
    """The max-pool backward: grad_input[c, row, column, b] += grad_out[c, i, j, b] for the tap
    argmax[c, i, j, b] = ki·kw + kj of window (i, j), at row = i·stride_h + ki − pad_h and column =
    j·stride_w + kj − pad_w; nothing for argmax −1 (a NaN window) or a tap in the padding.

    grad_out and argmax (C, H_out, W_out, B), contiguous (on a strided grad_out the batch loop
    does not vectorise: eight times slower than copying it first); grad_input (C, H, W, B) is
    written whole: each channel is zeroed, then accumulated (overlapping windows can pick the same
    tap) while it is in cache.
    """
    C, H_out, W_out, B = grad_out.shape
    H, W = grad_input.shape[1:3]
    for c in range(C):
        grad_input[c] = 0
        for i in range(H_out):
            for j in range(W_out):
                # Every tap of the window in turn, each taking the gradients of the windows whose
                # argmax it is: a select per element instead of a branch and a scattered address
                # (where the tap lands depends on b), so that the batch loop vectorises. Adding 0
                # leaves a cell as it is.
                for tap in range(kh * kw):
                    row, column = pooling_tap(i, j, tap, kw, stride_h, stride_w, pad_h, pad_w)
                    if not (0 <= row < H and 0 <= column < W):
                        continue
                    for b in range(B):
                        chosen = argmax[c, i, j, b] == tap
                        grad_input[c, row, column, b] += grad_out[c, i, j, b] if chosen else 0


# ---------------------------------------------------------------------------------------------
# The engine's window Functions with these kernels, which `dcn_numba.speed.switch_on` registers
# ---------------------------------------------------------------------------------------------


class KernelWindows(windows.SlidingWindows):
    """SlidingWindows whose im2col and col2im are `unfold_windows` and `fold_windows` (NumPy arrays)."""

    def column_blocks(self, xp, x):
        """As `SlidingWindows.column_blocks`, every block written into the same buffer by
        `unfold_windows`: use a block before asking for the next."""
        B, C = x.shape[:2]
        (kh, kw), W_out = self.kernel_size, self.output_size[1]
        blocks = self.row_blocks(xp, x)
        row_elements = C * kh * kw * W_out * B
        buffer = np.empty(blocks[0][1] * row_elements, dtype=x.dtype)
        x = windows.batch_last(xp, x)
        for first_row, rows in blocks:
            columns = buffer[:rows * row_elements].reshape(C, kh, kw, rows, W_out, B)
            unfold_windows(x, first_row, *self.stride, *self.padding, *self.dilation, columns)
            yield first_row, rows, columns

    def add_taps(self, xp, grad_windows, first_row, grad_padded):
        """As `SlidingWindows.add_taps`, in one pass of `fold_windows`."""
        fold_windows(grad_windows, first_row, *self.stride, *self.dilation, grad_padded)


class Conv2d(windows.Conv2d):
    """The engine's Conv2d, im2col and col2im made by the kernels above."""

    Windows = KernelWindows


class AvgPool2d(windows.AvgPool2d):
    """The engine's AvgPool2d, its backward's col2im made by `fold_windows`."""

    Windows = KernelWindows


class MaxPool2d(windows.MaxPool2d):
    """The engine's MaxPool2d in two kernels: the forward finds each window's maximum and the tap
    holding it in one pass (`max_pool_windows`), and the backward adds each gradient at that tap
    (`max_pool_scatter`)."""

    def forward(self, x, kernel_size, stride, padding):
        windows.require_ndim("max_pool2d", "input", x, "(B, C, H, W)")
        self.windows = windows.SlidingWindows("max_pool2d", x.shape, kernel_size, stride, padding, 1)
        out_shape = (x.shape[1], *self.windows.output_size, x.shape[0])
        out = np.empty(out_shape, dtype=x.dtype)
        self.argmax = np.empty(out_shape, dtype=np.int32)
        max_pool_windows(windows.batch_last(np, x), *self.windows.kernel_size, *self.windows.stride,
                         *self.windows.padding, out, self.argmax)
        return out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        B, C, H, W = self.windows.input_shape
        grad_input = np.empty((C, H, W, B), dtype=grad_output.dtype)
        max_pool_scatter(windows.batch_last(np, grad_output), self.argmax, *self.windows.kernel_size,
                         *self.windows.stride, *self.windows.padding, grad_input)
        return (grad_input.transpose(3, 0, 1, 2),)
