"""The autograd engine: every tensor-algebra Function against finite differences in float64,
composite graphs (shared subexpressions, broadcasting, a tensor used twice), gradient
accumulation, no_grad, and the errors for bad input."""

import pathlib

import numpy as np
import pytest

import dcn_numba.engine.autograd as autograd
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.reference.gradcheck import assert_close
from autograd_helpers import check_tensor_function

rng = np.random.default_rng(0)


def normal(*shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("a_shape, b_shape", [((2, 3), (2, 3)), ((2, 3), (3,)), ((4, 1, 3), (2, 1)),
                                              ((), (2, 2))])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_operations_with_broadcasting(op, a_shape, b_shape):
    ops = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
           "mul": lambda a, b: a * b, "div": lambda a, b: a / b}
    b = normal(*b_shape)
    if op == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)  # keep the divisor away from 0
    out = check_tensor_function(ops[op], {"a": normal(*a_shape), "b": b})
    assert out.shape == np.broadcast_shapes(a_shape, b_shape)


@pytest.mark.parametrize("fn", [
    lambda x: -x,
    lambda x: x ** 3,
    lambda x: 2.0 - x,
    lambda x: 3.0 / (x * x + 1.0),
    lambda x: x * 0.5 + 1,
], ids=["neg", "cube", "rsub", "rtruediv", "scalars"])
def test_unary_and_scalar_operations(fn):
    check_tensor_function(fn, {"x": normal(3, 4)})


def test_square_root_through_fractional_power():
    check_tensor_function(lambda x: x ** 0.5, {"x": np.abs(normal(5)) + 0.5})


@pytest.mark.parametrize("a_shape, b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 2)),
                                              ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_including_broadcast_batches(a_shape, b_shape):
    out = check_tensor_function(lambda a, b: a @ b, {"a": normal(*a_shape), "b": normal(*b_shape)})
    assert out.shape == np.matmul(np.empty(a_shape), np.empty(b_shape)).shape


@pytest.mark.parametrize("index", [
    (slice(1, 3), 2),
    (Ellipsis, slice(None, None, 2)),
    (np.array([0, 2, 0, 0]),),          # a repeated row: its gradient adds up
    (np.array([1, 1]), np.array([0, 3])),
], ids=["slices", "ellipsis-step", "repeated-rows", "point-pairs"])
def test_indexing_scatters_and_accumulates(index):
    check_tensor_function(lambda x: x[index], {"x": normal(3, 4)})


def test_repeated_index_gradient_counts_each_use():
    x = Tensor(np.arange(3.0), requires_grad=True)
    x[np.array([0, 0, 2, 0])].sum().backward()
    assert_close(x.grad, [3.0, 0.0, 1.0])


@pytest.mark.parametrize("fn", [
    lambda x: x.reshape(4, 6),
    lambda x: x.reshape((2, -1)),
    lambda x: x.transpose(2, 0, 1),
    lambda x: x.T,
], ids=["reshape", "reshape-infer", "transpose", "T"])
def test_shape_operations(fn):
    check_tensor_function(fn, {"x": normal(2, 3, 4)})


@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
@pytest.mark.parametrize("axis, keepdims", [(None, False), (None, True), (1, False), ((0, 2), True),
                                            (-1, False)])
def test_reductions(reduction, axis, keepdims):
    out = check_tensor_function(
        lambda x: getattr(x, reduction)(axis=axis, keepdims=keepdims), {"x": normal(2, 3, 4)})
    expected = getattr(np, reduction)(np.zeros((2, 3, 4)), axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(expected)


def test_max_splits_the_gradient_between_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    assert_close(x.grad, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_mean_divides_by_the_reduced_count():
    x = Tensor(normal(2, 3, 4), requires_grad=True)
    x.mean(axis=(0, 2)).sum().backward()
    assert_close(x.grad, np.full((2, 3, 4), 1 / 8))


# ---------------------------------------------------------------------------------------------
# Composite graphs
# ---------------------------------------------------------------------------------------------


def test_shared_subexpression_and_a_tensor_used_twice():
    def fn(x, w):
        hidden = x @ w                       # used by three consumers below
        return (hidden * hidden + hidden / (1.0 + hidden * hidden) - x.sum(axis=1, keepdims=True)
                * hidden).mean(axis=0)

    check_tensor_function(fn, {"x": normal(4, 3), "w": normal(3, 2)})


def test_diamond_with_broadcasting():
    def fn(x, bias):
        left = x + bias           # bias broadcast over rows
        right = (x * bias).sum(axis=0)
        return left * right - (left.max(axis=1, keepdims=True) * bias)

    check_tensor_function(fn, {"x": normal(5, 3), "bias": normal(3)})


def test_same_tensor_as_both_operands():
    check_tensor_function(lambda x: x * x + x @ x.T.reshape(3, 3) - x / (x * x + 2.0),
                          {"x": normal(3, 3)})


def test_hand_computed_gradient():
    # f(a, b) = (a·b + a)², df/da = 2(ab + a)(b + 1), df/db = 2(ab + a)·a
    a = Tensor(np.array(2.0), requires_grad=True)
    b = Tensor(np.array(3.0), requires_grad=True)
    ((a * b + a) ** 2).backward()
    assert a.grad == pytest.approx(2 * 8 * 4) and b.grad == pytest.approx(2 * 8 * 2)


def test_gradients_accumulate_over_backward_calls():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    (x * x).sum().backward()
    (3 * x).sum().backward()
    assert_close(x.grad, 2 * np.array([1.0, -2.0]) + 3)


def test_inputs_without_requires_grad_get_no_gradient():
    x = Tensor(normal(3), requires_grad=True)
    constant = Tensor(normal(3))
    (x * constant).sum().backward()
    assert constant.grad is None and x.grad is not None
    assert_close(x.grad, constant.data)


def test_no_grad_records_no_graph():
    x = Tensor(normal(3), requires_grad=True)
    with no_grad():
        y = x * 2
    assert not y.requires_grad and y.creator is None
    z = x * 2
    assert z.requires_grad and z.creator is not None


def test_backward_with_explicit_gradient_and_numpy_operands():
    x = Tensor(normal(2, 3), requires_grad=True)
    out = np.ones((2, 3)) + x * np.full(3, 2.0)   # ndarray on the left uses Tensor's operator
    assert isinstance(out, Tensor)
    grad = normal(2, 3)
    out.backward(grad)
    assert_close(x.grad, 2 * grad)


def test_deep_chain_needs_no_recursion():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0
    y.backward()
    assert x.grad == 1.0


def test_leaf_gradient_is_a_writable_array_of_its_own():
    x = Tensor(normal(2, 3), requires_grad=True)
    x.sum().backward()         # the backward of sum is a broadcast view
    x.grad *= 2                # must not fail or write into shared memory
    assert_close(x.grad, np.full((2, 3), 2.0))


def test_float32_stays_float32():
    x = Tensor(normal(3).astype(np.float32), requires_grad=True)
    y = (2.5 * x + 1) / 3 - x ** 2
    y.sum().backward()
    assert y.dtype == np.float32 and x.grad.dtype == np.float32


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, message", [
    (lambda a, b: a + b, r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"),
    (lambda a, b: a * b, r"multiply: shapes \(2, 3\) and \(4,\)"),
    (lambda a, b: a / b, r"divide: shapes \(2, 3\) and \(4,\)"),
    (lambda a, b: a @ b.reshape(4, 1).T, r"matmul: shapes \(2, 3\) and \(1, 4\) do not match"),
    (lambda a, b: a.reshape(4, 2), r"reshape: cannot reshape shape \(2, 3\)"),
    (lambda a, b: a.transpose(0, 0), r"transpose: axes \(0, 0\) are not a permutation"),
])
def test_shape_errors_name_the_op_and_the_shapes(fn, message):
    with pytest.raises(ValueError, match=message):
        fn(Tensor(np.zeros((2, 3))), Tensor(np.zeros(4)))


def test_backward_of_a_non_scalar_needs_a_gradient():
    with pytest.raises(ValueError, match=r"one-element tensor, got shape \(2,\)"):
        Tensor(np.zeros(2), requires_grad=True).backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected \(2,\)"):
        (Tensor(np.zeros(2), requires_grad=True) * 1).backward(np.zeros(3))


def test_backward_of_a_constant_is_refused():
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        (Tensor(np.ones(2)) * 2).sum().backward()


def test_tensor_of_a_tensor_is_refused():
    with pytest.raises(TypeError, match="already a Tensor"):
        Tensor(Tensor(np.zeros(1)))


def test_the_engine_stays_small_enough_to_read_in_one_sitting():
    lines = pathlib.Path(autograd.__file__).read_text().splitlines()
    assert len(lines) <= 400, f"dcn_numba/autograd.py has {len(lines)} lines; keep it <= 400"
