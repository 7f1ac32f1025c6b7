"""DCNv3 on the CPU at an InternImage-T stage shape: N = 1, 56×56, C = 64 in G = 4 groups of 16,
3×3 taps, float32.

    python benchmarks/bench_dcnv3.py

First checks dcn_numba's CPU kernels, and the grid_sample formulation in PyTorch
(dcn_numba.crosscheck.dcnv3.grid_sample_formulation, written from the published formulas) when
torch is installed, against the NumPy reference, forward and every gradient; prints the first
mismatches and stops if any. Then times the forward and the forward + backward of both in turns,
PyTorch with as many threads as Numba uses, and prints the ratios with the targets: our forward at
least 10× faster than the grid_sample formulation, forward + backward at least 5×.

    python benchmarks/bench_dcnv3.py --cpu-time

runs both on one thread and times the CPU time the process spends instead of the wall time: on a
machine shared with other work, a multi-threaded wall time measures the other work too (and
PyTorch's thread pool suffers more from it than Numba's), the CPU time of one thread does not.

    python benchmarks/bench_dcnv3.py --keep-freed-memory

times both under `dcn_numba.runtime.settings.keep_freed_memory()` instead of glibc's default
malloc settings: the grid_sample formulation allocates tensors of several MB, which glibc by
default gives back to the operating system and page-faults in again at the next call (the first
line says how many page faults each implementation took per call, either way).
"""

import argparse
import math
import resource
import sys
import time

import numba
import numpy as np

from dcn_numba import dcnv3, dcnv3_backward
from dcn_numba.reference.gradcheck import describe_mismatch
from dcn_numba.runtime.settings import keep_freed_memory
from timing import interleaved_best_times, machine_description, row

SHAPE = dict(N=1, H=56, W=56, group=4, group_channels=16)
PARAMETERS = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dilation_h=1, dilation_w=1,
                  offset_scale=1.0, remove_center=0)
TARGETS = {"forward": 10.0, "forward+backward": 5.0}  # at least this many times faster
RTOL, ATOL = 1e-4, 1e-4
NAMES = ("output", "grad_input", "grad_offset", "grad_mask")


def problem(N, H, W, group, group_channels, seed=0, dtype=np.float32):
    """input, offset (±1.5 px), mask (each group's taps summing to 1, as after the layer's
    softmax) and grad_output of one call."""
    rng = np.random.default_rng(seed)
    P = PARAMETERS["kernel_h"] * PARAMETERS["kernel_w"]
    C = group * group_channels
    logits = rng.standard_normal((N, H, W, group, P))
    mask = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(N, H, W, group * P)
    arrays = (rng.standard_normal((N, H, W, C)), rng.uniform(-1.5, 1.5, (N, H, W, group * P * 2)), mask,
              rng.standard_normal((N, H, W, C)))
    return [a.astype(dtype) for a in arrays]


class Implementation:
    """An implementation's forward(input, offset, mask, **parameters) and forward_backward(input,
    offset, mask, grad_output, **parameters) → (output, grad_input, grad_offset, grad_mask): a
    training step's forward and backward, as the implementation runs them (PyTorch's autograd
    records the forward it differentiates)."""

    def __init__(self, forward, forward_backward):
        self.forward, self.forward_backward = forward, forward_backward


def ours():
    """dcn_numba's CPU forward, then its backward."""
    def forward(input, offset, mask, **parameters):
        return dcnv3(input, offset, mask, **parameters, backend="cpu")

    def forward_backward(input, offset, mask, grad_output, **parameters):
        output = forward(input, offset, mask, **parameters)
        return (output, *dcnv3_backward(grad_output, input, offset, mask, **parameters, backend="cpu"))

    return Implementation(forward, forward_backward)


def grid_sample_baseline():
    """The grid_sample formulation in PyTorch on NumPy arrays (shared memory, no copies), or None
    without torch."""
    try:
        import torch
    except ImportError:
        return None
    from dcn_numba.crosscheck.dcnv3 import grid_sample_formulation

    torch.set_num_threads(numba.get_num_threads())
    formulation, _ = grid_sample_formulation()

    def forward(input, offset, mask, **parameters):
        with torch.no_grad():
            return formulation(*(torch.from_numpy(a) for a in (input, offset, mask)), **parameters).numpy()

    def forward_backward(input, offset, mask, grad_output, **parameters):
        tensors = [torch.from_numpy(a).requires_grad_() for a in (input, offset, mask)]
        output = formulation(*tensors, **parameters)
        output.backward(torch.from_numpy(grad_output))
        return (output.detach().numpy(), *(t.grad.numpy() for t in tensors))

    return Implementation(forward, forward_backward)


def check(name, actual, expected):
    """True when actual matches expected (float32 against the float64 reference); otherwise print
    the first mismatches."""
    scale = 1 + float(np.abs(expected).max(initial=0))
    if np.allclose(actual, expected, rtol=RTOL, atol=ATOL * scale):
        return True
    print(f"MISMATCH {name}:\n{describe_mismatch(actual, expected, RTOL, ATOL * scale)}")
    return False


def timed(implementation, input, offset, mask, grad_output, parameters):
    """{"forward": closure, "forward+backward": closure} of an implementation on one call."""
    return {"forward": lambda: implementation.forward(input, offset, mask, **parameters),
            "forward+backward": lambda: implementation.forward_backward(input, offset, mask, grad_output,
                                                                         **parameters)}


def interleaved_best_cpu_times(candidates, rounds, repeats=3):
    """As timing.interleaved_best_times, with the process's CPU time for the clock (one thread)."""
    best = dict.fromkeys(candidates, math.inf)
    for _ in range(rounds):
        for name, run in candidates.items():
            run()
            for _ in range(repeats):
                start = time.process_time()
                run()
                best[name] = min(best[name], time.process_time() - start)
    return best


def page_faults_per_call(run, calls=10):
    """The minor page faults (fresh pages the kernel zero-fills) the process takes per call of
    `run`, after one call to warm up."""
    run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def verdict(what, ours_seconds, baseline_seconds):
    """The target's line: the ratio measured and PASS or MISS."""
    ratio = baseline_seconds / ours_seconds
    return f"target {what}: at least {TARGETS[what]:g}x faster, measured {ratio:.2f}x: " + \
        ("PASS" if ratio >= TARGETS[what] else "MISS")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns of interleaved timing (default 5)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread each, timed by the process's CPU time instead of the wall time")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="time both under keep_freed_memory()'s malloc settings instead of glibc's defaults")
    arguments = parser.parse_args(argv)
    if arguments.cpu_time:
        numba.set_num_threads(1)
    kept = arguments.keep_freed_memory and keep_freed_memory()
    if arguments.keep_freed_memory and not kept:
        sys.exit("keep_freed_memory() did not take effect here (malloc is not glibc's)")
    parameters = dict(PARAMETERS, group=SHAPE["group"], group_channels=SHAPE["group_channels"])
    clock = "CPU time of one thread" if arguments.cpu_time else "wall time"
    print(machine_description(), f"| {numba.get_num_threads()} Numba threads | {clock}")
    print("malloc: " + ("freed memory kept in the process (keep_freed_memory), for both" if kept
                        else "glibc's defaults (freed blocks of over 128 kB go back to the system)"))
    print(f"DCNv3 input ({SHAPE['N']}, {SHAPE['H']}, {SHAPE['W']}, {SHAPE['group'] * SHAPE['group_channels']}), "
          f"{SHAPE['group']} groups, 3×3, pad 1, float32")
    arrays = problem(**SHAPE)
    exact = [a.astype(np.float64) for a in arrays]
    expected = (dcnv3(*exact[:3], **parameters, backend="reference"),
                *dcnv3_backward(exact[3], *exact[:3], **parameters, backend="reference"))
    candidates = {"dcn_numba cpu": ours()}
    baseline = grid_sample_baseline()
    if baseline is not None:
        candidates["grid_sample (PyTorch)"] = baseline
    ok = all([check(f"{name} {what}", got, wanted) for name, implementation in candidates.items()
              for what, got, wanted in zip(NAMES, implementation.forward_backward(*arrays, **parameters), expected)])
    if not ok:
        sys.exit("an implementation disagrees with the reference: not timing it")
    print("checks passed: " + " and ".join(candidates) + " match the reference, forward and gradients")
    if baseline is None:
        print("torch is not installed: no grid_sample baseline (pip install torch)")

    for what in ("forward", "forward+backward"):
        closures = {f"{name} {what}": timed(implementation, *arrays, parameters)[what]
                    for name, implementation in candidates.items()}
        seconds = (interleaved_best_cpu_times(closures, arguments.rounds) if arguments.cpu_time
                   else interleaved_best_times(closures, rounds=arguments.rounds, repeats=3, warmup=1))
        ours_seconds = seconds[f"dcn_numba cpu {what}"]
        baseline_name = f"grid_sample (PyTorch) {what}"
        for name, elapsed in seconds.items():
            print(row(name, elapsed, None if name == baseline_name else seconds.get(baseline_name), "grid_sample"))
        if baseline_name in seconds:
            print(verdict(what, ours_seconds, seconds[baseline_name]))
        print("page faults per call: " + ", ".join(f"{name} {page_faults_per_call(run):,.0f}"
                                                   for name, run in closures.items()))


if __name__ == "__main__":
    main()
