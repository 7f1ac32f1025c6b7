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
# wherever they are inside its box. This notebook takes the paper's two detection heads, Faster
# R-CNN's "2fc" head and R-FCN, each with plain and with deformable RoI pooling, on canvases of
# MNIST digits, scores the four detectors, and looks at where the deformable R-FCN moved its bins.
#
# **What you will learn**
#
# * how `canvases.make_canvases` builds seeded detection data: digits of heights 14–56 pixels,
#   clutter, tight ground-truth boxes;
# * how a fixed grid of anchor boxes serves as proposals, and how well it covers the boxes;
# * the two heads: 2fc (RoIAlign, two fully connected layers) and R-FCN (a hidden layer,
#   position-sensitive score maps, k×k bins and their vote), and what deformable RoI pooling adds
#   to each: an offset branch, zero at the start, learning at 0.1 × the learning rate;
# * VOC mAP at IoU 0.5 and 0.7 of the four detectors, computed here, and the three-seed table
#   when it has been computed;
# * the paper's part-offsets picture: the 3×3 bins of R-FCN before and after their learned offsets.
#
# The notebook loads the weights that `make detect` (`python -m dcn_numba.detect --out
# runs/detect`, 600 steps per detector) writes, when they are there; otherwise it trains the four
# detectors itself for a short run (its measured time is in the tutorials' README), keeps them in
# `runs/tutorial-08` and loads them from there the next time. Its first cell prints which of the
# three happened. A short run's numbers are a sketch. With `DCN_NUMBA_TUTORIAL_SMOKE=1` (the test
# suite sets it) it trains fewer steps on fewer canvases and saves nothing.

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
from dcn_numba.apps.detection.detector import OFFSET_LR_MULTIPLIERS, Detector, anchor_grid, detect
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
TABLE = Path("..") / "docs" / "results_detection.json"  # the three-seed table, when computed
VARIANTS = ("2fc", "2fc_droi", "rfcn", "rfcn_droi")
SAVED = Path("..") / "runs" / "tutorial-08"  # where this notebook keeps its own short run for the next time
TRAINED = all((RUN / f"{v}.npz").is_file() for v in VARIANTS) and (RUN / "metrics.json").is_file()
settings = (["--steps", "40", "--train-canvases", "200", "--test-canvases", "20"] if SMOKE
            else ["--steps", "150", "--train-canvases", "500", "--test-canvases", "60"])
REUSED = (not TRAINED and not SMOKE and all((SAVED / f"{v}.npz").is_file() for v in VARIANTS)
          and (SAVED / "run.json").is_file() and json.loads((SAVED / "run.json").read_text())["settings"] == settings)
args = command.parse_args(settings + ["--variants", *VARIANTS])
print("weights:", f"loaded from {RUN} (make detect)" if TRAINED else
      f"loaded from {SAVED}, this notebook's earlier short run ({' '.join(settings)})" if REUSED else
      f"trained here, a short run ({' '.join(settings)})")
print("three-seed table:", f"read from {TABLE}" if TABLE.is_file() else f"{TABLE} is not there yet")

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
# ## Two heads, each plain and deformable
#
# All four detectors share the backbone (two convolution and pooling stages to stride 4, then
# three 3 × 3 convolutions named after the paper's res5a–c) and the anchors as proposals.
#
# * **2fc** (Faster R-CNN's head): RoIAlign pools each anchor's box into 7 × 7 bins of the
#   features; two fully connected layers of 128 units, then the class scores (10 digits and the
#   background) and a box regression. Deformable RoI pooling adds an offset branch: the RoI is
#   pooled once without offsets, three fully connected layers turn that into one normalised
#   offset (Δx, Δy) per bin, and the RoI is pooled again with every bin moved by γ·(Δx·w, Δy·h),
#   γ = 0.1, w × h the RoI's size.
# * **R-FCN**: a hidden 1 × 1 convolution with ReLU, then 1 × 1 convolutions to (10 + 1)·3² class
#   score maps and 4·3² box maps; each of a RoI's 3 × 3 bins pools its own map (the top-left bin
#   reads the "top-left part" map), and the class score is the mean of the nine bins (the vote).
#   Deformable position-sensitive RoI pooling adds, for each set of maps, a 1 × 1 convolution of
#   the hidden features whose position-sensitive pooling gives each bin's normalised offsets,
#   applied as above.
#
# Every offset branch starts at zero, so each deformable detector starts out computing what its
# plain twin computes, and learns at a tenth of the learning rate (`OFFSET_LR_MULTIPLIERS`): at the
# full rate R-FCN's bins ran off their RoIs (the detector module's comment gives the measurement).

# %%
print("offset branches learn at", {head: f"{m:g} × the learning rate" for head, m in OFFSET_LR_MULTIPLIERS.items()})
assert OFFSET_LR_MULTIPLIERS == {"2fc": 0.1, "rfcn": 0.1}

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
    print(f"{variant:10s} {detector.num_parameters():9,} parameters, first loss {histories[variant]['loss'][0]:.4f}, "
          f"last {histories[variant]['loss'][-1]:.4f}")
for head in ("2fc", "rfcn"):  # with its offsets at zero, a deformable head starts as its plain twin
    assert np.isclose(histories[head]["loss"][0], histories[f"{head}_droi"]["loss"][0], rtol=1e-4), head

# %% [markdown]
# Score the four on the test canvases: every anchor is classified and regressed, NMS at IoU 0.3 keeps
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

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), layout="constrained", sharey=True)
for axis, head in zip(axes, ("2fc", "rfcn")):
    for n, (key, label) in enumerate((("map50", "mAP@0.5"), ("map70", "mAP@0.7"))):
        values = [scores[head][key], scores[f"{head}_droi"][key]]
        axis.bar(np.arange(2) + (n - 0.5) * 0.38, values, width=0.38, label=label)
    axis.set(xticks=range(2), xticklabels=["plain RoI pooling", "deformable"],
             title={"2fc": "Faster R-CNN 2fc", "rfcn": "R-FCN"}[head], ylim=(0, 1))
axes[0].set_ylabel("mAP on this notebook's test canvases")
axes[0].legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.** mAP at IoU 0.5 and 0.7 of the four detectors, computed above on this notebook's
# test canvases; for every detector mAP@0.7 is at most mAP@0.5 (asserted above), since a
# detection that overlaps a digit by 0.7 also overlaps it by 0.5. Whether deformable RoI pooling
# helps here depends on the run the weights come from (the first cell says which): one seed and,
# for a short run, a few hundred steps. The claim belongs to the table over three seeds below.

# %% [markdown]
# ## The table over three seeds
#
# `python -m dcn_numba.experiment detection --seeds 0 1 2` trains every row of the paper's
# table (also the class-aware RPN, 1–3 deformable layers and dilated res5) for 600 steps with
# three seeds, and writes `docs/results_detection.md` with bootstrap intervals over the test
# canvases; `docs/results_detection.json` keeps each seed's mAP. The rows of this notebook:

# %%
if TABLE.is_file():
    table = json.loads(TABLE.read_text())
    for variant in VARIANTS:
        if variant not in table:
            print(f"{variant:10s} not in the table yet")
            continue
        row, base = table[variant], table.get(variant.split("_")[0])
        cells = [f"mAP@{iou} {100 * np.mean(row[key]):5.1f} ± {100 * np.std(row[key], ddof=1) if len(row[key]) > 1 else 0:.1f}"
                 for key, iou in (("map50", "0.5"), ("map70", "0.7"))]
        if variant.endswith("_droi") and base is not None and len(base["map70"]) == len(row["map70"]):
            cells.append(f"gain at 0.7 {100 * np.mean(np.subtract(row['map70'], base['map70'])):+.1f} points")
        print(f"{variant:10s} " + "   ".join(cells) + f"   ({len(row['map50'])} seeds)")
        assert all(a <= b for a, b in zip(row["map70"], row["map50"]))
else:
    print(f"{TABLE} is not there yet: python -m dcn_numba.experiment detection --seeds 0 1 2 writes it "
          "(about 2 h 20 min on one free core, its module's docstring says)")

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
titles = [axis.title.get_window_extent() for axis in figure.axes if axis.get_title()]
for n, title in enumerate(titles):  # no title overlaps a panel or another title
    assert not any(title.overlaps(panel) for panel in panels), f"title {n} overlaps a panel"
    assert not any(title.overlaps(other) for other in titles[n + 1:]), f"title {n} overlaps another title"
plt.show()

# %% [markdown]
# **Figure 3.** The best detection on each of the first six test canvases, from the deformable
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
pool = detectors["rfcn_droi"].head.offset_pool()
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
# **Figure 4.** The nine bins of a 32 × 32 RoI (gold) before (dashed) and after (solid) the mean
# learned offsets over the best detection of every test canvas; the cell prints each bin's shift,
# their mean length and the largest. What the mean says, and what it does not: it is the part of
# the offsets that is the same on every digit, and Figure 3's bins vary around it. Why a bin moves
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
# * The 2fc head pools each RoI into 7 × 7 bins and classifies it with fully connected layers;
#   R-FCN pools position-sensitive score maps into 3 × 3 bins that vote. Deformable RoI pooling
#   gives each a zero-initialised offset branch (fully connected layers for 2fc, a 1 × 1
#   convolution of the hidden features for R-FCN) learning at 0.1 × the learning rate, so each
#   deformable detector starts as its plain twin (asserted on the first loss).
# * The four detectors' mAP here comes from one run (Figure 2); the three-seed table
#   (`python -m dcn_numba.experiment detection --seeds 0 1 2`, `docs/results_detection.md`) is
#   where a gain is claimed or not, and the README shows it.
# * The part offsets of R-FCN (Figures 3 and 4) are learned only to lower the detection loss: the
#   notebook measures how far they move the bins, not why.
