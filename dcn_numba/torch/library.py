"""How an op of dcn_numba becomes a PyTorch op: the parts every registration shares.

An op `dcn_numba::name` is registered with torch.library in four steps (dcn_numba.torch.ops does
it for each op, and a new op copies one of those blocks):

1. `torch.library.custom_op("dcn_numba::name")` over a function that calls dcn_numba's forward
   through dcn_numba.torch.bridge, and another, `dcn_numba::name_backward`, over its backward;
   the schema comes from the type hints. Being ops, they are single nodes in torch.fx, torch.export
   and torch.compile graphs, and callable from TorchScript as torch.ops.dcn_numba.name.
2. `register_fake` for both: the shapes of the results, computed from the shapes of the
   arguments without running anything (torch.compile and torch.export trace with it).
3. `differentiable(...)` below: the forward's autograd formula calls the backward op, and the
   backward op's own formula refuses a second derivative.
4. `autocast(...)` below: under torch.autocast the op runs in float32.

Then a plain function calls the op, as users do: in eager mode it first checks the arguments with
dcn_numba's own messages (`check_tensor_arguments`, dcn_numba.ops.checks), and it is written for
TorchScript too (type hints; Python-only code under `if not torch.jit.is_scripting():`, which
TorchScript skips).
"""

from typing import Tuple, Union

import torch


def differentiable(name, tensors, constant=()):
    """Register the autograd formula of the op `name` ("dcn_numba::op"), computed by its backward
    op "dcn_numba::op_backward".

    The first len(tensors) arguments of the op are the tensors named in `tensors` (None where
    absent); the others are its parameters. The backward op, called as
    op_backward(grad_output, *those tensors, *parameters), returns the gradients of the tensors
    given, in argument order, leaving out those named in `constant` (the RoIs). The backward op
    has no derivative: a second derivative, as torch.autograd.functional.hessian asks, is a clear
    error, never zeros.
    """
    namespace, op = name.split("::")
    backward_op = getattr(getattr(torch.ops, namespace), f"{op}_backward")
    count = len(tensors)
    has_gradient = [tensor not in constant for tensor in tensors]

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:count])
        ctx.parameters = inputs[count:]

    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        gradients = iter(backward_op(grad_output, *saved, *ctx.parameters))
        return (*[next(gradients) if wanted and tensor is not None else None
                  for wanted, tensor in zip(has_gradient, saved)],
                *[None] * len(ctx.parameters))

    def no_second_derivative(ctx, *grad_gradients):
        raise RuntimeError(
            f"double backward through {name} is not supported: dcn_numba's backward is "
            "hand-written and has no derivative of its own, so second derivatives "
            "(create_graph=True followed by another backward, "
            "torch.autograd.functional.hessian) are not available")

    torch.library.register_autograd(name, backward, setup_context=setup_context)
    torch.library.register_autograd(f"{name}_backward", no_second_derivative,
                                    setup_context=lambda ctx, inputs, output: None)


def autocast(name):
    """Under torch.autocast (CPU or CUDA) the op `name` runs in float32, its floating tensors cast
    up first, as torchvision's deformable convolution does."""
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(name, device_type, torch.float32)


def present(gradients):
    """The result of a backward op: the gradients dcn_numba returned, without the None of
    tensors that were not given."""
    return [g for g in gradients if g is not None]


def gradients_like(*tensors):
    """The fake result of a backward op: an empty tensor like each tensor given (not None)."""
    return [torch.empty_like(t) for t in tensors if t is not None]


def check_tensor_arguments(named):
    """Every argument given (not None) is a tensor, or a stand-in with __torch_function__ (a
    torch.fx Proxy while tracing); otherwise a TypeError names the argument."""
    for name, value in named:
        if value is not None and not isinstance(value, torch.Tensor) and \
                not torch.overrides.has_torch_function((value,)):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def pair(value: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    """(value, value) for an int, a pair as it is (TorchScript compiles this)."""
    if isinstance(value, int):
        return (value, value)
    return value
