# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Writing the CUDA kernels in Numba
#
# Notebooks 2 and 3 computed the deformable convolution with loops over every sample. On a GPU
# those loops become *kernels*: functions that thousands of threads run at once, each on its own
# share of the work. Numba writes them in Python. This notebook builds up the ideas on small
# kernels of its own, then reads dcn_numba's, and runs everything without a GPU.
#
# **What you will learn**
#
# * the thread-to-output mapping: each thread computes one output, found from its index;
# * grid-stride loops, which let a bounded grid of threads cover any problem size;
# * why the backward pass needs atomic adds (col2im), and how the CPU version avoids them;
# * how to run CUDA kernels on a machine without a GPU, in Numba's CUDA simulator, which also
#   catches out-of-bounds accesses;
# * how to compile the kernels to PTX for a real GPU, and read the register report of `ptxas`;
# * how the same scalar math is compiled for the CPU.
#
# First decide where the kernels run. The simulator must be switched on *before* anything imports
# `numba.cuda`, so this is the first cell: without a GPU (and CuPy), simulate.

# %%
import os


def gpu_available():
    """A CUDA device that CuPy can use is present."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: all mean "simulate"
        return False


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if gpu_available() else "1")

# %%
import inspect
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from numba import config, cuda

import dcn_numba
from dcn_numba.gradcheck import assert_close
from dcn_numba.kernels import deform_conv as conv_kernels
from dcn_numba.kernels import sampling
from dcn_numba.kernels._targets import for_cuda
from dcn_numba.reference import deform_conv_vectorised as reference

SIMULATED = bool(config.ENABLE_CUDASIM)
print("kernels run in the", "CUDA simulator (no GPU here)" if SIMULATED else "GPU")

# %% [markdown]
# ## One thread per output
#
# A kernel launch starts a **grid** of **blocks** of **threads**: `kernel[blocks, threads](args)`.
# Every thread runs the whole function; the only thing that tells them apart is their position,
# and `cuda.grid(1)` = blockIdx.x · blockDim.x + threadIdx.x turns it into one global index. So the
# first design decision of any kernel is **which thread owns which output**. For sampling, the
# natural answer: thread `index` computes output `index`.
#
# Kernels call the shared scalar functions of `dcn_numba.kernels.sampling` (the ones of notebook 1)
# through `for_cuda(sampling)`: on a GPU that is the module itself, compiled into the kernel; in the
# simulator, the functions' plain Python versions.

# %%
gpu = for_cuda(sampling)


@cuda.jit
def sample_one_per_thread(image, H, W, p_y, p_x, out):
    """out[index] = S(image, p_y[index], p_x[index]); thread `index` owns out[index]."""
    index = cuda.grid(1)
    if index < out.size:  # the last block may have more threads than there are outputs
        out[index] = gpu.dcn_sample(image, 0, H, W, p_y[index], p_x[index])


rng = np.random.default_rng(0)
H, W = 6, 7
image = rng.standard_normal((H, W))
n = 300
p_y, p_x = rng.uniform(-1.5, H + 0.5, n), rng.uniform(-1.5, W + 0.5, n)

threads_per_block = 64
blocks = math.ceil(n / threads_per_block)  # enough threads for every output
out = cuda.to_device(np.zeros(n))
sample_one_per_thread[blocks, threads_per_block](cuda.to_device(image.ravel()), H, W,
                                                 cuda.to_device(p_y), cuda.to_device(p_x), out)
expected = [sampling.dcn_sample(image.ravel(), 0, H, W, y, x) for y, x in zip(p_y, p_x)]
assert_close(out.copy_to_host(), expected, what="kernel against the scalar function")
print(f"{blocks} blocks × {threads_per_block} threads = {blocks * threads_per_block} threads for {n} outputs")

# %% [markdown]
# `cuda.to_device` and `copy_to_host` move arrays to and from the device (in the simulator they
# just copy). dcn_numba itself never does that: its CUDA backend takes CuPy arrays that already
# live on the GPU and launches on CuPy's stream.
#
# ## Grid-stride loops
#
# One thread per output needs a grid as large as the problem, but launches have limits, and a
# tensor of B·C·K·H_out·W_out samples can pass 2³¹ elements. The grid-stride loop decouples the
# problem size from the grid size: each thread starts at its own index and jumps by the total
# number of threads, `cuda.gridsize(1)`, until it runs out of work. Any grid size covers any
# problem, and neighbouring threads still touch neighbouring memory at every step (coalesced
# reads). Every kernel in dcn_numba has this form and takes the number of work items first. To see
# who does what, this kernel also records which thread computed each output:

# %%
@cuda.jit
def sample_grid_stride(n_items, image, H, W, p_y, p_x, out, owner):
    """out[index] = S(image, p_y[index], p_x[index]) for index = thread, thread + gridsize, …"""
    for index in range(cuda.grid(1), n_items, cuda.gridsize(1)):
        out[index] = gpu.dcn_sample(image, 0, H, W, p_y[index], p_x[index])
        owner[index] = cuda.grid(1)


out, owner = cuda.to_device(np.zeros(n)), cuda.to_device(np.zeros(n, dtype=np.int64))
sample_grid_stride[2, 8](n, cuda.to_device(image.ravel()), H, W, cuda.to_device(p_y),
                         cuda.to_device(p_x), out, owner)
assert_close(out.copy_to_host(), expected, what="grid-stride kernel against the scalar function")
owner = owner.copy_to_host()

# %%
threads, passes_shown = 2 * 8, 6
by_pass = owner[:passes_shown * threads].reshape(passes_shown, threads)  # row r: outputs 16r … 16r + 15
fig, axis = plt.subplots(figsize=(7, 3), layout="constrained")
axis.imshow(by_pass, cmap="tab20", vmin=-0.5, vmax=19.5)
for (row, column), thread in np.ndenumerate(by_pass):
    axis.text(column, row, str(row * threads + column), ha="center", va="center", fontsize=7)
axis.set(xlabel="position in the pass", ylabel="pass of the loop", xticks=range(threads),
         yticks=range(passes_shown),
         title="the first 96 of 300 outputs, coloured by the thread that computed them")
axis.title.set_fontsize(9)
plt.show()

# %% [markdown]
# **Figure 1.** The first outputs, numbered, in rows of 16, each coloured by the thread (of a grid
# of 2 blocks × 8 threads) that computed it. Look at the columns: every column has one colour, so
# thread t computes outputs t, t + 16, t + 32, …, one per pass of its loop, and in every pass the
# 16 threads work on 16 consecutive outputs. Here each thread loops 18 or 19 times; on a GPU, with
# thousands of threads, most loop once or twice.

# %% [markdown]
# ## dcn_numba's im2col kernel
#
# Here is the forward kernel of the package, the deformable im2col of notebook 2. It owns one
# element of the column buffer per thread; the flat index is unpacked into (b, c, k, i, j) by
# divisions, and the heavy lifting is the shared `padded_corners` and `bilinear_blend` functions.
# (A first kernel, `locate_samples_cuda`, has already found where each sample falls, once per
# offset group instead of once per channel.)

# %%
print(inspect.getsource(conv_kernels.deformable_im2col_cuda))

# %% [markdown]
# The package launches it with `launch(kernel, n_items, stream, *args)`, which picks enough blocks
# of 256 threads (at most 4096 blocks; the grid-stride loop does the rest), or, in the simulator,
# the 2 × 8 grid we used above. Now run the package's CUDA backend (simulated here) and hold it to
# the reference, forward and backward:

# %%
if SIMULATED:
    to_device, to_host = np.asarray, np.asarray  # the simulator runs CUDA kernels on NumPy arrays
else:
    import cupy

    to_device, to_host = cupy.asarray, cupy.asnumpy

B, C_in, C_out, size, kh, kw = 1, 2, 2, 5, 3, 3
x = rng.standard_normal((B, C_in, size, size))
weight = rng.standard_normal((C_out, C_in, kh, kw))
offset = rng.normal(0, 1.5, (B, 2 * kh * kw, size, size))
mask = rng.uniform(0, 1, (B, kh * kw, size, size))
grad_out = rng.standard_normal((B, C_out, size, size))
arrays = dict(input=x, offset=offset, weight=weight, mask=mask)
on_device = {name: to_device(value) for name, value in arrays.items()}

forward = dcn_numba.deform_conv2d(**on_device, padding=1, backend="cuda")
assert_close(to_host(forward), dcn_numba.deform_conv2d(**arrays, padding=1, backend="reference"),
             what="cuda forward against the reference")
backward = dcn_numba.deform_conv2d_backward(to_device(grad_out), **on_device, padding=1, backend="cuda")
expected = dcn_numba.deform_conv2d_backward(grad_out, **arrays, padding=1, backend="reference")
for name, ours, theirs in zip(["input", "offset", "weight", "bias", "mask"], backward, expected):
    if theirs is not None:
        assert_close(to_host(ours), theirs, what=f"cuda grad_{name} against the reference")
print("the CUDA kernels match the reference, forward and backward")

# %% [markdown]
# ## Atomics in col2im
#
# The backward pass turns the gather of the forward (each sample *reads* four pixels) into a
# scatter (each sample *adds* into four pixels of grad_input). With one thread per sample, many
# threads add into the same pixel at the same time, and `grad[p] += v` is three steps, read, add,
# write: two threads that read the same old value both write their own sum, and one contribution
# is lost. How common is that? Count, for every pixel, the adds it receives in one channel of a
# 3 × 3 layer with random offsets:

# %%
size = 12
geometry = reference.sample_geometry(np.zeros((1, 1, size, size)), rng.normal(0, 1, (1, 18, size, size)),
                                     np.zeros((1, 1, 3, 3)), (1, 1), (1, 1), (1, 1))
adds = np.zeros((size + 2, size + 2), dtype=np.int64)  # padded, so out-of-image corners land in the border
for dy in (0, 1):
    for dx in (0, 1):
        rows = geometry.y0[geometry.valid] + 1 + dy
        columns = geometry.x0[geometry.valid] + 1 + dx
        np.add.at(adds, (rows, columns), 1)
adds = adds[1:-1, 1:-1]
print(f"adds per pixel: min {adds.min()}, median {int(np.median(adds))}, max {adds.max()}")

# %%
fig, axis = plt.subplots(figsize=(4.2, 3.4), layout="constrained")
shown = axis.imshow(adds, cmap="magma")
fig.colorbar(shown, ax=axis, label="threads adding into the pixel")
axis.set(title="collisions in col2im, one channel", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 2.** How many (sample, corner) pairs, each a separate thread's add, land on each pixel
# of one 12 × 12 input channel in the backward pass of a 3 × 3 deformable convolution with random
# offsets. Look at the scale: away from the border a pixel receives 30 to 45 adds (each output
# has 9 taps, each tap adds into 4 pixels: 36 on average), so collisions are the rule, not a
# corner case. Hence the one atomic in the package's col2im
# kernel, `cuda.atomic.add`, which makes read-add-write one indivisible step.

# %%
print(inspect.getsource(conv_kernels.deformable_col2im_cuda))

# %% [markdown]
# Atomics cost throughput and make floating-point sums order-dependent (the last bits vary from
# run to run). The CPU kernel avoids them by choosing a different owner: one `prange` iteration
# per input *plane* (b, c), which walks every sample that reads that plane and is the only writer
# of it. No two iterations touch the same memory, so plain `+=` is safe and the result is
# deterministic. Same math, different owner:

# %%
print(inspect.getsource(conv_kernels.deformable_col2im_cpu))

# %% [markdown]
# ## The simulator catches what hardware hides
#
# In the simulator each CUDA thread is a Python thread and each array access is checked, so an
# index out of range raises an error instead of silently reading or corrupting memory, as it
# would on a GPU. Forget the bounds check of our first kernel and launch more threads than outputs:

# %%
@cuda.jit
def scale_without_bounds_check(values, factor):
    """values[index] *= factor, but with no `if index < values.size`: a bug."""
    index = cuda.grid(1)
    values[index] *= factor


if SIMULATED:
    try:
        scale_without_bounds_check[1, 32](cuda.to_device(np.ones(20)), 2.0)
    except IndexError as error:
        print("the simulator caught it:", type(error).__name__, error)
    else:
        raise AssertionError("expected the simulator to catch the out-of-bounds write")

# %% [markdown]
# That is why the test suite runs every CUDA kernel in the simulator on this machine, with tiny
# shapes: it is slow (a few thousand threads per second), but it executes the real kernels, thread
# by thread, and checks every index.
#
# ## Compiling for a real GPU: PTX and registers
#
# The simulator runs Python, and accepts code the real compiler rejects. The second check compiles
# the kernels for real: `numba.cuda.compile_ptx` translates a kernel, for given argument types, into
# PTX, NVIDIA's virtual assembly, without needing a GPU. It must run without the simulator, so we
# run it in a separate Python process. `cuda_kernel_signatures(module)` lists every kernel of a
# module with its argument types in float32 and float64, as each kernel declares them.

# %%
ptx_folder = Path(tempfile.mkdtemp())
compile_script = f"""
from pathlib import Path
from numba import cuda
from dcn_numba.kernels import deform_conv
from dcn_numba.kernels._targets import cuda_kernel_signatures
for name, kernel, argtypes in cuda_kernel_signatures(deform_conv):
    ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=(8, 0))
    (Path({str(ptx_folder)!r}) / (name + ".ptx")).write_text(ptx)
"""
subprocess.run([sys.executable, "-c", compile_script], check=True,
               env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0"))
ptx_files = sorted(ptx_folder.glob("*.ptx"))
col2im_ptx = (ptx_folder / "deformable_col2im_cuda[float32].ptx").read_text()
print(f"{len(ptx_files)} kernels compiled for sm_80; in col2im's PTX, the atomics:")
print("\n".join(line.strip() for line in col2im_ptx.splitlines() if "atom." in line))

# %% [markdown]
# `atom.global.add.f32` is `cuda.atomic.add` on a float32 in global memory. PTX is not yet machine
# code: `ptxas`, NVIDIA's assembler (shipped in the `nvidia-cuda-nvcc` wheel that numba-cuda's
# cu12 extra installs), turns it into code for one GPU generation and, with `-v`, reports what each
# thread needs: **registers** and **spills**. Registers matter because an SM has a fixed register
# file (64K 32-bit registers on sm_80 and sm_90): the more registers a thread uses, the fewer
# threads can be resident to hide memory latency. Spills mean the compiler ran out of registers and
# went to slow local memory.

# %%
import nvidia.cuda_nvcc

ptxas = Path(nvidia.cuda_nvcc.__path__[0]) / "bin" / "ptxas"
ptxas_output, report = {}, {}
for ptx_file in ptx_files:
    ptxas_output[ptx_file.stem] = subprocess.run(
        [str(ptxas), "-v", "--gpu-name", "sm_80", str(ptx_file), "-o", os.devnull],
        capture_output=True, text=True, check=True).stderr
    registers = int(re.search(r"Used (\d+) registers", ptxas_output[ptx_file.stem]).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", ptxas_output[ptx_file.stem]).group(1))
    report[ptx_file.stem] = registers, spills
print("what ptxas -v says about col2im in float32:")
print("\n".join(line for line in ptxas_output["deformable_col2im_cuda[float32]"].splitlines()
                if "registers" in line or "spill" in line))


def resident_threads(registers, register_file=65536, max_threads=2048, warp=32, granularity=256):
    """Threads an SM can hold at once, as far as registers allow: registers are handed out per
    warp, in chunks of `granularity`."""
    per_warp = math.ceil(registers * warp / granularity) * granularity
    return min(max_threads, register_file // per_warp * warp)


print()
for name, (registers, spills) in report.items():
    print(f"{name:38s} {registers:4d} registers, {spills} bytes spilled, "
          f"≤ {resident_threads(registers)} threads per SM")

# %%
names = sorted({name.split("[")[0] for name in report})
fig, axis = plt.subplots(figsize=(7, 2.8), layout="constrained")
for shift, dtype, colour in ((-0.2, "float32", "tab:blue"), (0.2, "float64", "tab:orange")):
    axis.bar(np.arange(len(names)) + shift, [report[f"{name}[{dtype}]"][0] for name in names], width=0.4,
             color=colour, label=dtype)
axis.set_xticks(np.arange(len(names)), [name.replace("_cuda", "") for name in names], fontsize=8)
axis.set(ylabel="registers per thread")
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** Registers per thread of each deformable convolution kernel, compiled for sm_80, in
# float32 and float64. Look at the tallest bar: the kernel that keeps the most values live per
# thread (the offset and mask gradient, which carries three running sums through its loop over
# channels) needs the most registers, and the table above translates that into fewer resident
# threads per SM. A double takes two registers, so float64 versions can need more. A column of
# zeros under "spilled" is the other thing to check after every change to a kernel.

# %% [markdown]
# ## The same math, compiled for the CPU
#
# The CPU kernels are not a port: they call the very same scalar functions. `sampling.py` compiles
# each of them with `@njit(inline="always")`, so Numba pastes it into whichever kernel calls it,
# CPU or CUDA. A CPU kernel is `@njit(parallel=True)` over the same index space, with `prange`
# splitting the outer loop among the cores. Which shared functions does each im2col kernel call?

# %%
shared_functions = {name for name, value in vars(sampling).items() if hasattr(value, "py_func")}


def shared_calls(kernel):
    """The shared sampling functions a kernel's source calls."""
    return sorted(name for name in shared_functions if re.search(rf"\b{name}\(", inspect.getsource(kernel)))


for kernel in (conv_kernels.deformable_im2col_cpu, conv_kernels.deformable_im2col_cuda):
    print(f"{kernel.__name__:24s} calls {shared_calls(kernel)}")
assert shared_calls(conv_kernels.deformable_im2col_cpu) == shared_calls(conv_kernels.deformable_im2col_cuda)

# %% [markdown]
# Only the walk over the index space differs: a `prange` over rows on the CPU, a grid-stride loop
# over elements on the GPU. Three executions of one truth, which must agree:

# %%
results = {backend: dcn_numba.deform_conv2d(**(on_device if backend == "cuda" else arrays), padding=1,
                                            backend=backend)
           for backend in ("reference", "cpu", "cuda")}
for backend in ("cpu", "cuda"):
    assert_close(to_host(results[backend]), results["reference"], what=f"{backend} against reference")
print("reference, cpu and cuda agree:", to_host(results["cuda"])[0, 0, 0].round(4))

# %% [markdown]
# ## Summary
#
# * A CUDA kernel is a function every thread runs; `cuda.grid(1)` tells a thread which output it
#   owns. Decide ownership first.
# * Grid-stride loops (`range(cuda.grid(1), n_items, cuda.gridsize(1))`) let a bounded grid cover
#   any size, and keep neighbouring threads on neighbouring memory.
# * A scatter, such as col2im in the backward pass, makes threads collide on the same pixel: the
#   GPU kernel uses `cuda.atomic.add`; the CPU kernel gives each input plane to one iteration.
# * `NUMBA_ENABLE_CUDASIM=1`, set before importing `numba.cuda`, runs the real kernels on the CPU
#   and checks every index; `compile_ptx` plus `ptxas -v` checks that they compile for real GPUs
#   and what they cost in registers. Both run without a GPU.
# * The sampling math is written once (`sampling.py`) and inlined into both the CPU and the CUDA
#   kernels.
#
# Notebook 5 turns to the other deformable operator: RoI pooling.
