"""im2col and col2im as single-threaded CPU kernels: the NumPy path of `dcn_numba.windows`.

Both work on the batch-last window layout (C, kh, kw, rows, W_out, B) of `SlidingWindows`, for
a block of `rows` consecutive rows of windows starting at window row `first_row`: window
(first_row + i, j), tap (ki, kj) reads input row (first_row + i)·stride_h + ki·dilation_h − pad_h
and column j·stride_w + kj·dilation_w − pad_w. The innermost loop runs over the batch, the
contiguous axis of the windows and (for the outputs of the window ops) of the input, so that it
vectorises.

They replace NumPy's strided copy and its kh·kw strided adds because they make one pass where
NumPy makes several (no zero-padded copy of the input; one read of each gradient tap). They
are serial on purpose (see `serial_kernel`). NumPy arrays only; CuPy arrays take the
array-module path of `dcn_numba.windows`, which these kernels must match
(tests/test_functional.py checks it).
"""

from ._targets import serial_kernel


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
                    row = (first_row + i) * stride_h + ki * dil_h - pad_h
                    for j in range(W_out):
                        column = j * stride_w + kj * dil_w - pad_w
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
                    row = (first_row + i) * stride_h + ki * dil_h
                    for j in range(W_out):
                        column = j * stride_w + kj * dil_w
                        for b in range(B):
                            grad_padded[c, row, column, b] += grad_windows[c, ki, kj, i, j, b]
