"""The neural-network Functions: forwards against direct loop implementations written from the
definitions, every backward against finite differences in float64, and the deformable Functions
(which call the operators' hand-written backward) the same way, on the reference and CPU backends."""

import math

import numpy as np
import pytest

from dcn_numba import deform_conv2d_backward
from dcn_numba import speed
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.reference.gradcheck import assert_close
from dcn_numba.engine import windows
from dcn_numba.engine.functional import BatchNorm as BatchNormFunction
from dcn_numba.engine.windows import adaptive_pooling_matrix
from autograd_helpers import check_tensor_function

rng = np.random.default_rng(1)


def normal(*shape):
    return rng.standard_normal(shape)


# ---------------------------------------------------------------------------------------------
# Activations, log-softmax, cross-entropy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, formula", [
    ("relu", lambda x: np.maximum(x, 0)),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", np.tanh),
])
def test_activations(name, formula):
    x = normal(3, 5) * 3
    out = check_tensor_function(getattr(F, name), {"x": x})
    assert_close(out.data, formula(x))


def test_sigmoid_does_not_overflow():
    out = F.sigmoid(Tensor(np.array([-1000.0, 0.0, 1000.0])))
    assert_close(out.data, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax(axis):
    x = normal(4, 5)
    out = check_tensor_function(lambda x: F.log_softmax(x, axis=axis), {"x": x})
    assert_close(out.data, x - np.log(np.exp(x).sum(axis=axis, keepdims=True)))


def test_log_softmax_is_stable_for_large_logits():
    out = F.log_softmax(Tensor(np.array([[1000.0, 0.0], [-1000.0, -1000.0]])))
    assert_close(out.data, [[0.0, -1000.0], [-math.log(2), -math.log(2)]])


def test_cross_entropy_value_and_gradient():
    logits, labels = normal(6, 4) * 2, np.array([0, 3, 3, 1, 2, 0])
    out = check_tensor_function(lambda logits: F.cross_entropy(logits, labels), {"logits": logits})
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert out.shape == ()
    assert out.item() == pytest.approx(-np.log(probabilities[np.arange(6), labels]).mean())


def test_cross_entropy_of_huge_logits_is_finite():
    loss = F.cross_entropy(Tensor(np.array([[1e4, -1e4], [0.0, 3e4]])), np.array([1, 1]))
    assert loss.item() == pytest.approx(1e4)


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1]), r"labels must be integers of shape \(3,\).*got int64 of shape \(2,\)"),
    (np.array([0.0, 1.0, 2.0]), r"got float64"),
    (np.array([0, 4, 1]), r"labels must lie in \[0, 4\).*\[0, 4\]"),
])
def test_cross_entropy_rejects_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        F.cross_entropy(Tensor(np.zeros((3, 4))), labels)


# ---------------------------------------------------------------------------------------------
# Convolution and pooling
# ---------------------------------------------------------------------------------------------


def loop_conv2d(x, weight, bias, stride, padding, dilation, groups):
    """out[b, co, i, j] = bias[co] + Σ weight[co] · the dilated window (i, j) of the padded x."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    B, C, H, W = x.shape
    C_out, C_group, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    H_out = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    W_out = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((B, C_out, H_out, W_out))
    for co in range(C_out):
        group = co // (C_out // groups)
        channels = slice(group * C_group, (group + 1) * C_group)
        for i in range(H_out):
            for j in range(W_out):
                window = padded[:, channels, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                                j * sw:j * sw + dw * (kw - 1) + 1:dw]
                out[:, co, i, j] = (window * weight[co]).sum(axis=(1, 2, 3)) + bias[co]
    return out


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    ((1, 1), (0, 0), (1, 1), 1),
    ((1, 1), (1, 1), (1, 1), 1),
    ((2, 1), (1, 2), (1, 2), 2),
    ((2, 3), (2, 0), (2, 1), 1),
])
def test_conv2d(stride, padding, dilation, groups):
    x, weight, bias = normal(2, 4, 7, 6), normal(6, 4 // groups, 3, 2), normal(6)
    out = check_tensor_function(
        lambda x, weight, bias: F.conv2d(x, weight, bias, stride, padding, dilation, groups),
        {"x": x, "weight": weight, "bias": bias})
    assert_close(out.data, loop_conv2d(x, weight, bias, stride, padding, dilation, groups))


def test_conv2d_without_bias_and_input_gradient():
    x, weight = Tensor(normal(1, 2, 5, 5)), Tensor(normal(3, 2, 3, 3), requires_grad=True)
    out = F.conv2d(x, weight, padding=1)
    out.sum().backward()
    assert x.grad is None
    assert_close(out.data, loop_conv2d(x.data, weight.data, np.zeros(3), (1, 1), (1, 1), (1, 1), 1))


class NumPyByAnotherName:
    """NumPy under a name that is not `numpy`, so that the engine's Functions take the path they take
    for CuPy (GPU-sized column blocks): that path runs, and is checked, on a machine without a GPU."""

    def __getattr__(self, name):
        return getattr(np, name)


def conv2d_forward_backward(function_class, xp, x, weight, bias, grad_output, **geometry):
    """Output and (∂x, ∂weight, ∂bias) of one Conv2d Function of `function_class` (the engine's or
    the speed layer's), computed with array module xp."""
    function = function_class()
    function.xp = xp
    function.inputs = (Tensor(x, requires_grad=True), Tensor(weight), Tensor(bias))
    out = function.forward(x, weight, bias, **geometry)
    return [out] if grad_output is None else [out, *function.backward(grad_output)]


@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    ((3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((3, 2), (2, 1), (1, 2), (1, 2), 2),
    ((2, 3), (2, 3), (2, 0), (2, 1), 1),
])
def test_conv2d_blocks_and_paths_agree(monkeypatch, kernel, stride, padding, dilation, groups):
    # The speed layer's CPU kernels and the engine's array-module path (with the CPU's and with
    # the GPU's column budget), each in one block and in blocks of one row of windows (so that
    # every block boundary is crossed), give the same results.
    x, weight, bias = normal(3, 4, 9, 7), normal(6, 4 // groups, *kernel), normal(6)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = conv2d_forward_backward(speed.windows.Conv2d, np, x, weight, bias, None, **geometry)[0]
    assert_close(out, loop_conv2d(x, weight, bias, stride, padding, dilation, groups))
    grad_output = normal(*out.shape)
    whole = conv2d_forward_backward(speed.windows.Conv2d, np, x, weight, bias, grad_output, **geometry)
    for function_class, xp, target in [(speed.windows.Conv2d, np, "cpu"), (windows.Conv2d, np, "cpu"),
                                       (windows.Conv2d, NumPyByAnotherName(), "cuda")]:
        for block_bytes in (1, 1 << 30):
            monkeypatch.setitem(windows.COLUMN_BLOCK_BYTES, target, block_bytes)
            blocks = function_class.Windows("test", x.shape, kernel, stride, padding, dilation)
            assert len(list(blocks.column_blocks(xp, x))) == (out.shape[2] if block_bytes == 1 else 1)
            results = conv2d_forward_backward(function_class, xp, x, weight, bias, grad_output, **geometry)
            for name, a, b in zip(["out", "grad_input", "grad_weight", "grad_bias"], results, whole):
                assert_close(a, b, rtol=1e-12, atol=1e-12,
                             what=f"{name} ({function_class.__module__}, {target}, {block_bytes} B)")


def loop_pool(x, kernel, stride, padding, reduce, fill):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    H_out = (x.shape[2] + 2 * ph - kh) // sh + 1
    W_out = (x.shape[3] + 2 * pw - kw) // sw + 1
    return np.array([[[[reduce(padded[b, c, i * sh:i * sh + kh, j * sw:j * sw + kw])
                        for j in range(W_out)] for i in range(H_out)]
                      for c in range(x.shape[1])] for b in range(x.shape[0])])


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                                     ((2, 3), (1, 2), (1, 1))])
def test_max_pool2d(kernel, stride, padding):
    x = normal(2, 3, 7, 6)
    out = check_tensor_function(lambda x: F.max_pool2d(x, kernel, stride, padding), {"x": x})
    assert_close(out.data, loop_pool(x, kernel, stride, padding, np.max, -np.inf))


def test_max_pool2d_sends_the_gradient_to_the_first_maximum_of_overlapping_windows():
    x = Tensor(np.array([[[[1.0, 5.0, 5.0], [0.0, 2.0, 1.0]]]]), requires_grad=True)
    F.max_pool2d(x, (2, 2), stride=1).sum().backward()
    assert_close(x.grad, [[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)),
                                                     ((2, 3), (1, 2), (1, 1))])
def test_max_pool2d_kernels_and_array_module_path_agree(kernel, stride, padding):
    # Small integers make ties in most windows; a NaN, −∞ values and a row of −∞ next to the
    # padding test the rules for those (NaN window: no gradient; all −∞: the first tap).
    x = rng.integers(0, 3, (2, 3, 7, 6)).astype(np.float64)
    x[0, 0, 2, 3] = np.nan
    x[1, 1, 0, :] = -np.inf
    x[1, 2, 3:5, 2:4] = -np.inf
    grad_output = None
    results = {}
    for name, function_class, xp in [("kernels", speed.windows.MaxPool2d, np),
                                     ("array module", windows.MaxPool2d, NumPyByAnotherName())]:
        function = function_class()
        function.xp = xp
        out = function.forward(x, kernel_size=kernel, stride=stride, padding=padding)
        grad_output = normal(*out.shape) if grad_output is None else grad_output
        results[name] = (out, function.backward(grad_output)[0])
    assert_close(results["kernels"][0], loop_pool(x, kernel, stride, padding, np.max, -np.inf), what="out")
    np.testing.assert_array_equal(results["kernels"][0], results["array module"][0], err_msg="out")
    # Overlapping windows add their shares in another order: equal up to rounding.
    assert_close(results["kernels"][1], results["array module"][1], rtol=1e-12, atol=1e-12,
                 what="grad_input")


@pytest.mark.parametrize("kernel, stride, padding", [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1))])
def test_avg_pool2d(kernel, stride, padding):
    x = normal(2, 3, 6, 5)
    out = check_tensor_function(lambda x: F.avg_pool2d(x, kernel, stride, padding), {"x": x})
    assert_close(out.data, loop_pool(x, kernel, stride, padding, np.mean, 0.0))


@pytest.mark.parametrize("output_size", [1, (3, 2), (5, 4), (2, 3)])
def test_adaptive_avg_pool2d(output_size):
    x = normal(2, 3, 5, 4)
    out = check_tensor_function(lambda x: F.adaptive_avg_pool2d(x, output_size), {"x": x})
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    expected = np.zeros((2, 3, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            rows = slice(i * 5 // out_h, math.ceil((i + 1) * 5 / out_h))
            columns = slice(j * 4 // out_w, math.ceil((j + 1) * 4 / out_w))
            expected[:, :, i, j] = x[:, :, rows, columns].mean(axis=(2, 3))
    assert_close(out.data, expected)


def test_adaptive_pooling_bins_overlap_when_sizes_do_not_divide():
    # 5 rows into 3 bins: [0, 2), [1, 4), [3, 5)
    rows = adaptive_pooling_matrix(np, 5, 3, np.float64)
    assert_close(rows, [[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, .5, .5]])


@pytest.mark.parametrize("call, message", [
    (lambda: F.conv2d(Tensor(np.zeros((1, 3, 5, 5))), Tensor(np.zeros((4, 2, 3, 3)))),
     r"conv2d: input \(1, 3, 5, 5\) and weight \(4, 2, 3, 3\) do not match for groups=1"),
    (lambda: F.conv2d(Tensor(np.zeros((1, 4, 5, 5))), Tensor(np.zeros((3, 2, 3, 3))), groups=2),
     r"conv2d: .*C_out divisible by groups"),
    (lambda: F.conv2d(Tensor(np.zeros((1, 2, 5, 5))), Tensor(np.zeros((4, 2, 3, 3))), Tensor(np.zeros(3))),
     r"conv2d: bias has shape \(3,\), expected \(4,\)"),
    (lambda: F.conv2d(Tensor(np.zeros((2, 5, 5))), Tensor(np.zeros((4, 2, 3, 3)))),
     r"conv2d: input must be \(B, C_in, H, W\), got shape \(2, 5, 5\)"),
    (lambda: F.conv2d(Tensor(np.zeros((1, 2, 2, 5))), Tensor(np.zeros((4, 2, 3, 3)))),
     r"conv2d: input of spatial size \(2, 5\) .* smaller than the kernel's reach"),
    (lambda: F.max_pool2d(Tensor(np.zeros((1, 2, 1, 5))), 2),
     r"max_pool2d: input of spatial size \(1, 5\)"),
    (lambda: F.avg_pool2d(Tensor(np.zeros((1, 2, 4, 4))), 2, stride=0),
     r"avg_pool2d: stride must be >= 1"),
    (lambda: F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5)))),
     r"linear: input \(2, 3\) has 3 features but weight \(4, 5\) expects 5"),
])
def test_shape_errors_name_the_op_and_the_shapes(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# ---------------------------------------------------------------------------------------------
# Batch normalisation, dropout, flatten, linear
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 2, 3), (5, 3)])
def test_batch_norm(training, shape):
    C = shape[1]
    x, weight, bias = normal(*shape), normal(C), normal(C)
    running_mean, running_var = normal(C), rng.uniform(0.5, 2.0, C)

    def fn(x, weight, bias):
        return F.batch_norm(x, weight, bias, running_mean.copy(), running_var.copy(), training)

    out = check_tensor_function(fn, {"x": x, "weight": weight, "bias": bias})
    axes = (0,) + tuple(range(2, len(shape)))
    mean = x.mean(axis=axes, keepdims=True) if training else running_mean.reshape(1, C, *[1] * (len(shape) - 2))
    var = x.var(axis=axes, keepdims=True) if training else running_var.reshape(mean.shape)
    expected = weight.reshape(mean.shape) * (x - mean) / np.sqrt(var + 1e-5) + bias.reshape(mean.shape)
    assert_close(out.data, expected)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch_last", [True, False])
def test_batch_norm_kernels_and_array_module_path_agree(training, batch_last):
    # A large mean makes the variance a test of the centred second pass.
    x = normal(4, 3, 5, 6).astype(np.float32) + 100
    if batch_last:  # the layout the window ops hand over: channel rows are a free view
        x = np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    weight, bias = normal(3).astype(np.float32), normal(3).astype(np.float32)
    grad_output = normal(*x.shape).astype(np.float32)
    results = {}
    for name, function_class, xp in [("kernels", speed.normalization.BatchNorm, np),
                                     ("array module", BatchNormFunction, NumPyByAnotherName())]:
        running = [np.full(3, 99.0), np.full(3, 2.0)]
        function = function_class()
        function.xp, function.inputs = xp, (Tensor(x), Tensor(weight), Tensor(bias))
        out = function.forward(x, weight, bias, *running, training=training, momentum=0.1, eps=1e-5)
        results[name] = [out, *function.backward(grad_output), *running]
    names = ["out", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var"]
    for name, a, b in zip(names, results["kernels"], results["array module"]):
        assert a.dtype == b.dtype, name
        assert_close(a, b, rtol=1e-4, atol=1e-4, what=name)
    x64 = x.astype(np.float64)
    expected_var = x64.var(axis=(0, 2, 3)) if training else np.full(3, 2.0)
    expected_mean = x64.mean(axis=(0, 2, 3)) if training else np.full(3, 99.0)
    expected = (weight.reshape(1, 3, 1, 1) * (x64 - expected_mean.reshape(1, 3, 1, 1))
                / np.sqrt(expected_var.reshape(1, 3, 1, 1) + 1e-5) + bias.reshape(1, 3, 1, 1))
    assert_close(results["kernels"][0], expected, rtol=1e-4, atol=1e-4, what="out vs float64")


def test_batch_norm_updates_running_statistics_only_in_training():
    x = normal(6, 2, 3, 3) * 2 + 1
    running_mean, running_var = np.zeros(2), np.ones(2)
    ones, zeros = Tensor(np.ones(2)), Tensor(np.zeros(2))
    F.batch_norm(Tensor(x), ones, zeros, running_mean, running_var, training=True, momentum=0.25)
    assert_close(running_mean, 0.25 * x.mean(axis=(0, 2, 3)))
    assert_close(running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1))
    before = running_mean.copy(), running_var.copy()
    F.batch_norm(Tensor(x), ones, zeros, running_mean, running_var, training=False)
    assert_close(running_mean, before[0])
    assert_close(running_var, before[1])


def test_batch_norm_rejects_a_channel_mismatch():
    with pytest.raises(ValueError, match=r"batch_norm: weight has shape \(3,\) but input \(2, 4, 5, 5\)"):
        F.batch_norm(Tensor(np.zeros((2, 4, 5, 5))), Tensor(np.ones(3)), Tensor(np.zeros(3)),
                     np.zeros(3), np.ones(3), training=True)


def test_dropout_keeps_and_rescales_and_passes_the_same_mask_back():
    x = Tensor(np.ones((100, 100)), requires_grad=True)
    out = F.dropout(x, 0.25, training=True, rng=np.random.default_rng(0))
    kept = out.data != 0
    assert 0.72 < kept.mean() < 0.78
    assert_close(out.data[kept], np.full(kept.sum(), 1 / 0.75))
    out.backward(np.full((100, 100), 3.0))
    assert_close(x.grad, 3.0 * out.data)


def test_dropout_is_the_identity_in_evaluation_and_checks_p():
    x = Tensor(normal(3))
    assert F.dropout(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match=r"dropout: p must lie in \[0, 1\), got 1.0"):
        F.dropout(x, 1.0)


def test_flatten_and_linear():
    x, weight, bias = normal(2, 3, 2, 2), normal(5, 12), normal(5)
    out = check_tensor_function(lambda x, weight, bias: F.linear(F.flatten(x), weight, bias),
                                {"x": x, "weight": weight, "bias": bias})
    assert_close(out.data, x.reshape(2, 12) @ weight.T + bias)


# ---------------------------------------------------------------------------------------------
# Deformable Functions: the operators' forward and hand-written backward inside the engine
# ---------------------------------------------------------------------------------------------


# Every element by finite differences on the reference; one random direction on the CPU kernels,
# whose calls cost more than the reference's on such tiny problems (threads start per call).
BACKEND_CHECKS = [("reference", "elementwise"), ("cpu", "random")]


def fractional_offsets(shape, scale=1.5):
    """Offsets whose sampling positions stay away from integers, where bilinear sampling has kinks."""
    values = rng.uniform(-scale, scale, shape)
    return np.floor(values) + np.clip(values - np.floor(values), 0.15, 0.85)


@pytest.mark.parametrize("backend, mode", BACKEND_CHECKS)
@pytest.mark.parametrize("modulated", [False, True])
def test_deform_conv2d_function(backend, mode, modulated):
    # 2 weight groups, 2 offset groups; H_out = (5 + 2 − 2 − 1)//2 + 1 = 3, W_out = (6 − 4 − 1) + 1 = 2
    arrays = {"x": normal(2, 4, 5, 6), "offset": fractional_offsets((2, 2 * 2 * 9, 3, 2)),
              "weight": normal(4, 2, 3, 3), "bias": normal(4)}
    if modulated:
        arrays["mask"] = rng.uniform(0.1, 0.9, (2, 2 * 9, 3, 2))

    def fn(x, offset, weight, bias, mask=None):
        with F.backend(backend):
            return F.deform_conv2d(x, offset, weight, bias, stride=(2, 1), padding=(1, 0),
                                   dilation=(1, 2), mask=mask)

    check_tensor_function(fn, arrays, mode=mode, rtol=1e-5, atol=1e-6)


def test_deform_conv2d_with_zero_offsets_is_conv2d():
    x, weight, bias = normal(2, 3, 5, 5), normal(4, 3, 3, 3), normal(4)
    deformable = F.deform_conv2d(Tensor(x), Tensor(np.zeros((2, 18, 5, 5))), Tensor(weight),
                                 Tensor(bias), padding=1)
    assert_close(deformable.data, F.conv2d(Tensor(x), Tensor(weight), Tensor(bias), padding=1).data)


@pytest.mark.parametrize("backend, mode", BACKEND_CHECKS)
def test_deform_roi_pool_function(backend, mode):
    rois = np.array([[0, 0.6, 1.3, 5.2, 4.4], [1, 2.2, 0.4, 6.7, 5.9], [0, 1.1, 2.3, 3.6, 6.1]])

    def fn(x, offset):
        with F.backend(backend):
            return F.deform_roi_pool(x, rois, offset, output_size=(2, 3), spatial_scale=1.0,
                                     sampling_ratio=2, gamma=0.1)

    check_tensor_function(fn, {"x": normal(2, 3, 7, 8), "offset": normal(3, 2, 2, 3)},
                          mode=mode, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, mode", BACKEND_CHECKS)
def test_deform_psroi_pool_function(backend, mode):
    rois = np.array([[0, 0.6, 1.3, 5.2, 4.4], [1, 2.2, 0.4, 6.7, 5.9]])

    def fn(x, trans):
        with F.backend(backend):
            return F.deform_psroi_pool(x, rois, trans, spatial_scale=0.9, output_dim=2,
                                       group_size=2, pooled_size=2, sample_per_part=3, trans_std=0.2)

    check_tensor_function(fn, {"x": normal(2, 8, 7, 8), "trans": normal(2, 2, 2, 2)},
                          mode=mode, rtol=1e-5, atol=1e-6)


def test_deformable_functions_pass_no_gradient_to_rois():
    rois = Tensor(np.array([[0, 1.0, 1.0, 4.0, 4.0]]), requires_grad=True)
    x = Tensor(normal(1, 2, 6, 6), requires_grad=True)
    F.deform_roi_pool(x, rois, None, output_size=2).sum().backward()
    assert rois.grad is None and x.grad is not None


def test_backend_context_chooses_the_backend_and_the_backward_keeps_it(monkeypatch):
    used = []

    def recording_backward(*args, **kwargs):
        used.append(kwargs["backend"])
        return deform_conv2d_backward(*args, **kwargs)

    monkeypatch.setattr(F, "deform_conv2d_backward", recording_backward)
    arrays = (normal(1, 2, 4, 4), fractional_offsets((1, 18, 4, 4)), normal(2, 2, 3, 3))
    outputs = {}
    for backend in ("reference", "cpu", None):
        with F.backend(backend):
            tensors = [Tensor(a, requires_grad=True) for a in arrays]
            outputs[backend] = F.deform_conv2d(*tensors, padding=1)
        outputs[backend].sum().backward()      # outside the block: the forward's backend holds
    assert used == ["reference", "cpu", None]
    assert_close(outputs["cpu"].data, outputs["reference"].data)
    with pytest.raises(ValueError, match=r"backend must be one of .* got 'gpu'"):
        with F.backend("gpu"):
            pass


def test_deformable_function_reports_the_operators_shape_errors():
    with pytest.raises(ValueError, match=r"offset has shape \(1, 18, 3, 3\), expected \(1, 18, 4, 4\)"):
        F.deform_conv2d(Tensor(np.zeros((1, 2, 4, 4))), Tensor(np.zeros((1, 18, 3, 3))),
                        Tensor(np.zeros((2, 2, 3, 3))), padding=1)
