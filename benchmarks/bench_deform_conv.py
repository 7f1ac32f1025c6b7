"""Deformable convolution on a ResNet-like layer: B=8, 64 → 64 channels, 56×56, 3×3, padding 1.

    python benchmarks/bench_deform_conv.py

First checks the CPU kernels (and the CUDA kernels when CuPy and a GPU are there) against the NumPy
reference on a small case, forward and all five gradients, and prints the first mismatches and
stops if any. Then times the CPU backend's forward and forward + backward (float32, offsets of a
few pixels) against, measured in the same run:

* an ordinary convolution of the same shape done with the same GEMM: im2col by NumPy strided
  windows over the zero-padded input, then the same batched matmul;
* torchvision.ops.deform_conv2d on the CPU, with as many torch threads as Numba threads, when
  torchvision is installed (its output is checked against ours first).

With CuPy and a GPU, the CUDA backend is timed the same way against torchvision's CUDA op.
Targets on a 2-core machine: forward + backward at least 5× faster than torchvision's CPU op,
forward within 2× of the ordinary convolution.
"""

import sys

import numba
import numpy as np

from dcn_numba import deform_conv2d, deform_conv2d_backward
from dcn_numba._arrays import cupy
from dcn_numba.gradcheck import describe_mismatch
from timing import best_time, machine_description, row

B, C, H, W, KERNEL = 8, 64, 56, 56, 3
OFFSET_SCALE = 2.0  # offsets of a few pixels
NAMES = ["output", "grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]
TOLERANCE = {np.float64: (1e-10, 1e-10), np.float32: (1e-4, 1e-4)}


def problem(B, C_in, C_out, H, W, dtype, offset_groups=1, with_mask=False, seed=0):
    """input, offset, weight, bias, mask, grad_output of a 3×3, padding-1 layer (H_out = H)."""
    rng = np.random.default_rng(seed)
    K = KERNEL * KERNEL
    arrays = (rng.standard_normal((B, C_in, H, W)),
              OFFSET_SCALE * rng.standard_normal((B, 2 * offset_groups * K, H, W)),
              rng.standard_normal((C_out, C_in, KERNEL, KERNEL)) / np.sqrt(C_in * K),
              rng.standard_normal(C_out),
              rng.random((B, offset_groups * K, H, W)) if with_mask else None,
              rng.standard_normal((B, C_out, H, W)))
    return [None if a is None else a.astype(dtype) for a in arrays]


def move(backend, arrays):
    return [a if a is None or backend != "cuda" else cupy.asarray(a) for a in arrays]


def to_numpy(array):
    return array if array is None or isinstance(array, np.ndarray) else cupy.asnumpy(array)


def check(name, actual, expected, rtol, atol):
    """True when actual matches expected; otherwise print the first mismatches."""
    if np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
        return True
    print(f"MISMATCH {name}:\n{describe_mismatch(actual, expected, rtol, atol)}")
    return False


def check_against_reference(backend):
    """Forward and all five gradients of `backend` against the reference, v1 and v2, both dtypes."""
    ok = True
    for dtype in (np.float64, np.float32):
        for with_mask in (False, True):
            input, offset, weight, bias, mask, grad_output = problem(
                2, 4, 6, 7, 7, dtype, offset_groups=2, with_mask=with_mask, seed=1)
            exact = [None if a is None else a.astype(np.float64) for a in (input, offset, weight, bias, mask)]
            expected = [deform_conv2d(*exact[:4], 1, 1, 1, exact[4], backend="reference")]
            expected += deform_conv2d_backward(grad_output.astype(np.float64), *exact[:4], 1, 1, 1, exact[4],
                                               backend="reference")
            moved = move(backend, [input, offset, weight, bias, mask, grad_output])
            actual = [deform_conv2d(*moved[:4], 1, 1, 1, moved[4], backend=backend)]
            actual += deform_conv2d_backward(moved[5], *moved[:4], 1, 1, 1, moved[4], backend=backend)
            label = f"{backend} {np.dtype(dtype).name} {'v2' if with_mask else 'v1'}"
            for name, a, e in zip(NAMES, actual, expected):
                if e is not None:
                    ok &= check(f"{label} {name}", to_numpy(a), e, *TOLERANCE[dtype])
    return ok


def ours(backend, input, offset, weight, grad_output):
    """(forward, forward + backward) closures of dcn_numba on `backend`."""
    def forward():
        return deform_conv2d(input, offset, weight, padding=1, backend=backend)

    def forward_backward():
        forward()
        return deform_conv2d_backward(grad_output, input, offset, weight, padding=1, backend=backend)

    return forward, forward_backward


def ordinary_convolution(input, weight):
    """The same layer with zero offsets, done the ordinary way with the same GEMM: im2col by
    strided windows over the zero-padded input (B, C·K, H·W), then the batched matmul."""
    windows_of = np.lib.stride_tricks.sliding_window_view
    C_out, C_in = weight.shape[:2]
    weights = weight.reshape(1, C_out, C_in * KERNEL * KERNEL)

    def forward():
        padded = np.pad(input, ((0, 0), (0, 0), (1, 1), (1, 1)))
        windows = windows_of(padded, (KERNEL, KERNEL), axis=(2, 3))  # (B, C, H, W, kh, kw)
        col = np.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3))  # (B, C, kh, kw, H, W)
        return np.matmul(weights, col.reshape(B, 1, C_in * KERNEL * KERNEL, H * W)).reshape(B, C_out, H, W)

    return forward


def torchvision_baseline(device, input, offset, weight, grad_output):
    """(forward, forward + backward, synchronize) closures of torchvision.ops.deform_conv2d on
    `device`, or None when torch, torchvision or the device is missing."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    if device == "cuda" and not torch.cuda.is_available():
        return None
    torch.set_num_threads(numba.get_num_threads())
    x, o, w, g = (torch.as_tensor(to_numpy(a), device=device) for a in (input, offset, weight, grad_output))
    x.requires_grad_()
    o.requires_grad_()
    w.requires_grad_()

    def forward():
        with torch.no_grad():
            return torchvision.ops.deform_conv2d(x, o, w, padding=1)

    def forward_backward():
        x.grad = o.grad = w.grad = None
        torchvision.ops.deform_conv2d(x, o, w, padding=1).backward(g)
        return x.grad

    synchronize = torch.cuda.synchronize if device == "cuda" else None
    return forward, forward_backward, synchronize


def time_backend(backend):
    """Time one backend against its baselines and print the rows."""
    input, offset, weight, _, _, grad_output = move(backend, problem(B, C, C, H, W, np.float32))
    synchronize = cupy.cuda.get_current_stream().synchronize if backend == "cuda" else None
    forward, forward_backward = ours(backend, input, offset, weight, grad_output)
    device = "cuda" if backend == "cuda" else "cpu"
    baseline = torchvision_baseline(device, input, offset, weight, grad_output)
    if baseline is not None and not check(f"{backend} output vs torchvision", to_numpy(forward()),
                                          baseline[0]().cpu().numpy(), 1e-4, 1e-4):
        sys.exit("dcn_numba and torchvision disagree: not timing them")

    times = dict(forward=best_time(forward, synchronize=synchronize),
                 forward_backward=best_time(forward_backward, repeats=3, synchronize=synchronize))
    if backend == "cpu":
        ordinary = best_time(ordinary_convolution(input, weight))
        print(row("ordinary convolution (im2col + same GEMM)", ordinary))
        print(row(f"deform_conv2d {backend} forward", times["forward"], ordinary, "ordinary convolution"))
    else:
        print(row(f"deform_conv2d {backend} forward", times["forward"]))
    print(row(f"deform_conv2d {backend} forward + backward", times["forward_backward"]))
    if baseline is not None:
        tv_forward, tv_forward_backward, tv_synchronize = baseline
        tv = dict(forward=best_time(tv_forward, synchronize=tv_synchronize),
                  forward_backward=best_time(tv_forward_backward, repeats=3, synchronize=tv_synchronize))
        print(row(f"torchvision deform_conv2d {device} forward", tv["forward"]))
        print(row(f"torchvision deform_conv2d {device} forward + backward", tv["forward_backward"]))
        print(row(f"deform_conv2d {backend} forward", times["forward"], tv["forward"], "torchvision"))
        print(row(f"deform_conv2d {backend} forward + backward", times["forward_backward"],
                  tv["forward_backward"], "torchvision"))


def gpu_present():
    """CuPy is installed and sees a GPU."""
    try:
        return cupy is not None and cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver or no device
        return False


def main():
    print(machine_description(), f"| {numba.get_num_threads()} Numba threads")
    backends = ["cpu", "cuda"] if gpu_present() else ["cpu"]
    if not all([check_against_reference(backend) for backend in backends]):
        sys.exit("kernels disagree with the reference: not timing them")
    print(f"checks passed: {', '.join(backends)} kernels match the reference (v1, v2, float32, float64)")
    print(f"layer: B={B}, {C} → {C} channels, {H}×{W}, {KERNEL}×{KERNEL}, padding 1, float32, "
          f"offsets ~ N(0, {OFFSET_SCALE}²) pixels")
    for backend in backends:
        time_backend(backend)


if __name__ == "__main__":
    main()
