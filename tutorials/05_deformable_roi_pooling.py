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
# # 5. Deformable RoI pooling and its position-sensitive variant
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
# * how the offsets follow the gradient to the evidence, using the hand-written backward pass;
# * position-sensitive RoI pooling, where bin (i, j) reads its own score map, and its deformable
#   version, whose part offsets find the parts of a deformed object.
#
# dcn_numba has two operators, after the two families of public implementations:
# `deform_roi_pool` (RoIAlign with learned bin shifts) and `deform_psroi_pool` (the original
# position-sensitive operator). Note one convention they share, the opposite of the deformable
# convolution's: RoI offsets are stored **x first, then y**.

# %%
import matplotlib.pyplot as plt
import numpy as np

import dcn_numba
from dcn_numba.data import load_mnist, random_transform
from dcn_numba.gradcheck import assert_close
from dcn_numba.reference import deform_roi_pool as roi_reference

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
# ## Letting the bins find the ink
#
# Offsets are learned by gradient descent, through `deform_roi_pool_backward`, which returns the
# gradient of the loss for the input and for the offsets. To watch it work without a detector,
# give the bins the simplest wish, "pool as much ink as you can" (maximise Σ out), and follow the
# gradient from zero offsets:

# %%
offset = np.zeros((1, 2, P, P))
ones = np.ones((1, 1, P, P))  # ∂(Σ out)/∂out
for step in range(100):
    _, grad_offset = dcn_numba.deform_roi_pool_backward(ones, feature_map, rois, offset, output_size=P,
                                                        sampling_ratio=sampling_ratio)
    offset += 0.5 * grad_offset  # gradient ascent
learned = dcn_numba.deform_roi_pool(feature_map, rois, offset, output_size=P, sampling_ratio=sampling_ratio)
print(f"mean pooled ink: {pooled.mean():.2f} with regular bins, {learned.mean():.2f} with learned offsets")
assert learned.mean() > pooled.mean() + 0.2

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.4), layout="constrained")
for axis, title, bin_offset in ((left, "regular bins", None), (right, "after 100 steps of ascent", offset)):
    axis.imshow(feature_map[0, 0], cmap="Greys")
    draw_bins(axis, rois, color="0.6", lw=0.8, ls="--")
    draw_bins(axis, rois, bin_offset, color="tab:orange", lw=1.5)
    axis.set(title=title, xticks=[], yticks=[])
plt.show()

# %% [markdown]
# **Figure 2.** The 3 × 3 bins of the RoI before (left) and after (right) following the gradient
# of "pool more ink" with respect to their offsets; the dashed grey grid is the regular one. Look
# at how each bin has slid, on its own, onto the nearest thick stroke: the offsets are per bin,
# so the pooling grid deforms to the shape of the digit. A detector learns its offsets the same
# way, only from the detection loss.

# %% [markdown]
# ## Position-sensitive RoI pooling
#
# R-FCN, the detector the paper builds on, pools differently. For each class it computes k × k
# **score maps**, one per relative position in a box: map (0, 0) fires on top-left parts of an
# object, map (1, 1) on centres, and so on. Bin (i, j) of a RoI then reads *only* map (i, j), and
# the RoI's score is the average of its bins. A box scores high only if every bin finds its own
# part there: the score is sensitive to where the box sits.
#
# `deform_psroi_pool` takes the maps as input channels `(ctop·group_size + gh)·group_size + gw`
# (output channel ctop, map (gh, gw)). Let us hand-make the 3 × 3 maps of an object that fills
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
for name, box in (("on the object", on_object), ("4 px right, 3 px up", off_object)):
    print(f"RoI {name}: score {dcn_numba.deform_psroi_pool(maps, box, **psroi).mean():.2f}")

# %%
def draw_psroi_bin(axis, box, ph, pw, shift=(0.0, 0.0), **style):
    """Outline bin (ph, pw) of a RoI row, on the map of the original operator (pixel edges at ±0.5)."""
    x1, y1, x2, y2 = box[1:]
    width, height = (x2 - x1 + 1) / k, (y2 - y1 + 1) / k
    axis.add_patch(plt.Rectangle((x1 - 0.5 + pw * width + shift[1], y1 - 0.5 + ph * height + shift[0]),
                                 width, height, fill=False, **style))


fig, axes = plt.subplots(k, k, figsize=(4.6, 4.6), layout="constrained")
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
# score drops from 0.70 to 0.27 although it still covers most of the object.

# %% [markdown]
# ## Deformable position-sensitive pooling: part offsets
#
# Real objects are not rigid grids of parts. Deform the object: move each part a few pixels in its
# own direction. Now even the RoI on the object misses its parts. The deformable version gives
# every part its own offset `trans` (N, 2·num_classes, part_size, part_size), per class, x first,
# scaled by `trans_std`·(roi_width, roi_height). Starting from zero, follow the gradient of the
# score with respect to `trans`, from `deform_psroi_pool_backward`:

# %%
displacement = np.random.default_rng(7).uniform(-3.5, 3.5, (k, k, 2))
deformed = score_maps(part_centres + displacement)
trans = np.zeros((1, 2, k, k))  # one class, part_size = k: one (Δx, Δy) per bin
before = dcn_numba.deform_psroi_pool(deformed, on_object, **psroi).mean()
for step in range(100):
    _, grad_trans = dcn_numba.deform_psroi_pool_backward(np.ones((1, 1, k, k)), deformed, on_object,
                                                         trans, **psroi)
    trans += 1.0 * grad_trans
after = dcn_numba.deform_psroi_pool(deformed, on_object, trans, **psroi).mean()
roi_size = on_object[0, 3] - on_object[0, 1] + 1
part_shift = psroi["trans_std"] * roi_size * trans[0, ::-1].transpose(1, 2, 0)  # (k, k, 2) as (y, x)
print(f"score of the RoI on the deformed object: {before:.2f} with rigid bins, {after:.2f} with part offsets")
print(f"mean distance from a part: {np.linalg.norm(displacement, axis=-1).mean():.1f} px before, "
      f"{np.linalg.norm(displacement - part_shift, axis=-1).mean():.1f} px after")
assert after > before + 0.2

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
# travelled to its own bump, in its own direction: this is the picture of part offsets on a RoI
# from the paper, where the bins of a deformable position-sensitive pooling spread over the
# parts of a non-rigid object.

# %% [markdown]
# ## Summary
#
# * RoI pooling cuts a box into P × P bins and averages bilinear samples in each;
#   `deform_roi_pool` is RoIAlign with a learned shift per bin.
# * Offsets are normalised: a bin moves by γ·Δp̂ ∘ (roi_width, roi_height), γ = 0.1, so the
#   same offset means the same part at every scale. They are stored **x first, then y**.
# * The backward pass gives the gradient for the offsets, and following it moves each bin to the
#   evidence on its own.
# * Position-sensitive pooling reads bin (i, j) from score map (i, j), so a RoI scores high only
#   when each bin finds its part; `deform_psroi_pool` adds per-part offsets (`trans`, scaled by
#   `trans_std`), which let the bins follow the parts of a deformed object.
#
# Notebook 6 puts these operators and the convolution into layers, behind a small autograd engine.
