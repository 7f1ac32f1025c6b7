"""Tensors in, dcn_numba's arrays through, tensors out: the one place where torch meets dcn_numba.

A CPU tensor is read through its NumPy view (the "cpu" backend), a CUDA tensor through DLPack as
a CuPy array (the "cuda" backend), launched on torch's current CUDA stream so that the kernels
stay ordered with torch's work. Tensors are detached (the ops' autograd formulas call dcn_numba's
own backward) and made contiguous, which copies only a tensor that is not contiguous.

NumPy has no bfloat16, and dcn_numba computes in float32 or float64: float16 and bfloat16 tensors
are computed in float32 and the results returned in the tensors' dtype, as torchvision does under
autocast. Devices and dtypes are checked here (torch has devices and dtypes NumPy lacks), with
messages in the words of dcn_numba's NumPy API; everything else is checked by that API.
"""

import contextlib

import torch

from dcn_numba.runtime import arrays as _arrays

# The dtypes dcn_numba computes in, and those computed in float32 and returned in their own.
FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def dtype_name(dtype):
    """'float32' for torch.float32: the name NumPy gives the same dtype."""
    return str(dtype).removeprefix("torch.")


def check_tensors(named):
    """Every argument given (not None) is a torch.Tensor, all on one device, all of one dtype:
    float32 or float64 (computed as given), float16 or bfloat16 (computed in float32).
    `named` is a sequence of (argument name, tensor or None); returns the first tensor."""
    present = [(name, t) for name, t in named if t is not None]
    for name, tensor in present:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    first_name, first = present[0]
    for name, tensor in present[1:]:
        if tensor.device != first.device:
            raise TypeError(
                f"{name} is on {tensor.device} but {first_name} is on {first.device}; "
                "all tensors of one call must be on one device (move them with .to(device))")
    if first.dtype not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(f"{first_name} must be float32 or float64 (float16 and bfloat16 are "
                        f"computed in float32), got {dtype_name(first.dtype)}")
    for name, tensor in present[1:]:
        if tensor.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {dtype_name(tensor.dtype)} but {first_name} has "
                f"{dtype_name(first.dtype)}; all arrays of one call must share a dtype")
    return first


def backend(device):
    """The dcn_numba backend that runs tensors of `device`: 'cpu' or 'cuda'."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if _arrays.cupy is None:
            raise TypeError(f"tensors on {device} run on dcn_numba's cuda backend, which needs "
                            "CuPy: pip install 'dcn_numba[cuda]' (CUDA 13) or '[cuda12]'")
        return "cuda"
    raise TypeError(f"tensors must be on a CPU or CUDA device, got {device}")


def view(tensor):
    """The array dcn_numba reads `tensor` through, sharing its memory: a NumPy array for a CPU
    tensor, a CuPy array (DLPack) for a CUDA tensor. Detached and contiguous first."""
    if tensor is None:
        return None
    tensor = tensor.detach().contiguous()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    import cupy

    return cupy.from_dlpack(tensor)


def as_tensor(array, device):
    """A torch tensor sharing the memory of a result of dcn_numba (None stays None)."""
    if array is None:
        return None
    if device.type == "cpu":
        return torch.from_numpy(array)
    return torch.from_dlpack(array)


@contextlib.contextmanager
def on_device(device):
    """Run dcn_numba's CUDA kernels on `device` and on torch's current stream there.

    dcn_numba launches on CuPy's current stream (dcn_numba.runtime.arrays.cuda_stream); making
    torch's stream CuPy's current one orders the kernels after the torch work that produced the
    inputs and before the torch work that reads the outputs. A CPU device needs nothing."""
    if device.type != "cuda":
        yield
        return
    import cupy

    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index), cupy.cuda.ExternalStream(stream.cuda_stream, device.index):
        yield


def call(function, tensors, **parameters):
    """dcn_numba's `function` on `tensors` (a dict: argument name -> tensor or None), on their
    device's backend and stream; its result (an array or a tuple of arrays, None entries kept)
    comes back as tensors of the input's dtype. Half-precision tensors go through float32."""
    first = check_tensors(tensors.items())
    dtype, device = first.dtype, first.device
    if dtype in HALF_DTYPES:
        tensors = {name: None if t is None else t.float() for name, t in tensors.items()}
    with on_device(device):  # DLPack hand-overs on that stream too: no synchronisation needed
        views = {name: view(t) for name, t in tensors.items()}
        result = function(**views, **parameters, backend=backend(device))
        if isinstance(result, tuple):
            return tuple(None if r is None else as_tensor(r, device).to(dtype) for r in result)
        return as_tensor(result, device).to(dtype)
