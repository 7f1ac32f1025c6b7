"""Convolution and pooling as autograd Functions on sliding windows.

A window op reads, for every output position (i, j), a kh×kw window of the padded input. `unfold`
gives all the windows at once as a strided view (C, kh, kw, H_out, W_out, B) that costs no copy
beyond the padding, and `fold`, its adjoint, adds every window's gradient back where the window
read it (col2im). A convolution is then one GEMM per weight group over the windows copied into a
column matrix (im2col), made a block of window rows at a time so that each block is still in
cache when its GEMM reads it, and a pooling a reduction over the taps. Everything runs on NumPy
or CuPy arrays, whichever the input is, as array-module slices and reductions. The optional speed
layer registers faster versions of these Functions for NumPy arrays (`dcn_numba.speed.windows`:
im2col (`SlidingWindows.column_blocks`), col2im (`SlidingWindows.add_taps`) and max pooling as
CPU kernels).
"""

import numpy as np

from dcn_numba.ops.checks import as_pair
from dcn_numba.ops.deform_conv import output_size
from dcn_numba.engine.autograd import Function


def require_ndim(op, name, array, layout):
    """`array` has as many axes as `layout` names, e.g. '(B, C, H, W)'."""
    if array.ndim != len(layout.split(",")):
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(array.shape)}")


def batch_last(xp, array):
    """(B, C, ...) → a contiguous (C, ..., B) copy, or a free view when the memory already has
    that order (the outputs of this module do)."""
    return xp.ascontiguousarray(xp.moveaxis(array, 0, -1))


# How many bytes of im2col columns one GEMM of a convolution reads. On the CPU a block of a few
# rows of windows is still in cache when the GEMM reads it, and making it again in the backward
# pass costs less than reading a whole column matrix back from memory (benchmarks/RESULTS.md has
# the measurements behind 1 MB). A GPU wants one big GEMM. Results never depend on the block size.
COLUMN_BLOCK_BYTES = {"cpu": 1 << 20, "cuda": 1 << 31}


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
        self.output_size = tuple(map(output_size, input_shape[2:], self.kernel_size, self.stride, self.padding,
                                     self.dilation))
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
        if pad_h or pad_w:
            padded = xp.full(self.padded_shape(), fill, dtype=x.dtype)
            padded[:, pad_h:pad_h + H, pad_w:pad_w + W] = x.transpose(1, 2, 3, 0)
        else:
            padded = batch_last(xp, x)
        step_c, step_h, step_w, step_b = padded.strides
        (dil_h, dil_w), (stride_h, stride_w) = self.dilation, self.stride
        return xp.lib.stride_tricks.as_strided(
            padded, shape=(C, *self.kernel_size, *self.output_size, B),
            strides=(step_c, step_h * dil_h, step_w * dil_w, step_h * stride_h, step_w * stride_w,
                     step_b))

    def row_blocks(self, xp, x):
        """(first_row, rows) of each block of window rows that im2col makes at once from x
        (B, C, H, W): at most COLUMN_BLOCK_BYTES of columns, one row of windows at least."""
        B, C = x.shape[:2]
        (kh, kw), (H_out, W_out) = self.kernel_size, self.output_size
        row_bytes = C * kh * kw * W_out * B * x.dtype.itemsize
        rows_per_block = min(H_out, max(1, COLUMN_BLOCK_BYTES["cpu" if xp is np else "cuda"] // row_bytes))
        return [(first_row, min(rows_per_block, H_out - first_row)) for first_row in range(0, H_out, rows_per_block)]

    def column_blocks(self, xp, x):
        """im2col, a block of window rows at a time (`row_blocks`): yields (first_row, rows,
        columns), columns (C, kh, kw, rows, W_out, B) the contiguous copy of windows first_row …
        first_row + rows − 1 of x (B, C, H, W), padded with zeros."""
        windows = self.unfold(xp, x)
        for first_row, rows in self.row_blocks(xp, x):
            yield first_row, rows, xp.ascontiguousarray(windows[:, :, :, first_row:first_row + rows])

    def add_taps(self, xp, grad_windows, first_row, grad_padded):
        """col2im of a block of window rows: grad_padded (C, H + 2·pad_h, W + 2·pad_w, B) +=
        every tap of ∂L/∂windows (C, kh, kw, rows, W_out, B) for windows first_row … , in place.

        Tap (ki, kj) of all windows is one strided slice of the padded image, so the loop adds
        kh·kw vectorised slices, and overlapping windows accumulate as they should.
        """
        (dil_h, dil_w), (stride_h, stride_w) = self.dilation, self.stride
        rows, W_out = grad_windows.shape[3:5]
        for ki in range(self.kernel_size[0]):
            for kj in range(self.kernel_size[1]):
                top = first_row * stride_h + ki * dil_h
                image_rows = slice(top, top + stride_h * (rows - 1) + 1, stride_h)
                columns = slice(kj * dil_w, kj * dil_w + stride_w * (W_out - 1) + 1, stride_w)
                grad_padded[:, image_rows, columns] += grad_windows[:, ki, kj]

    def crop(self, grad_padded):
        """∂L/∂x (B, C, H, W) as a view of the padded (C, H + 2·pad_h, W + 2·pad_w, B) gradient."""
        (pad_h, pad_w), (H, W) = self.padding, self.input_shape[2:]
        return grad_padded[:, pad_h:pad_h + H, pad_w:pad_w + W].transpose(3, 0, 1, 2)

    def fold(self, xp, grad_windows):
        """The adjoint of `unfold` (col2im): ∂L/∂x (B, C, H, W) from ∂L/∂windows
        (C, kh, kw, H_out, W_out, B), every tap added where its window read it."""
        grad_padded = xp.zeros(self.padded_shape(), dtype=grad_windows.dtype)
        self.add_taps(xp, grad_windows, 0, grad_padded)
        return self.crop(grad_padded)


class Conv2d(Function):
    """out[b, co, i, j] = bias[co] + Σ_{c ∈ group of co, ki, kj} weight[co, c, ki, kj] · window
    (i, j) of x at channel c, tap (ki, kj); G = groups splits the channels into G independent
    convolutions.

    im2col: the windows are copied into columns (G, C/G·kh·kw, H_out·W_out·B), and each group is
    one GEMM, out = weight (G, C_out/G, C/G·kh·kw) @ columns. Backward with g = ∂L/∂out as rows
    (G, C_out/G, H_out·W_out·B): ∂L/∂weight = g @ columnsᵀ, ∂L/∂columns = weightᵀ @ g folded back
    onto the input (col2im), ∂L/∂bias = Σ_{b,i,j} g.

    Both passes walk the columns in blocks of window rows (`SlidingWindows.column_blocks`), and
    the backward pass makes them again from x rather than keeping them: each block's GEMMs take
    their slice of the H_out·W_out·B positions, and ∂L/∂weight sums over the blocks.
    """

    Windows = SlidingWindows  # where the windows lie, and how im2col and col2im copy them

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
        self.windows = self.Windows("conv2d", x.shape, weight.shape[2:], stride, padding, dilation)
        self.weight = weight.reshape(groups, C_out // groups, -1)
        H_out, W_out = self.windows.output_size
        self.row_size = W_out * x.shape[0]
        out = self.xp.empty((groups, C_out // groups, H_out * self.row_size),
                            dtype=self.xp.result_type(x, weight))
        for first_row, rows, columns in self.windows.column_blocks(self.xp, x):
            block = slice(first_row * self.row_size, (first_row + rows) * self.row_size)
            self.xp.matmul(self.weight, columns.reshape(groups, -1, rows * self.row_size),
                           out=out[:, :, block])
        out = out.reshape(C_out, H_out, W_out, x.shape[0])
        if bias is not None:
            out += bias.reshape(C_out, 1, 1, 1)
        return out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        x, weight, bias = self.inputs
        xp, windows = self.xp, self.windows
        groups = self.weight.shape[0]
        g = batch_last(xp, grad_output).reshape(groups, self.weight.shape[1], -1)
        # ∂L/∂weight is summed as its transpose columns @ gᵀ: BLAS runs this orientation (long
        # rows of columns against a short g) markedly faster.
        grad_weight = xp.zeros(self.weight.transpose(0, 2, 1).shape, dtype=g.dtype)
        grad_padded = xp.zeros(windows.padded_shape(), dtype=g.dtype) if x.requires_grad else None
        grad_buffer = None
        for first_row, rows, columns in windows.column_blocks(xp, x.data):
            g_block = g[:, :, first_row * self.row_size:(first_row + rows) * self.row_size]
            grad_weight += columns.reshape(groups, -1, g_block.shape[2]) @ g_block.transpose(0, 2, 1)
            if grad_padded is not None:
                # One buffer for every block's ∂L/∂columns (the first block is the largest).
                if grad_buffer is None:
                    grad_buffer = xp.empty(columns.size, dtype=g.dtype)
                grad_columns = grad_buffer[:columns.size].reshape(columns.shape)
                xp.matmul(self.weight.transpose(0, 2, 1), g_block,
                          out=grad_columns.reshape(groups, -1, g_block.shape[2]))
                windows.add_taps(xp, grad_columns, first_row, grad_padded)
        grad_weight = grad_weight.transpose(0, 2, 1).reshape(weight.shape)
        grad_bias = None if bias is None else g.sum(axis=2).reshape(-1)
        grad_input = None if grad_padded is None else windows.crop(grad_padded)
        return grad_input, grad_weight, grad_bias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution of x (B, C_in, H, W) with weight (C_out, C_in/groups, kh, kw) and an
    optional bias (C_out,): (B, C_out, H_out, W_out)."""
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)


class MaxPool2d(Function):
    """out[b, c, i, j] = max of window (i, j) (padding reads −∞); ∂L/∂out goes to the window's
    first maximal tap (none if the window holds a NaN). The taps are compared with the maximum
    one after the other."""

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("max_pool2d", "input", x, "(B, C, H, W)")
        self.windows = SlidingWindows("max_pool2d", x.shape, kernel_size, stride, padding, 1)
        self.taps = self.windows.unfold(self.xp, x, fill=-np.inf)
        self.out = self.taps.max(axis=(1, 2))
        return self.out.transpose(3, 0, 1, 2)

    def backward(self, grad_output):
        grad = batch_last(self.xp, grad_output)
        grad_windows = self.xp.empty(self.taps.shape, dtype=grad.dtype)
        # Taps in order; `found` marks the windows whose maximum an earlier tap already held, so
        # that a tie sends the whole gradient to the first maximal tap only.
        found = self.xp.zeros(self.out.shape, dtype=bool)
        for ki in range(self.taps.shape[1]):
            for kj in range(self.taps.shape[2]):
                first = (self.taps[:, ki, kj] == self.out) & ~found
                found |= first
                grad_windows[:, ki, kj] = grad * first
        return (self.windows.fold(self.xp, grad_windows),)


class AvgPool2d(Function):
    """out[b, c, i, j] = mean of the kh·kw taps of window (i, j), padding counted as zeros;
    each tap receives ∂L/∂out / (kh·kw)."""

    Windows = SlidingWindows  # as Conv2d's

    def forward(self, x, kernel_size, stride, padding):
        require_ndim("avg_pool2d", "input", x, "(B, C, H, W)")
        self.windows = self.Windows("avg_pool2d", x.shape, kernel_size, stride, padding, 1)
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


def apply_separably(xp, rows, columns, x):
    """rows @ x[b, c] @ columnsᵀ for every (b, c) of x (B, C, H, W), with rows (H', H) and
    columns (W', W): (B, C, H', W').

    Batch last, each product is one matrix product per channel, (H', H) @ (H, W·B), then one
    per (channel, row), (W', W) @ (W, B), instead of B·C tiny products; the result is a
    (B, C, H', W') view of batch-last memory.
    """
    x = batch_last(xp, x)
    C, H, W, B = x.shape
    along_rows = (rows @ x.reshape(C, H, W * B)).reshape(C * rows.shape[0], W, B)
    return (columns @ along_rows).reshape(C, rows.shape[0], columns.shape[0], B).transpose(3, 0, 1, 2)


class SeparableMap(Function):
    """A linear map applied to every (b, c) of x (B, C, H, W) one axis at a time:
    out = A_h @ x @ A_wᵀ with A_h (H_out, H) and A_w (W_out, W), and ∂L/∂x = A_hᵀ @ g @ A_w, its
    transpose. A subclass gives the op's `name` (for its error messages) and `matrix(xp, size,
    output_size, dtype)`, the (output_size, size) matrix of its map along one axis."""

    def forward(self, x, output_size):
        require_ndim(self.name, "input", x, "(B, C, H, W)")
        out_h, out_w = as_pair(output_size, f"{self.name}: output_size", 1)
        self.rows = self.matrix(self.xp, x.shape[2], out_h, x.dtype)
        self.columns = self.matrix(self.xp, x.shape[3], out_w, x.dtype)
        return apply_separably(self.xp, self.rows, self.columns, x)

    def backward(self, grad_output):
        return (apply_separably(self.xp, self.rows.T, self.columns.T, grad_output),)


class AdaptiveAvgPool2d(SeparableMap):
    """Average pooling to a fixed output size: the separable map of the pooling matrices."""

    name = "adaptive_avg_pool2d"
    matrix = staticmethod(adaptive_pooling_matrix)


def adaptive_avg_pool2d(x, output_size):
    return AdaptiveAvgPool2d.apply(x, output_size=output_size)
