"""Deformable convolution v2 on a ResNet-like layer, timed against other runtimes in one run.

    python benchmarks/bench_deform_conv.py [--import-first MODULES] [--jupyter]

The layer: B=8, 64 → 64 channels, 56×56, 3×3, padding 1, with mask and bias, float32, offsets
~ N(0, 2²) pixels. Timed, each as the best of 5 runs (forward) or 3 runs (forward + backward)
after one warm-up run (timing.best_time):

* dcn_numba's "cpu" backend: deform_conv2d, and deform_conv2d then deform_conv2d_backward;
* an ordinary convolution of the same shape with the same GEMM: im2col by NumPy strided windows
  over the zero-padded input, the batched matmul, then the bias added;
* the layer's GEMMs alone: W·col, grad_out·colᵀ and Wᵀ·grad_out, batched over the 8 images
  (64×576 by 576×3136, float32), timed together: NumPy matmul on random arrays, into outputs
  allocated beforehand so that only the products are timed;
* OpenVINO's DeformableConvolution (opset 8, bilinear_interpolation_pad=true, mask given), then
  an Add of the bias, in one graph whose weight and bias are constants, compiled once for the
  CPU in f32; only the inference call is timed;
* ONNX Runtime's DeformConv (opset 19, with the B and mask inputs; W and B are initializers),
  one CPU session made once; only the run call is timed;
* torchvision.ops.deform_conv2d on the CPU with mask and bias, forward and forward + backward.

OpenVINO, ONNX Runtime and torch get as many threads as Numba has; NumPy's BLAS keeps its own
default. Each measurement runs in a process of its own (this script with --measure NAME): the
thread pools of Numba, OpenVINO, ONNX Runtime and torch keep spinning after their work and would
slow one another down. The parent prints the times and the ratios.

Checks. The parent computes the layer's output and five gradients once with dcn_numba's NumPy
reference, in float64 (a few seconds). Before it times anything, each process compares its
runtime's float32 results on the same layer with them, at rtol 1e-4 and atol 1e-4 times the
largest |value| of the array (float32 sums are rounded at the scale of their largest terms): the
forward output, and for dcn_numba and torchvision the five gradients too. dcn_numba's kernels are first checked
on small cases as well (v1 and v2, float32 and float64, forward and all five gradients), and the
ordinary convolution on the first image against the reference with zero offsets and no mask;
the GEMMs run on random arrays and have nothing to check. A runtime that disagrees is not timed,
and the script exits non-zero naming it; one that is not installed is skipped
(`pip install -e .[bench]` installs the pinned versions).

Targets (a missed one is printed as MISS, and does not change the exit status):

* forward within 1.5× of OpenVINO's forward;
* forward within 2× of the ordinary convolution;
* forward + backward within 3× of its GEMMs alone;
* forward + backward at least 20× faster than torchvision's CPU op.

ONNX Runtime's forward and torchvision's forward are compared without a target.

Import order: dcn_numba is timed twice, imported first and imported after NumPy and torch (as
user code and notebooks often do); `--import-first MODULES` (comma-separated, "" for none) times
only that order. `--jupyter` also times it inside a Jupyter kernel (nbclient, the "python3"
kernel of this Python), in the same orders.

With CuPy and a GPU, the CUDA backend is timed the same way, forward and forward + backward,
against torchvision's CUDA op, both checked against the reference first.
"""

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import time

# Only the standard library is imported here. Each measurement runs in a process that imports
# what it times and nothing else, and the one timing dcn_numba chooses what is imported before
# it (--import-first); NumPy, dcn_numba and the runtimes are imported in the functions using them.

SCRIPT = pathlib.Path(__file__).resolve()
B, C, H, W, KERNEL, PADDING = 8, 64, 56, 56, 3, 1
OFFSET_SCALE = 2.0  # offsets of a few pixels
FORWARD_REPEATS, FORWARD_BACKWARD_REPEATS = 5, 3
LAYER = ["input", "offset", "weight", "bias", "mask", "grad_output"]
NAMES = ["output", "grad_input", "grad_offset", "grad_weight", "grad_bias", "grad_mask"]
TOLERANCE = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4)}  # (rtol, atol)
IMPORT_ORDERS = ["", "numpy,torch"]  # "": dcn_numba imported first
INSTALL = "pip install -e .[bench]"
ROW_WIDTH = 64


class NotInstalled(Exception):
    """The runtime a measurement times is not installed (its argument: what is missing)."""


# ---------------------------------------------------------------------------------------------
# The layer and the checks


def problem(B, C_in, C_out, H, W, dtype, offset_groups=1, with_mask=False, seed=0):
    """input, offset, weight, bias, mask, grad_output of a 3×3, padding-1 layer (H_out = H)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    K = KERNEL * KERNEL
    arrays = (rng.standard_normal((B, C_in, H, W)),
              OFFSET_SCALE * rng.standard_normal((B, 2 * offset_groups * K, H, W)),
              rng.standard_normal((C_out, C_in, KERNEL, KERNEL)) / np.sqrt(C_in * K),
              rng.standard_normal(C_out),
              rng.random((B, offset_groups * K, H, W)) if with_mask else None,
              rng.standard_normal((B, C_out, H, W)))
    return [None if a is None else a.astype(dtype) for a in arrays]


def write_layer(path):
    """Save the benchmark layer's float32 arrays and the reference's float64 output and five
    gradients on them to `path` (.npz); returns the seconds the reference took."""
    import numpy as np

    from dcn_numba import deform_conv2d, deform_conv2d_backward

    arrays = problem(B, C, C, H, W, np.float32, with_mask=True)
    input, offset, weight, bias, mask, grad_output = (a.astype(np.float64) for a in arrays)
    start = time.perf_counter()
    output = deform_conv2d(input, offset, weight, bias, 1, PADDING, 1, mask, backend="reference")
    gradients = deform_conv2d_backward(grad_output, input, offset, weight, bias, 1, PADDING, 1, mask,
                                       backend="reference")
    seconds = time.perf_counter() - start
    np.savez(path, **dict(zip(LAYER, arrays)), **dict(zip(NAMES, [output, *gradients])))
    return seconds


def load_layer(path):
    """The layer's arrays and the reference's results, by name (see write_layer)."""
    import numpy as np

    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def check(name, actual, expected, rtol, atol):
    """True when actual matches expected; otherwise print the first mismatches."""
    import numpy as np

    from dcn_numba.reference.gradcheck import describe_mismatch

    if np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
        return True
    print(f"MISMATCH {name}:\n{describe_mismatch(actual, expected, rtol, atol)}")
    return False


def check_on_layer(name, actual, expected):
    """check() of a float32 result of the benchmark layer against the reference's: rtol 1e-4, and
    atol 1e-4 times the largest |expected| value (at least 1). The absolute part grows with the
    array's scale because a float32 sum (grad_weight's sums 25,088 products) is rounded at the
    scale of its largest terms, not of its result."""
    rtol, atol = TOLERANCE["float32"]
    return check(name, actual, expected, rtol, atol * max(1.0, float(abs(expected).max())))


def check_layer(label, actual, layer):
    """Compare a runtime's float32 results on the layer (NumPy arrays by their names in NAMES)
    with the reference's; exit, naming the runtime, unless all agree."""
    agree = [check_on_layer(f"{label} {name}", result, layer[name]) for name, result in actual.items()]
    if not all(agree):
        sys.exit(f"{label} disagrees with the reference on the benchmark layer: not timed")


def move(backend, arrays):
    from dcn_numba.runtime.arrays import cupy

    return [a if a is None or backend != "cuda" else cupy.asarray(a) for a in arrays]


def to_numpy(array):
    import numpy as np

    from dcn_numba.runtime.arrays import cupy

    return array if array is None or isinstance(array, np.ndarray) else cupy.asnumpy(array)


def check_against_reference(backend):
    """Forward and all five gradients of `backend` against the reference, v1 and v2, both dtypes,
    on small cases."""
    import numpy as np

    from dcn_numba import deform_conv2d, deform_conv2d_backward

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
                    ok &= check(f"{label} {name}", to_numpy(a), e, *TOLERANCE[np.dtype(dtype).name])
    return ok


def best_times(forward=None, forward_backward=None, synchronize=None):
    """The best times of the closures given, as {"forward": s, "forward_backward": s}."""
    from timing import best_time

    times = {}
    if forward is not None:
        times["forward"] = best_time(forward, repeats=FORWARD_REPEATS, synchronize=synchronize)
    if forward_backward is not None:
        times["forward_backward"] = best_time(forward_backward, repeats=FORWARD_BACKWARD_REPEATS,
                                              synchronize=synchronize)
    return times


# ---------------------------------------------------------------------------------------------
# The measurements, one per process: each returns its times and what it checked


def measure_dcn_numba(arguments):
    """dcn_numba's backend on --device: checked on small cases and on the layer (output and five
    gradients), then its forward and forward + backward timed. The modules of --import-first
    are imported before dcn_numba."""
    for module in filter(None, arguments.import_first.split(",")):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise NotInstalled(module) from error
    import dcn_numba  # right after --import-first, before anything else of this script imports
    import numba

    backend = arguments.device
    if not check_against_reference(backend):
        sys.exit(f"dcn_numba {backend} kernels disagree with the reference: not timed")
    layer = load_layer(arguments.layer)
    input, offset, weight, bias, mask, grad_output = move(backend, [layer[name] for name in LAYER])

    def forward():
        return dcn_numba.deform_conv2d(input, offset, weight, bias, 1, PADDING, 1, mask, backend=backend)

    def forward_backward():
        forward()
        return dcn_numba.deform_conv2d_backward(grad_output, input, offset, weight, bias, 1, PADDING, 1,
                                                mask, backend=backend)

    results = [forward(), *forward_backward()]
    check_layer(f"dcn_numba {backend}", {n: to_numpy(r) for n, r in zip(NAMES, results)}, layer)
    synchronize = None
    if backend == "cuda":
        from dcn_numba.runtime.arrays import cupy
        synchronize = cupy.cuda.get_current_stream().synchronize
    return dict(best_times(forward, forward_backward, synchronize),
                checked="small cases; output and five gradients",
                note=f"Numba threading layer {numba.threading_layer()}" if backend == "cpu" else None)


def measure_ordinary(arguments):
    """The same layer with zero offsets and no mask, done the ordinary way with the same GEMM:
    im2col by strided windows over the zero-padded input, (B, C·K, H·W), the batched matmul,
    then the bias. Checked on the first image against the reference."""
    import numpy as np

    from dcn_numba import deform_conv2d

    layer = load_layer(arguments.layer)
    input, weight, bias = layer["input"], layer["weight"], layer["bias"]
    windows_of = np.lib.stride_tricks.sliding_window_view
    C_out, C_in = weight.shape[:2]
    weights = weight.reshape(C_out, C_in * KERNEL * KERNEL)

    def forward():
        padded = np.pad(input, ((0, 0), (0, 0), (PADDING, PADDING), (PADDING, PADDING)))
        windows = windows_of(padded, (KERNEL, KERNEL), axis=(2, 3))  # (B, C, H, W, kh, kw)
        col = np.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3))  # (B, C, kh, kw, H, W)
        output = np.matmul(weights, col.reshape(B, C_in * KERNEL * KERNEL, H * W))
        output += bias[:, None]
        return output.reshape(B, C_out, H, W)

    zero_offsets = np.zeros((1, 2 * KERNEL * KERNEL, H, W))
    expected = deform_conv2d(input[:1].astype(np.float64), zero_offsets, weight.astype(np.float64),
                             bias.astype(np.float64), 1, PADDING, 1, backend="reference")
    if not check_on_layer("ordinary convolution output", forward()[:1], expected):
        sys.exit("the ordinary convolution disagrees with the reference: not timed")
    return dict(best_times(forward), checked="first image's output, zero offsets")


def measure_gemms(arguments):
    """The three GEMMs of the layer's forward and backward, batched over the images: output =
    W·col, grad_weight = grad_out·colᵀ and gcol = Wᵀ·grad_out, on random float32 arrays, timed
    together. The outputs are allocated once, so that only the products are timed."""
    import numpy as np

    rng = np.random.default_rng(0)
    taps, pixels = C * KERNEL * KERNEL, H * W
    weight = rng.standard_normal((C, taps), dtype=np.float32)
    col = rng.standard_normal((B, taps, pixels), dtype=np.float32)
    grad_out = rng.standard_normal((B, C, pixels), dtype=np.float32)
    output = np.empty((B, C, pixels), np.float32)
    grad_weight = np.empty((B, C, taps), np.float32)
    gcol = np.empty((B, taps, pixels), np.float32)

    def gemms():
        np.matmul(weight, col, out=output)
        np.matmul(grad_out, col.swapaxes(1, 2), out=grad_weight)
        np.matmul(weight.T, grad_out, out=gcol)

    return dict(best_times(forward_backward=gemms), checked=None)


def layer_arguments(layer):
    """The benchmark layer as the cross-check's library adapters take a call: input, offset,
    weight, bias, stride, padding, dilation, mask."""
    return (layer["input"], layer["offset"], layer["weight"], layer["bias"], 1, PADDING, 1, layer["mask"])


def measure_openvino(arguments):
    """OpenVINO's DeformableConvolution v8 (bilinear_interpolation_pad=true) and an Add of the
    bias, compiled once for the CPU in f32 with --threads threads (the cross-check's adapter,
    dcn_numba.crosscheck.adapters.openvino_deform_conv); its forward output is checked, then its
    inference call timed (inputs and output shared with the runtime: no copies)."""
    try:
        import openvino  # noqa: F401  (the adapter imports it; a missing one is reported here)
    except ImportError as error:
        raise NotInstalled(error.name) from error
    import numpy as np

    from dcn_numba.crosscheck.adapters import openvino_deform_conv

    layer = load_layer(arguments.layer)
    forward = openvino_deform_conv(*layer_arguments(layer), threads=arguments.threads)
    check_layer("OpenVINO", {"output": np.array(forward())}, layer)
    return dict(best_times(forward), checked="output", version=importlib.metadata.version("openvino"))


def measure_onnxruntime(arguments):
    """ONNX's DeformConv (opset 19) with B and mask, one CPU session of ONNX Runtime made once
    with --threads intra-op threads (the cross-check's adapter,
    dcn_numba.crosscheck.adapters.onnxruntime_deform_conv); its forward output is checked, then
    its run call timed."""
    try:
        import onnx  # noqa: F401  (the adapter imports them; a missing one is reported here)
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise NotInstalled(error.name) from error
    from dcn_numba.crosscheck.adapters import onnxruntime_deform_conv

    layer = load_layer(arguments.layer)
    forward = onnxruntime_deform_conv(*layer_arguments(layer), threads=arguments.threads)
    check_layer("ONNX Runtime", {"output": forward()}, layer)
    return dict(best_times(forward), checked="output", version=importlib.metadata.version("onnxruntime"))


def measure_torchvision(arguments):
    """torchvision.ops.deform_conv2d with mask and bias on --device, torch with --threads threads
    (the cross-check's adapter, dcn_numba.crosscheck.adapters.torchvision_deform_conv): its output
    and five gradients (torch's autograd) are checked, then its forward and forward + backward
    timed."""
    try:
        import torch
        import torchvision  # noqa: F401  (the adapter imports it; a missing one is reported here)
    except ImportError as error:
        raise NotInstalled(error.name) from error
    from dcn_numba.crosscheck.adapters import torchvision_deform_conv

    device = arguments.device
    if device == "cuda" and not torch.cuda.is_available():
        raise NotInstalled("torch with CUDA")
    torch.set_num_threads(arguments.threads)
    layer = load_layer(arguments.layer)
    forward, forward_backward = torchvision_deform_conv(*layer_arguments(layer), layer["grad_output"],
                                                        device=device)
    results = [forward(), *forward_backward()]
    check_layer(f"torchvision {device}", {n: r.cpu().numpy() for n, r in zip(NAMES, results)}, layer)
    synchronize = torch.cuda.synchronize if device == "cuda" else None
    return dict(best_times(forward, forward_backward, synchronize), checked="output and five gradients",
                version=importlib.metadata.version("torchvision"))


MEASURE = {"dcn_numba": measure_dcn_numba, "ordinary": measure_ordinary, "gemms": measure_gemms,
           "openvino": measure_openvino, "onnxruntime": measure_onnxruntime,
           "torchvision": measure_torchvision}


def measure(arguments):
    """The child: run one measurement and print its result as one JSON line."""
    try:
        result = MEASURE[arguments.measure](arguments)
    except NotInstalled as missing:
        result = {"not_installed": str(missing)}
    result["python"] = sys.executable
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: runs the measurements, prints the times and the ratios


@dataclasses.dataclass
class Measurement:
    """One child process (or Jupyter kernel): `key` names it in the comparisons, `label` in
    the printed rows (its name, the version the child reports, its detail); `options` are its
    command-line options after --measure. A measurement of dcn_numba has the `device` whose
    comparisons it is held to."""

    key: str
    name: str
    options: list
    detail: str = ""
    jupyter: bool = False
    device: str = None
    version: str = None

    @property
    def label(self):
        return " ".join(part for part in (self.name, self.version, self.detail) if part)


@dataclasses.dataclass
class Comparison:
    """Our `quantity` ("forward" or "forward_backward") against the baseline measurement `key`'s,
    with a target: at most `within` times its time, or at least `faster` times faster."""

    quantity: str
    key: str
    within: float = None
    faster: float = None

    def verdict(self, ours, baseline):
        if self.within is not None:
            met = ours <= self.within * baseline
            return f"   target: within {self.within:g}x  {'PASS' if met else 'MISS'}"
        if self.faster is not None:
            met = baseline >= self.faster * ours
            return f"   target: {self.faster:g}x faster  {'PASS' if met else 'MISS'}"
        return ""


COMPARISONS = {
    "cpu": [Comparison("forward", "openvino", within=1.5),
            Comparison("forward", "onnxruntime"),
            Comparison("forward", "ordinary", within=2.0),
            Comparison("forward_backward", "gemms", within=3.0),
            Comparison("forward", "torchvision cpu"),
            Comparison("forward_backward", "torchvision cpu", faster=20.0)],
    "cuda": [Comparison("forward", "torchvision cuda"),
             Comparison("forward_backward", "torchvision cuda")],
}
QUANTITY = {"forward": "forward", "forward_backward": "forward + backward"}


def dcn_numba_measurements(device, orders, jupyter):
    """dcn_numba on `device` for each import order (a comma list, "" for dcn_numba first), in a
    process and, when `jupyter`, in a Jupyter kernel too."""
    measurements = []
    for order in orders:
        name, detail = f"dcn_numba {device}", f"({'imported first' if not order else 'after ' + order})"
        options = ["dcn_numba", "--device", device] + (["--import-first", order] if order else [])
        measurements.append(Measurement(f"{name} {order}", name, options, detail, device=device))
        if jupyter:
            measurements.append(Measurement(f"{name} {order} jupyter", name, options, detail + " in Jupyter",
                                            jupyter=True, device=device))
    return measurements


def plan(orders, jupyter, gpu):
    """The measurements of the run, in order: dcn_numba's first, then the baselines."""
    measurements = dcn_numba_measurements("cpu", orders, jupyter)
    measurements += [Measurement("ordinary", "ordinary convolution", ["ordinary"]),
                     Measurement("gemms", "its GEMMs alone", ["gemms"]),
                     Measurement("openvino", "OpenVINO", ["openvino"]),
                     Measurement("onnxruntime", "ONNX Runtime", ["onnxruntime"]),
                     Measurement("torchvision cpu", "torchvision", ["torchvision", "--device", "cpu"], "cpu")]
    if gpu:
        measurements += dcn_numba_measurements("cuda", [""], jupyter=False)
        measurements.append(Measurement("torchvision cuda", "torchvision", ["torchvision", "--device", "cuda"],
                                        "cuda"))
    return measurements


def run_in_process(argv):
    """This script with `argv` in a fresh Python process: (exited with 0, what it printed)."""
    completed = subprocess.run([sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE, text=True)
    return completed.returncode == 0, completed.stdout


def run_in_jupyter(argv):
    """This script with `argv`, run by %run in a fresh "python3" Jupyter kernel: (no error, what it
    printed to stdout). What it prints to stderr is passed on to ours."""
    import nbclient
    import nbformat

    source = f"import sys\nsys.path.insert(0, {str(SCRIPT.parent)!r})\n%run {SCRIPT} {' '.join(argv)}"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=900, allow_errors=True,
                            resources={"metadata": {"path": str(SCRIPT.parent.parent)}}).execute()
    outputs = notebook.cells[0].outputs
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    sys.stderr.write("".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"))
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    return not errors, printed + "".join(e + "\n" for e in errors)


def jupyter_installed():
    return all(importlib.util.find_spec(module) for module in ("nbclient", "nbformat", "ipykernel"))


def run(measurement, layer_file, threads):
    """Run one measurement and print how its check went; returns its result (the child's JSON,
    with "failed" set when it failed or disagreed with the reference). The runtime's version,
    when the child gives it, is added to the measurement's label."""
    argv = ["--measure", *measurement.options, "--layer", str(layer_file), "--threads", str(threads)]
    ok, printed = (run_in_jupyter if measurement.jupyter else run_in_process)(argv)
    lines = printed.splitlines()
    result = json.loads(lines[-1]) if ok and lines and lines[-1].startswith("{") else {"failed": True}
    for line in lines[:-1] if "failed" not in result else lines:
        print(f"  {line}")
    measurement.version = result.get("version")
    if "failed" in result:
        print(f"  {measurement.label}: FAILED (not timed)")
    elif "not_installed" in result:
        print(f"  {result['not_installed']}: not installed ({INSTALL})")
    elif result["python"] != sys.executable:
        print(f"  {measurement.label}: ran {result['python']}, not {sys.executable}: not compared")
        result = {"failed": True}
    else:
        checked = f"passed ({result['checked']})" if result["checked"] else "nothing to check (random arrays)"
        note = f"; {result['note']}" if result.get("note") else ""
        print(f"  {measurement.label}: {checked}{note}")
    sys.stdout.flush()
    return result


def timed(result):
    return "failed" not in result and "not_installed" not in result


def print_times(measurements, results):
    from timing import row

    for measurement in measurements:
        result = results[measurement.key]
        if timed(result):
            for quantity in ("forward", "forward_backward"):
                if quantity in result:
                    print(row(f"{measurement.label} {QUANTITY[quantity]}", result[quantity], width=ROW_WIDTH))


def print_ratios(measurements, results):
    """Each dcn_numba measurement against each baseline that was timed, with its target."""
    from timing import row

    labels = {m.key: m.label for m in measurements}
    for measurement in measurements:
        ours = results[measurement.key]
        if measurement.device is None or not timed(ours):
            continue
        print(f"{measurement.label} against:")
        for comparison in COMPARISONS[measurement.device]:
            baseline = results.get(comparison.key)
            if baseline is None or not timed(baseline):
                continue
            mine, theirs = ours[comparison.quantity], baseline[comparison.quantity]
            print(row(f"  {QUANTITY[comparison.quantity]}", mine, theirs, labels[comparison.key], width=ROW_WIDTH)
                  + comparison.verdict(mine, theirs))


def benchmark(arguments):
    """The parent: the reference once, each measurement in its own process, then the rows."""
    import numba

    from dcn_numba.runtime.arrays import gpu_available
    from timing import machine_description

    threads = numba.get_num_threads()
    print(machine_description(), f"| {threads} Numba threads")
    print(f"layer: B={B}, {C} → {C} channels, {H}×{W}, {KERNEL}×{KERNEL}, padding {PADDING}, "
          f"mask and bias, float32, offsets ~ N(0, {OFFSET_SCALE}²) pixels")
    jupyter = arguments.jupyter and jupyter_installed()
    if arguments.jupyter and not jupyter:
        print("jupyter: not installed")
    orders = IMPORT_ORDERS if arguments.import_first is None else [arguments.import_first]
    measurements = plan(orders, jupyter, gpu_available())
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        layer_file = pathlib.Path(folder) / "layer.npz"
        seconds = write_layer(layer_file)
        print(f"reference: float64 output and five gradients of the layer ({seconds:.1f} s)")
        print("checks against it (float32: rtol 1e-4, atol 1e-4 × the largest |value|), each runtime "
              "in a process of its own, before it is timed:", flush=True)
        for measurement in measurements:
            results[measurement.key] = run(measurement, layer_file, threads)
    print_times(measurements, results)
    print_ratios(measurements, results)
    failed = [m.label for m in measurements if "failed" in results[m.key]]
    if failed:
        sys.exit(f"failed or disagreed with the reference, not timed: {', '.join(failed)}")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-first", metavar="MODULES", default=None,
                        help="comma-separated modules to import before dcn_numba (\"\" for none); "
                             "default: time both dcn_numba first and after numpy,torch")
    parser.add_argument("--jupyter", action="store_true", help="also time dcn_numba in a Jupyter kernel")
    parser.add_argument("--measure", choices=sorted(MEASURE), help="(child) run one measurement")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="(child)")
    parser.add_argument("--layer", help="(child) the .npz of the layer and the reference's results")
    parser.add_argument("--threads", type=int, help="(child) threads for the runtime")
    arguments = parser.parse_args()
    if arguments.measure and (arguments.layer is None or arguments.threads is None):
        parser.error("--measure needs --layer and --threads")
    if arguments.measure and arguments.import_first is None:
        arguments.import_first = ""
    return arguments


def main():
    arguments = parse_arguments()
    if arguments.measure:
        measure(arguments)
    else:
        benchmark(arguments)


if __name__ == "__main__":
    main()
