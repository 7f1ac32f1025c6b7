"""Solutions to the exercises of notebook 5, Writing the CUDA kernels in Numba.

Plain Python functions: the notebook compiles them with cuda.jit (for a GPU, or for the
simulator), so they use `cuda` and the shared sampling functions as a kernel does.
"""

import math

from numba import cuda

from dcn_numba.kernels import bilinear
from dcn_numba.kernels._targets import for_cuda

gpu = for_cuda(bilinear)


@cuda.jit(device=True)
def channel_and_position(index, offset, kh, kw, padding, H_out, W_out):
    """(c, p_y, p_x) of element index = ((c·K + k)·H_out + i)·W_out + j of the flat column buffer."""
    K = kh * kw
    HW_out = H_out * W_out
    c, k, i, j = index // HW_out // K, index // HW_out % K, index // W_out % H_out, index % W_out
    ki, kj = k // kw, k % kw
    p_y = i - padding + ki + offset[2 * k * HW_out + i * W_out + j]
    p_x = j - padding + kj + offset[(2 * k + 1) * HW_out + i * W_out + j]
    return c, p_y, p_x


def naive_im2col(n_items, x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    """Exercise 5.1: col[c, k, i, j] = S(x_c, i − padding + ki + Δy_k, j − padding + kj + Δx_k)."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, p_y, p_x = channel_and_position(index, offset, kh, kw, padding, H_out, W_out)
        col[index] = gpu.dcn_sample(x, c * H * W, H, W, p_y, p_x)


def naive_col2im(n_items, gcol, offset, H, W, kh, kw, padding, H_out, W_out, grad_x):
    """Exercise 5.2: grad_x[c] += gcol[c, k, i, j] · w_ab at the in-image corners, atomically."""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        c, p_y, p_x = channel_and_position(index, offset, kh, kw, padding, H_out, W_out)
        if not gpu.dcn_is_valid(p_y, p_x, H, W):
            continue
        l_y, l_x = gpu.fractional_part(p_y), gpu.fractional_part(p_x)
        y0, x0 = math.floor(p_y), math.floor(p_x)
        for corner in range(4):
            row, column = y0 + corner // 2, x0 + corner % 2
            if 0 <= row < H and 0 <= column < W:
                # Atomic: other threads' samples add into the same pixel at the same time.
                cuda.atomic.add(grad_x, c * H * W + row * W + column,
                                gcol[index] * gpu.corner_weight(l_y, l_x, corner))
