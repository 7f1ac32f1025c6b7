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
# # 10. From DCNv2 to DCNv3 and DCNv4
#
# Two later operators kept the deformable sampling of notebooks 1–3 and changed what sits around
# it: DCNv3 (InternImage, Wang et al., CVPR 2023) and DCNv4 (FlashInternImage, Xiong et al., CVPR
# 2024). Both are in dcn_numba as `dcn_numba.dcnv3` and `dcn_numba.dcnv4` (the specification's
# section 3). This notebook writes DCNv3 with the DCNv2 operator you already know, so that every
# change is one line you wrote, then unpacks DCNv4's single offset-and-mask array, and times the
# DCNv3 kernel against its NumPy reference.
#
# **What you will learn**
#
# * the three formulas side by side: DCNv2's weighted sum, DCNv3's weight taken out of the
#   operator and its offsets shared by a group of channels, DCNv4's mask without a softmax;
# * the layouts that differ: channels last, offsets x first, taps numbered column-major;
# * to write DCNv3 as a depthwise `deform_conv2d` with a weight of ones (exercise 10.1);
# * the softmax over each group's taps that the DCNv3 layer applies to its mask (exercise 10.2);
# * DCNv4's packed `offset_mask` and its padding to a multiple of 8 (exercise 10.3);
# * how much faster the compiled DCNv3 CPU kernel is than the reference, checked first.

# %%
import dcn_numba  # first, as in every notebook

import time

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba.reference import dcnv3 as dcnv3_reference

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("10_dcnv2_to_dcnv4")

# %% [markdown]
# ## Three formulas
#
# **DCNv2** (notebooks 2 and 3). Output channel o at position p0 sums every input channel c and
# every tap k of a K-tap kernel, each sample moved by its own offset and scaled by its mask:
#
# $$y_o(p_0) = \sum_{c} \sum_{k=1}^{K} w_{o,c,k}\; m_k \; x_c(p_0 + p_k + \Delta p_k)$$
#
# The offsets Δp_k and masks m_k come from a sibling convolution; one set (one offset group) is
# shared by all input channels, and the mask is a sigmoid, each tap on its own.
#
# **DCNv3** splits the C channels into G groups of D channels. Group g has its own offsets and
# mask, and the weight leaves the operator: the operator only samples, scales and sums each
# channel on its own,
#
# $$y_c(p_0) = \sum_{k=1}^{K} m_{g,k}\; x_c(p_0 + p_k + \Delta p_{g,k}), \qquad c \in \text{group } g,$$
#
# and linear layers before and after (`input_proj`, `output_proj`) mix the channels. The mask of
# each group is a softmax over its K taps, so the K weights of a sample sum to 1. The arrays are
# channels last, (N, H, W, C), as a linear layer reads them.
#
# **DCNv4** computes the same sum. Its layer drops the softmax (a mask value may be any number)
# and computes offsets and mask with one linear layer, stored in one array, `offset_mask`.
#
# Two conventions change with the operator. deform_conv2d numbers the taps row-major,
# k = k_i·kw + k_j, and stores each offset pair y first; DCNv3 numbers them column-major,
# p = i_x·kh + i_y, and stores the pair x first.

# %%
kh = kw = 3
row_major = np.array([[ki * kw + kj for kj in range(kw)] for ki in range(kh)])  # deform_conv2d's k
column_major = np.array([[i_x * kh + i_y for i_x in range(kw)] for i_y in range(kh)])  # DCNv3's p
same = row_major == column_major
print(f"{int(same.sum())} of {kh * kw} taps keep their number: {row_major[same].tolist()}")
assert same.sum() == 3 and row_major[same].tolist() == [0, 4, 8]
assert [tuple(int(v) for v in np.argwhere(column_major == p)[0][::-1]) for p in range(kh * kw)] == \
    dcnv3_reference.taps(kh, kw, remove_center=False), "the reference numbers its taps (i_x, i_y) so"

fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.2), layout="constrained")
for axis, numbers, title in zip(axes, (row_major, column_major),
                                ("deform_conv2d: k = k_i·kw + k_j", "DCNv3: p = i_x·kh + i_y")):
    axis.imshow(same, cmap="Pastel1_r", vmin=0, vmax=1)
    for (i, j), number in np.ndenumerate(numbers):
        axis.text(j, i, str(number), ha="center", va="center", fontsize=14)
    axis.set(xticks=range(kw), yticks=range(kh), xlabel="column (x)", ylabel="row (y)", title=title)
plt.show()

# %% [markdown]
# **Figure 1.** The number of each tap of a 3 × 3 kernel, row-major as deform_conv2d counts
# them (left) and column-major as DCNv3 does (right). Three taps, 0, 4 and 8 on the diagonal
# (shaded), keep their number; the other six are transposed. An offset array written in one
# numbering and read in the other moves six of nine samples to the wrong place.

# %% [markdown]
# ## Exercise 10.1: DCNv3 with the DCNv2 operator
#
# Each output channel of DCNv3 sums the samples of its own input channel only. deform_conv2d
# does that when every weight group is one channel (weight shape (C, 1, kh, kw)) and the weight
# is 1: then `out[c] = Σ_k 1 · m_k · S(x_c, p_k)`. Its offset groups are DCNv3's groups, since
# deform_conv2d gives input channel c the offsets of group c // (C / G), and DCNv3's group g holds
# the channels g·D to g·D + D − 1.
#
# Write `dcnv3_by_deform_conv2d`: take `input` (N, H, W, C), `offset` (N, H_out, W_out, G·P·2)
# and `mask` (N, H_out, W_out, G·P) in DCNv3's layout (stride 1, dilation 1, offset_scale 1, every
# tap kept), turn them into deform_conv2d's layouts (channels first; offset channel g·2K + 2k + d
# with d = 0 for Δy; mask channel g·K + k), call `dcn_numba.deform_conv2d`, and return the output
# channels last. The check compares it with `dcn_numba.dcnv3` on a 3 × 3 and a 3 × 5 kernel.

# %%
@exercise
def dcnv3_by_deform_conv2d(input, offset, mask, kernel_h, kernel_w, pad_h, pad_w, group):
    """DCNv3 (stride 1, dilation 1, offset_scale 1) computed by dcn_numba.deform_conv2d with a
    depthwise weight of ones: input (N, H, W, C), offset (N, H_out, W_out, G·P·2) x first with
    column-major taps, mask (N, H_out, W_out, G·P) → output (N, H_out, W_out, C)."""
    raise NotImplementedError("Exercise 10.1: reorder the offsets and mask, then call deform_conv2d")


# %%
check(dcnv3_by_deform_conv2d, checks.matches_dcnv3)

# %% [markdown]
# ## Exercise 10.2: the softmax over a group's taps
#
# The DCNv3 layer computes its mask with a linear layer, one value a_{g,p} per group and tap,
# and normalises each group's P values with a softmax before the operator sees them:
#
# $$m_{g,p} = \frac{\exp(a_{g,p} - \max_q a_{g,q})}{\sum_{q} \exp(a_{g,q} - \max_q a_{g,q})}$$
#
# Subtracting the maximum changes nothing mathematically and keeps `exp` from overflowing when a
# value is large. Write it for a mask (N, H_out, W_out, G·P): each group's P consecutive channels
# are normalised on their own.

# %%
@exercise
def softmax_over_taps(mask, group):
    """m (N, H_out, W_out, G·P): the softmax of the raw mask over each group's P taps."""
    raise NotImplementedError("Exercise 10.2: a softmax over each group's P channels")


# %%
check(softmax_over_taps, checks.matches_grouped_softmax)

# %% [markdown]
# With the softmax the operator's output is a weighted *mean* of the samples: a constant image
# comes out unchanged, whatever the offsets (as long as every sample lands inside the image).

# %%
rng = np.random.default_rng(10)
N, H, W, G, D = 1, 8, 8, 2, 3
constant = np.full((N, H, W, G * D), 2.5)
small_offsets = rng.uniform(-0.4, 0.4, (N, H, W, G * 9 * 2))
mask = softmax_over_taps(rng.standard_normal((N, H, W, G * 9)), G)
# two positions from the border, every sample's four corners lie inside the 8 × 8 image
inner = dcn_numba.dcnv3(constant, small_offsets, mask, 3, 3, 1, 1, 1, 1, 1, 1, G)[:, 2:-2, 2:-2]
print(f"a constant 2.5 through DCNv3 with softmax masks: {inner.min():.12f} to {inner.max():.12f} "
      f"two positions or more from the border")
assert np.allclose(inner, 2.5)

# %% [markdown]
# ## Exercise 10.3: DCNv4's packed offset_mask
#
# DCNv4 reads offsets and mask from one array, so one linear layer writes both and one memory
# read fetches both. Group g owns 3P consecutive channels from g·3P: first its 2P offsets (the
# same x-first pairs and column-major taps as DCNv3), then its P mask values. Each row is padded
# with unused channels up to a multiple of 8, pad8(3·G·P), which keeps rows aligned in memory.
#
# Write the unpacking: `offset_mask` (N, H_out, W_out, pad8(3·G·P)) → DCNv3's `offset`
# (N, H_out, W_out, G·P·2) and `mask` (N, H_out, W_out, G·P).

# %%
@exercise
def unpack_offset_mask(offset_mask, group, P):
    """(offset (N, H_out, W_out, G·P·2), mask (N, H_out, W_out, G·P)) from DCNv4's packed rows."""
    raise NotImplementedError("Exercise 10.3: split each group's 3P channels, drop the padding")


# %%
check(unpack_offset_mask, checks.unpacks_like_dcnv4)

# %% [markdown]
# With it, DCNv4 is DCNv3 on the unpacked arrays: without the softmax (DCNv4's default), and
# with it (`softmax=True`, what the DCNv3 layer does).

# %%
G, D, P = 4, 2, 9
x = rng.standard_normal((2, 6, 7, G * D))
width = dcnv3_reference.pad8(3 * G * P)
offset_mask = rng.normal(0, 1.5, (2, 6, 7, width))
offset, raw_mask = unpack_offset_mask(offset_mask, G, P)
print(f"G = {G} groups of P = {P} taps: {3 * G * P} channels, padded to {width}")
for softmax, mask in ((False, raw_mask), (True, softmax_over_taps(raw_mask, G))):
    by_dcnv4 = dcn_numba.dcnv4(x, offset_mask, 3, 3, 1, 1, 1, 1, 1, 1, G, softmax=softmax)
    by_dcnv3 = dcn_numba.dcnv3(x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, G)
    print(f"softmax={softmax}: dcnv4 and dcnv3 differ by at most {np.abs(by_dcnv4 - by_dcnv3).max():.1e}")
    assert np.allclose(by_dcnv4, by_dcnv3, atol=1e-12)
assert width == 112 and 3 * G * P == 108

# %% [markdown]
# ## Check, then time
#
# The CPU kernel of DCNv3 walks every output position once and, for each group and tap, computes
# the sample's position and corner weights once for the group's D channels (a channels-last
# walk); the reference loops over the G·P taps in NumPy, each an array operation over all
# positions. Before timing, the kernel must give the reference's numbers.

# %%
N, H, W, G, D = 2, 32, 32, 4, 16
x = rng.standard_normal((N, H, W, G * D))
offset = rng.normal(0, 2.0, (N, H, W, G * 9 * 2))
mask = softmax_over_taps(rng.standard_normal((N, H, W, G * 9)), G)
arguments = (x, offset, mask, 3, 3, 1, 1, 1, 1, 1, 1, G)
by_kernel = dcn_numba.dcnv3(*arguments, backend="cpu")  # the first call also loads (or compiles) it
by_reference = dcn_numba.dcnv3(*arguments, backend="reference")
difference = float(np.abs(by_kernel - by_reference).max())
print(f"the CPU kernel against the reference: largest difference {difference:.1e}")
assert difference < 1e-12, "never time a kernel that gives other numbers"


def best_time(backend, repeats=5):
    """The fastest of `repeats` calls, in seconds: the others were slowed by something else."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dcn_numba.dcnv3(*arguments, backend=backend)
        times.append(time.perf_counter() - start)
    return min(times)


seconds = {backend: best_time(backend) for backend in ("reference", "cpu")}
ratio = seconds["reference"] / seconds["cpu"]
print(f"N, H, W, C = {N}, {H}, {W}, {G * D}, G = {G}, 3 × 3: reference {1000 * seconds['reference']:.1f} ms, "
      f"CPU kernel {1000 * seconds['cpu']:.1f} ms, {ratio:.1f}× faster")
assert ratio > 1, "the compiled kernel is faster than the NumPy reference"

fig, axis = plt.subplots(figsize=(5, 2.2), layout="constrained")
axis.barh(["NumPy reference", "CPU kernel"], [1000 * seconds["reference"], 1000 * seconds["cpu"]],
          color=["tab:gray", "tab:blue"])
axis.set(xlabel="milliseconds per call (best of 5)", title=f"DCNv3 forward, the kernel {ratio:.1f}× faster")
plt.show()

# %% [markdown]
# **Figure 2.** The time of one DCNv3 forward call on 2 images of 32 × 32 positions, 64 channels
# in 4 groups, a 3 × 3 kernel: the NumPy reference and the CPU kernel, after checking that the
# two agree to 10⁻¹² (the cell asserts it). The ratio in the title and the printed times are
# measured on this run, and the cell asserts only that the kernel is the faster; on a loaded
# machine they vary from run to run. The benchmarks in `benchmarks/` time the kernels on larger
# shapes against more baselines.

# %% [markdown]
# ## Summary
#
# * DCNv2 weights and sums every channel; DCNv3 takes the weight out of the operator (linear
#   layers mix the channels before and after), and each of G groups of channels gets its own
#   offsets and mask, normalised by a softmax over its taps; DCNv4 drops the softmax and packs
#   offsets and mask into one row padded to a multiple of 8.
# * DCNv3 is a depthwise `deform_conv2d` with a weight of ones, once the layouts are converted:
#   channels last to first, x-first offset pairs to y-first, column-major taps to row-major
#   (exercise 10.1); six of nine taps of a 3 × 3 kernel change their number.
# * With the softmax the operator averages its samples: a constant image passes unchanged.
# * DCNv4 is DCNv3 on its unpacked `offset_mask` (exercise 10.3), with or without the softmax.
# * The compiled CPU kernel gives the reference's numbers and runs faster (Figure 2); check
#   first, then time.
