"""One prepared check of the CUDA backend on a GPU: `make gpu-check OUT=folder`.

    python3 benchmarks/gpu_check.py --out folder

Runs under the Python that starts it, with the packages already there (it installs nothing), and
imports dcn_numba from this checkout. Its parts, in order, each timed against a budget that keeps
the whole under 8 minutes on an H100-class GPU (first Numba compilations included):

1. environment: GPU, driver, CUDA runtime, numba, numba-cuda, CuPy, torch and torchvision; exits
   with status 2 and one line naming what is missing when the check cannot run;
2. tests: the test suite's CUDA path on the GPU with CuPy arrays (`-k` TEST_SELECTION: the kernels
   against the reference, gradients, errors, the models on the cuda device);
3. sanitizer: every CUDA kernel of dcn_numba.kernels launched once on small shapes, under
   compute-sanitizer's memcheck and racecheck (the backward kernels scatter with atomics) when the
   tool is on the PATH;
4. deform_conv, 5. roi_pool, 6. train_step: the benchmark layer, the RoI pooling benchmark and a
   deformable MNIST training step (generated images), each checked first (against the reference,
   then against torchvision's CUDA op or the same network in PyTorch), then timed in turns with
   the device synchronised inside every timed call, ratios taken within this run.

Everything goes to OUT/gpu_check.md, ready to paste into benchmarks/RESULTS.md, with the logs
beside it. The exit status is 1 after any failed test, mismatch or sanitizer error.

Without a GPU, or with NUMBA_ENABLE_CUDASIM=1, the same command is a rehearsal: kernels run in the
CUDA simulator on tiny shapes, the tests are only collected (the suite runs them in the simulator
itself), and torch, when installed, runs on the CPU. tests/benchmarks/test_gpu_check.py runs it.
"""

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import os
import pathlib
import pkgutil
import shlex
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def gpu_visible():
    """True when CuPy sees a CUDA device, or, without CuPy, when nvidia-smi lists one."""
    try:
        import cupy
    except ImportError:
        return shutil.which("nvidia-smi") is not None and subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True).returncode == 0
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver, or no device
        return False


# Numba reads NUMBA_ENABLE_CUDASIM when numba.cuda is first imported, so the mode is settled here,
# before any import of numba; child processes (pytest, the sanitizer's runs) inherit it.
REHEARSAL = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not gpu_visible()
os.environ["NUMBA_ENABLE_CUDASIM"] = "1" if REHEARSAL else "0"
# The modules and the one-word reason the check needs each.
NEEDED = {"numpy": "arrays", "numba": "kernels", "numba.cuda": "CUDA kernels", "pytest": "tests"}
if not REHEARSAL:
    NEEDED.update(cupy="GPU arrays", xdist="parallel tests")


def missing_modules():
    """The needed modules that cannot be imported here."""
    missing = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # a parent package is missing
            found = False
        if not found:
            missing.append(f"{name} ({NEEDED[name]})")
    return missing


def refuse(reason):
    """Stop before any work, with exit status 2 and one line saying why."""
    print(f"gpu_check: cannot run, {reason}", file=sys.stderr)
    sys.exit(2)


if missing_modules():
    refuse(f"missing: {', '.join(missing_modules())}")

sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

if not REHEARSAL and not cuda.is_available():
    refuse("numba.cuda sees no GPU (`python3 -c 'from numba import cuda; cuda.detect()'` says why)")


def numba_cuda_compiles():
    """None when numba-cuda can compile for this NumPy, else the reason. numba-cuda loads its NumPy
    typing on the first compilation, not on import: a NumPy newer than it knows (numba-cuda 0.30
    with NumPy 2.5, which removed np.row_stack) fails every kernel with the same AttributeError."""
    try:
        importlib.import_module("numba.cuda.np.arrayobj")
    except AttributeError as error:
        return (f"numba-cuda {version('numba-cuda')} does not support NumPy {np.__version__} ({error}); "
                "install a NumPy it supports, such as numpy<2.5")
    return None


if not REHEARSAL and (reason := numba_cuda_compiles()):
    refuse(reason)

import dcn_numba  # noqa: E402
import dcn_numba.kernels  # noqa: E402
from bench_deform_conv import NAMES, problem as conv_problem  # noqa: E402
from bench_roi_pool import OUTPUT_SIZE, SPATIAL_SCALE, problem as roi_problem, torchvision_baseline  # noqa: E402
from bench_train_step import our_step, torch_step, torch_twin  # noqa: E402
from dcn_numba.crosscheck.adapters import torchvision_deform_conv  # noqa: E402
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor  # noqa: E402
from dcn_numba.reference.gradcheck import describe_mismatch  # noqa: E402
from dcn_numba.apps.mnist.models import MnistNet  # noqa: E402
from timing import interleaved_best_times  # noqa: E402

if not REHEARSAL:
    import cupy

try:  # the baselines are optional: without them their rows are skipped, saying so
    import torch
    import torchvision
    NO_BASELINES = None if REHEARSAL or torch.cuda.is_available() else "torch sees no GPU here"
except ImportError:
    NO_BASELINES = "torch or torchvision is not installed here"
if NO_BASELINES:
    torch = torchvision = None

# Everything that launches a "cuda" kernel: tests named after the backend or device, the CuPy
# error tests, and the model tests that run every backend.
TEST_SELECTION = "cuda or cupy or every_backend"
# Seconds each part may take on an H100-class GPU (448 in all); the report gives the actual times.
BUDGET = {"environment": 10, "tests": 180, "sanitizer": 120, "deform_conv": 40, "roi_pool": 38,
          "train_step": 60}
SHAPES = {  # the benchmarks' shapes on a GPU; the rehearsal's tiny ones, which the simulator runs in seconds
    False: dict(layer=(8, 64, 56, 56), roi=dict(B=2, C=256, H=64, W=64, n_rois=512), roi_checked=16,
                batch=64, image=28, channels=(16, 32)),
    True: dict(layer=(1, 2, 4, 4), roi=dict(B=1, C=2, H=8, W=8, n_rois=3), roi_checked=2,
               batch=2, image=8, channels=(2, 2)),
}[REHEARSAL]
TORCH_DEVICE = "cpu" if REHEARSAL else "cuda"
# Timed in turns: each turn one untimed call, then the best of three (a rehearsal: one call each).
TURNS = dict(rounds=1, repeats=1, warmup=0) if REHEARSAL else dict(rounds=5, repeats=3, warmup=1)


# --- arrays on the device, synchronised timing -------------------------------------------------

def on_device(array):
    """`array` where the cuda backend runs: a CuPy array on a GPU, NumPy under the simulator."""
    return array if REHEARSAL or array is None else cupy.asarray(array)


def to_numpy(array):
    """A NumPy array of a NumPy, CuPy or torch array."""
    if torch is not None and isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array) if REHEARSAL else cupy.asnumpy(array)


def synchronize():
    """Wait for all work on the GPU (CuPy's, Numba's and torch's streams alike)."""
    if not REHEARSAL:
        cupy.cuda.runtime.deviceSynchronize()


def synchronized(run):
    """`run` followed by a device synchronisation, so that a timer around it counts the GPU work."""
    def timed():
        result = run()
        synchronize()
        return result
    return timed


def time_in_turns(candidates):
    """Best seconds of each closure (name → seconds), timed in turns, each call synchronised."""
    return interleaved_best_times({name: synchronized(run) for name, run in candidates.items()}, **TURNS)


def on_cuda_backend(run):
    """`run` with dcn_numba's deformable Functions on the cuda backend (simulated in a rehearsal)."""
    def inside():
        with F.backend("cuda"):
            return run()
    return inside


def matches(what, actual, expected, rtol, failures):
    """Compare two arrays (absolute tolerance rtol · max(1, max |expected|)); record a mismatch."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    atol = rtol * max(1.0, float(np.abs(expected).max(initial=0)))
    if actual.shape == expected.shape and np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
        return True
    failures.append(f"MISMATCH {what}: " + (f"shape {actual.shape} != {expected.shape}"
                                             if actual.shape != expected.shape
                                             else describe_mismatch(actual, expected, rtol, atol)))
    return False


def ms(seconds):
    return f"{seconds * 1e3:.3f} ms"


def timing_table(seconds, ratios):
    """Markdown rows: each timing, then each ratio (name → (numerator, denominator, target))."""
    lines = ["rehearsal: these are the simulator's times, not measurements", ""] if REHEARSAL else []
    lines += ["| what | time |", "| --- | --- |"] + [f"| {name} | {ms(t)} |" for name, t in seconds.items()]
    for name, (top, bottom, target) in ratios.items():
        if top in seconds and bottom in seconds:
            ratio = seconds[top] / seconds[bottom]
            met = "" if target is None else f" (target ≤ {target}: {'met' if ratio <= target else 'missed'})"
            lines.append(f"| {name} | {ratio:.2f}×{met} |")
    return lines


def no_torch_line():
    return f"{NO_BASELINES}: the baselines and their checks are skipped."


# --- 1. environment -------------------------------------------------------------------------------

def version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_name():
    return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


def environment(out):
    """What this machine has: the GPU, driver and runtime, and the packages' versions."""
    if REHEARSAL:
        gpu = ["GPU: none; **rehearsal** under the Numba CUDA simulator, tiny shapes"]
    else:
        runtime = cupy.cuda.runtime
        name = gpu_name()
        smi = shutil.which("nvidia-smi") and subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip()
        gpu = [f"GPU: {name}, {runtime.getDeviceCount()} device(s)",
               f"driver: {smi or 'unknown'} (CUDA driver API {runtime.driverGetVersion()})",
               f"CUDA runtime (CuPy): {runtime.runtimeGetVersion()}"]
    packages = ", ".join([f"{p} {version(p)}" for p in ("numpy", "numba", "numba-cuda", "torch", "torchvision",
                                                         "pytest")] + ([] if REHEARSAL else [f"cupy {cupy.__version__}"]))
    return gpu + [f"Python {sys.version.split()[0]} ({sys.executable})", f"packages: {packages}",
                  f"compute-sanitizer: {shutil.which('compute-sanitizer') or 'not on the PATH'}"], []


# --- 2. the test suite's CUDA path ----------------------------------------------------------------

def log_tail(output):
    """The last lines of a log, as a markdown block."""
    return ["", "```text"] + output[-20:] + ["```"]


def start_logged(command, log):
    """Start `command` in the checkout's root, importing dcn_numba from it, its output in `log`."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w") as stream:  # the child keeps its own copy of the file descriptor
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=stream, stderr=subprocess.STDOUT)


def modules_missing_for(test_file):
    """The top-level modules that `test_file` imports at its top and that are not installed here
    (neither beside it, nor a helper at the top of tests/, nor importable)."""
    names = set()
    for node in ast.parse(test_file.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(name for name in names
                  if not any((folder / f"{name}.py").exists() for folder in (test_file.parent, ROOT / "tests"))
                  and importlib.util.find_spec(name) is None)


def tests(out):
    """pytest's CUDA selection on the GPU (collected only in a rehearsal): summary, skips and
    failures. Test files that import a package missing here are left out, saying which."""
    log = out / "tests.log"
    left_out = {path: missing for path in sorted((ROOT / "tests").rglob("test_*.py"))
                if (missing := modules_missing_for(path))}
    command = [sys.executable, "-m", "pytest", "tests", "-k", TEST_SELECTION, "-q", "-rfEs",
               "-p", "no:cacheprovider"] + [f"--ignore={path.relative_to(ROOT)}" for path in left_out]
    command += ["--collect-only"] if REHEARSAL else ["-n", "8"]
    status = start_logged(command, log).wait()
    output = log.read_text().splitlines()
    reported = [line for line in output if line.startswith(("SKIPPED", "FAILED", "ERROR"))]
    summary = output[-1] if output else "(no output)"
    lines = [f"`{shlex.join(command[1:])}`" + (" (rehearsal: collected, not run)" if REHEARSAL else ""),
             "", f"result: {summary}"] + [f"- {line}" for line in reported]
    lines += [f"- left out {path.relative_to(ROOT)}: needs {', '.join(missing)}, not installed here"
              for path, missing in left_out.items()]
    if status != 0:  # a collection error or an interruption lists no FAILED line: show the end
        lines += log_tail(output)
    return lines, [] if status == 0 else [f"tests: pytest exited with {status} (see tests.log)"]


# --- 3. every kernel once, under compute-sanitizer ---------------------------------------------

def cuda_kernels():
    """Every CUDA kernel defined in dcn_numba.kernels (id → "module.name"), recognised by its type:
    whatever cuda.jit returns, on hardware or under the simulator."""
    kernel_type = type(cuda.jit(lambda: None))
    found = {}
    for module_info in pkgutil.iter_modules(dcn_numba.kernels.__path__):
        module = importlib.import_module(f"dcn_numba.kernels.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, kernel_type):
                found.setdefault(id(value), f"{module_info.name}.{name}")
    return found, kernel_type


def kernels_not_launched(run):
    """Call `run()` and return (the names of the CUDA kernels it never launched, how many there
    are), recording each launch (`kernel[grid]`) meanwhile."""
    kernels, kernel_type = cuda_kernels()
    launched = set()
    configure = kernel_type.__getitem__

    def recording(kernel, launch_configuration):
        launched.add(id(kernel))
        return configure(kernel, launch_configuration)

    kernel_type.__getitem__ = recording
    try:
        run()
    finally:
        kernel_type.__getitem__ = configure
    return sorted(name for key, name in kernels.items() if key not in launched), len(kernels)


def run_every_op():
    """Each op forward and backward on small float32 shapes, with and without its optional array."""
    rng = np.random.default_rng(0)
    cuda_ = dict(backend="cuda")
    for with_mask in (False, True):
        input, offset, weight, bias, mask, grad_output = map(on_device, conv_problem(
            2, 4, 6, 6, 6, np.float32, offset_groups=2, with_mask=with_mask))
        dcn_numba.deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, **cuda_)
        dcn_numba.deform_conv2d_backward(grad_output, input, offset, weight, bias, 1, 1, 1, mask, **cuda_)
    input, rois, offset, grad_output = map(on_device, roi_problem(B=2, C=8, H=8, W=8, n_rois=4))
    for used in (None, offset):
        roi = dict(output_size=OUTPUT_SIZE, spatial_scale=SPATIAL_SCALE, **cuda_)
        dcn_numba.deform_roi_pool(input, rois, used, **roi)
        dcn_numba.deform_roi_pool_backward(grad_output, input, rois, used, **roi)
        # position-sensitive: 8 = output_dim 2 · group_size 2², one class
        trans = None if used is None else on_device(rng.standard_normal((4, 2, 2, 2)).astype(np.float32))
        psroi = dict(spatial_scale=SPATIAL_SCALE, output_dim=2, group_size=2, pooled_size=2, part_size=2,
                     sample_per_part=2, **cuda_)
        dcn_numba.deform_psroi_pool(input, rois, trans, **psroi)
        grad_scores = on_device(rng.standard_normal((4, 2, 2, 2)).astype(np.float32))
        dcn_numba.deform_psroi_pool_backward(grad_scores, input, rois, trans, **psroi)
    # DCNv3, channels last: (N, H, W, C) with 2 groups of 2 channels, a 3×3 kernel, padding 1
    input, offset, mask, grad_output = (on_device(rng.standard_normal(shape).astype(np.float32))
                                        for shape in ((1, 5, 5, 4), (1, 5, 5, 2 * 9 * 2), (1, 5, 5, 2 * 9),
                                                      (1, 5, 5, 4)))
    dcn_numba.dcnv3(input, offset, mask, group=2, group_channels=2, **cuda_)
    dcn_numba.dcnv3_backward(grad_output, input, offset, mask, group=2, group_channels=2, **cuda_)
    synchronize()


def launch_every_kernel():
    """The workload the sanitizer watches: exits 1 naming any kernel that `run_every_op` missed."""
    if not REHEARSAL:
        cupy.cuda.set_allocator(None)  # one allocation per array, so that memcheck sees every overrun
    missed, count = kernels_not_launched(run_every_op)
    print(f"launched {count - len(missed)} of {count} CUDA kernels: " + ", ".join(sorted(cuda_kernels()[0].values())))
    if missed:
        sys.exit(f"never launched: {', '.join(missed)}")


def summary_lines(log, failed):
    """The sanitizer's summary and the workload's own lines; after a failure, the log's last lines."""
    output = log.read_text().splitlines()
    lines = [f"- {line.strip()}" for line in output
             if "SUMMARY" in line or line.startswith(("launched", "never launched"))]
    return lines + (log_tail(output) if failed else [])


# memcheck also reports CUDA API calls that return an error. On the H200 of 2026-12-04 all 34 of its
# errors were such calls (cuGetProcAddress_v2 answering CUDA_ERROR_INVALID_VALUE while the libraries
# look up driver entry points) and none was a memory access of a kernel: the check reads kernels only.
API_ERRORS = {"memcheck": ["--report-api-errors", "no"], "racecheck": []}


def sanitizer(out):
    """`launch_every_kernel` under memcheck and racecheck side by side, or alone without the tool."""
    workload = [sys.executable, str(pathlib.Path(__file__).resolve()), "--launch-every-kernel"]
    tool = shutil.which("compute-sanitizer")
    runs = {"without compute-sanitizer": workload} if tool is None or REHEARSAL else {
        check: [tool, "--tool", check, "--error-exitcode", "1", *API_ERRORS[check], *workload]
        for check in ("memcheck", "racecheck")}
    lines = [] if tool and not REHEARSAL else [
        "compute-sanitizer " + ("is not used in a rehearsal" if tool else "is not on the PATH")
        + ": every kernel launched once without it."]
    logs = {check: out / f"{check if check in ('memcheck', 'racecheck') else 'kernels'}.log" for check in runs}
    processes = {check: (start_logged(command, logs[check]), logs[check]) for check, command in runs.items()}
    failures = []
    for check, (process, log) in processes.items():
        status = process.wait()
        lines += [f"{check}: exit status {status}"] + summary_lines(log, status != 0)
        if status:
            failures.append(f"sanitizer: {check} exited with {status} (see {log.name})")
    return lines, failures


# --- 4. the deformable convolution layer ---------------------------------------------------------

def our_conv_calls(arrays):
    """(forward, forward + backward) closures of deform_conv2d on the cuda backend; the second
    returns the five gradients."""
    input, offset, weight, bias, mask, grad_output = map(on_device, arrays)
    conv = dict(stride=1, padding=1, dilation=1, mask=mask, backend="cuda")

    def forward():
        return dcn_numba.deform_conv2d(input, offset, weight, bias, **conv)

    def forward_backward():
        forward()
        return dcn_numba.deform_conv2d_backward(grad_output, input, offset, weight, bias, **conv)

    return forward, forward_backward


def torchvision_conv_calls(arrays):
    """The same closures for torchvision.ops.deform_conv2d (the cross-check's adapter), the
    gradients in our order."""
    input, offset, weight, bias, mask, grad_output = arrays
    return torchvision_deform_conv(input, offset, weight, bias, 1, 1, 1, mask, grad_output, device=TORCH_DEVICE)


def deform_conv(out):
    """The benchmark layer with mask and bias: checked against the reference (small, float64) and
    torchvision (full size), then forward and forward + backward timed against torchvision."""
    failures = []
    small = conv_problem(2, 4, 6, 7, 7, np.float64, offset_groups=2, with_mask=True, seed=1)
    input, offset, weight, bias, mask, grad_output = small
    reference = dict(stride=1, padding=1, dilation=1, mask=mask, backend="reference")
    expected = [dcn_numba.deform_conv2d(input, offset, weight, bias, **reference)]
    expected += dcn_numba.deform_conv2d_backward(grad_output, input, offset, weight, bias, **reference)
    forward, forward_backward = our_conv_calls(small)
    for name, actual, wanted in zip(NAMES, [forward()] + list(forward_backward()), expected):
        matches(f"cuda {name} vs reference (float64)", actual, wanted, 1e-10, failures)

    B, C, H, W = SHAPES["layer"]
    arrays = conv_problem(B, C, C, H, W, np.float32, with_mask=True)
    ours = our_conv_calls(arrays)
    candidates = {"dcn_numba forward": ours[0], "dcn_numba forward + backward": ours[1]}
    lines = [f"layer: B={B}, {C} → {C} channels, {H}×{W}, 3×3, padding 1, mask, bias, float32"]
    if torch is None:
        lines.append(no_torch_line())
    else:
        theirs = torchvision_conv_calls(arrays)
        matches("cuda output vs torchvision", ours[0](), theirs[0](), 1e-4, failures)
        for name, actual, wanted in zip(NAMES[1:], ours[1](), theirs[1]()):
            matches(f"cuda {name} vs torchvision", actual, wanted, 1e-4, failures)
        candidates.update({"torchvision forward": theirs[0], "torchvision forward + backward": theirs[1]})
    if failures:
        return lines, failures
    seconds = time_in_turns(candidates)
    return lines + timing_table(seconds, {
        "forward, dcn_numba / torchvision": ("dcn_numba forward", "torchvision forward", None),
        "forward + backward, dcn_numba / torchvision": ("dcn_numba forward + backward",
                                                        "torchvision forward + backward", 1.0)}), []


# --- 5. deformable RoI pooling ----------------------------------------------------------------------

def roi_calls(input, rois, offset, grad_output):
    """(forward, forward + backward) closures of deform_roi_pool on the cuda backend."""
    kwargs = dict(output_size=OUTPUT_SIZE, spatial_scale=SPATIAL_SCALE, backend="cuda")

    def forward():
        return dcn_numba.deform_roi_pool(input, rois, offset, **kwargs)

    def forward_backward():
        forward()
        return dcn_numba.deform_roi_pool_backward(grad_output, input, rois, offset, **kwargs)

    return forward, forward_backward


def roi_pool(out):
    """The RoI pooling benchmark: checked against the reference on its first RoIs and, without
    offsets, against torchvision's roi_align(aligned=True); then timed against it."""
    failures = []
    problem = roi_problem(np.float64, **SHAPES["roi"])
    checked = [problem[0]] + [a[:SHAPES["roi_checked"]] for a in problem[1:]]
    kwargs = dict(output_size=OUTPUT_SIZE, spatial_scale=SPATIAL_SCALE, backend="reference")
    expected = [dcn_numba.deform_roi_pool(*checked[:3], **kwargs)]
    expected += dcn_numba.deform_roi_pool_backward(checked[3], *checked[:3], **kwargs)
    forward, forward_backward = roi_calls(*map(on_device, checked))
    for name, actual, wanted in zip(("output", "grad_input", "grad_offset"),
                                    [forward()] + list(forward_backward()), expected):
        matches(f"cuda {name} vs reference (float64)", actual, wanted, 1e-10, failures)

    input, rois, offset, grad_output = roi_problem(np.float32, **SHAPES["roi"])
    plain = roi_calls(*map(on_device, (input, rois, None, grad_output)))
    deformed = roi_calls(*map(on_device, (input, rois, offset, grad_output)))
    candidates = {"dcn_numba forward (no offsets)": plain[0], "dcn_numba forward (offsets)": deformed[0],
                  "dcn_numba forward + backward (no offsets)": plain[1],
                  "dcn_numba forward + backward (offsets)": deformed[1]}
    lines = [f"{len(rois)} RoIs over {input.shape}, {OUTPUT_SIZE}×{OUTPUT_SIZE} bins, adaptive sampling, float32"]
    if torch is None:
        lines.append(no_torch_line())
    else:
        theirs = torchvision_baseline(input, rois, grad_output, TORCH_DEVICE)
        # torchvision computes sample positions in float32 (ours in float64): about 1e-5 pixel apart
        matches("cuda output vs torchvision roi_align", plain[0](), theirs[0](), 1e-4, failures)
        matches("cuda grad_input vs torchvision roi_align", plain[1]()[0], theirs[1](), 1e-4, failures)
        candidates.update({"torchvision roi_align forward": theirs[0],
                           "torchvision roi_align forward + backward": theirs[1]})
    if failures:
        return lines, failures
    seconds = time_in_turns(candidates)
    return lines + timing_table(seconds, {
        "forward, dcn_numba (no offsets) / torchvision": ("dcn_numba forward (no offsets)",
                                                          "torchvision roi_align forward", None),
        "forward + backward, dcn_numba (no offsets) / torchvision": (
            "dcn_numba forward + backward (no offsets)", "torchvision roi_align forward + backward", None)}), []


# --- 6. a deformable MNIST training step -----------------------------------------------------------

def digits(seed=0):
    """A generated batch: random images of the benchmark's size and random labels."""
    rng = np.random.default_rng(seed)
    size = SHAPES["image"]
    return rng.random((SHAPES["batch"], 1, size, size), dtype=np.float32), rng.integers(0, 10, SHAPES["batch"])


def mnist_net(deformable, seed=0):
    return MnistNet(deformable=deformable, seed=seed, channels=SHAPES["channels"])


def check_against_twin(deformable, failures):
    """Logits and every parameter gradient of one float64 step, ours on the device against the
    same network in PyTorch (offset branches moved off zero, so that samples are fractional)."""
    net = mnist_net(deformable, seed=1).to(dtype=np.float64)
    rng = np.random.default_rng(2)
    for layer in net.deform_layers if deformable else []:
        layer.offset_conv.weight.data[...] = 0.05 * rng.standard_normal(layer.offset_conv.weight.shape)
        layer.offset_conv.bias.data[...] = 0.3 + 0.1 * rng.standard_normal(layer.offset_conv.bias.shape)
    twin = torch_twin(net).double().to(TORCH_DEVICE)
    images, labels = digits(seed=3)
    images = images.astype(np.float64)
    if not REHEARSAL:
        net.to("cuda")
    with F.backend("cuda"):
        logits = net(Tensor(on_device(images)))
        F.cross_entropy(logits, on_device(labels)).backward()
    twin_logits = twin(torch.as_tensor(images, device=TORCH_DEVICE))
    torch.nn.functional.cross_entropy(twin_logits, torch.as_tensor(labels, device=TORCH_DEVICE)).backward()
    name = "deformable" if deformable else "regular"
    matches(f"{name} logits vs PyTorch", logits.data, twin_logits, 1e-6, failures)
    twin_parameters = dict(twin.named_parameters())  # the twin's modules carry our attribute names
    for parameter_name, parameter in net.named_parameters():
        matches(f"{name} {parameter_name}.grad vs PyTorch", parameter.grad, twin_parameters[parameter_name].grad,
                1e-6, failures)


def train_step(out):
    """One SGD step of MnistNet, deformable and regular, ours on the device and the PyTorch twin."""
    failures = []
    lines = [f"MnistNet, batch {SHAPES['batch']}, generated {SHAPES['image']}×{SHAPES['image']} images, float32"]
    if torch is None:
        lines.append(no_torch_line())
    else:
        for deformable in (False, True):
            check_against_twin(deformable, failures)
    if failures:
        return lines, failures
    images, labels = digits()
    candidates = {}
    for deformable in (False, True):
        name = "deformable" if deformable else "regular"
        net = mnist_net(deformable)
        if not REHEARSAL:
            net.to("cuda")
        candidates[f"dcn_numba {name}"] = on_cuda_backend(our_step(net, on_device(images), on_device(labels)))
        if torch is not None:
            candidates[f"PyTorch {name}"] = torch_step(deformable, images, labels, TORCH_DEVICE,
                                                       channels=SHAPES["channels"])
    seconds = time_in_turns(candidates)
    return lines + timing_table(seconds, {
        "dcn_numba deformable / dcn_numba regular": ("dcn_numba deformable", "dcn_numba regular", 1.3),
        "dcn_numba deformable / PyTorch + torchvision deformable": ("dcn_numba deformable", "PyTorch deformable", None),
        "dcn_numba regular / PyTorch regular": ("dcn_numba regular", "PyTorch regular", None)}), []


# --- the report -------------------------------------------------------------------------------------

PARTS = [environment, tests, sanitizer, deform_conv, roi_pool, train_step]


def write_report(out, title, sections, times, failures, done):
    """OUT/gpu_check.md: the parts run so far, their times and failures."""
    total = sum(times.values())
    status = f"{len(failures)} FAILED" if failures else "nothing failed"
    report = [f"## GPU check, {title}, {time.strftime('%Y-%m-%d')}", "",
              f"Written by `make gpu-check OUT=folder` (`python3 benchmarks/gpu_check.py`) in {total:.0f} s "
              f"(budget {sum(BUDGET[name] for name in times)} s for the parts run); {status}"
              + ("." if done else "; stopped before the remaining parts."), ""]
    report += sections + (["### failures", ""] + [f"- {f}" for f in failures] if failures else [])
    (out / "gpu_check.md").write_text("\n".join(report) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, help="folder for gpu_check.md and the logs")
    parser.add_argument("--parts", nargs="+", choices=[part.__name__ for part in PARTS],
                        default=[part.__name__ for part in PARTS],
                        help="run only these parts, in this order (default: all, in the order above)")
    parser.add_argument("--launch-every-kernel", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launch_every_kernel:
        return launch_every_kernel()
    if args.out is None:
        parser.error("--out FOLDER is required")
    args.out.mkdir(parents=True, exist_ok=True)
    title = "rehearsal under the CUDA simulator (no GPU)" if REHEARSAL else f"on {gpu_name()}"
    sections, times, failures = [], {}, []
    for part in (next(p for p in PARTS if p.__name__ == name) for name in args.parts):
        name = part.__name__
        print(f"[{name}] ...", flush=True)
        start = time.perf_counter()
        lines, failed = part(args.out)
        times[name] = time.perf_counter() - start
        failures += failed
        sections += [f"### {name} ({times[name]:.0f} s, budget {BUDGET[name]} s)", ""] + lines + [""]
        print("\n".join(lines + failed) + f"\n[{name}] {times[name]:.0f} s (budget {BUDGET[name]} s)"
              + (" FAILED" if failed else ""), flush=True)
        # Rewritten after every part, so that a run stopped by a time limit keeps the parts it finished.
        write_report(args.out, title, sections, times, failures, done=len(times) == len(args.parts))
    print(f"gpu_check: {sum(times.values()):.0f} s, {'passed' if not failures else 'FAILED'}; "
          f"report in {args.out / 'gpu_check.md'}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
