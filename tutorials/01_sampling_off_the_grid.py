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
# # 1. Sampling off the grid
#
# A deformable convolution reads its input at positions that are not pixel centres. Everything
# else in dcn_numba rests on how it does that, so this first notebook is about one small
# function: reading an image at a fractional position.
#
# **What you will learn**
#
# * how bilinear interpolation reads an image between pixels, and where its four weights come from;
# * the boundary rule dcn_numba follows (the DCNv2 rule): the image is zero-padded by one pixel;
# * why the interpolated image is continuous but creased at integer coordinates, which matters for
#   the gradients of notebook 3;
# * that a regular convolution is "sample at fixed positions, weight, sum", and that a deformable
#   convolution changes only *where* it samples.
#
# Conventions used throughout: pixel centres sit at integer coordinates, and a position is written
# (y, x) = (row, column), y first.

# %% [markdown]
# dcn_numba is imported first: on import it sets up the CPU runtime (how BLAS threads wait), which
# only takes effect before NumPy loads. `exercises` is the tutorials' own helper for the exercises:
# a function you write, marked `@exercise`, and a `check` that says whether it is right. Stuck?
# Set `exercises.SOLUTIONS = True` in this cell (before the exercises run) to use the worked
# solutions in `solutions/01_sampling_off_the_grid.py`.

# %%
import dcn_numba
from dcn_numba.reference.gradcheck import assert_close
from dcn_numba.kernels import bilinear

import matplotlib.pyplot as plt
import numpy as np

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("01_sampling_off_the_grid")

# %% [markdown]
# ## A tiny image
#
# Five columns, four rows, values chosen so that every pixel is easy to tell apart.

# %%
image = np.array([[0, 1, 2, 3, 2],
                  [1, 3, 5, 4, 2],
                  [2, 5, 9, 6, 3],
                  [1, 3, 5, 4, 1]], dtype=np.float64)
H, W = image.shape

# %% [markdown]
# ## Four corners, four weights
#
# To read the image at p = (p_y, p_x), take the pixel cell that contains it. Its top-left corner
# is (y0, x0) = (⌊p_y⌋, ⌊p_x⌋), and p sits a fraction l_y = p_y − y0 down and l_x = p_x − x0 across
# that cell. Bilinear interpolation blends the four corner values v_ab = x(y0 + a, x0 + b):
#
#     S(p) = (1−l_y)(1−l_x)·v00 + (1−l_y)·l_x·v01 + l_y·(1−l_x)·v10 + l_y·l_x·v11
#
# Here it is by hand:

# %%
def bilinear_by_hand(image, p_y, p_x):
    """S(p) from the formula above, for a p whose four corners are all inside `image`."""
    y0, x0 = int(np.floor(p_y)), int(np.floor(p_x))
    l_y, l_x = p_y - y0, p_x - x0
    weights = [(1 - l_y) * (1 - l_x), (1 - l_y) * l_x, l_y * (1 - l_x), l_y * l_x]
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    return sum(w * image[c] for w, c in zip(weights, corners)), weights, corners


p_y, p_x = 1.3, 2.6
value, weights, corners = bilinear_by_hand(image, p_y, p_x)
for corner, weight in zip(corners, weights):
    print(f"corner {corner}: value {image[corner]:.0f}, weight {weight:.2f}")
print(f"weights sum to {sum(weights):.2f};  S{(p_y, p_x)} = {value:.3f}")

# %% [markdown]
# dcn_numba writes each of these formulas once, in `dcn_numba/kernels/bilinear.py`, and compiles
# it for both the CPU and the GPU kernels. The functions are ordinary compiled Python functions, so
# we can call them here. They read *flat* arrays, the way kernels see memory: `plane` is the flat
# index of pixel (0, 0) of the channel being read (0 for our single-channel image).

# %%
l_y, l_x = bilinear.fractional_part(p_y), bilinear.fractional_part(p_x)
package_weights = [bilinear.corner_weight(l_y, l_x, corner) for corner in range(4)]
package_value = bilinear.dcn_sample(image.ravel(), 0, H, W, p_y, p_x)
assert_close(package_weights, weights, what="corner weights")
assert_close(package_value, value, what="bilinear sample")
print(f"dcn_numba's S{(p_y, p_x)} = {package_value:.3f}")

# %% [markdown]
# Why these weights? Each corner's weight is the area of the rectangle on the *opposite* side of p
# inside the unit cell: the closer p is to a corner, the larger the opposite rectangle.

# %%
# The numbers Figure 1's caption states.
nearest = int(np.argmax(weights))
assert corners[nearest] == (1, 3), "the nearest corner of p = (1.3, 2.6) is pixel (1, 3), v01"
assert image[corners[nearest]] == 4
assert round(weights[nearest], 2) == 0.42
assert_close(sum(weights), 1.0, what="the sum of the weights")

fig, (whole, cell) = plt.subplots(1, 2, figsize=(8, 3.4), layout="constrained")
whole.imshow(image, cmap="Greys", vmin=-2, vmax=11)
grid_y, grid_x = np.mgrid[0:H, 0:W]
whole.scatter(grid_x, grid_y, s=12, color="tab:blue", label="pixel centres")
for (y, x), v in np.ndenumerate(image):
    whole.annotate(f"{v:.0f}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
whole.add_patch(plt.Rectangle((2, 1), 1, 1, fill=False, color="tab:orange", lw=1.5))
whole.scatter([p_x], [p_y], marker="*", s=160, color="tab:red", label="p = (1.3, 2.6)")
whole.set_title("p falls in a cell of four pixels")
whole.legend(loc="lower left", fontsize=7)

colours = ["tab:blue", "tab:green", "tab:purple", "tab:olive"]
opposite = [(l_x, l_y, 1 - l_x, 1 - l_y), (0, l_y, l_x, 1 - l_y),
            (l_x, 0, 1 - l_x, l_y), (0, 0, l_x, l_y)]  # (x, y, width, height) in cell units
for (x, y, width, height), weight, colour, corner in zip(opposite, weights, colours, corners):
    cell.add_patch(plt.Rectangle((x, y), width, height, color=colour, alpha=0.35))
    cell.text(x + width / 2, y + height / 2, f"{weight:.2f}", ha="center", va="center")
    cy, cx = corner[0] - corners[0][0], corner[1] - corners[0][1]
    cell.scatter([cx], [cy], s=40, color=colour, clip_on=False, zorder=3)
    cell.annotate(f"v{cy}{cx}", (cx, cy), xytext=(-14 if cx == 0 else 6, -10 if cy == 0 else 6),
                  textcoords="offset points", color=colour)
cell.scatter([l_x], [l_y], marker="*", s=160, color="tab:red", zorder=3)
cell.set(xlim=(-0.22, 1.25), ylim=(1.15, -0.15), aspect="equal", title="weights = opposite areas",
         xlabel="l_x", ylabel="l_y")
plt.show()

# %% [markdown]
# **Figure 1.** Left: the image, with its pixel centres at integer coordinates (blue dots) and the
# sample point p (red star) inside the cell of four pixels framed in orange. Right: that cell in
# its own coordinates (l_y, l_x). Look at the shaded rectangles: each corner's weight is the area
# of the rectangle diagonally opposite it, so the nearest corner, v01 = 4, gets the largest
# weight (0.42), and the four areas tile the unit square, so the weights always sum to 1.

# %% [markdown]
# ## A continuous surface with creases
#
# Slide p along a row of the image. Between two pixel centres S changes linearly (l_x enters the
# formula linearly), so S is continuous, but its slope jumps at every integer x where p enters a
# new cell. dcn_numba's `dcn_sample_gradient` returns the slope (∂S/∂p_y, ∂S/∂p_x) used in the
# backward pass; at an integer it returns the slope of the cell to the right, because it
# takes ⌊p⌋.

# %%
xs = np.linspace(-1.5, W + 0.5, 561)
row = 1.3
values = np.array([bilinear.dcn_sample(image.ravel(), 0, H, W, row, x) for x in xs])
slopes = np.array([bilinear.dcn_sample_gradient(image.ravel(), 0, H, W, row, x)[1] for x in xs])
integers = np.arange(0, W)
slopes_at_integers = [bilinear.dcn_sample_gradient(image.ravel(), 0, H, W, row, float(x))[1]
                      for x in integers]

# Finite differences agree with the analytic slope everywhere except right at the creases.
away_from_creases = np.abs(xs - np.round(xs)) > 0.01
numeric = np.array([(bilinear.dcn_sample(image.ravel(), 0, H, W, row, x + 1e-6)
                     - bilinear.dcn_sample(image.ravel(), 0, H, W, row, x - 1e-6)) / 2e-6 for x in xs])
assert_close(slopes[away_from_creases], numeric[away_from_creases], rtol=1e-5, atol=1e-6,
             what="∂S/∂p_x against finite differences")

# %%
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True, layout="constrained")
top.plot(xs, values, color="tab:red")
top.scatter(integers, [bilinear.dcn_sample(image.ravel(), 0, H, W, row, float(x)) for x in integers],
            color="k", s=12, zorder=3)
top.set_ylabel(f"S({row}, p_x)")
bottom.plot(xs, slopes, color="tab:blue")
bottom.scatter(integers, slopes_at_integers, color="tab:blue", s=18, zorder=3,
               label="value returned at an integer")
bottom.set(xlabel="p_x", ylabel="∂S/∂p_x")
bottom.legend(fontsize=8)
for axis in (top, bottom):
    for x in range(-1, W + 1):
        axis.axvline(x, color="0.85", lw=0.8, zorder=0)
plt.show()

# %% [markdown]
# **Figure 2.** Top: the image read along the row y = 1.3, a broken line through the interpolated
# pixel values (black dots). Bottom: its slope, constant inside each cell. Look at the grey lines
# at integer x: the value is continuous there but the slope jumps, so S has no derivative at an
# integer coordinate. dcn_numba returns the right-hand slope there (the dots sit on the step to
# their right). Notebook 3 shows what this means for gradient checks.

# %% [markdown]
# ## The boundary rule
#
# What is the image worth just outside its border? Implementations have differed, so dcn_numba's
# specification ([docs/specification.md](../docs/specification.md), §1.4) fixes one answer, the
# **DCNv2 rule** used by the modulated deformable convolution:
#
# * a position is *valid* only if −1 < p_y < H and −1 < p_x < W; an invalid position reads 0;
# * a valid position blends its four corners as usual, and a corner outside the image reads 0.
#
# In other words: bilinear interpolation on the image **zero-padded by one pixel**.
#
# **Exercise 1.1.** Write that sentence as code: `sample_zero_padded(image, p_y, p_x)` returns 0
# for an invalid position, and otherwise the value of `bilinear_by_hand` on `np.pad(image, 1)`, where
# the position p becomes p + 1 (`bilinear_by_hand` returns (value, weights, corners): keep the
# value). The check, `checks.matches_dcn_sample` in [checks.py](checks.py) like every check of the
# course, compares it with the package's reference sampler at 2000 random positions in and around
# a 4 × 5 image.

# %%
@exercise
def sample_zero_padded(image, p_y, p_x):
    """S(p) by the DCNv2 rule: 0 unless −1 < p_y < H and −1 < p_x < W, else bilinear on np.pad(image, 1)."""
    raise NotImplementedError("Exercise 1.1: write the DCNv2 boundary rule")


# %%
check(sample_zero_padded, checks.matches_dcn_sample)

# %% [markdown]
# Picture it on an image of ones, where the rule is easiest to see: inside the pixel centres S is
# 1, in the one-pixel band around them it fades linearly to 0, and from −1 (or H, W) on it is 0.

# %%
ones = np.ones((H, W))
ys, xs = np.linspace(-2, H + 1, 121), np.linspace(-2, W + 1, 141)
fade = np.array([[bilinear.dcn_sample(ones.ravel(), 0, H, W, y, x) for x in xs] for y in ys])

fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [1.2, 1]},
                                layout="constrained")
left.imshow(fade, extent=(xs[0], xs[-1], ys[-1], ys[0]), cmap="viridis")
left.add_patch(plt.Rectangle((0, 0), W - 1, H - 1, fill=False, color="w", lw=1, ls="-"))
left.add_patch(plt.Rectangle((-1, -1), W + 1, H + 1, fill=False, color="w", lw=1, ls="--"))
left.set(title="S on an image of ones", xlabel="p_x", ylabel="p_y")
right.plot(xs, fade[np.searchsorted(ys, 1.5)], color="tab:green")
for x in (-1, 0, W - 1, W):
    right.axvline(x, color="0.8", lw=0.8, zorder=0)
right.set(title="along the row p_y = 1.5", xlabel="p_x", ylabel="S")
plt.show()

# %% [markdown]
# **Figure 3.** Left: S over a window larger than the image; the solid white rectangle joins the
# outer pixel centres, the dashed one is the validity border −1 < p < H. Right: one row of it. Look
# at the band between the two rectangles: S falls linearly from 1 at the last pixel centre to 0 at
# −1 (or W), exactly as if a ring of zero pixels surrounded the image. On and beyond the dashed
# line the position is invalid and reads 0. (A position that is not a number reads NaN, so a bad
# offset shows up in the output instead of silently vanishing.)

# %% [markdown]
# ## A regular convolution is sampling plus a weighted sum
#
# The paper writes a regular convolution, for an output position p0 and a kernel grid
# R = {(−1, −1), (−1, 0), …, (1, 1)} (3 × 3, dilation 1), as
#
#     y(p0) = Σ_{p_n ∈ R} w(p_n) · x(p0 + p_n)                                    (1)
#
# and a deformable convolution as the same sum read at shifted positions:
#
#     y(p0) = Σ_{p_n ∈ R} w(p_n) · x(p0 + p_n + Δp_n)                             (2)
#
# With stride, padding and dilation, output (i, j) and tap (ki, kj) read the input at
#
#     p_y = i·stride − pad + ki·dil + Δy,    p_x = j·stride − pad + kj·dil + Δx
#
# and because Δp is fractional, x(·) is the sample S we just built. Here is equation (2) written
# with nothing but `dcn_sample`, for one channel:

# %%
def conv_by_sampling(image, weight, offset, stride=1, padding=0, dilation=1):
    """y[i, j] = Σ_{ki, kj} weight[ki, kj] · S(image, p_y, p_x) at the positions above.

    image (H, W); weight (kh, kw); offset (kh, kw, 2, H_out, W_out) holds (Δy, Δx) per tap.
    """
    H, W = image.shape
    kh, kw = weight.shape
    H_out, W_out = offset.shape[-2:]
    out = np.zeros((H_out, W_out))
    for i in range(H_out):
        for j in range(W_out):
            for ki in range(kh):
                for kj in range(kw):
                    delta_y, delta_x = offset[ki, kj, :, i, j]
                    p_y = i * stride - padding + ki * dilation + delta_y
                    p_x = j * stride - padding + kj * dilation + delta_x
                    out[i, j] += weight[ki, kj] * bilinear.dcn_sample(image.ravel(), 0, H, W, p_y, p_x)
    return out


# %% [markdown]
# With every Δp = 0 the positions are integers, S returns the pixels themselves (and 0 in the
# padding: the position −1 is invalid), and equation (2) must give an ordinary convolution. Check
# it against a convolution computed in a completely different way, from sliding windows over the
# zero-padded image:

# %%
rng = np.random.default_rng(0)
weight = rng.standard_normal((3, 3))
padding = 1
H_out, W_out = H + 2 * padding - 2, W + 2 * padding - 2
no_offset = np.zeros((3, 3, 2, H_out, W_out))

windows = np.lib.stride_tricks.sliding_window_view(np.pad(image, padding), (3, 3))
regular = np.einsum("ijab,ab->ij", windows, weight)
assert_close(conv_by_sampling(image, weight, no_offset, padding=padding), regular,
             what="equation (2) with Δp = 0 against a regular convolution")
print(regular.round(2))

# %% [markdown]
# Now give every tap its own offset. The picture below, after figure 1 of the paper, shows the 3 × 3
# sampling grid of one output position under four kinds of offsets: none, random ones, and the two
# special cases a deformable convolution can learn, a change of scale (Δp_n = (s − 1)·p_n) and a
# rotation.

# %%
taps = np.array([(ki - 1, kj - 1) for ki in range(3) for kj in range(3)], dtype=float)
angle = np.deg2rad(30)
rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
grids = {
    "(a) regular": taps,
    "(b) random offsets": taps + rng.normal(0, 0.6, taps.shape),
    "(c) scale, s = 1.8": taps * 1.8,
    "(d) rotation, 30°": taps @ rotation.T,
}
fig, axes = plt.subplots(1, 4, figsize=(8, 2.3), layout="constrained")
for axis, (title, positions) in zip(axes, grids.items()):
    axis.scatter(taps[:, 1], taps[:, 0], s=25, facecolors="none", edgecolors="0.6")
    axis.scatter(positions[:, 1], positions[:, 0], s=25, color="tab:blue")
    for start, end in zip(taps, positions):
        axis.annotate("", end[::-1], start[::-1], arrowprops=dict(arrowstyle="->", color="tab:red", lw=0.8))
    axis.scatter([0], [0], marker="+", s=60, color="k")
    axis.set(xlim=(-2.6, 2.6), ylim=(2.6, -2.6), aspect="equal", title=title, xticks=[], yticks=[])
    axis.title.set_fontsize(9)
fig.legend(handles=[plt.Line2D([], [], ls="", marker="o", mfc="none", mec="0.6", label="regular grid p0 + p_n"),
                    plt.Line2D([], [], ls="", marker="o", color="tab:blue", label="sampled at p0 + p_n + Δp_n"),
                    plt.Line2D([], [], color="tab:red", lw=0.8, label="offset Δp_n"),
                    plt.Line2D([], [], ls="", marker="+", ms=8, color="k", label="p0")],
           loc="outside lower center", ncols=4, fontsize=8)
plt.show()

# %% [markdown]
# **Figure 4.** The positions p0 + p_n + Δp_n read by one output of a 3 × 3 deformable convolution
# (blue), centred on p0 (the cross); the grey circles are the regular grid p0 + p_n and the red
# arrows are the offsets Δp_n. Look at (c) and (d): a single layer of offsets can make the same
# nine weights look at a larger or a rotated neighbourhood, which is what lets a deformable
# network adapt its receptive field to the object in front of it.

# %% [markdown]
# Finally, the whole operator. `dcn_numba.deform_conv2d` takes batched, multi-channel arrays in
# the layout of the specification (§1.2: offsets as channels, (Δy, Δx) of tap k at channels 2k
# and 2k + 1), but on a single channel it must compute exactly our loop above, offsets and all:

# %%
offset = rng.normal(0, 0.7, (3, 3, 2, H_out, W_out))
ours = conv_by_sampling(image, weight, offset, padding=padding)
package = dcn_numba.deform_conv2d(
    image[None, None], offset.reshape(1, 18, H_out, W_out), weight[None, None],
    padding=padding, backend="reference")
assert_close(package[0, 0], ours, what="deform_conv2d against equation (2) by sampling")
print(package[0, 0].round(2))

# %% [markdown]
# ## Summary
#
# * Reading an image at p = (p_y, p_x) blends the four pixels of its cell; each weight is the area
#   opposite its corner, (1−l_y)(1−l_x), (1−l_y)l_x, l_y(1−l_x), l_y·l_x, and they sum to 1.
# * dcn_numba follows the DCNv2 boundary rule: bilinear interpolation of the image zero-padded by
#   one pixel; positions on or beyond −1 and H (or W) read 0.
# * S is continuous in p but creased at integer coordinates, where its slope jumps; the backward
#   pass uses the slope to the right.
# * A convolution samples the input at p0 + p_n and sums the samples weighted by w(p_n); a
#   deformable convolution samples at p0 + p_n + Δp_n instead, and `deform_conv2d` is exactly that.
#
# Next, notebook 2 looks at where the offsets come from and how the operator is computed fast:
# a column buffer and one matrix product.
