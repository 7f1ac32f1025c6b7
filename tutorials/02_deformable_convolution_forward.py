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
# # 2. Deformable convolution, forward
#
# Notebook 1 wrote a deformable convolution as a loop: for every output, every tap, read the
# input at p0 + p_n + Δp_n and add it up with the tap's weight. This notebook follows the same
# computation the way dcn_numba (and every fast implementation) organises it.
#
# **What you will learn**
#
# * where the offsets come from: a sibling convolution over the same input, initialised at zero;
# * how offsets (and v2's masks) are laid out as channels, and what offset groups are;
# * that an offset field moves where a layer *reads*, so content moves the opposite way;
# * the two steps of the forward pass: a **column buffer** of samples, then **one matrix
#   product** with the weights;
# * that the compiled kernel matches the NumPy reference to rounding error.
#
# Two exercises on the way: the offsets that turn a kernel into a dilated one, and the matrix
# product with weight groups (set `exercises.SOLUTIONS = True` in the first cell to skip them).

# %%
import dcn_numba
from dcn_numba.engine import windows
from dcn_numba.engine.autograd import Tensor
from dcn_numba.data.mnist import load_mnist
from dcn_numba.reference.gradcheck import assert_close
from dcn_numba.reference import deform_conv_vectorised as reference

import matplotlib.pyplot as plt
import numpy as np

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("02_deformable_convolution_forward")

rng = np.random.default_rng(0)
digit = load_mnist().test.images[:1].astype(np.float64)  # (B, C_in, H, W) = (1, 1, 28, 28)
B, C_in, H, W = digit.shape

# %% [markdown]
# ## Offsets are the output of a convolution
#
# Where does Δp come from? In the paper it is *computed from the input itself*: a second,
# ordinary convolution over the same input, with the same kernel size, stride, padding and
# dilation as the deformable one, so that it has one output position per output position of the
# deformable layer. It outputs 2K channels, a (Δy, Δx) pair for each of the K = kh·kw taps.
#
# dcn_numba has an ordinary convolution of its own, `dcn_numba.engine.windows.conv2d`, which shares no
# code with the deformable one: it copies the kernel windows of the padded input into columns
# (im2col) and multiplies them with the weights, and never interpolates. It is an autograd
# Function (notebook 4), so here it gets its arrays wrapped in Tensors:

# %%
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """A regular convolution of arrays, by dcn_numba's sliding-window im2col and a GEMM."""
    wrapped_bias = None if bias is None else Tensor(bias)
    return windows.conv2d(Tensor(input), Tensor(weight), wrapped_bias, stride, padding, dilation).data


kh = kw = 3
K = kh * kw
weight = rng.standard_normal((4, C_in, kh, kw))  # the deformable layer: 4 output channels
offset_weight = np.zeros((2 * K, C_in, kh, kw))  # its offset branch, initialised at zero
offset_bias = np.zeros(2 * K)

offset = conv2d(digit, offset_weight, offset_bias, padding=1)
print("offset field", offset.shape, "= (B, 2K, H_out, W_out)")
assert_close(dcn_numba.deform_conv2d(digit, offset, weight, padding=1),
             conv2d(digit, weight, padding=1), what="deformable layer at initialisation")

# %% [markdown]
# The offset branch starts at zero, so a freshly built deformable layer *is* a regular
# convolution (the check above compares it with the independent one); training then moves its
# samples only as far as the loss asks.
#
# ## The offset layout
#
# Channel `2k + d` of the offset field holds the displacement of tap k = ki·kw + kj along
# direction d, with d = 0 for Δy (rows) and d = 1 for Δx (columns): (Δy, Δx) pairs, y first.
# For a 3 × 3 kernel, laid out like the kernel itself:

# %%
channels = np.arange(2 * K).reshape(kh, kw, 2)
print("channel of Δy for each tap:\n", channels[..., 0])
print("channel of Δx for each tap:\n", channels[..., 1])

# %% [markdown]
# A layout is easy to get wrong and hard to notice, so let us prove we read it correctly. The
# paper notes that offsets can rescale the receptive field: Δp_n = (s − 1)·p_n turns the grid
# p_n ∈ {−1, 0, 1}² into {−s, 0, s}². Put exactly that in the offset branch's *bias* (the weights
# stay 0). With s = 2 the deformable layer must become a convolution with dilation 2.
#
# **Exercise 2.1.** Write `scale_offsets(s, kh, kw)`: the (2K,) offset bias Δp_n = (s − 1)·p_n,
# with p_n = (ki − (kh − 1)/2, kj − (kw − 1)/2) the tap's place around the kernel's centre, laid
# out as channel 2k + d (d = 0 for Δy, 1 for Δx). The check runs it for s = 2 and s = 3 and
# compares the deformable layer with the independent convolution of dilation s, on random
# features.

# %%
@exercise
def scale_offsets(s, kh, kw):
    """The offset bias (2·kh·kw,) of Δp_n = (s − 1)·p_n, channel 2k + d, for an odd kh × kw kernel."""
    raise NotImplementedError("Exercise 2.1: lay out (s − 1)·p_n as (Δy, Δx) pairs, tap by tap")


# %%
check(scale_offsets, checks.acts_as_dilation)
tap_y, tap_x = np.divmod(np.arange(K), kw)
p_n = np.stack([tap_y - 1, tap_x - 1], axis=1)  # (K, 2): the regular grid around p0, (y, x)

# %% [markdown]
# ## Offsets move where the layer reads
#
# The cleanest way to *see* an offset field is a deformable convolution with a single 1 × 1 tap
# of weight 1: out(p0) = x(p0 + Δp(p0)), a pure resampling of the image. Take the field that
# points every p0 to its position rotated by 30° about the centre of the digit:

# %%
centre = np.array([(H - 1) / 2, (W - 1) / 2])
angle = np.deg2rad(30)
rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
p0 = np.stack(np.mgrid[0:H, 0:W], axis=-1).astype(np.float64)  # (H, W, 2) as (y, x)
swirl = (p0 - centre) @ rotation.T + centre - p0  # Δp(p0) = R(p0 − c) + c − p0
swirl_offset = swirl.transpose(2, 0, 1)[None]  # (1, 2, H, W): channels Δy, Δx of the single tap

resampled = dcn_numba.deform_conv2d(digit, swirl_offset, np.ones((1, 1, 1, 1)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(8, 2.9), layout="constrained")
axes[0].imshow(digit[0, 0], cmap="Greys")
axes[0].set_title("input x")
axes[1].imshow(digit[0, 0], cmap="Greys", alpha=0.3)
step = 4
axes[1].quiver(p0[::step, ::step, 1], p0[::step, ::step, 0], swirl[::step, ::step, 1],
               swirl[::step, ::step, 0], color="tab:red", angles="xy", scale_units="xy", scale=1)
axes[1].set_title("offsets Δp(p0)")
axes[2].imshow(resampled[0, 0], cmap="Greys")
axes[2].set_title("out(p0) = x(p0 + Δp)")
for axis in axes:
    axis.set(xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 1.** Left: a test digit. Middle: the offset field, an arrow from each position p0 (every
# fourth one drawn) to the place p0 + Δp it reads, turned 30° counter-clockwise on screen about
# the centre. Right: what a 1 × 1 deformable convolution with weight 1 outputs. Look at the
# direction: the digit has turned the *other* way, clockwise, because an offset says where an
# output reads, not where an input goes. A real layer learns such a field from the image, one per
# tap.

# %% [markdown]
# ## Offset groups
#
# One offset field per layer is the common case, but the channels can also be split into
# G_off **offset groups**, each with its own 2K offset channels: channel `g·2K + 2k + d`, and
# input channel c follows group c // (C_in / G_off). Then each group is a deformable convolution
# of its own channels with its own offsets, and the layer adds them up. Check that:

# %%
features = rng.standard_normal((2, 4, 6, 6))  # B = 2, C_in = 4
group_weight = rng.standard_normal((3, 4, kh, kw))
two_groups = rng.normal(0, 1.5, (2, 2 * 2 * K, 6, 6))  # G_off = 2: 36 offset channels
together = dcn_numba.deform_conv2d(features, two_groups, group_weight, padding=1)
separately = sum(dcn_numba.deform_conv2d(features[:, 2 * g:2 * g + 2], two_groups[:, 2 * K * g:2 * K * (g + 1)],
                                         group_weight[:, 2 * g:2 * g + 2], padding=1) for g in range(2))
assert_close(together, separately, what="two offset groups against two separate convolutions")
print("offset group g = channels g·2K … g·2K + 2K − 1 of the offset field")

# %% [markdown]
# ## The column buffer
#
# Running the loop of notebook 1 for every output channel would read every sample C_out times.
# Fast implementations read each sample once into a **column buffer** (the "deformable im2col"):
#
#     col[b, c, k, i, j] = m · S(x[b, c], p_y, p_x)       p = p0(i, j) + p_k + Δp_k(i, j)
#
# of shape (B, C_in·K, H_out·W_out), where m is v2's mask (1 for v1). Row (c, k) of it is a picture:
# channel c of the input, read through tap k. The reference builds it in
# `dcn_numba.reference.deform_conv_vectorised.columns`. With the offsets of a scale s = 3 (taps three
# pixels apart), each row is the digit shifted by its tap:

# %%
scale = 3
stretched = np.broadcast_to(((scale - 1) * p_n).reshape(1, 2 * K, 1, 1), (1, 2 * K, H, W)).astype(float)
pairs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
col = reference.columns(digit, stretched, weight, mask=None, **pairs)  # (B, G, C_in·K, H_out·W_out)
print("column buffer", col.shape)

fig, axes = plt.subplots(kh, kw, figsize=(4.5, 4.8), layout="constrained")
for k, axis in enumerate(axes.flat):
    axis.imshow(col[0, 0, k].reshape(H, W), cmap="Greys")
    axis.axhline((H - 1) / 2, color="tab:red", lw=0.6)
    axis.axvline((W - 1) / 2, color="tab:red", lw=0.6)
    reads_y, reads_x = (int(v) for v in scale * p_n[k])
    axis.set(xticks=[], yticks=[], title=f"k = {k}: p0 + ({reads_y:+d}, {reads_x:+d})")
    axis.title.set_fontsize(8)
plt.show()

# %% [markdown]
# **Figure 2.** The nine rows of the column buffer for a 3 × 3 kernel whose taps sit three pixels
# apart, each reshaped to the H_out × W_out output grid; the red cross marks the centre of the
# image. Look at the centre row (k = 4): it is the input itself; the others are the digit read
# three pixels up, down, left or right, so it appears shifted the opposite way (row k = 0 reads
# up and to the left, and shows the digit moved down and to the right). With learned offsets
# each row would be a different warp of the input, like figure 1.

# %% [markdown]
# ## One matrix product
#
# Now every output channel is a weighted sum of the rows of `col`, with the weights of that
# channel: a single matrix product (GEMM) of the weights, flattened to (C_out, C_in·K), with the
# column buffer:
#
#     out[b] = weight.reshape(C_out, C_in·K) @ col[b] + bias       (C_out, H_out·W_out)

# **Exercise 2.2.** Write `forward_by_gemm(weight, col, bias)`: the output (B, C_out,
# H_out·W_out) from the column buffer `col` (B, G, C_in/G·K, H_out·W_out) as `reference.columns`
# returns it, with G weight groups (G = col.shape[1]; output channels of group g, the g-th block
# of C_out/G, read only `col[:, g]`). The check tries it with one and with two weight groups on
# random features; the cell then runs it on the digit's column buffer above.

# %%
@exercise
def forward_by_gemm(weight, col, bias):
    """out[b, g·C_out/G + o] = weight[g·C_out/G + o].ravel() @ col[b, g] + bias, one GEMM per group."""
    raise NotImplementedError("Exercise 2.2: one matrix product per weight group, then the bias")


# %%
check(forward_by_gemm, checks.matches_deform_conv2d)
bias = rng.standard_normal(4)
assert_close(forward_by_gemm(weight, col, bias).reshape(1, 4, H, W),
             dcn_numba.deform_conv2d(digit, stretched, weight, bias, padding=1), what="the digit's layer by GEMM")

# %% [markdown]
# This split is the whole trick: the sampling (where deformable convolution differs from a
# regular one) costs one pass over B·C_in·K·H_out·W_out samples, and the heavy arithmetic goes
# to a matrix product, which NumPy hands to BLAS on the CPU and CuPy to cuBLAS on the GPU.
#
# With **weight groups** (G = C_in / weight.shape[1], as in a grouped convolution) the weight
# matrix is block diagonal, so the product splits into one GEMM per group: output channels of
# group g only read input channels of group g. That is why `columns` returns a group axis, and
# why exercise 2.2 loops over it.

# %% [markdown]
# ## Modulation (deformable convolution v2)
#
# The second version of the method gives every sample a learned scalar m ∈ [0, 1] as well, from
# the same sibling convolution (K more channels, through a sigmoid):
#
#     y(p0) = Σ_{p_n ∈ R} w(p_n) · x(p0 + p_n + Δp_n) · Δm_n
#
# `deform_conv2d` takes the mask as given, shape (B, G_off·K, H_out, W_out), channel `g·K + k`
# (the layers apply the sigmoid). In the column buffer it is just a factor on each sample. Two
# consequences that pin down the layout: a mask of ones is v1, and a mask that is 0 on one tap
# everywhere is the same as zeroing that tap's weights.

# %%
offset = rng.normal(0, 1.5, (1, 2 * K, H, W))
ones = np.ones((1, K, H, W))
assert_close(dcn_numba.deform_conv2d(digit, offset, weight, padding=1, mask=ones),
             dcn_numba.deform_conv2d(digit, offset, weight, padding=1), what="mask of ones against v1")

tap = 5
mask = ones.copy()
mask[:, tap] = 0
without_tap = weight.copy()
without_tap[:, :, tap // kw, tap % kw] = 0
assert_close(dcn_numba.deform_conv2d(digit, offset, weight, padding=1, mask=mask),
             dcn_numba.deform_conv2d(digit, offset, without_tap, padding=1),
             what="a zero mask on one tap against zeroing its weights")
print(f"mask channel k = {tap} scales tap (ki, kj) = {divmod(tap, kw)}")

# %% [markdown]
# ## The reference and the kernel
#
# The three backends compute the same thing in different ways:
#
# * `"reference"`: NumPy, vectorised over everything, materialising all four corners of every
#   sample: a transcription of the specification, slow and memory-hungry on purpose;
# * `"cpu"`: one Numba kernel, `@njit(parallel=True)` over tiles of output positions: each tile's
#   part of the column buffer is sampled and multiplied by the weights (BLAS) while it is still in
#   the core's cache, so the whole buffer never exists;
# * `"cuda"`: the deformable im2col as a CUDA kernel filling the column buffer of a chunk of the
#   batch, then CuPy's GEMM (notebook 5).
#
# On a layer of realistic shape, with random offsets and masks, the CPU kernel must agree with the
# reference to rounding error, in both precisions:

# %%
shape = dict(B=8, C_in=16, C_out=16, H=14, W=14)
features = rng.standard_normal((shape["B"], shape["C_in"], shape["H"], shape["W"]))
layer_weight = rng.standard_normal((shape["C_out"], shape["C_in"], kh, kw)) / np.sqrt(shape["C_in"] * K)
layer_bias = rng.standard_normal(shape["C_out"])
layer_offset = rng.normal(0, 2, (shape["B"], 2 * K, shape["H"], shape["W"]))
layer_mask = 1 / (1 + np.exp(-rng.standard_normal((shape["B"], K, shape["H"], shape["W"]))))
arguments = dict(input=features, offset=layer_offset, weight=layer_weight, bias=layer_bias,
                 padding=1, mask=layer_mask)

outputs = {}
for dtype in (np.float64, np.float32):
    typed = {name: value.astype(dtype) if isinstance(value, np.ndarray) else value
             for name, value in arguments.items()}
    for backend in ("reference", "cpu"):
        outputs[backend, dtype] = dcn_numba.deform_conv2d(**typed, backend=backend)
assert_close(outputs["cpu", np.float64], outputs["reference", np.float64], rtol=1e-12, atol=1e-12,
             what="cpu against reference, float64")
assert_close(outputs["cpu", np.float32], outputs["reference", np.float64], rtol=1e-4, atol=1e-5,
             what="cpu float32 against reference float64")

# %%
fig, axis = plt.subplots(figsize=(6, 2.8), layout="constrained")
log_differences = {}
for dtype, colour in ((np.float64, "tab:blue"), (np.float32, "tab:orange")):
    difference = np.abs(outputs["cpu", dtype] - outputs["reference", np.float64]).ravel()
    log_differences[dtype] = np.log10(np.maximum(difference, 1e-20))
    axis.hist(log_differences[dtype], bins=60, color=colour, alpha=0.7,
              label=f"cpu kernel in {dtype.__name__}")
# The numbers the caption states: how many outputs, and where each histogram's inexact part sits.
assert outputs["cpu", np.float64].size == 25_088
for dtype, low, high in ((np.float64, -18, -14), (np.float32, -9, -6)):
    inexact = log_differences[dtype][log_differences[dtype] > -20]
    assert low < np.median(inexact) < high, f"{dtype.__name__}: median log10 difference {np.median(inexact):.1f}"
axis.set(xlabel="log10 |kernel − reference (float64)|", ylabel="outputs")
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** How far each of the 25,088 outputs of the CPU kernel lies from the float64
# reference. Look at where the two histograms sit: around 10⁻¹⁶ in float64 and 10⁻⁷ in float32,
# the rounding error of each precision (the bar at 10⁻²⁰ counts outputs that agree bit for bit).
# The two implementations add their terms in different orders, so many outputs differ in the
# last bits, but nothing larger than rounding separates them. How much faster the kernel is
# depends on the layer and the machine; this notebook times nothing. `make bench`
# (benchmarks/bench_deform_conv.py) measures the backends against each other on realistic layers,
# in the same run, after checking them against the reference.

# %% [markdown]
# ## Summary
#
# * The offsets are the output of an ordinary convolution over the same input, with 2K channels
#   (2·G_off·K with offset groups) and initialised at zero, so a new deformable layer starts as
#   a regular convolution.
# * Offset channel `g·2K + 2k + d` holds Δy (d = 0) or Δx (d = 1) of tap k in offset group g;
#   mask channel `g·K + k` holds m. Offsets (s − 1)·p_n turn a 3 × 3 kernel into a dilated one.
# * An offset says where an output reads, so the content moves by −Δp.
# * Forward = deformable im2col (the only deformable step) + one GEMM per weight group.
# * The CPU kernel matches the NumPy reference to rounding error; speed is the benchmark's
#   business (`make bench`).
#
# Notebook 3 goes backwards through the same two steps.
