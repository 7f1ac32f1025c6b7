"""A minimal reverse-mode autograd engine over NumPy or CuPy arrays.

A `Tensor` wraps an array. Every operation on Tensors is a `Function`: `forward` computes the
result from plain arrays and keeps what the backward pass will need; `backward` turns ∂L/∂out,
the gradient of a scalar loss L with respect to the output, into ∂L/∂input for each input (a
vector-Jacobian product). `Tensor.backward()` sorts the graph topologically and visits it from
the loss back to the leaves, so that the gradient of a tensor used several times is complete
(summed over every use) before it is passed on.

The device follows the data: each Function computes with the array module (numpy or cupy) of its
inputs, and mixing the two is a TypeError. This file holds the engine and the tensor algebra
(+ − * / ** @, indexing, reshape, transpose, sum, mean, max); the neural-network Functions live in
`dcn_numba.engine.functional`.
"""

import math
import numbers

import numpy as np

from dcn_numba.runtime.arrays import array_module, is_cupy
from dcn_numba.engine.mode import changed, implementation, mode


def no_grad():
    """Within this block Functions record no graph: for evaluation and parameter updates."""
    return changed(grad=False)


class Function:
    """One differentiable operation: `forward` on arrays and its vector-Jacobian product.

    Subclasses implement `forward(self, *arrays, **params) -> array` and
    `backward(self, grad_output) -> tuple` with one gradient per positional input (None where an
    input gets none). Positional inputs are Tensors (or None for an absent optional input); the
    keyword parameters are plain values. `self.xp` is the array module of the inputs. `apply`
    runs a faster implementation where one is registered for these arrays (`engine.mode`).
    """

    @classmethod
    def apply(cls, *inputs, **params):
        arrays = [None if t is None else t.data for t in inputs]
        xp = array_module(*arrays)
        function = implementation(cls, xp)()
        function.inputs, function.xp = inputs, xp
        output = Tensor(function.forward(*arrays, **params))
        if mode().grad and any(t is not None and t.requires_grad for t in inputs):
            output.requires_grad = True
            output.creator = function
        return output


class Tensor:
    """An array with an optional gradient: `data` (NumPy or CuPy), `grad` (same shape, filled by
    `backward()` for leaves that require it) and `creator` (the Function that made it)."""

    # Makes `ndarray + Tensor` call Tensor.__radd__ instead of NumPy's elementwise loop.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            raise TypeError("Tensor(data): data is already a Tensor; use tensor.detach()")
        self.data = data if isinstance(data, np.ndarray) or is_cupy(data) else np.asarray(data)
        self.requires_grad = requires_grad
        self.grad = None
        self.creator = None

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        return f"Tensor({self.data!r}, requires_grad={self.requires_grad})"

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def backward(self, grad=None):
        """Accumulate ∂self/∂leaf (times `grad`) into `leaf.grad` for every leaf requiring one.

        `grad` is ∂L/∂self; it defaults to 1 for a one-element tensor (the loss itself).
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require a gradient (no tensor it "
                               "was computed from has requires_grad=True, or it was made under no_grad)")
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without a gradient needs a one-element tensor, "
                                 f"got shape {self.shape}; pass grad= of that shape")
            grad = array_module(self.data).ones_like(self.data)
        if tuple(grad.shape) != tuple(self.shape):
            raise ValueError(f"backward(): grad has shape {tuple(grad.shape)}, expected {self.shape}")
        grads = {id(self): grad}
        for tensor in reversed(self._graph_in_topological_order()):
            grad = grads.pop(id(tensor), None)
            if grad is None:
                continue
            if tensor.creator is None:
                # A leaf keeps an array of its own: backward passes hand back views (the
                # broadcast of a sum) and share one array between inputs (the two sides of +).
                tensor.grad = grad.copy() if tensor.grad is None else tensor.grad + grad
                continue
            function = tensor.creator
            for parent, parent_grad in zip(function.inputs, function.backward(grad)):
                if parent is not None and parent.requires_grad and parent_grad is not None:
                    key = id(parent)
                    grads[key] = parent_grad if key not in grads else grads[key] + parent_grad

    def _graph_in_topological_order(self):
        """Every tensor that requires a gradient and leads to self, each after its inputs."""
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            tensor, inputs_done = stack.pop()
            if inputs_done:
                order.append(tensor)
                continue
            if id(tensor) in visited:
                continue
            visited.add(id(tensor))
            stack.append((tensor, True))
            if tensor.creator is not None:
                stack.extend((parent, False) for parent in tensor.creator.inputs
                             if parent is not None and parent.requires_grad)
        return order

    def _lift(self, other):
        """A constant Tensor for a Python number, in this tensor's dtype and array module."""
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Number):
            return Tensor(array_module(self.data).asarray(other, dtype=self.dtype))
        return Tensor(other)

    def __add__(self, other):
        return Add.apply(self, self._lift(other))

    def __radd__(self, other):
        return Add.apply(self._lift(other), self)

    def __sub__(self, other):
        return Add.apply(self, Neg.apply(self._lift(other)))

    def __rsub__(self, other):
        return Add.apply(self._lift(other), Neg.apply(self))

    def __mul__(self, other):
        return Mul.apply(self, self._lift(other))

    def __rmul__(self, other):
        return Mul.apply(self._lift(other), self)

    def __truediv__(self, other):
        return Div.apply(self, self._lift(other))

    def __rtruediv__(self, other):
        return Div.apply(self._lift(other), self)

    def __neg__(self):
        return Neg.apply(self)

    def __pow__(self, exponent):
        return Pow.apply(self, exponent=exponent)

    def __matmul__(self, other):
        return MatMul.apply(self, self._lift(other))

    def __rmatmul__(self, other):
        return MatMul.apply(self._lift(other), self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        return GetItem.apply(self, index=index)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(shape))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return Transpose.apply(self, axes=tuple(axes) or tuple(reversed(range(self.ndim))))

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis=None, keepdims=False):
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        axes = range(self.ndim) if axis is None else np.atleast_1d(axis)
        count = math.prod(self.shape[int(a)] for a in axes)
        return self.sum(axis, keepdims) * (1.0 / max(count, 1))

    def max(self, axis=None, keepdims=False):
        return Max.apply(self, axis=axis, keepdims=keepdims)


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`: the backward of broadcasting, which repeats an operand along
    new leading axes and along its axes of length 1."""
    if tuple(grad.shape) == tuple(shape):
        return grad
    leading = grad.ndim - len(shape)
    axes = tuple(range(leading)) + tuple(
        leading + axis for axis, length in enumerate(shape) if length == 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


class Binary(Function):
    """An elementwise operation of two broadcastable operands."""

    name = "elementwise operation"

    def check_shapes(self, a, b):
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(f"{self.name}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be "
                             "broadcast together (trailing axes must be equal or 1)") from None


class Add(Binary):
    """out = a + b; ∂L/∂a = ∂L/∂out and ∂L/∂b = ∂L/∂out, each summed over broadcast axes."""

    name = "add"

    def forward(self, a, b):
        self.check_shapes(a, b)
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, grad_output):
        return tuple(unbroadcast(grad_output, shape) for shape in self.shapes)


class Mul(Binary):
    """out = a·b; ∂L/∂a = ∂L/∂out·b and ∂L/∂b = ∂L/∂out·a."""

    name = "multiply"

    def forward(self, a, b):
        self.check_shapes(a, b)
        self.a, self.b = a, b
        return a * b

    def backward(self, grad_output):
        return (unbroadcast(grad_output * self.b, self.a.shape),
                unbroadcast(grad_output * self.a, self.b.shape))


class Div(Binary):
    """out = a / b; ∂L/∂a = ∂L/∂out / b and ∂L/∂b = −∂L/∂out·a / b²."""

    name = "divide"

    def forward(self, a, b):
        self.check_shapes(a, b)
        self.a, self.b = a, b
        return a / b

    def backward(self, grad_output):
        grad_a = grad_output / self.b
        return (unbroadcast(grad_a, self.a.shape),
                unbroadcast(-grad_a * self.a / self.b, self.b.shape))


class Neg(Function):
    """out = −a."""

    def forward(self, a):
        return -a

    def backward(self, grad_output):
        return (-grad_output,)


class Pow(Function):
    """out = a^n for a constant exponent n; ∂L/∂a = ∂L/∂out·n·a^(n−1)."""

    def forward(self, a, exponent):
        if not isinstance(exponent, numbers.Real):
            raise TypeError(f"power: the exponent must be a number, got {type(exponent).__name__}")
        self.a, self.exponent = a, exponent
        return a ** exponent

    def backward(self, grad_output):
        return (grad_output * self.exponent * self.a ** (self.exponent - 1),)


class MatMul(Function):
    """out = a @ b over the last two axes (leading axes broadcast);
    ∂L/∂a = ∂L/∂out @ bᵀ and ∂L/∂b = aᵀ @ ∂L/∂out."""

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                             "(both need 2 or more axes, and a.shape[-1] == b.shape[-2])")
        self.a, self.b = a, b
        return a @ b

    def backward(self, grad_output):
        return (unbroadcast(grad_output @ self.b.swapaxes(-1, -2), self.a.shape),
                unbroadcast(self.a.swapaxes(-1, -2) @ grad_output, self.b.shape))


class GetItem(Function):
    """out = a[index]; the gradient is scattered back, adding where an index repeats."""

    def forward(self, a, index):
        self.shape, self.dtype, self.index = a.shape, a.dtype, index
        return a[index]

    def backward(self, grad_output):
        grad = self.xp.zeros(self.shape, dtype=self.dtype)
        self.xp.add.at(grad, self.index, grad_output)
        return (grad,)


class Reshape(Function):
    """out = a viewed with a new shape of the same size."""

    def forward(self, a, shape):
        self.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape shape {tuple(a.shape)} ({a.size} elements) "
                             f"into {shape}") from None

    def backward(self, grad_output):
        return (grad_output.reshape(self.shape),)


class Transpose(Function):
    """out = a with its axes permuted; the gradient is permuted back."""

    def forward(self, a, axes):
        if sorted(axes) != list(range(a.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the "
                             f"{a.ndim} axes of shape {tuple(a.shape)}")
        self.axes = axes
        return a.transpose(axes)

    def backward(self, grad_output):
        return (grad_output.transpose(np.argsort(self.axes)),)


class Sum(Function):
    """out = Σ a over `axis`; every summed element receives ∂L/∂out."""

    def forward(self, a, axis, keepdims):
        self.shape, self.axis, self.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    def backward(self, grad_output):
        if not self.keepdims and self.axis is not None:
            grad_output = self.xp.expand_dims(grad_output, self.axis)
        return (self.xp.broadcast_to(grad_output, self.shape),)


class Max(Function):
    """out = max a over `axis`; ∂L/∂out goes to the maximal elements, split evenly among ties."""

    def forward(self, a, axis, keepdims):
        self.a, self.axis = a, axis
        self.out = a.max(axis=axis, keepdims=True)
        return self.out if keepdims else self.out.squeeze(axis)

    def backward(self, grad_output):
        winners = self.a == self.out
        ties = winners.sum(axis=self.axis, keepdims=True, dtype=self.a.dtype)
        share = grad_output.reshape(self.out.shape) / ties
        return (share * winners,)
