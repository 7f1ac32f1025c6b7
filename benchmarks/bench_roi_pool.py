"""Deformable RoI pooling on the CPU: 512 RoIs over a (2, 256, 64, 64) feature map, 7×7 bins.

    python benchmarks/bench_roi_pool.py

First checks the CPU kernels against the NumPy reference (on the first RoIs, the reference being
slow on purpose) and, without offsets, against torchvision.ops.roi_align(aligned=True) when
torchvision is installed; prints the first mismatches and stops if any. Then times the forward
and the forward + backward, with and without offsets, and compares them with torchvision's RoIAlign
measured in the same run with as many threads as Numba uses.
"""

import sys

import numba
import numpy as np

from dcn_numba import deform_roi_pool_backward
from dcn_numba import deform_roi_pool
from dcn_numba.reference.gradcheck import describe_mismatch
from timing import interleaved_best_times, machine_description, row

B, C, H, W = 2, 256, 64, 64
N_ROIS = 512
OUTPUT_SIZE = 7
SPATIAL_SCALE = 1 / 8  # a stride-8 feature map of a 512×512 image
CHECKED_ROIS = 16
RTOL, ATOL = 1e-4, 1e-5
# torchvision computes sample positions in float32 (ours are float64): about 1e-5 pixel apart.
BASELINE_ATOL = 1e-4


def problem(dtype=np.float32, seed=0, B=B, C=C, H=H, W=W, n_rois=N_ROIS):
    """input, rois (boxes of 32 to 256 image pixels, some crossing the border), offset, grad_output."""
    rng = np.random.default_rng(seed)
    image_size = H / SPATIAL_SCALE
    size = rng.uniform(32, 256, (n_rois, 2))
    corner = rng.uniform(-16, image_size - 16, (n_rois, 2)) - size / 2
    rois = np.concatenate([rng.integers(0, B, (n_rois, 1)), corner, corner + size], axis=1)
    input = rng.standard_normal((B, C, H, W))
    offset = 0.3 * rng.standard_normal((n_rois, 2, OUTPUT_SIZE, OUTPUT_SIZE))
    grad_output = rng.standard_normal((n_rois, C, OUTPUT_SIZE, OUTPUT_SIZE))
    return [a.astype(dtype) for a in (input, rois, offset, grad_output)]


def check(name, actual, expected, atol=ATOL):
    """True when actual matches expected; otherwise print the first mismatches."""
    if np.allclose(actual, expected, rtol=RTOL, atol=atol):
        return True
    print(f"MISMATCH {name}:\n{describe_mismatch(actual, expected, RTOL, atol)}")
    return False


def check_against_reference(input, rois, offset, grad_output):
    """The CPU kernels against the reference on the first RoIs, forward and both gradients."""
    rois, offset, grad_output = rois[:CHECKED_ROIS], offset[:CHECKED_ROIS], grad_output[:CHECKED_ROIS]
    results = {}
    for backend in ("reference", "cpu"):
        kwargs = dict(output_size=OUTPUT_SIZE, spatial_scale=SPATIAL_SCALE, backend=backend)
        output = deform_roi_pool(input, rois, offset, **kwargs)
        grad_input, grad_offset = deform_roi_pool_backward(grad_output, input, rois, offset, **kwargs)
        results[backend] = (output, grad_input, grad_offset)
    names = ("output", "grad_input", "grad_offset")
    return all([check(f"cpu {name} vs reference", cpu, ref)
                for name, cpu, ref in zip(names, results["cpu"], results["reference"])])


def torchvision_baseline(input, rois, grad_output, device="cpu"):
    """(forward, forward + backward) closures of torchvision's RoIAlign on `device`, or None
    without it."""
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    torch.set_num_threads(numba.get_num_threads())
    x = torch.as_tensor(input, device=device).requires_grad_()
    boxes = torch.as_tensor(rois, device=device)
    grad = torch.as_tensor(grad_output, device=device)

    def forward():
        return torchvision.ops.roi_align(x, boxes, OUTPUT_SIZE, SPATIAL_SCALE, 0, aligned=True)

    def forward_backward():
        x.grad = None
        forward().backward(grad)
        return x.grad

    return forward, forward_backward


def ours(input, rois, offset, grad_output, backward):
    """A closure running deform_roi_pool on the CPU, and its backward when `backward`."""
    kwargs = dict(output_size=OUTPUT_SIZE, spatial_scale=SPATIAL_SCALE, backend="cpu")

    def run():
        output = deform_roi_pool(input, rois, offset, **kwargs)
        if backward:
            return deform_roi_pool_backward(grad_output, input, rois, offset, **kwargs)
        return output

    return run


def main():
    print(machine_description(), f"| {numba.get_num_threads()} Numba threads")
    print(f"{N_ROIS} RoIs over ({B}, {C}, {H}, {W}), {OUTPUT_SIZE}×{OUTPUT_SIZE} bins, "
          f"adaptive sampling, float32")
    input, rois, offset, grad_output = problem()
    ok = check_against_reference(input, rois, offset, grad_output)
    baseline = torchvision_baseline(input, rois, grad_output)
    if baseline is not None:
        forward, forward_backward = baseline
        ok &= check("cpu output vs torchvision roi_align", ours(input, rois, None, grad_output, False)(),
                    forward().detach().numpy(), BASELINE_ATOL)
        ok &= check("cpu grad_input vs torchvision roi_align",
                    ours(input, rois, None, grad_output, True)()[0], forward_backward().numpy(),
                    BASELINE_ATOL)
    if not ok:
        sys.exit("kernels disagree: not timing them")
    print("checks passed: CPU kernels match the reference" +
          ("" if baseline is None else " and torchvision's RoIAlign"))

    for what, backward in (("forward", False), ("forward+backward", True)):
        candidates = {f"deform_roi_pool {what} ({label})": ours(input, rois, used, grad_output, backward)
                      for used, label in ((None, "no offsets"), (offset, "offsets"))}
        baseline_name = f"torchvision roi_align {what}"
        if baseline is not None:
            candidates[baseline_name] = forward_backward if backward else forward
        seconds = interleaved_best_times(candidates, rounds=3 if backward else 5)
        for name, elapsed in seconds.items():
            print(row(name, elapsed, None if name == baseline_name else seconds.get(baseline_name),
                      "torchvision"))


if __name__ == "__main__":
    main()
