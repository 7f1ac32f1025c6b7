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
# # 5. Writing the CUDA kernels in Numba
#
# Notebooks 2 and 3 computed the deformable convolution with loops over every sample. On a GPU
# those loops become *kernels*: functions that thousands of threads run at once, each on its own
# share of the work. Numba writes them in Python. In this notebook you write the two kernels of
# the deformable convolution yourself, a naive im2col and col2im, run them without a GPU, and
# only then read dcn_numba's kernels and what they do differently.
#
# **What you will learn**
#
# * the thread-to-output mapping: each thread computes one output, found from its index;
# * grid-stride loops, which let a bounded grid of threads cover any problem size;
# * to write a deformable im2col kernel with the shared sampler (exercise 5.1) and check it
#   against the reference;
# * to write col2im, why its scatter needs atomic adds (lost updates, shown), and how the CPU
#   version avoids them (exercise 5.2);
# * to check a kernel before timing it, and how the naive kernel's time compares with the
#   package's (on the CPU, where there is no GPU);
# * what the package's kernels add, precomputed sample locations and a zero-padded channels-last input, and
#   what each saves;
# * how to run CUDA kernels on a machine without a GPU, in Numba's CUDA simulator, which also
#   catches out-of-bounds accesses;
# * how to compile the kernels to PTX for a real GPU, read the register report of `ptxas`, and
#   turn registers into resident threads, block by block;
# * how the same scalar math is compiled for the CPU.
#
# Stuck on an exercise? Set `exercises.SOLUTIONS = True` in the second cell.
#
# First decide where the kernels run. The simulator must be switched on *before* anything imports
# `numba.cuda`, so this is the first cell: without a GPU (and CuPy), simulate. The probe runs
# in a separate Python process, because importing CuPy here would load NumPy before dcn_numba.

# %%
import os
import subprocess
import sys


def gpu_available():
    """A CUDA device that CuPy can use is present (no CuPy, no driver or no device: False)."""
    probe = "import cupy; raise SystemExit(0 if cupy.cuda.runtime.getDeviceCount() > 0 else 1)"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "0" if gpu_available() else "1")

# %%
import dcn_numba
from dcn_numba.reference.gradcheck import assert_close
from dcn_numba.kernels import bilinear, deform_conv_cpu, deform_conv_cuda, deform_conv_layout, deform_conv_math
from dcn_numba.kernels._targets import for_cuda
from dcn_numba.reference import deform_conv_vectorised as reference

import inspect
import math
import time
import re
import tempfile
import threading
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from numba import config, cuda, njit

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("05_cuda_kernels_in_numba")

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
# Kernels call the shared scalar functions of `dcn_numba.kernels.bilinear` (the ones of notebook 1)
# through `for_cuda(bilinear)`: on a GPU that is the module itself, compiled into the kernel; in the
# simulator, the functions' plain Python versions.

# %%
gpu = for_cuda(bilinear)


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
expected = [bilinear.dcn_sample(image.ravel(), 0, H, W, y, x) for y, x in zip(p_y, p_x)]
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
loops = np.bincount(owner, minlength=16)  # outputs per thread: the passes of its loop
assert set(loops.tolist()) == {18, 19}, loops  # 300 outputs over 16 threads, as Figure 1's caption says

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
# ## Your first deformable kernel: im2col
#
# Notebook 2's column buffer, `col[c, k, i, j] = S(x_c, p_y, p_x)` with
# p = (i − pad + ki + Δy_k, j − pad + kj + Δx_k), is a perfect first kernel: every element is
# independent, so thread `index` can own element `index` of the flat buffer (C_in, K, H_out,
# W_out). Keep it simple: one image, one offset group, stride and dilation 1, no mask.
#
# **Exercise 5.1.** Write the body of `naive_im2col`. In a grid-stride loop over `index`:
# unpack it into (c, k, i, j) (divisions and remainders by W_out, H_out and K, innermost last),
# find (ki, kj) from k, read Δy and Δx from the flat offset array (B = 1, so channel 2k of it
# starts at flat index 2k·H_out·W_out), and write
# `col[index] = gpu.dcn_sample(x, c·H·W, H, W, p_y, p_x)`, the shared sampler of notebook 1
# reading channel c of the flat input. The next cell compiles it for the GPU, or for the
# simulator here, launches it as 2 blocks of 8 threads on a 2-channel 5 × 5 input with random
# offsets, and compares it with the reference's column buffer.

# %%
@exercise
def naive_im2col(n_items, x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    """col[c, k, i, j] = S(x_c, i − padding + ki + Δy_k, j − padding + kj + Δx_k); one thread per element."""
    raise NotImplementedError("Exercise 5.1: a grid-stride loop that samples one element of col per step")


# %%
check(naive_im2col, checks.matches_the_reference_columns)
C_in, size, kh, kw, padding = 2, 5, 3, 3, 1
K = kh * kw
x = rng.standard_normal((1, C_in, size, size))
offset = rng.normal(0, 1.5, (1, 2 * K, size, size))  # H_out = W_out = size with padding 1

# %% [markdown]
# ## col2im, and why it needs atomics
#
# The backward pass runs the column buffer in reverse (notebook 3, step 5): the gradient of each
# element, gcol[c, k, i, j], goes back to the four pixels its sample read, weighted by the corner
# weights. Owning a gcol element is as natural as owning a col element, but now the thread
# *writes* four places that other threads write too: the same pixel is a corner of many samples.
# And `grad[p] += v` is three steps, read, add, write. Two threads that read the same old value
# both write their own sum, and one contribution is lost.
#
# You can watch updates get lost in NumPy, deterministically: `a[targets] += values` reads all of
# `a[targets]` first, adds, and writes back, exactly like a warp of threads doing read-add-write in
# lockstep, so a target listed twice keeps only one of its two adds. `np.add.at` adds one at a
# time, the way an atomic add does:

# %%
targets = np.array([0, 1, 1, 2, 2, 2])  # six "threads", three of them adding into pixel 2
racing = np.zeros(3)
racing[targets] += 1.0  # read all, add, write all: the last writer wins
atomic = np.zeros(3)
np.add.at(atomic, targets, 1.0)  # one read-add-write at a time
print("lockstep read-add-write:", racing, "  one at a time:", atomic)
assert racing.tolist() == [1, 1, 1]
assert atomic.tolist() == [1, 2, 3]

# %% [markdown]
# On a multi-core CPU the same race happens between real threads. Two Python threads here run a
# compiled scatter (`nogil=True` lets them run at the same time), a million passes long so that
# the two overlap, into one shared array, without and with an owner for each pixel. Without, the count of lost adds depends on the timing, so it
# changes from run to run (and can be 0 when the machine runs the threads one after the other);
# with each thread writing only the pixels it owns, nothing is ever lost:

# %%
@njit(nogil=True)
def scatter_ones(grad, targets, repeats):
    """grad[t] += 1 for every target, `repeats` times over: read, add, write, with no lock."""
    for _ in range(repeats):
        for t in targets:
            grad[t] += 1.0


@njit(nogil=True)
def scatter_owned(grad, targets, repeats, owner, me):
    """The same adds, but a thread only writes the pixels it owns."""
    for _ in range(repeats):
        for t in targets:
            if owner[t] == me:
                grad[t] += 1.0


def race(function, arguments):
    """Run function(*arguments[t]) on one Python thread per entry, at the same time; wait for all."""
    threads = [threading.Thread(target=function, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


pixels, repeats = np.arange(8).repeat(4), 1_000_000  # every pixel a target four times per pass
owner = np.arange(8) % 2  # thread 0 owns the even pixels, thread 1 the odd ones
scatter_ones(np.zeros(8), pixels, 1)  # compile both before the race
scatter_owned(np.zeros(8), pixels, 1, owner, 0)
shared, owned = np.zeros(8), np.zeros(8)
race(scatter_ones, [(shared, pixels, repeats)] * 2)
race(scatter_owned, [(owned, pixels, repeats, owner, me) for me in (0, 1)])
expected_adds = 2 * len(pixels) * repeats
print(f"two threads, no owner: {expected_adds - shared.sum():,.0f} of {expected_adds:,} adds lost this run")
assert owned.sum() == len(pixels) * repeats  # each pixel's adds, made once, by its owner
print(f"two threads, one owner per pixel: {len(pixels) * repeats - owned.sum():.0f} lost")

# %% [markdown]
# How common are collisions in col2im? Count, for every pixel of one channel of a 3 × 3 layer
# with random offsets, the (sample, corner) adds it receives:

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
interior = adds[2:-2, 2:-2]  # pixels at least two from the border
print(f"adds per pixel: min {adds.min()}, max {adds.max()}, mean {adds.mean():.1f}; "
      f"away from the border: min {interior.min()}, mean {interior.mean():.1f}")

# %%
fig, axis = plt.subplots(figsize=(4.2, 3.4), layout="constrained")
shown = axis.imshow(adds, cmap="magma")
fig.colorbar(shown, ax=axis, label="threads adding into the pixel")
axis.set(title="collisions in col2im, one channel", xticks=[], yticks=[])
figure_2_numbers = (interior.min(), interior.max(), round(interior.mean(), 1))
assert figure_2_numbers == (24, 49, 36.2), figure_2_numbers  # the numbers the caption states
plt.show()

# %% [markdown]
# **Figure 2.** How many (sample, corner) pairs, each a separate thread's add, land on each pixel
# of one 12 × 12 input channel in the backward pass of a 3 × 3 deformable convolution with random
# offsets. Look at the scale: at least two pixels from the border a pixel receives between 24 and
# 49 adds, 36.2 on average (each output has 9 taps and each tap adds into 4 pixels: 36 adds per
# output, spread unevenly by the offsets), so collisions are the rule, not a corner case.
#
# **Exercise 5.2.** Write `naive_col2im`, the adjoint of your im2col: in a grid-stride loop over
# the gcol elements, recompute p as in exercise 5.1, skip invalid samples
# (`gpu.dcn_is_valid(p_y, p_x, H, W)`), and for each of the four corners
# (y0 + corner // 2, x0 + corner % 2) that lies inside the image add
# `gcol[index] · gpu.corner_weight(l_y, l_x, corner)` into `grad_x` with
# `cuda.atomic.add(grad_x, flat_index, value)`, which makes read-add-write one indivisible step.
# (`gpu.fractional_part(p)` gives l = p − ⌊p⌋.) The check first reads your code:
# `grad_x` may be written only through `cuda.atomic.add` (the simulator runs threads one after
# another often enough that a plain `+=` can still give the right numbers there, so the numbers
# alone cannot tell). Then it compares the result with the package's grad_input for a weight that
# copies col to the output, so that grad_out is gcol.

# %%
@exercise
def naive_col2im(n_items, gcol, offset, H, W, kh, kw, padding, H_out, W_out, grad_x):
    """grad_x[c] += gcol[c, k, i, j] · w_ab at the four in-image corners of each valid sample."""
    raise NotImplementedError("Exercise 5.2: scatter with cuda.atomic.add")


# %%
check(naive_col2im, checks.matches_the_package_backward)
size = 5  # the layer of exercise 5.1 again (the count of collisions used a 12 × 12 channel)

# %% [markdown]
# Atomics cost throughput and make floating-point sums order-dependent (the last bits vary from
# run to run). The CPU kernel avoids them by choosing a different owner, as the two threads above
# did: each `prange` iteration owns whole *images*, walks every sample of them and is the only
# writer of their gradient. No two iterations touch the same memory, so plain `+=` is safe and the
# result is deterministic.
#
# ## How fast is the naive kernel?
#
# There is no GPU here to time a CUDA kernel on, and the simulator runs Python thread by thread, so
# its times say nothing. The CPU can still compare the two *algorithms*: your im2col's loop body,
# compiled for the CPU with `@njit` and run by one thread over every element in turn (a grid-stride
# loop whose grid has one thread), followed by one GEMM per image, against the package's CPU
# forward kernel. Check first, then time: both must match the reference before either is timed.

# %%
@njit
def naive_im2col_cpu(x, offset, H, W, kh, kw, padding, H_out, W_out, col):
    """Exercise 5.1's loop on one CPU thread: col[c, k, i, j] = S(x_c, p) for every element in turn."""
    K, HW_out = kh * kw, H_out * W_out
    for index in range(col.size):
        c, k, i, j = index // HW_out // K, index // HW_out % K, index // W_out % H_out, index % W_out
        p_y = i - padding + k // kw + offset[2 * k * HW_out + i * W_out + j]
        p_x = j - padding + k % kw + offset[(2 * k + 1) * HW_out + i * W_out + j]
        col[index] = bilinear.dcn_sample(x, c * H * W, H, W, p_y, p_x)


def naive_forward(x, offset, weight):
    """A 3 × 3 deformable convolution with padding 1: the naive im2col, then weight @ col, image by image."""
    B, C_in, H, W = x.shape
    C_out = weight.shape[0]
    out = np.empty((B, C_out, H * W))
    col = np.empty(C_in * 9 * H * W)
    for b in range(B):
        naive_im2col_cpu(x[b].ravel(), offset[b].ravel(), H, W, 3, 3, 1, H, W, col)
        out[b] = weight.reshape(C_out, -1) @ col.reshape(C_in * 9, H * W)
    return out.reshape(B, C_out, H, W)


def best_time(function, repeats=5):
    """The fastest of `repeats` runs, in seconds: the run least disturbed by the machine's other work."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


timing_sizes, timings = (8, 16, 32), {"naive im2col + GEMM": [], "package's CPU kernel": []}
for side in timing_sizes:
    layer_input = rng.standard_normal((2, 16, side, side))
    layer_offset = rng.normal(0, 1.5, (2, 18, side, side))
    layer_weight = rng.standard_normal((16, 16, 3, 3))
    expected = dcn_numba.deform_conv2d(layer_input, layer_offset, layer_weight, padding=1, backend="reference")
    runs = {"naive im2col + GEMM": lambda: naive_forward(layer_input, layer_offset, layer_weight),
            "package's CPU kernel": lambda: dcn_numba.deform_conv2d(layer_input, layer_offset, layer_weight,
                                                                    padding=1, backend="cpu")}
    for name, run in runs.items():
        assert_close(run(), expected, what=f"{name} against the reference, {side} × {side}")  # check first
        timings[name].append(best_time(run))
for name, seconds in timings.items():
    print(f"{name:22s}" + "".join(f"{side:>4} × {side}: {1e3 * s:7.2f} ms" for side, s in zip(timing_sizes, seconds)))
ratios = np.array(timings["naive im2col + GEMM"]) / np.array(timings["package's CPU kernel"])
print("naive / package, this run:", " ".join(f"{r:.1f}×" for r in ratios))

# %%
fig, axis = plt.subplots(figsize=(5, 2.8), layout="constrained")
for (name, seconds), marker in zip(timings.items(), ("o", "s")):
    axis.plot([side * side for side in timing_sizes], 1e3 * np.array(seconds), marker=marker, label=name)
axis.set(xscale="log", yscale="log", xlabel="output positions per image (H·W)", ylabel="ms per forward, best of 5",
         xticks=[side * side for side in timing_sizes], xticklabels=[f"{s}×{s}" for s in timing_sizes])
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** The time of one forward pass of a 3 × 3 deformable layer, 2 images, 16 → 16
# channels, at three sizes, on the CPU in float64: the naive im2col (one thread, one element at a
# time) plus a GEMM per image, against the package's kernel, both checked against the reference
# before they were timed. The caption states no ratio because it is a property of the machine and
# of what else runs on it (the test suite runs this notebook with one Numba thread, two notebooks at
# a time); the cell above prints this run's. The next section says where the difference comes
# from. `make bench` measures realistic layers, with every backend, the same way: checked first,
# then timed against baselines measured in the same run.
#
# ## What the package's kernels do differently
#
# Your kernels work, and they are what the package's kernels compute. Three things make the
# package's faster, the first two found by asking what the naive kernels compute more than once,
# the third by asking how they read memory.
#
# **1. Precomputed sample locations.** Your im2col computes the sampling position p, its
# validity, ⌊p⌋ and the fractions for every element (c, k, i, j), but p does not depend on c:
# all the channels of an offset group read the same positions. The package runs a first kernel,
# `locate_samples`, once per *sample* (b, g, k, i, j), and stores three arrays of that size:
#
# * `top_left`: where the sample's cell starts, as a flat pixel index into the padded image (below), or a
#   negative code for a sample that reads no pixel (`OUTSIDE`, or `NOT_A_NUMBER` for a NaN
#   position);
# * `l_y`, `l_x`: the fractions p − ⌊p⌋ of notebook 1, the bilinear weights' inputs.
#
# `dcn_table_index(b, position, g, k, geometry)` says where sample (b, g, k) at an output
# position is kept, and every channel of offset group g reuses that location.
#
# **2. A padded input.** Your kernels test each corner against the image border. The package
# copies the input once into `padded`, zero-padded by one pixel: then every corner of every valid
# sample lies inside the padded image, and the four reads need no test at all; `bilinear_blend`
# mixes them with the weights from `l_y`, `l_x`. A sample that reads no pixel takes
# `dcn_unlocated_value(top_left)` instead: 0, or NaN for a NaN position, so that bad offsets show.
#
# **3. Channels last.** The padded copy is laid out (B, H + 2, W + 2, C_in), the channels of a
# pixel side by side, and col is laid out (B, G, H_out·W_out, K, C_in/G), channel last too. All the
# channels of an offset group share a sample's four corners and weights, so neighbouring GPU
# threads (neighbouring channels) read neighbouring addresses, which the GPU serves in one memory
# transaction (a *coalesced* load), and a CPU loop over channels reads four contiguous rows. With
# `padded_corners(padded, base, top_left, W, pixel_stride)` a thread reads channel c's corners at
# `base` = the image's start + c, one pixel every `pixel_stride` = C_in values.
#
# What that saves, counted for a layer of realistic size:

# %%
layer = dict(B=8, C_in=256, G_off=1, K=9, H_out=28, W_out=28)
col_elements = layer["B"] * layer["C_in"] * layer["K"] * layer["H_out"] * layer["W_out"]
samples = layer["B"] * layer["G_off"] * layer["K"] * layer["H_out"] * layer["W_out"]
print(f"positions, floors and validity tests: naive {col_elements:,}, precomputed {samples:,} "
      f"({col_elements // samples}× fewer, C_in / G_off)")
print(f"corner bounds tests: naive {4 * col_elements:,}, with a padded input 0")
assert col_elements // samples == layer["C_in"] // layer["G_off"]

# %% [markdown]
# The price is memory: three arrays of the sample count (small next to col, C_in/G_off times
# larger) and one padded copy of the input. Every name in the package's im2col kernel is now
# yours: the grid-stride loop of exercise 5.1, the element's coordinates (`dcn_column_coordinates`),
# `dcn_table_index` and `top_left`, `l_y`, `l_x` for the precomputed location, `padded_corners` on
# the channels-last input, and `dcn_column_from_corners`, which blends and takes
# `dcn_unlocated_value` for a sample outside, times the mask m of v2. Its col2im is your exercise
# 5.2 on the same precomputed locations, with the one atomic, `cuda.atomic.add`. The CPU avoids
# atomics by ownership, as the two threads above did: each `prange` iteration of its backward owns
# whole images, and `backpropagate_tile` scatters a tile of one image's gcol into that image alone
# (and, in the same pass over the samples, sums their offset and mask gradients). Read them next to
# your own kernels; here is where each one is:

# %%
for kernel in (deform_conv_cuda.deformable_im2col_cuda, deform_conv_cuda.deformable_col2im_cuda,
               deform_conv_cpu.backpropagate_tile):
    function = getattr(kernel, "py_func", kernel)
    path = Path(inspect.getsourcefile(function)).resolve().relative_to(Path(dcn_numba.__file__).resolve().parents[1])
    lines, first = inspect.getsourcelines(function)
    print(f"{function.__name__:24s} {path}, lines {first}–{first + len(lines) - 1}")

# %% [markdown]
# The package launches its kernels with `launch(kernel, n_items, stream, *args)`, which picks
# enough blocks of 256 threads (at most 4096 blocks; the grid-stride loop does the rest), or, in
# the simulator, the 2 × 8 grid we used above. Run the package's CUDA backend (simulated here)
# and hold it to the reference, forward and backward:

# %%
if SIMULATED:
    to_device, to_host = np.asarray, np.asarray  # the simulator runs CUDA kernels on NumPy arrays
else:
    import cupy

    to_device, to_host = cupy.asarray, cupy.asnumpy

C_out = 2
weight = rng.standard_normal((C_out, C_in, kh, kw))
mask = rng.uniform(0, 1, (1, K, size, size))
grad_out = rng.standard_normal((1, C_out, size, size))
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
from dcn_numba.kernels import deform_conv, deform_conv_cuda
from dcn_numba.kernels._targets import cuda_kernel_signatures
for name, kernel, argtypes in cuda_kernel_signatures(deform_conv) + cuda_kernel_signatures(deform_conv_cuda):
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
# code: `ptxas`, NVIDIA's assembler (shipped in the CUDA compiler wheel that the dev extra installs:
# `nvidia/cu13/bin` for CUDA 13, `nvidia/cuda_nvcc/bin` for CUDA 12), turns it into code for one GPU generation and, with `-v`, reports what each
# thread needs: **registers** and **spills**. Registers matter because an SM has a fixed register
# file (64K 32-bit registers on sm_80 and sm_90): the more registers a thread uses, the fewer
# threads can be resident to hide memory latency. Spills mean the compiler ran out of registers and
# went to slow local memory.

# %%
import nvidia

ptxas = next(Path(root) / layout / "bin" / "ptxas" for layout in ("cu13", "cuda_nvcc")
             for root in nvidia.__path__ if (Path(root) / layout / "bin" / "ptxas").is_file())
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

# %% [markdown]
# How many threads can an SM keep resident with that many registers? Registers are handed out per
# warp of 32 threads, in chunks of 256, and a block is resident only as a whole: all its warps or
# none. So count whole blocks (256 threads, the package's launch size), not warps:
#
#     registers per warp  = ⌈registers · 32 / 256⌉ · 256
#     blocks per SM       = ⌊65536 / (registers per warp · warps per block)⌋   (at most 32 blocks)
#     resident threads    = min(2048, blocks per SM · threads per block)
#
# Counting warps instead of blocks overestimates: a 68-register kernel allocates 2304 registers
# per warp, 28 warps fit the register file (896 threads), but a block of 8 warps takes 18,432
# registers, only three blocks fit, and the SM holds 768 threads.

# %%
def resident_threads(registers, threads_per_block=256, register_file=65536, max_threads=2048,
                     max_blocks=32, warp=32, granularity=256):
    """Threads an SM can hold at once, as far as registers allow, in whole blocks."""
    per_warp = math.ceil(registers * warp / granularity) * granularity
    per_block = per_warp * math.ceil(threads_per_block / warp)
    blocks = min(max_blocks, register_file // per_block)
    return min(max_threads, blocks * threads_per_block)


def resident_threads_by_warps(registers, register_file=65536, max_threads=2048, warp=32, granularity=256):
    """The same count if warps, not blocks, were the unit: an overestimate."""
    return min(max_threads, register_file // (math.ceil(registers * warp / granularity) * granularity) * warp)


assert resident_threads(68) == 768
assert resident_threads_by_warps(68) == 896
for name, (registers, spills) in report.items():
    print(f"{name:38s} {registers:4d} registers, {spills} bytes spilled, "
          f"{resident_threads(registers):4d} threads per SM in blocks of 256 "
          f"(counting warps alone: {resident_threads_by_warps(registers)})")

# %%
names = sorted({name.split("[")[0] for name in report})
fig, axis = plt.subplots(figsize=(7, 2.8), layout="constrained")
for shift, dtype, colour in ((-0.2, "float32", "tab:blue"), (0.2, "float64", "tab:orange")):
    axis.bar(np.arange(len(names)) + shift, [report[f"{name}[{dtype}]"][0] for name in names], width=0.4,
             color=colour, label=dtype)
axis.set_xticks(np.arange(len(names)), [name.replace("_cuda", "") for name in names], fontsize=8)
axis.set(ylabel="registers per thread")
axis.legend(fontsize=8)
tallest = max(report, key=lambda name: report[name][0])
assert tallest.startswith("offset_mask_gradient_cuda"), f"the tallest bar is {tallest}"  # as the caption says
plt.show()

# %% [markdown]
# **Figure 4.** Registers per thread of each deformable convolution kernel, compiled for sm_80, in
# float32 and float64. Look at the tallest bar: the kernel that keeps the most values live per
# thread (the offset and mask gradient, which carries three running sums through its loop over
# channels) needs the most registers, and the table above translates that into fewer resident
# threads per SM, block by block. A double takes two registers, so float64 versions can need more. A column of
# zeros under "spilled" is the other thing to check after every change to a kernel.

# %% [markdown]
# ## The same math, compiled for the CPU
#
# The CPU kernels are not a port: they call the very same scalar functions. The modules of shared
# mathematics (`bilinear.py`, and the convolution's `deform_conv_math.py` and `deform_conv_layout.py`)
# compile each of them with `@njit(inline="always")`, so Numba pastes it into whichever kernel
# calls it, CPU or CUDA. A CPU kernel is `@njit(parallel=True)`, with `prange` splitting its outer
# loop among the cores. Which shared functions does each im2col call? On the CPU, im2col is
# `fill_columns`, which the forward kernel (`deformable_conv_tiles_cpu`) calls for each tile through
# `sample_tile`, finding a sample's place with `tile_table_index`, so we read them all:

# %%
shared_functions = {name for module in (bilinear, deform_conv_layout, deform_conv_math)
                    for name, value in vars(module).items() if hasattr(value, "py_func")}


def shared_calls(*functions):
    """The shared sampling functions that the sources of `functions` call."""
    source = "".join(inspect.getsource(function) for function in functions)
    return {name for name in shared_functions if re.search(rf"\b{name}\(", source)}


cpu_calls = shared_calls(deform_conv_cpu.deformable_conv_tiles_cpu, deform_conv_cpu.sample_tile,
                         deform_conv_cpu.fill_columns, deform_conv_cpu.tile_table_index)
cuda_calls = shared_calls(deform_conv_cuda.deformable_im2col_cuda)
print("both call        ", sorted(cpu_calls & cuda_calls))
print("only the CPU     ", sorted(cpu_calls - cuda_calls))
print("only the GPU     ", sorted(cuda_calls - cpu_calls))
assert "dcn_column_from_corners" in cpu_calls & cuda_calls

# %% [markdown]
# The formula, `dcn_column_from_corners` (m · S from the four corners), and the layouts
# (`dcn_table_index`, `dcn_padded_image`, `dcn_sample_number`) are common. What only one side calls
# is the walk: a GPU thread finds its element's coordinates (`dcn_column_coordinates`) and reads its
# four corners one value each (`padded_corners`); a CPU iteration takes a run of channels at once,
# four contiguous rows of the channels-last input (`corner_rows`, in the kernel module), and loops
# over them, a loop the compiler turns into vector instructions. The CPU also multiplies each
# tile of col by the weights as soon as it is sampled, while it is still in the core's cache;
# the GPU fills the column buffer of many images and hands it to cuBLAS.
#
# Only the walk over the index space differs: tiles of output positions in `prange` iterations
# on the CPU, a grid-stride loop over elements on the GPU. Three executions of one truth, which
# must agree:

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
# * A naive im2col is a grid-stride loop over col calling the shared sampler; col2im is its
#   adjoint, a scatter, where threads collide on the same pixel and lose updates unless the add
#   is atomic (`cuda.atomic.add`) or each pixel has one owner (the CPU kernel's images).
# * The package's kernels locate each sample once per offset group (`top_left`, `l_y`, `l_x`),
#   C_in/G_off times fewer than per col element, and read corners from a zero-padded channels-last input with
#   no bounds tests.
# * Occupancy comes in whole blocks: with 256-thread blocks a 68-register kernel keeps 768
#   threads per SM, not the 896 a count of warps suggests.
# * `NUMBA_ENABLE_CUDASIM=1`, set before importing `numba.cuda`, runs the real kernels on the CPU
#   and checks every index; `compile_ptx` plus `ptxas -v` checks that they compile for real GPUs
#   and what they cost in registers. Both run without a GPU.
# * The sampling math is written once (`bilinear.py`, `deform_conv_math.py`) and inlined into both
#   the CPU and the CUDA kernels.
#
# Notebook 6 turns to the other deformable operator: RoI pooling.
