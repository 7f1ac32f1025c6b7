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
# # 6. Deformable RoI pooling and its position-sensitive variant
#
# Object detectors look at a feature map through boxes, regions of interest (RoIs), and turn each
# box into a fixed-size grid of features by pooling. The paper makes that pooling deformable too:
# every bin of the grid may shift, by an amount learned per RoI, to where the object's parts are.
#
# **What you will learn**
#
# * how RoI pooling cuts a box into bins and averages bilinear samples inside each bin;
# * deformable RoI pooling: one offset per bin, *normalised* by the RoI's width and height so that
#   the same offsets mean the same part on a small and a large object;
# * to write the pooling forward of one RoI yourself, bins, shifts and samples;
# * the two operators' box conventions, side by side;
# * the backward pass of RoI pooling derived, written by you for the offsets, and checked by
#   finite differences;
# * the layers `nn.DeformRoIPool` and `nn.DeformPSRoIPool`, whose offset branches (fully
#   connected, or a 1 × 1 convolution) learn the offsets through the autograd engine;
# * position-sensitive RoI pooling, where bin (i, j) reads its own score map, every parameter of
#   `deform_psroi_pool`, and part offsets that find the parts of a deformed object.
#
# dcn_numba has two operators, after the two families of published implementations:
# `deform_roi_pool` (RoIAlign with learned bin shifts) and `deform_psroi_pool` (the original
# position-sensitive operator); [docs/specification.md](../docs/specification.md), §2, states
# both exactly. Note one convention they share, the opposite of the deformable convolution's: RoI
# offsets are stored **x first, then y**. The part offsets that a trained detector learns are the
# subject of notebook 8, [the toy detector](08_toy_detector.py); here the objects are hand-made,
# so that we know the answer. Three exercises (set `exercises.SOLUTIONS = True` in the next cell to
# use the worked solutions).

# %%
import dcn_numba
from dcn_numba.engine import nn
from dcn_numba.engine import optim
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.data.mnist import load_mnist, random_transform
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.kernels import deform_roi_pool_math
from dcn_numba.reference import deform_psroi_pool as psroi_reference
from dcn_numba.reference import deform_roi_pool as roi_reference

import matplotlib.pyplot as plt
import numpy as np

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("06_deformable_roi_pooling")

# %% [markdown]
# ## Bins and samples
#
# Our "feature map" is an image: one channel, a digit enlarged 1.8 times on a 56 × 56 canvas, and
# one RoI, the box around its ink. A RoI is a row `(batch_index, x1, y1, x2, y2)` in input-image
# coordinates; `spatial_scale` maps them onto the feature map (1 here: the map is the image).

# %%
digit = load_mnist().test.images[3:4]
feature_map = random_transform(digit, seed=0, scale=(1.8, 1.8), canvas_size=56).astype(np.float64)
ink_y, ink_x = np.nonzero(feature_map[0, 0] > 0.3)
rois = np.array([[0, ink_x.min(), ink_y.min(), ink_x.max() + 1, ink_y.max() + 1]], dtype=np.float64)
print("RoI (batch_index, x1, y1, x2, y2):", rois[0])

# %% [markdown]
# The pooling cuts the RoI into P × P bins (here P = 3) and gives each bin the average of a small
# grid of bilinear samples at sub-bin centres (`sampling_ratio` = 2: 2 × 2 samples per bin):
#
#     bin (ph, pw) starts at (start_y + ph·bin_height, start_x + pw·bin_width)
#     out[n, c, ph, pw] = Σ_{iy, ix} B(x_c, y, x) / (grid_h · grid_w)
#
# This is RoIAlign (with pixel centres at integer coordinates). The reference module yields each
# bin's sample positions, which we use to draw them and to recompute one bin by hand:

# %%
P, sampling_ratio = 3, 2
pooled = dcn_numba.deform_roi_pool(feature_map, rois, output_size=P, sampling_ratio=sampling_ratio)
bins = list(roi_reference.bin_samples(rois[0], None, (P, P), 1.0, sampling_ratio, 0.1))
for ph, pw, positions in bins:
    by_hand = np.mean([roi_reference.bilinear(feature_map[0], y, x) for y, x in positions])
    assert_close(pooled[0, 0, ph, pw], by_hand, what=f"bin {(ph, pw)}")
print(pooled[0, 0].round(2))

# %%
def draw_bins(axis, rois, offset=None, gamma=0.1, **style):
    """Outline the bins of the first RoI, shifted by `offset` (1, 2, P, P), x first."""
    start_x, start_y, roi_width, roi_height = roi_reference.roi_box(rois[0], 1.0)
    for ph in range(P):
        for pw in range(P):
            shift_x = 0 if offset is None else gamma * roi_width * offset[0, 0, ph, pw]
            shift_y = 0 if offset is None else gamma * roi_height * offset[0, 1, ph, pw]
            axis.add_patch(plt.Rectangle((start_x + pw * roi_width / P + shift_x,
                                          start_y + ph * roi_height / P + shift_y),
                                         roi_width / P, roi_height / P, fill=False, **style))


fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.4), layout="constrained")
left.imshow(feature_map[0, 0], cmap="Greys")
draw_bins(left, rois, color="tab:blue", lw=1.2)
samples = np.array([position for _, _, positions in bins for position in positions])
left.scatter(samples[:, 1], samples[:, 0], s=8, color="tab:red", label="samples")
left.set(title="a RoI cut into 3 × 3 bins", xticks=[], yticks=[])
left.legend(loc="lower right", fontsize=7)
right.imshow(pooled[0, 0], cmap="Greys", vmin=0, vmax=1)
for (ph, pw), value in np.ndenumerate(pooled[0, 0]):
    right.text(pw, ph, f"{value:.2f}", ha="center", va="center", color="w" if value > 0.4 else "k")
right.set(title="pooled output (1, 1, 3, 3)", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 1.** Left: the RoI (blue) around a digit, cut into 3 × 3 bins, each with its 2 × 2
# bilinear samples (red dots) at the centres of its sub-bins. Right: the pooled 3 × 3 output,
# each value the average of its bin's four samples. Look at the top-left bin: its samples fall on
# background, so it pools almost nothing; the bins a stroke crosses pool more. Whatever the size
# of the RoI, the output is 3 × 3.

# %% [markdown]
# ## One offset per bin, normalised by the RoI's size
#
# Deformable RoI pooling lets each bin move. In the paper, a fully connected layer reads the
# pooled features and outputs a *normalised* offset Δp̂ for every bin (initialised at zero); the
# bin moves by
#
#     Δp_ij = γ · Δp̂_ij ∘ (roi_width, roi_height),     γ = 0.1
#
# so an offset is a fraction of the RoI's size: the same Δp̂ points at the same part of a small
# and of a large object, which makes offsets learnable across scales. `offset` has shape
# (N, 2, PH, PW), **channel 0 for x, channel 1 for y**. Check the rule on the sample positions:

# %%
normalised = np.random.default_rng(0).uniform(-2, 2, (1, 2, P, P))
_, _, roi_width, roi_height = roi_reference.roi_box(rois[0], 1.0)
moved = list(roi_reference.bin_samples(rois[0], normalised[0], (P, P), 1.0, sampling_ratio, 0.1))
shifted = dcn_numba.deform_roi_pool(feature_map, rois, normalised, output_size=P, sampling_ratio=sampling_ratio)
for (ph, pw, before), (_, _, after) in zip(bins, moved):
    shift = np.array(after) - np.array(before)  # (samples, 2) as (y, x)
    expected = 0.1 * np.array([roi_height * normalised[0, 1, ph, pw], roi_width * normalised[0, 0, ph, pw]])
    assert_close(shift, np.broadcast_to(expected, shift.shape), what=f"shift of bin {(ph, pw)}")
    by_hand = np.mean([roi_reference.bilinear(feature_map[0], y, x) for y, x in after])
    assert_close(shifted[0, 0, ph, pw], by_hand, what=f"bin {(ph, pw)} pooled at its shifted samples")
print(f"an offset of 1 moves a bin by 0.1 · ({roi_width:.0f}, {roi_height:.0f}) pixels (x, y) on this RoI")

# %% [markdown]
# **Exercise 6.1.** Now write the whole forward pass for one RoI:
# `roi_align_pool(image, roi, offset, output_size, sampling_ratio, gamma)` takes a feature map
# `image` (C, H, W), a box `roi` = (x1, y1, x2, y2) in its pixels, `offset` (2, P, P), x first,
# or None, and returns (C, P, P). With pixel centres at integers the box starts at
# (x1 − 0.5, y1 − 0.5) and is (x2 − x1) wide and (y2 − y1) high; bin (ph, pw) of size
# roi_w/P × roi_h/P moves by γ·(roi_w·Δx̂, roi_h·Δŷ) and averages sampling_ratio² samples at the
# centres of its sub-bins. Read each sample with `roi_reference.bilinear(image, y, x)`, RoIAlign's
# sampler with its border rule, which returns all C channels at once. The check compares it with
# `deform_roi_pool` on four RoIs of a random 2-channel map (fractional corners, one reaching past
# the border), without and with random offsets; the cell then pools the digit's RoI with it.

# %%
@exercise
def roi_align_pool(image, roi, offset, output_size, sampling_ratio, gamma):
    """out (C, P, P): bin (ph, pw), moved by γ·(roi_w·Δx̂, roi_h·Δŷ), averages its sampling_ratio² samples."""
    raise NotImplementedError("Exercise 6.1: the bins, their shifts and their samples")


# %%
check(roi_align_pool, checks.pools_like_deform_roi_pool)
assert_close(roi_align_pool(feature_map[0], rois[0, 1:], normalised[0], P, sampling_ratio, 0.1), shifted[0],
             what="the digit's RoI, shifted, pooled by roi_align_pool")

# %% [markdown]
# ## Two box conventions
#
# The two operators read the same row `(batch_index, x1, y1, x2, y2)` differently (§2 of the
# specification). `deform_roi_pool` takes the corners as continuous coordinates: with pixel
# centres at integers, the box starts at x1·s − 0.5 and is (x2 − x1)·s wide. `deform_psroi_pool`
# follows the original R-FCN code: it rounds the corners to whole pixels and *includes* the pixel
# x2, so the box runs from round(x1)·s − 0.5 to (round(x2) + 1)·s − 0.5, one pixel wider, and at
# least 0.1 wide. On our RoI:

# %%
roi_align_box = roi_reference.roi_box(rois[0], 1.0)
psroi_box = psroi_reference.roi_box(rois[0], 1.0)
for name, (start_x, start_y, width, height) in (("deform_roi_pool", roi_align_box),
                                                ("deform_psroi_pool", psroi_box)):
    print(f"{name:>17}: starts at (x, y) = ({start_x:.1f}, {start_y:.1f}), {width:.1f} × {height:.1f} pixels")
assert_close(np.array(psroi_box[:2]), np.array(roi_align_box[:2]), what="the same start for whole-pixel corners")
assert_close(np.array(psroi_box[2:]), np.array(roi_align_box[2:]) + 1, what="psroi's box one pixel wider")
fractional = np.array([0, 10.4, 10.6, 30.4, 30.6])
print("a box at fractional corners", fractional[1:], "starts at",
      np.round(roi_reference.roi_box(fractional, 1.0)[:2], 2), "in deform_roi_pool and at",
      np.round(psroi_reference.roi_box(fractional, 1.0)[:2], 2), "in deform_psroi_pool (rounded)")

# %% [markdown]
# They differ at the border too: `deform_roi_pool` uses RoIAlign's rule (a sample up to one pixel
# outside reads the clamped border), `deform_psroi_pool` skips samples more than half a pixel
# outside and averages over the samples it kept.
#
# ## The backward pass, derived
#
# Follow one bin of `deform_roi_pool`. Its output is the mean of n = grid_h·grid_w samples,
#
#     out = (1/n) Σ_s B(x_c, y_s, x_s),   y_s = start_y + ph·bin_h + γ·roi_h·Δŷ + (iy + ½)·bin_h/grid_h
#
# (x_s likewise with Δx̂, roi_w), and B is a bilinear blend of four pixels with weights w_ab.
# Two derivatives follow:
#
# * **input**: B = Σ_ab w_ab·v_ab is linear in the pixels, so ∂out/∂v_ab = w_ab / n: each sample
#   scatters grad_out·w_ab/n into its four corners, like the deformable col2im of notebook 3;
# * **offset**: every sample of the bin moves with Δx̂, and ∂x_s/∂Δx̂ = γ·roi_w, so by the chain
#   rule
#
#       ∂out/∂Δx̂ = γ·roi_w · (1/n) Σ_s ∂B/∂x (y_s, x_s),     ∂out/∂Δŷ = γ·roi_h · (1/n) Σ_s ∂B/∂y (y_s, x_s)
#
#   where ∂B/∂x is the bilinear slope of notebook 1 (and 0 along an axis that the border clamp
#   holds still). `deform_roi_pool_math.roi_align_sample_gradient(plane, 0, H, W, y, x)` returns
#   (∂B/∂y, ∂B/∂x) of a flat one-channel `plane`.
#
# The RoI coordinates themselves get no gradient: detectors treat the boxes as given.
#
# **Exercise 6.2.** Write `bin_offset_gradient(image, positions, roi_width, roi_height, gamma)`:
# the gradient (∂out/∂Δx̂, ∂out/∂Δŷ), x first, of one bin whose samples sit at `positions` (a list
# of (y, x)) on a 2-D `image`. The check compares it with `deform_roi_pool_backward` for every bin
# of a RoI with random offsets on a random image; the cell then does the same on the digit's
# shifted RoI above.

# %%
@exercise
def bin_offset_gradient(image, positions, roi_width, roi_height, gamma):
    """(γ·roi_w·mean ∂B/∂x, γ·roi_h·mean ∂B/∂y) over the samples at `positions`, x first."""
    raise NotImplementedError("Exercise 6.2: the chain rule through the bin's samples")


# %%
check(bin_offset_gradient, checks.matches_the_roi_backward)
_, grad_offset = dcn_numba.deform_roi_pool_backward(np.ones((1, 1, P, P)), feature_map, rois, normalised,
                                                    output_size=P, sampling_ratio=sampling_ratio)
for ph, pw, positions in moved:
    assert_close(bin_offset_gradient(feature_map[0, 0], positions, roi_width, roi_height, 0.1),
                 grad_offset[0, :, ph, pw], what=f"∂out/∂(Δx̂, Δŷ) of bin {(ph, pw)} on the digit")

# %% [markdown]
# Agreeing with the package shows we derived what it implements. The independent check is finite
# differences (`dcn_numba.reference.gradcheck`, notebook 3) of L = Σ grad_out · out, for every element of
# the input and of the offsets, on small random problems for both operators. The psroi gradient
# (§2.2 of the specification) has the same structure, with the count of kept samples in place of
# n and trans_std in place of γ. Random offsets keep the samples off integer coordinates, where
# the bilinear slope jumps.

# %%
check_rng = np.random.default_rng(1)
small = check_rng.standard_normal((2, 2, 7, 7))
small_rois = np.array([[0, 1.3, 0.7, 5.6, 6.1], [1, 0.4, 2.2, 4.1, 5.3]])
small_offset = check_rng.uniform(-0.5, 0.5, (2, 2, P, P))
grad_out = check_rng.standard_normal((2, 2, P, P))
roi_grads = dcn_numba.deform_roi_pool_backward(grad_out, small, small_rois, small_offset, output_size=P,
                                               sampling_ratio=sampling_ratio)
check_gradients(lambda input, offset: dcn_numba.deform_roi_pool(input, small_rois, offset, output_size=P,
                                                                sampling_ratio=sampling_ratio),
                dict(input=small, offset=small_offset), grad_out,
                dict(input=roi_grads[0], offset=roi_grads[1]), rtol=1e-6, atol=1e-8)

ps = dict(spatial_scale=1.0, output_dim=2, group_size=2, pooled_size=2, sample_per_part=3, trans_std=0.1)
ps_input = check_rng.standard_normal((2, 2 * 2 ** 2, 7, 7))
ps_trans = check_rng.uniform(-0.5, 0.5, (2, 2, 2, 2))
ps_grad_out = check_rng.standard_normal((2, 2, 2, 2))
ps_grads = dcn_numba.deform_psroi_pool_backward(ps_grad_out, ps_input, small_rois, ps_trans, **ps)
check_gradients(lambda input, trans: dcn_numba.deform_psroi_pool(input, small_rois, trans, **ps),
                dict(input=ps_input, trans=ps_trans), ps_grad_out,
                dict(input=ps_grads[0], trans=ps_grads[1]), rtol=1e-6, atol=1e-8)
print("deform_roi_pool and deform_psroi_pool: input and offset gradients match finite differences")

# %% [markdown]
# ## The layer and its offset branch
#
# In the paper the offsets come from the RoI itself: pool it once without offsets, let fully
# connected layers turn those features into normalised offsets Δp̂ (the last one initialised at
# zero), and pool again at the shifted bins. `nn.DeformRoIPool` is exactly that, and trains through
# the autograd engine of notebook 4: the gradient of the offsets from `deform_roi_pool_backward`
# flows on into the fully connected layers. At initialisation it is RoIAlign:

# %%
pool_layer = nn.DeformRoIPool(1, output_size=P, sampling_ratio=sampling_ratio, hidden_channels=32,
                              rng=np.random.default_rng(0)).to(dtype=np.float64)
image_tensor = Tensor(feature_map)
with no_grad():
    assert_close(pool_layer(image_tensor, rois).data, pooled, what="DeformRoIPool at initialisation against RoIAlign")
print("offset branch:", " → ".join(type(layer).__name__ for layer in pool_layer.offset_fc.layers))

# %% [markdown]
# ## Letting the bins find the ink
#
# To watch the offset branch learn without a detector, give the bins the simplest wish, "pool as
# much ink as you can" (minimise −mean(out)), and train the layer with Adam for 100 steps:

# %%
optimizer = optim.Adam(pool_layer.parameters(), lr=0.01)
for step in range(100):
    loss = -pool_layer(image_tensor, rois).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with no_grad():
    learned = pool_layer(image_tensor, rois).data
offset = pool_layer.last_offset  # (1, 2, P, P), x first: what the branch outputs for this RoI
print(f"mean pooled ink: {pooled.mean():.2f} with regular bins, {learned.mean():.2f} with learned offsets")
assert learned.mean() > pooled.mean() + 0.2

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.4), layout="constrained")
for axis, title, bin_offset in ((left, "regular bins", None), (right, "after 100 steps of training", offset)):
    axis.imshow(feature_map[0, 0], cmap="Greys")
    draw_bins(axis, rois, color="0.6", lw=0.8, ls="--")
    draw_bins(axis, rois, bin_offset, color="tab:orange", lw=1.5)
    axis.set(title=title, xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 2.** The 3 × 3 bins of the RoI before (left) and after (right) training the offset
# branch of `nn.DeformRoIPool` to "pool more ink"; the dashed grey grid is the regular one. Look
# at how each bin has slid, on its own, towards thick strokes: the offsets are per bin, so the
# pooling grid deforms to the shape of the digit, and the mean pooled value printed above rose
# by more than 0.2. A detector learns its offsets the same way, only from the detection loss
# (notebook 8).

# %% [markdown]
# ## Position-sensitive RoI pooling
#
# R-FCN, the detector the paper builds on, pools differently. For each class it computes k × k
# **score maps**, one per relative position in a box: map (0, 0) fires on top-left parts of an
# object, map (1, 1) on centres, and so on. Bin (i, j) of a RoI then reads *only* map (i, j), and
# the RoI's score is the average of its bins. A box scores high only if every bin finds its own
# part there: the score is sensitive to where the box sits.
#
# `deform_psroi_pool` has more parameters than `deform_roi_pool`, after the original R-FCN code:
#
# | parameter | meaning | here |
# |---|---|---|
# | `output_dim` | output channels per RoI (a detector's classes); the input holds output_dim·group_size² maps | 1 |
# | `group_size` | the maps are position-sensitive over a group_size × group_size grid of the box; 1 is plain pooling | 3 |
# | `pooled_size` | P: the output is P × P bins; bin (ph, pw) reads map (⌊ph·group_size/P⌋, ⌊pw·group_size/P⌋) | 3 |
# | `part_size` | the offsets `trans` come on a part_size × part_size grid, bin (ph, pw) using part (⌊ph·part_size/P⌋, ⌊pw·part_size/P⌋); None means P | None |
# | `sample_per_part` | each bin averages sample_per_part² samples at its sub-bin starts | 4 |
# | `trans_std` | the scale of the offsets, γ of `deform_roi_pool`: a bin moves by trans_std·trans·(roi_w, roi_h) | 0.1 |
# | `trans=None` | "no_trans": pool without offsets, plain position-sensitive RoI pooling | first |
#
# The maps are the input channels `(ctop·group_size + gh)·group_size + gw` (output channel ctop,
# map (gh, gw)).
#
# **Exercise 6.3.** Write `score_map_channel(ctop, ph, pw, group_size, pooled_size)`: the input
# channel that bin (ph, pw) of output channel ctop reads. The check pools one-hot inputs (a
# single channel of ones) and sees which bin lights up.

# %%
@exercise
def score_map_channel(ctop, ph, pw, group_size, pooled_size):
    """(ctop·group_size + gh)·group_size + gw with gh = ⌊ph·group_size/P⌋, gw = ⌊pw·group_size/P⌋."""
    raise NotImplementedError("Exercise 6.3: the position-sensitive channel of a bin")


# %%
check(score_map_channel, checks.reads_the_right_map)

# %% [markdown]
# Let us hand-make the 3 × 3 maps of an object that fills
# pixels 6 … 23 of a 30 × 30 map, each map a bump on the cell of its part, and pool two RoIs: one
# on the object and one a few pixels off.

# %%
k, size = 3, 30
grid_y, grid_x = np.mgrid[0:size, 0:size]
part_centres = 8.5 + 6 * np.stack(np.mgrid[0:k, 0:k], axis=-1)  # (k, k, 2): cell centres, (y, x)


def score_maps(part_centres, width=3.0):
    """(1, k², size, size): map (gh, gw) is a bump at the centre of part (gh, gw)."""
    maps = np.zeros((1, k * k, size, size))
    for (gh, gw), (y, x) in zip(np.ndindex(k, k), part_centres.reshape(-1, 2)):
        maps[0, gh * k + gw] = np.exp(-((grid_y - y) ** 2 + (grid_x - x) ** 2) / (2 * width ** 2))
    return maps


maps = score_maps(part_centres)
psroi = dict(spatial_scale=1.0, output_dim=1, group_size=k, pooled_size=k, sample_per_part=4,
             trans_std=0.1)
on_object = np.array([[0, 6, 6, 23, 23]], dtype=np.float64)
off_object = np.array([[0, 10, 3, 27, 20]], dtype=np.float64)
scores = {}
for name, box in (("on the object", on_object), ("4 px right, 3 px up", off_object)):
    scores[name] = dcn_numba.deform_psroi_pool(maps, box, **psroi).mean()
    print(f"RoI {name}: score {scores[name]:.2f}")

# %%
def draw_psroi_bin(axis, box, ph, pw, shift=(0.0, 0.0), **style):
    """Outline bin (ph, pw) of a RoI row, on the map of the original operator (pixel edges at ±0.5)."""
    x1, y1, x2, y2 = box[1:]
    width, height = (x2 - x1 + 1) / k, (y2 - y1 + 1) / k
    axis.add_patch(plt.Rectangle((x1 - 0.5 + pw * width + shift[1], y1 - 0.5 + ph * height + shift[0]),
                                 width, height, fill=False, **style))


fig, axes = plt.subplots(k, k, figsize=(4.6, 4.6), layout="constrained")
assert round(scores["on the object"], 2) == 0.70  # the scores Figure 3's caption states
assert round(scores["4 px right, 3 px up"], 2) == 0.27
for (gh, gw), axis in zip(np.ndindex(k, k), axes.flat):
    axis.imshow(maps[0, gh * k + gw], cmap="viridis", vmin=0, vmax=1)
    draw_psroi_bin(axis, on_object[0], gh, gw, color="w", lw=1.5)
    draw_psroi_bin(axis, off_object[0], gh, gw, color="tab:red", lw=1.2, ls="--")
    axis.set(xticks=[], yticks=[], title=f"map ({gh}, {gw})")
    axis.title.set_fontsize(8)
plt.show()

# %% [markdown]
# **Figure 3.** The nine position-sensitive score maps, each a bump on one part of the object.
# In each map, the white square is the one bin of the RoI on the object that reads this map, and
# the dashed red square the same bin of the shifted RoI. Look at the white squares: each sits on
# its bump, so all nine bins score high. The red ones miss their bumps, and the shifted RoI's
# score drops from 0.70 to 0.27 (printed above) although it still covers most of the object.

# %% [markdown]
# ## Deformable position-sensitive pooling: part offsets
#
# Real objects are not rigid grids of parts. Deform the object: move each part a few pixels in its
# own direction. Now even the RoI on the object misses its parts. The deformable version gives
# every part its own offset `trans` (N, 2·num_classes, part_size, part_size), per class, x first,
# scaled by `trans_std`·(roi_width, roi_height).
#
# In R-FCN the offsets come from the features as well: `nn.DeformPSRoIPool` computes them with a
# zero-initialised 1 × 1 convolution of the input into 2·P² maps, pooled position-sensitively
# without offsets, so bin (ph, pw) gets its (Δx, Δy) from its own pair of maps. Train that branch
# with Adam to raise the score of the RoI on the deformed object (a hand-made stand-in for a
# detection loss; notebook 8 shows the offsets a trained detector learns):

# %%
displacement = np.random.default_rng(7).uniform(-3.5, 3.5, (k, k, 2))
deformed = score_maps(part_centres + displacement)
part_layer = nn.DeformPSRoIPool(k * k, output_dim=1, pooled_size=k, sample_per_part=4, trans_std=0.1,
                                rng=np.random.default_rng(0)).to(dtype=np.float64)
deformed_tensor = Tensor(deformed)
with no_grad():
    before = part_layer(deformed_tensor, on_object).data.mean()
assert_close(before, dcn_numba.deform_psroi_pool(deformed, on_object, **psroi).mean(),
             what="DeformPSRoIPool at initialisation against pooling without offsets")
optimizer = optim.Adam(part_layer.parameters(), lr=0.01)
for step in range(100):
    loss = -part_layer(deformed_tensor, on_object).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with no_grad():
    after = part_layer(deformed_tensor, on_object).data.mean()
trans = part_layer.last_trans  # (1, 2, k, k): one (Δx, Δy) per bin, x first
roi_size = on_object[0, 3] - on_object[0, 1] + 1
part_shift = psroi["trans_std"] * roi_size * trans[0, ::-1].transpose(1, 2, 0)  # (k, k, 2) as (y, x)
print(f"score of the RoI on the deformed object: {before:.2f} with rigid bins, {after:.2f} with part offsets")
distance_before = np.linalg.norm(displacement, axis=-1).mean()
distance_after = np.linalg.norm(displacement - part_shift, axis=-1).mean()
print(f"mean distance from a bin to its part: {distance_before:.1f} px before, {distance_after:.1f} px after")
assert after > before + 0.15
assert round(distance_before, 1) == 2.6  # the distances Figure 4's caption states
assert abs(distance_after - 1.0) < 0.1

# %%
fig, axis = plt.subplots(figsize=(3.8, 3.8), layout="constrained")
axis.imshow(deformed[0].max(axis=0), cmap="viridis", vmin=0, vmax=1)
for ph, pw in np.ndindex(k, k):
    draw_psroi_bin(axis, on_object[0], ph, pw, color="0.8", lw=0.8, ls="--")
    draw_psroi_bin(axis, on_object[0], ph, pw, part_shift[ph, pw], color="tab:orange", lw=1.5)
    centre = part_centres[ph, pw]  # the rigid bin's centre, (y, x)
    axis.annotate("", (centre + part_shift[ph, pw])[::-1], centre[::-1],
                  arrowprops=dict(arrowstyle="->", color="w", lw=1))
axis.set(title="learned part offsets", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 4.** The nine score maps of the deformed object overlaid (each bump is one part, moved
# away from its place in the rigid grid), the rigid bins of the RoI (dashed grey) and the bins
# moved by their learned part offsets (orange, with white arrows). Look at how every bin has
# travelled towards its own bump, in its own direction: the mean distance from a bin to its part
# falls from 2.6 to about 1.0 pixels, and the score rises (both printed above): this is the picture of part offsets on a RoI
# from the paper, where the bins of a deformable position-sensitive pooling spread over the
# parts of a non-rigid object; here the object is hand-made, and notebook 8 shows what a detector
# trained on real data learns.

# %% [markdown]
# ## Summary
#
# * RoI pooling cuts a box into P × P bins and averages bilinear samples in each;
#   `deform_roi_pool` is RoIAlign with a learned shift per bin.
# * Offsets are normalised: a bin moves by γ·Δp̂ ∘ (roi_width, roi_height), γ = 0.1, so the
#   same offset means the same part at every scale. They are stored **x first, then y**.
# * The two operators read a box differently: continuous corners (`deform_roi_pool`) or corners
#   rounded to whole pixels with the last pixel included (`deform_psroi_pool`).
# * The backward pass scatters each sample's gradient into its four pixels and, by the chain rule,
#   gives the offsets γ·(RoI size) times the mean bilinear slope; finite differences confirm both
#   operators' gradients.
# * `nn.DeformRoIPool` and `nn.DeformPSRoIPool` compute the offsets with a zero-initialised branch
#   (fully connected, or a 1 × 1 convolution), so they start as plain pooling and learn, through
#   the engine, to move each bin to the evidence.
# * Position-sensitive pooling reads bin (i, j) from score map (i, j), so a RoI scores high only
#   when each bin finds its part; `deform_psroi_pool` adds per-part offsets (`trans`, scaled by
#   `trans_std`), which let the bins follow the parts of a deformed object.
#
# Notebook 7 trains a network of deformable layers on MNIST and looks at where it reads.
