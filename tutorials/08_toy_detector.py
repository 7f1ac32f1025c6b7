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
# # 8. A toy detector and its learned part offsets
#
# Deformable RoI pooling is the other half of the paper: each bin of a region of interest moves
# by a learned offset before it pools, so that a detector can look at the parts of an object
# wherever they are inside its box. This notebook trains (or loads) a small R-FCN-style detector
# on canvases of MNIST digits, with plain and with deformable position-sensitive RoI pooling, and
# looks at where the deformable one moved its bins.
#
# **What you will learn**
#
# * how `canvases.make_canvases` builds seeded detection data: digits of heights 14–56 pixels,
#   clutter, tight ground-truth boxes;
# * how a fixed grid of anchor boxes serves as proposals, and how well it covers the boxes;
# * the R-FCN head: position-sensitive score maps, k×k bins, the vote, and its deformable version;
# * VOC mAP at IoU 0.5 and 0.7 of the two heads, computed here;
# * the paper's part-offsets picture: the 3×3 bins before and after their learned offsets.
#
# The notebook loads the weights that `make detect` (`python -m dcn_numba.detect --out
# runs/detect`, 600 steps per detector) writes, when they are there; otherwise it trains both
# detectors itself for a short run of 200 steps each (its measured time is in the tutorials'
# README), keeps them in `runs/tutorial-08` and loads them from there the next time. Its first cell prints
# which of the three happened. A short run's numbers are a sketch. With
# `DCN_NUMBA_TUTORIAL_SMOKE=1` (the test suite sets it) it uses fewer canvases and saves nothing.

# %%
import dcn_numba  # noqa: F401  (first, as in every notebook)

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba.apps.detection import detect as command
from dcn_numba.data.canvases import box_iou, make_canvases
from dcn_numba.data.mnist import load_mnist
from dcn_numba.apps.detection.viz import learned_offsets, part_bins, part_offsets_figure
from dcn_numba.apps.detection.detector import Detector, anchor_grid, detect
from dcn_numba.apps.detection.evaluation import detection_metrics
from dcn_numba import speed

import checks
import exercises
from exercises import check

# The engine's CPU speed layer, as `python -m dcn_numba.detect` runs it: the same numbers as the
# plain engine of notebook 6, in less time.
speed.switch_on()

exercise = exercises.exercises_of("08_toy_detector")

SMOKE = os.environ.get("DCN_NUMBA_TUTORIAL_SMOKE") == "1"
RUN = Path("..") / "runs" / "detect"  # where `make detect` writes, seen from tutorials/
VARIANTS = ("rfcn", "rfcn_droi")
SAVED = Path("..") / "runs" / "tutorial-08"  # where this notebook keeps its own short run for the next time
TRAINED = all((RUN / f"{v}.npz").is_file() for v in VARIANTS) and (RUN / "metrics.json").is_file()
settings = (["--steps", "200", "--train-canvases", "500", "--test-canvases", "40"] if SMOKE
            else ["--steps", "200", "--train-canvases", "500", "--test-canvases", "60"])
REUSED = (not TRAINED and not SMOKE and all((SAVED / f"{v}.npz").is_file() for v in VARIANTS)
          and (SAVED / "run.json").is_file() and json.loads((SAVED / "run.json").read_text())["settings"] == settings)
args = command.parse_args(settings + ["--variants", *VARIANTS])
print("weights:", f"loaded from {RUN} (make detect)" if TRAINED else
      f"loaded from {SAVED}, this notebook's earlier short run ({' '.join(settings)})" if REUSED else
      f"trained here, a short run ({' '.join(settings)})")

# %% [markdown]
# ## Canvases
#
# Each 64 × 64 canvas holds one to four digits cut to their ink and scaled to heights between 14
# and 56 pixels, overlapping each other's boxes by an IoU of at most 0.1. Clutter sits between
# them: pieces of other digits and noise. Train canvases come from the training digits, test
# canvases from the test digits, each from a fixed seed.

# %%
mnist = load_mnist()
train = make_canvases(mnist.train, args.train_canvases, command.TRAIN_CANVAS_SEED)
test = make_canvases(mnist.test, args.test_canvases, command.TEST_CANVAS_SEED)
heights = np.concatenate([b[:, 3] - b[:, 1] for b in test.boxes])
print(f"{len(train.images)} train canvases, {len(test.images)} test canvases holding {len(heights)} digits, "
      f"box heights {heights.min():.0f}–{heights.max():.0f} px")
assert heights.max() / heights.min() > 3

# %%
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), layout="constrained")
for axis, image, boxes, labels in zip(axes, test.images, test.boxes, test.labels):
    axis.imshow(image[0], cmap="gray", extent=(0, 64, 64, 0))
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        axis.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="gold"))
        axis.text(x1, y1 - 1, str(label), color="gold", fontsize=8)
    axis.axis("off")
plt.show()

# %% [markdown]
# **Figure 1.** The first four test canvases with their ground-truth boxes (gold) and labels. Look
# at the clutter: broken strokes that could pass for a 1 or part of a 0 sit beside the digits,
# and a detector has to tell them from digits.

# %% [markdown]
# ## Exercise 8.1: the overlap of two boxes
#
# Everything a detector is judged by rests on one number, the intersection over union (IoU) of a
# detected box and a ground-truth box: the area they share divided by the area they cover
# together. Boxes here are `[x1, y1, x2, y2)` in pixels, x2 and y2 excluded, so a box is
# `x2 − x1` wide. Write it for two boxes; boxes that do not touch overlap by 0.

# %%
@exercise
def iou(box_a, box_b):
    """IoU of two boxes [x1, y1, x2, y2)."""
    raise NotImplementedError("write the intersection over union")


# %%
check(iou, checks.matches_box_iou)

# %% [markdown]
# ## Proposals without ground truth: a grid of anchors
#
# The detector scores and refines a fixed set of boxes: heights 16, 24, 36 and 54 pixels, widths
# 0.4, 0.7 and 1.0 of the height, centred on grids whose spacing is a quarter of the height.
# How close does the best anchor come to each ground-truth box?

# %%
anchors = anchor_grid(64)
best = np.concatenate([box_iou(boxes, anchors).max(axis=1) for boxes in test.boxes])
covered50, covered70 = float(np.mean(best >= 0.5)), float(np.mean(best >= 0.7))
print(f"{len(anchors)} anchors; the best anchor overlaps a digit's box by IoU >= 0.5 for "
      f"{covered50:.1%} of the digits, >= 0.7 for {covered70:.1%}")
assert covered50 > covered70

# %% [markdown]
# So at IoU 0.7 many digits have no anchor close enough: the box regression has to move the
# anchors, and how well it does decides mAP@0.7.
#
# ## Two detectors, one recipe
#
# Both detectors share the backbone (four 3 × 3 convolutions, stride 4) and the R-FCN head: 1 × 1
# convolutions to (10 + 1)·3² class score maps and 4·3² box maps; the RoI's 3 × 3 bins each pool
# their own map (the top-left bin reads the "top-left part" map), and the class score is the mean
# of the nine bins. The deformable head adds, for each set of maps, a zero-initialised 1 × 1
# convolution whose position-sensitive pooling gives the normalised offsets (Δx, Δy) of each bin;
# the bin moves by γ·(Δx·w, Δy·h) with γ = 0.1 and the RoI's size w × h.

# %%
detectors, histories = {}, {}
if TRAINED:
    metrics = json.loads((RUN / "metrics.json").read_text())
    for variant in VARIANTS:
        detectors[variant] = Detector(**command.VARIANTS[variant], seed=metrics[variant]["seed"]).load(RUN / f"{variant}.npz")
        histories[variant] = metrics[variant]["history"]
elif REUSED:
    histories = json.loads((SAVED / "run.json").read_text())["histories"]
    for variant in VARIANTS:
        detectors[variant] = Detector(**command.VARIANTS[variant], seed=args.seed).load(SAVED / f"{variant}.npz")
else:
    for variant in VARIANTS:
        detectors[variant], histories[variant] = command.train_variant(variant, train, anchors, args)
    if not SMOKE:  # the tests' runs leave nothing behind
        SAVED.mkdir(parents=True, exist_ok=True)
        for variant, detector in detectors.items():
            detector.save(SAVED / f"{variant}.npz")
        (SAVED / "run.json").write_text(json.dumps({"settings": settings, "histories": histories}))
for variant, detector in detectors.items():
    print(f"{variant:10s} {detector.num_parameters():7,} parameters, first loss {histories[variant]['loss'][0]:.4f}, "
          f"last {histories[variant]['loss'][-1]:.4f}")
assert np.isclose(histories["rfcn"]["loss"][0], histories["rfcn_droi"]["loss"][0], rtol=1e-4), \
    "with its offsets at zero, the deformable head starts out computing what the plain one does"

# %% [markdown]
# Score both on the test canvases: every anchor is classified and regressed, NMS at IoU 0.3 keeps
# the best of overlapping boxes of a class, and VOC's 11-point AP is averaged over the ten digits.

# %%
scores = {}
ground_truth = command.ground_truth_records(test)
for variant, detector in detectors.items():
    detections, _ = command.evaluate(detector, test, anchors)
    scores[variant] = detection_metrics(detections, ground_truth)
    print(f"{variant:10s} mAP@0.5 {scores[variant]['map50']:.3f}   mAP@0.7 {scores[variant]['map70']:.3f}   "
          f"COCO AP {scores[variant]['coco_ap']:.3f}")
for variant, m in scores.items():
    assert m["map70"] <= m["map50"]
    loss = np.asarray(histories[variant]["loss"])
    assert loss[-20:].mean() < loss[:20].mean(), "training lowered the loss"

# %% [markdown]
# ## Where the bins went
#
# For the best detection on each of six test canvases, draw the RoI (gold) and its 3 × 3 bins
# before (dashed) and after (solid) the offsets the deformable head computed for it.

# %%
figure, shifts = part_offsets_figure(detectors["rfcn_droi"], test, anchors, count=6, min_score=0.0)
print(f"mean bin shift on these {len(shifts)} detections: {np.mean(shifts):.2f} px")
assert len(shifts) == 6
for axis in figure.axes:  # a bin moved past the canvas is cut at its edge, not drawn over the next panel
    for patch in axis.patches:
        patch.set_clip_on(True)
figure.set_layout_engine("constrained")  # room for every panel's title
figure.canvas.draw()
panels = [axis.get_window_extent() for axis in figure.axes]
for axis in figure.axes:  # no title overlaps a panel
    title = axis.title.get_window_extent()
    assert not any(title.overlaps(panel) for panel in panels), f"the title {axis.get_title()!r} overlaps a panel"
plt.show()

# %% [markdown]
# **Figure 2.** The best detection on each of the first six test canvases, from the deformable
# R-FCN detector (its score in the title): the RoI (gold), its 3 × 3 bins without offsets
# (dashed, cyan) and where they pool after the learned offsets (solid, red; a bin moved past the
# canvas is drawn cut at its edge). The mean shift of a bin, printed above the figure, is measured on these
# detections. Look at whether the red bins gather on the strokes of the digit or drift off them:
# the offsets are learned only to lower the detection loss, with no other guidance.

# %% [markdown]
# One picture is six detections. Over many, which way does each bin move on average? Take the
# best detection of every test canvas and average the offsets of each of the nine bins, in
# pixels of a 32 × 32 RoI.

# %%
pool = detectors["rfcn_droi"].head.pools[0]
mean_trans = []
for n in range(len(test.images)):
    boxes, _, found = detect(detectors["rfcn_droi"], test.images[n:n + 1], anchors)[0]
    if len(found):
        mean_trans.append(learned_offsets(detectors["rfcn_droi"], test.images[n], boxes[:1])[0])
mean_trans = np.mean(mean_trans, axis=0)  # (2, 3, 3), x first
reference = part_bins([16, 16, 48, 48], np.zeros_like(mean_trans), 3, pool.trans_std, pool.spatial_scale)
moved = part_bins([16, 16, 48, 48], mean_trans, 3, pool.trans_std, pool.spatial_scale)
shift = moved[..., :2] - reference[..., :2]
print("mean shift of each bin (x, y) in px, rows top to bottom:")
print(np.round(shift, 1))
bin_distance = np.linalg.norm(shift, axis=-1)
largest = np.unravel_index(bin_distance.argmax(), bin_distance.shape)
print(f"the bins move {bin_distance.mean():.1f} px on average, at most {bin_distance.max():.1f} px "
      f"(bin {tuple(int(i) for i in largest)}), on a 32-px RoI whose bins are {32 / 3:.1f} px wide")
assert np.isclose(bin_distance.mean(), np.mean(np.hypot(shift[..., 0], shift[..., 1])))

fig, axis = plt.subplots(figsize=(3.6, 3.6), layout="constrained")
axis.add_patch(plt.Rectangle((16, 16), 32, 32, fill=False, ec="gold"))
for ref, mov in zip(reference.reshape(-1, 4), moved.reshape(-1, 4)):
    axis.add_patch(plt.Rectangle(ref[:2], *(ref[2:] - ref[:2]), fill=False, ec="tab:cyan", ls="--"))
    axis.add_patch(plt.Rectangle(mov[:2], *(mov[2:] - mov[:2]), fill=False, ec="tab:red"))
axis.set(xlim=(0, 64), ylim=(64, 0), aspect="equal", title="mean offsets, 32 × 32 RoI")
plt.show()

# %% [markdown]
# **Figure 3.** The nine bins of a 32 × 32 RoI (gold) before (dashed) and after (solid) the mean
# learned offsets over the best detection of every test canvas; the cell prints each bin's shift,
# their mean length and the largest. What the mean says, and what it does not: it is the part of
# the offsets that is the same on every digit, and Figure 2's bins vary around it. Why a bin moves
# the way it does is not tested here: the offsets are learned only to lower the detection loss, and
# a shift of a few pixels can serve the box regression or the class scores alike. Compare the
# shifts with a bin's width, 10.7 px: a bin moved by half its width or more along an axis shares
# at most half its area with its place in the rigid grid.

# %% [markdown]
# ## Summary
#
# * `canvases.make_canvases` makes seeded detection data from MNIST digits, with tight boxes, a 4×
#   range of sizes and clutter, so that mAP does not saturate.
# * A fixed anchor grid gives proposals without ground truth; box regression must do the rest,
#   which is what mAP@0.7 measures.
# * Deformable position-sensitive RoI pooling adds one zero-initialised 1 × 1 convolution per set
#   of score maps; it starts as plain R-FCN and learns where each of the k × k bins should pool.
# * `python -m dcn_numba.detect --seeds 0 1 2 --variants all` produces the paper's table for all
#   eight detectors (2fc and R-FCN heads, with and without deformable convolution and deformable
#   RoI pooling); the README shows it.
