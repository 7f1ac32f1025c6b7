"""User implementations of deformable convolution for tests/crosscheck/test_crosscheck.py, in the signature
that `python -m dcn_numba.crosscheck module:function` documents: NumPy arrays in dcn_numba's
layouts, (h, w) pairs, the output returned; an optional `.backward` gives the gradients."""

import numpy as np

import dcn_numba


def correct(input, offset, weight, bias, stride, padding, dilation, mask):
    """dcn_numba's reference, forward and (as .backward) gradients."""
    return dcn_numba.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask,
                                   backend="reference")


def _correct_backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask):
    return dcn_numba.deform_conv2d_backward(grad_output, input, offset, weight, bias, stride,
                                            padding, dilation, mask, backend="reference")


correct.backward = _correct_backward


def swapped_offsets(input, offset, weight, bias, stride, padding, dilation, mask):
    """A classic mistake: the offsets read as (dx, dy) pairs instead of (dy, dx)."""
    B, channels, H_out, W_out = offset.shape
    pairs = offset.reshape(B, channels // 2, 2, H_out, W_out)[:, :, ::-1]
    return correct(input, pairs.reshape(offset.shape), weight, bias, stride, padding, dilation, mask)


def doubled_offset_gradient(input, offset, weight, bias, stride, padding, dilation, mask):
    """The right forward, with a backward whose offset gradient is twice the true one."""
    return correct(input, offset, weight, bias, stride, padding, dilation, mask)


def _doubled_backward(*arguments):
    grad_input, grad_offset, *rest = _correct_backward(*arguments)
    return (grad_input, 2 * grad_offset, *rest)


doubled_offset_gradient.backward = _doubled_backward


def raises(input, offset, weight, bias, stride, padding, dilation, mask):
    """An implementation that fails on every call."""
    raise RuntimeError("not implemented yet")


def mxnet_dcnv1(input, offset, weight, bias, stride, padding, dilation, mask):
    """Deformable convolution with the MXNet DCNv1 sampling rule, written directly: a sample is
    read only when 0 ≤ p_y ≤ H − 1 after a row in [H − 1, H) is clamped to the last row (columns
    likewise), and then blends its corners, all inside the image; any other sample is 0."""
    B, C_in, H, W = input.shape
    C_out, group_channels, kh, kw = weight.shape
    H_out, W_out = offset.shape[2:]
    groups, K = C_in // group_channels, kh * kw
    offset_groups = offset.shape[1] // (2 * K)
    out = np.zeros((B, C_out, H_out, W_out))
    for b, co, i, j in np.ndindex(B, C_out, H_out, W_out):
        g = co // (C_out // groups)
        for c_local, ki, kj in np.ndindex(group_channels, kh, kw):
            c, k = g * group_channels + c_local, ki * kw + kj
            og = c // (C_in // offset_groups)
            y = i * stride[0] - padding[0] + ki * dilation[0] + offset[b, og * 2 * K + 2 * k, i, j]
            x = j * stride[1] - padding[1] + kj * dilation[1] + offset[b, og * 2 * K + 2 * k + 1, i, j]
            m = 1.0 if mask is None else mask[b, og * K + k, i, j]
            out[b, co, i, j] += weight[co, c_local, ki, kj] * m * _dcnv1_sample(input[b, c], y, x)
        out[b, co, i, j] += 0.0 if bias is None else bias[co]
    return out


def _dcnv1_sample(image, y, x):
    H, W = image.shape
    if not (0 <= y < H and 0 <= x < W):
        return 0.0
    y, x = min(y, H - 1.0), min(x, W - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * image[y0, x0] + (1 - ly) * lx * image[y0, x1]
            + ly * (1 - lx) * image[y1, x0] + ly * lx * image[y1, x1])


def edits_its_offset(input, offset, weight, bias, stride, padding, dilation, mask):
    """The right output, then the offsets it was given overwritten: an implementation that changes
    its caller's arrays."""
    output = correct(input, offset, weight, bias, stride, padding, dilation, mask)
    offset[...] = 0.0
    return output


def edits_its_grad_output(input, offset, weight, bias, stride, padding, dilation, mask):
    """The right forward, and a backward that scales the grad_output it was given in place."""
    return correct(input, offset, weight, bias, stride, padding, dilation, mask)


def _scaling_backward(grad_output, *arguments):
    gradients = _correct_backward(grad_output, *arguments)
    grad_output *= 2.0
    return gradients


edits_its_grad_output.backward = _scaling_backward
