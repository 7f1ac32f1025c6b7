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
# # 3. The backward pass by hand
#
# A deformable layer learns its weights *and* its offsets by gradient descent, so it needs the
# derivative of the loss with respect to every one of its inputs. dcn_numba writes that backward
# pass by hand. This notebook derives it one step at a time on a tiny problem, checks every step
# against the package and against finite differences, and then looks at the few points where
# no derivative exists.
#
# **What you will learn**
#
# * the forward pass as a chain of named intermediates, S → col → out, and the backward pass as
#   the same chain walked in reverse;
# * the five gradients, for bias, weight, mask, offset and input, each in one line of NumPy;
# * how to check a hand-written gradient with finite differences (`dcn_numba.reference.gradcheck`);
# * why integer sampling coordinates and the −1 border are not differentiable, what dcn_numba
#   returns there, and why it matters at initialisation, when every offset is 0.

# Steps 3 and 4 are exercises: you write the mask and offset gradients, and a check compares
# them with the package's (set `exercises.SOLUTIONS = True` in the next cell to use the worked
# solutions instead). The specification states every formula of this notebook in
# [docs/specification.md](../docs/specification.md), §1.6.

# %%
import dcn_numba
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.kernels import bilinear

import matplotlib.pyplot as plt
import numpy as np

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("03_backward_pass_by_hand")

# %% [markdown]
# ## A tiny problem
#
# One image, two input channels, three output channels, a 3 × 3 kernel with padding 1, a mask
# (v2), and float64 everywhere. The offsets are random, but each is an integer plus a fraction in
# [0.2, 0.8], so that no sample sits on an integer coordinate; the end of the notebook explains why.
# `grad_out` plays the role of ∂L/∂out: the backward pass computes the gradient of
# L = Σ grad_out · out.

# %%
rng = np.random.default_rng(3)
B, C_in, C_out, H, W, kh, kw, padding = 1, 2, 3, 5, 5, 3, 3, 1
K, H_out, W_out = kh * kw, H, W

x = rng.standard_normal((B, C_in, H, W))
weight = rng.standard_normal((C_out, C_in, kh, kw))
bias = rng.standard_normal(C_out)
offset = rng.integers(-2, 2, (B, 2 * K, H_out, W_out)) + rng.uniform(0.2, 0.8, (B, 2 * K, H_out, W_out))
mask = rng.uniform(0.2, 0.9, (B, K, H_out, W_out))
grad_out = rng.standard_normal((B, C_out, H_out, W_out))

# %% [markdown]
# ## The forward pass, with its intermediates named
#
# For output (i, j) and tap k = ki·kw + kj, the sampling position is
# p = (i − pad + ki + Δy_k, j − pad + kj + Δx_k). Then
#
#     S[b, c, k, i, j]   = bilinear sample of x[b, c] at p          (notebook 1)
#     col[b, c, k, i, j] = m[b, k, i, j] · S[b, c, k, i, j]         (the column buffer, notebook 2)
#     out[b, o, i, j]    = bias[o] + Σ_{c, k} weight[o, c, k] · col[b, c, k, i, j]
#
# We compute them with the package's scalar functions, keeping the slopes ∂S/∂p for later.

# %%
tap_y, tap_x = np.divmod(np.arange(K), kw)
delta = offset.reshape(B, K, 2, H_out, W_out)
p_y = np.arange(H_out)[:, None] - padding + tap_y[:, None, None] + delta[:, :, 0]  # (B, K, H_out, W_out)
p_x = np.arange(W_out)[None, :] - padding + tap_x[:, None, None] + delta[:, :, 1]

S = np.zeros((B, C_in, K, H_out, W_out))
dS_dpy, dS_dpx = np.zeros_like(S), np.zeros_like(S)
for b, c, k, i, j in np.ndindex(S.shape):
    plane = x[b, c].ravel()
    S[b, c, k, i, j] = bilinear.dcn_sample(plane, 0, H, W, p_y[b, k, i, j], p_x[b, k, i, j])
    dS_dpy[b, c, k, i, j], dS_dpx[b, c, k, i, j] = bilinear.dcn_sample_gradient(
        plane, 0, H, W, p_y[b, k, i, j], p_x[b, k, i, j])

m = mask[:, None]  # (B, 1, K, H_out, W_out): the same mask for every channel
col = m * S
out = np.einsum("ock,bckij->boij", weight.reshape(C_out, C_in, K), col) + bias[None, :, None, None]
assert_close(out, dcn_numba.deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask),
             what="forward by hand")
package = dcn_numba.deform_conv2d_backward(grad_out, x, offset, weight, bias, padding=padding, mask=mask)
package = dict(zip(["input", "offset", "weight", "bias", "mask"], package))

# %% [markdown]
# `package` now holds dcn_numba's five gradients, from `deform_conv2d_backward`. The picture below
# is the plan for deriving them ourselves: walk the forward chain backwards, from the output.

# %%
fig, axis = plt.subplots(figsize=(8, 2.6), layout="constrained")
axis.set(xlim=(0, 10), ylim=(0, 3.2))
axis.axis("off")
boxes = {"x": (0.6, 2.4), "Δp": (0.6, 1.2), "S": (3.0, 1.8), "m": (3.0, 0.5), "col": (5.2, 1.8),
         "weight, bias": (7.3, 0.5), "out": (7.3, 1.8), "L": (9.4, 1.8)}
for name, (bx, by) in boxes.items():
    axis.text(bx, by, name, ha="center", va="center", fontsize=11,
              bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.4"))
forward = [("x", "S"), ("Δp", "S"), ("S", "col"), ("m", "col"), ("col", "out"), ("weight, bias", "out"),
           ("out", "L")]
for start, end in forward:
    axis.annotate("", boxes[end], boxes[start], arrowprops=dict(arrowstyle="->", color="0.5",
                                                                shrinkA=14, shrinkB=14))
# What travels back along each arrow, and where to write it: (x, y, text).
gradients = [(8.35, 2.05, "grad_out"), (6.25, 2.05, "gcol = weightᵀ·grad_out"), (4.1, 2.05, "m·gcol"),
             (4.55, 1.0, "Σ gcol·S"), (1.8, 2.45, "scatter m·gcol·w_ab"), (1.8, 1.15, "Σ m·gcol·∂S/∂p"),
             (8.55, 1.15, "grad_out·colᵀ, Σ grad_out")]
for gx, gy, label in gradients:
    axis.text(gx, gy, label, ha="center", color="tab:red", fontsize=8)
plt.show()

# %% [markdown]
# **Figure 1.** The forward pass (grey arrows, left to right) and what travels back along each
# arrow in the backward pass (red). Look at the middle: everything left of `col` receives its
# gradient through gcol = ∂L/∂col, the one matrix product of the backward pass, so the
# deformable part of the backward pass starts from gcol, exactly as the forward's deformable part
# ended at col.

# %% [markdown]
# ## Step 1: bias and weight
#
# `out` is linear in `bias` and `weight`:
#
#     ∂L/∂bias[o]         = Σ_{b,i,j} grad_out[b, o, i, j]
#     ∂L/∂weight[o, c, k] = Σ_{b,i,j} grad_out[b, o, i, j] · col[b, c, k, i, j]      (grad_out · colᵀ)
#
# Note that the weight gradient uses `col`, samples *times mask*: the forward's column buffer is
# needed again, so the backward pass rebuilds it.

# %%
grad_bias = grad_out.sum(axis=(0, 2, 3))
grad_weight = np.einsum("boij,bckij->ock", grad_out, col).reshape(weight.shape)
assert_close(grad_bias, package["bias"], what="grad_bias")
assert_close(grad_weight, package["weight"], what="grad_weight")

# %% [markdown]
# ## Step 2: the gradient of the column buffer
#
# `out` is also linear in `col`, with the weights as coefficients; going back through a matrix
# product means multiplying by its transpose:
#
#     gcol[b, c, k, i, j] = ∂L/∂col[b, c, k, i, j] = Σ_o weight[o, c, k] · grad_out[b, o, i, j]
#
# In the kernels this is the second GEMM of the backward pass, weightᵀ · grad_out. Every
# remaining gradient is built from gcol.

# %%
gcol = np.einsum("ock,boij->bckij", weight.reshape(C_out, C_in, K), grad_out)

# %% [markdown]
# ## Step 3: the mask
#
# col = m · S, so ∂col/∂m = S. One mask value scales the sample of every input channel (of its
# offset group), so its gradient sums over those channels:
#
#     ∂L/∂m[b, k, i, j] = Σ_c gcol[b, c, k, i, j] · S[b, c, k, i, j]
#
# **Exercise 3.1.** Write `mask_gradient(gcol, S)`: gcol and S are (B, C_in, K, H_out, W_out),
# the result is (B, K, H_out, W_out), like the mask.

# %%
@exercise
def mask_gradient(gcol, S):
    """∂L/∂m[b, k, i, j] = Σ_c gcol[b, c, k, i, j] · S[b, c, k, i, j]."""
    raise NotImplementedError("Exercise 3.1: the mask gradient from gcol and S")


# %%
check(mask_gradient, checks.matches_the_mask_gradient)
grad_mask = mask_gradient(gcol, S)
assert_close(grad_mask, package["mask"], what="grad_mask of this notebook's layer")

# %% [markdown]
# ## Step 4: the offsets
#
# The offset enters through the sampling position only: p_y = … + Δy, so ∂p_y/∂Δy = 1, and
# ∂L/∂Δy = Σ_c gcol · m · ∂S/∂p_y. The slope of S comes from the bilinear formula, regrouped by rows:
#
#     S = (1 − l_y)·[(1 − l_x)·v00 + l_x·v01] + l_y·[(1 − l_x)·v10 + l_x·v11]
#
# With ∂l_y/∂p_y = 1 inside a cell, the derivative is the lower row minus the upper row, each
# interpolated along x:
#
#     ∂S/∂p_y = (1 − l_x)·(v10 − v00) + l_x·(v11 − v01)
#     ∂S/∂p_x = (1 − l_y)·(v01 − v00) + l_y·(v11 − v10)         (the same, columns instead of rows)
#
# These are `bilinear.dcn_sample_gradient`, which we called in the forward cell. The result goes
# to channel 2k (Δy) and 2k + 1 (Δx) of the offset gradient.
#
# **Exercise 3.2.** Write `offset_gradient(gcol, m, dS_dpy, dS_dpx)`: gcol, dS_dpy and dS_dpx are
# (B, C_in, K, H_out, W_out), m is (B, 1, K, H_out, W_out); return ∂L/∂offset in the offset
# layout (B, 2K, H_out, W_out), Δy of tap k at channel 2k and Δx at 2k + 1.

# %%
@exercise
def offset_gradient(gcol, m, dS_dpy, dS_dpx):
    """∂L/∂Δy_k = Σ_c gcol·m·∂S/∂p_y at channel 2k, ∂L/∂Δx_k = Σ_c gcol·m·∂S/∂p_x at 2k + 1."""
    raise NotImplementedError("Exercise 3.2: the offset gradient, in the offset layout")


# %%
check(offset_gradient, checks.matches_the_offset_gradient)
grad_offset = offset_gradient(gcol, m, dS_dpy, dS_dpx)
assert_close(grad_offset, package["offset"], what="grad_offset of this notebook's layer")

# %% [markdown]
# ## Step 5: the input
#
# A sample is a weighted sum of four pixels, S = Σ_ab w_ab · v_ab, so ∂S/∂v_ab = w_ab: a pixel
# receives, from each sample that reads it, that sample's gradient m · gcol times the weight the
# pixel had in the sample. The forward pass *gathered* four pixels into each sample; the backward
# pass *scatters* each sample's gradient back into four pixels, adding up where samples share a
# pixel (the "deformable col2im"). Corners outside the image read the zero padding, which has no
# gradient to receive.

# %%
grad_input = np.zeros_like(x)
for b, c, k, i, j in np.ndindex(S.shape):
    y, x_ = p_y[b, k, i, j], p_x[b, k, i, j]
    if not bilinear.dcn_is_valid(y, x_, H, W):
        continue
    l_y, l_x = bilinear.fractional_part(y), bilinear.fractional_part(x_)
    for corner in range(4):
        row, column = int(np.floor(y)) + corner // 2, int(np.floor(x_)) + corner % 2
        if 0 <= row < H and 0 <= column < W:
            grad_input[b, c, row, column] += (m[b, 0, k, i, j] * gcol[b, c, k, i, j]
                                             * bilinear.corner_weight(l_y, l_x, corner))
assert_close(grad_input, package["input"], what="grad_input")
print("all five gradients by hand agree with deform_conv2d_backward")

# %% [markdown]
# The adds into `grad_input` are the one place where the backward pass is not "one output, one
# owner": many samples write into the same pixel. Notebook 5 shows how the CUDA kernel makes that
# safe (atomic adds) and how the CPU kernel avoids the question: each of its threads owns whole
# images, and is the only one to write their gradient.
#
# ## Checking against finite differences
#
# Agreeing with the package only shows that we derived what the package implements. The
# independent test is the definition of a derivative: nudge one input element by ±ε, rerun the
# forward pass, and compare (L(+ε) − L(−ε)) / 2ε with the analytic gradient. `check_gradients` does
# this for every element of every argument (782 elements, two forward passes each):

# %%
def forward(input, offset, weight, bias, mask):
    return dcn_numba.deform_conv2d(input, offset, weight, bias, padding=padding, mask=mask)


inputs = dict(input=x, offset=offset, weight=weight, bias=bias, mask=mask)
assert sum(value.size for value in inputs.values()) == 782  # the count stated above
ours = dict(input=grad_input, offset=grad_offset, weight=grad_weight, bias=grad_bias, mask=grad_mask)
check_gradients(forward, inputs, grad_out, ours, mode="elementwise", rtol=1e-6, atol=1e-8)
print("every element of every gradient matches central finite differences")

# %% [markdown]
# ## Where there is no derivative: integer coordinates
#
# Notebook 1 showed that S is creased at integer coordinates: its slope jumps there. The
# formula above uses l = p − ⌊p⌋, so at an exact integer it returns the slope of the cell to the
# right (the *right-sided* derivative), while central finite differences straddle the crease and
# measure the average of the two slopes. Let us move one offset across an integer and watch L.

# %%
def loss(offset, x=x, mask=mask):
    return float(np.sum(grad_out * dcn_numba.deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask)))


channel, i, j = 2 * 4 + 1, 2, 2  # Δx of the centre tap k = 4 at output (2, 2)
on_integer = offset.copy()
on_integer[0, channel, i, j] = np.round(offset[0, channel, i, j])  # p_x is now an integer
sweep = on_integer[0, channel, i, j] + np.linspace(-0.6, 0.6, 121)
losses = []
for value in sweep:
    moved = on_integer.copy()
    moved[0, channel, i, j] = value
    losses.append(loss(moved))

analytic = dcn_numba.deform_conv2d_backward(grad_out, x, on_integer, weight, bias, padding=padding,
                                            mask=mask)[1][0, channel, i, j]
eps = 1e-6
plus, minus = on_integer.copy(), on_integer.copy()
plus[0, channel, i, j] += eps
minus[0, channel, i, j] -= eps
central = (loss(plus) - loss(minus)) / (2 * eps)
right = (loss(plus) - loss(on_integer)) / eps
left = (loss(on_integer) - loss(minus)) / eps
print(f"analytic {analytic:+.4f}   right slope {right:+.4f}   left slope {left:+.4f}   "
      f"central difference {central:+.4f}")
assert np.isclose(analytic, right, atol=1e-5) and not np.isclose(analytic, central, atol=1e-3)

# %%
fig, axis = plt.subplots(figsize=(6.5, 3), layout="constrained")
start = on_integer[0, channel, i, j]
axis.plot(sweep, losses, color="k", label="L as Δx moves")
for slope, colour, name in ((analytic, "tab:red", "analytic (right slope)"),
                            (central, "tab:blue", "central difference")):
    axis.plot(sweep, loss(on_integer) + slope * (sweep - start), ls="--", color=colour, label=name)
axis.axvline(start, color="0.8", zorder=0)
axis.set(xlabel="Δx of tap 4 at output (2, 2)", ylabel="L", ylim=(min(losses) - 0.5, max(losses) + 0.5))
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.** The loss as one offset moves while everything else stays fixed: straight pieces
# meeting at a crease where the sample crosses an integer coordinate (grey line). Look at the two
# dashed lines through the crease: the analytic gradient (red) continues the piece on the right;
# the central difference (blue) averages both sides and matches neither piece. Both are
# legitimate answers at a point with no derivative, which is why gradient checks must keep
# samples away from integers, as our random offsets did.

# %% [markdown]
# ## Where there is no derivative: the −1 border
#
# The second kink is the validity test. A sample at p_y = −1 exactly is *invalid* and reads 0; one
# a hair inside, at −1 + ε, reads ε times the pixel below. So L is flat on one side and sloped on
# the other, and a rule must choose. dcn_numba follows the DCNv2 rule: an invalid sample gets **no
# offset or mask gradient** (the left side). Some libraries skip that test and return the slope
# inside (the right side): the two conventions differ *only* for samples exactly on p = −1.
#
# That sounds rare, but it is what every padded border tap does at initialisation, when all
# offsets are 0 and every position is an integer. Take output (0, 2), tap k = 1 (ki = 0): its
# position is (−1, 2):

# %%
zero_offset = np.zeros_like(offset)
channel, i, j = 2 * 1 + 0, 0, 2  # Δy of tap 1 at output (0, 2): p = (−1, 2)
sweep = np.linspace(-0.5, 0.5, 101)
border_losses = []
for value in sweep:
    moved = zero_offset.copy()
    moved[0, channel, i, j] = value
    border_losses.append(loss(moved))
grad_at_border = dcn_numba.deform_conv2d_backward(grad_out, x, zero_offset, weight, bias, padding=padding,
                                                  mask=mask)[1][0, channel, i, j]
inside = zero_offset.copy()
inside[0, channel, i, j] = eps
slope_inside = (loss(inside) - loss(zero_offset)) / eps
print(f"dcn_numba's gradient at p_y = −1: {grad_at_border:+.4f};  the slope just inside: {slope_inside:+.4f}")
assert grad_at_border == 0 and abs(slope_inside) > 1e-3

# %%
fig, axis = plt.subplots(figsize=(6.5, 3), layout="constrained")
axis.plot(sweep - 1, border_losses, color="k", label="L as p_y of the sample moves")
axis.plot(sweep - 1, border_losses[50] + slope_inside * sweep, ls="--", color="tab:blue",
          label="slope inside (skipping the validity test)")
axis.plot(sweep - 1, border_losses[50] + grad_at_border * sweep, ls="--", color="tab:red",
          label="dcn_numba: 0 (DCNv2 rule)")
axis.axvline(-1, color="0.8", zorder=0)
axis.set(xlabel="p_y of tap 1 at output (0, 2)", ylabel="L")
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** The loss as a border sample moves across p_y = −1 (grey line): flat outside the
# image, where the sample reads 0 whatever its position, and sloped inside. Look at the kink
# right at −1, where zero offsets put every padded border tap: dcn_numba returns the flat side
# (red), other implementations the inside slope (blue). Neither is wrong, but an implementation
# compared against another must avoid this exact point, and the gradient an initial border tap
# receives depends on the choice.

# %% [markdown]
# One more consequence of zero offsets: *every* sample then sits on an integer coordinate, so the
# offset gradient of a freshly initialised layer is made entirely of one-sided slopes. A full
# gradient check at zero offsets therefore fails, and the helper says where:

# %%
try:
    check_gradients(forward, dict(inputs, offset=zero_offset),
                    grad_out, dict(offset=dcn_numba.deform_conv2d_backward(
                        grad_out, x, zero_offset, weight, bias, padding=padding, mask=mask)[1]),
                    mode="elementwise", rtol=1e-6, atol=1e-8)
except AssertionError as failure:
    print("\n".join(str(failure).splitlines()[:5]))
else:
    raise AssertionError("expected the gradient check at zero offsets to fail")

# %% [markdown]
# Training is not troubled by any of this: the first update moves the offsets off the integers,
# after which these points are never hit exactly again. Gradient *tests* are: they keep samples a
# margin away from integers and from the −1 and H borders, as this notebook's random offsets did.

# %% [markdown]
# ## Summary
#
# With gcol = weightᵀ · grad_out (per weight group), the whole backward pass is:
#
# | gradient | formula | step |
# |---|---|---|
# | bias | Σ_{b,i,j} grad_out | sum |
# | weight | grad_out · colᵀ (col includes the mask) | GEMM |
# | mask | Σ_c gcol · S | per sample |
# | offset | Σ_c m · gcol · ∂S/∂p, with ∂S/∂p_y = (1−l_x)(v10 − v00) + l_x(v11 − v01) | per sample |
# | input | each valid sample scatters m · gcol · w_ab into its four corners | col2im, adds collide |
#
# * Every formula matches finite differences wherever the forward pass is differentiable.
# * At integer coordinates dcn_numba returns the right-sided slope; for an invalid sample (on or
#   beyond −1, H, W) it returns no offset or mask gradient (the DCNv2 rule). Zero offsets hit
#   both cases, so gradient checks use offsets with fractional parts away from 0.
#
# Notebook 4 puts these gradients into an autograd engine, which can then train a network;
# notebook 5 turns these loops into CUDA kernels.
