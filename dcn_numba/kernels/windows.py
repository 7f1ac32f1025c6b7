"""im2col and col2im as parallel CPU kernels: the NumPy path of `dcn_numba.windows`.

Both work on the batch-last window layout (C, kh, kw, H_out, W_out, B) of `SlidingWindows`:
window (i, j), tap (ki, kj) reads input row i·stride_h + ki·dilation_h − pad_h and column
j·stride_w + kj·dilation_w − pad_w. The innermost loop runs over the batch, the contiguous axis
of both the windows and (for the outputs of the window ops) the input, so that it vectorises.
NumPy arrays only; CuPy arrays take the vectorised array-module path of `dcn_numba.windows`.
"""

from numba import prange

from ._targets import cpu_kernel


@cpu_kernel
def unfold_windows(x, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, columns):
    """im2col: columns[c, ki, kj, i, j, b] = x[b, c, i·stride_h + ki·dil_h − pad_h,
    j·stride_w + kj·dil_w − pad_w], 0 where that position lies in the padding.

    x (B, C, H, W) with any strides; columns (C, kh, kw, H_out, W_out, B) is written whole. Each
    (c, ki, kj) plane is one parallel task: the planes do not overlap.
    """
    B, C, H, W = x.shape
    kh, kw, H_out, W_out = columns.shape[1:5]
    for task in prange(C * kh * kw):
        c, ki, kj = task // (kh * kw), task // kw % kh, task % kw
        for i in range(H_out):
            row = i * stride_h + ki * dil_h - pad_h
            for j in range(W_out):
                column = j * stride_w + kj * dil_w - pad_w
                if 0 <= row < H and 0 <= column < W:
                    for b in range(B):
                        columns[c, ki, kj, i, j, b] = x[b, c, row, column]
                else:
                    for b in range(B):
                        columns[c, ki, kj, i, j, b] = 0


@cpu_kernel
def fold_windows(grad_windows, stride_h, stride_w, dil_h, dil_w, grad_padded):
    """col2im, the adjoint of `unfold_windows` on the padded input: grad_padded[c, i·stride_h +
    ki·dil_h, j·stride_w + kj·dil_w, b] += grad_windows[c, ki, kj, i, j, b] for every window
    (i, j) and tap (ki, kj).

    grad_padded (C, H + 2·pad_h, W + 2·pad_w, B) must start at zero. Overlapping windows add into
    the same cells, so the parallel tasks are the channels, which share none.
    """
    C, kh, kw, H_out, W_out, B = grad_windows.shape
    for c in prange(C):
        for ki in range(kh):
            for kj in range(kw):
                for i in range(H_out):
                    row = i * stride_h + ki * dil_h
                    for j in range(W_out):
                        column = j * stride_w + kj * dil_w
                        for b in range(B):
                            grad_padded[c, row, column, b] += grad_windows[c, ki, kj, i, j, b]
