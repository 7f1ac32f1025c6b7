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
# # 9. Semantic segmentation: regular, dilated and deformable
#
# The paper's largest gains came on semantic segmentation: DeepLab on PASCAL VOC gained several
# points of mIoU when the 3 × 3 convolutions of its last stage, res5, became deformable (Dai et al.
# 2017, Table 1). dcn_numba repeats that experiment at toy scale: the digit canvases of notebook
# 8, labelled pixel by pixel, and a small fully convolutional net whose res5 layers are regular,
# dilated or deformable (`dcn_numba.apps.segmentation`, `python -m dcn_numba.segment`).
#
# **What you will learn**
#
# * how the canvases are labelled: a digit's class where its own ink is, background elsewhere,
#   including the clutter that looks like strokes;
# * what mIoU is, computed by hand on a small confusion matrix (you write it, exercise 9.1), and
#   why it is not pixel accuracy;
# * the three nets: the same backbone, res5 regular, dilated by 2, or deformable in all three layers;
# * their mIoU and the IoU of every class, from the saved runs of the project's commands when they
#   are there, from a short run trained here otherwise (the first cell says which);
# * the multi-seed table (`docs/results_segmentation.json`), when it has been computed;
# * where a trained deformable res5 reads the canvas: the 729 sampling points of one unit.
#
# The notebook loads, in this order of preference, the first seed of the table's runs
# (`python -m dcn_numba.experiment segmentation`, in `runs/segmentation/seed0/<variant>/`), or
# the run of `make segment` (`runs/segment/`); without either it trains the three nets for a
# short run of a few steps on a few canvases, which takes a minute or two and is only a sketch
# of what the commands measure. Its first cell prints which happened.

# %%
import dcn_numba  # noqa: F401  (first, as in every notebook)

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba import speed
from dcn_numba.apps.segmentation import segment
from dcn_numba.apps.segmentation.data import BACKGROUND, CLASS_NAMES, CLASSES, labelled_canvases
from dcn_numba.apps.segmentation.metrics import class_iou, confusion_matrix, mean_iou
from dcn_numba.apps.segmentation.sampling import sampling_figure, spread_by_size
from dcn_numba.data.mnist import load_mnist

import checks
import exercises
from exercises import check

# The engine's CPU speed layer, as `python -m dcn_numba.segment` runs it: the same numbers as the
# plain engine, in less time.
speed.switch_on()

exercise = exercises.exercises_of("09_segmentation")

SMOKE = os.environ.get("DCN_NUMBA_TUTORIAL_SMOKE") == "1"
VARIANTS = ("regular", "dilated2", "deformable3")
TABLE_RUNS = Path("..") / "runs" / "segmentation" / "seed0"  # the experiment's runs, seen from tutorials/
MAKE_RUN = Path("..") / "runs" / "segment"  # where `make segment` writes
TABLE = Path("..") / "docs" / "results_segmentation.json"


def stored_metrics(folder, variant):
    """The metrics of `variant` in a finished run folder holding its weights, or None."""
    path = folder / "metrics.json"
    if not (path.is_file() and (folder / f"{variant}.npz").is_file()):
        return None
    return json.loads(path.read_text()).get(variant)


table_runs = {v: stored_metrics(TABLE_RUNS / v, v) for v in VARIANTS}
make_runs = {v: stored_metrics(MAKE_RUN, v) for v in VARIANTS}
if all(table_runs.values()):
    source, runs, folders = "table", table_runs, {v: TABLE_RUNS / v for v in VARIANTS}
elif all(make_runs.values()):
    source, runs, folders = "make", make_runs, {v: MAKE_RUN for v in VARIANTS}
else:
    source, runs, folders = "short", None, None
short_settings = ["--steps", "20" if SMOKE else "60", "--batch-size", "8", "--train-canvases", "200",
                  "--test-canvases", "24" if SMOKE else "60", "--variants", *VARIANTS]
print("nets:", {"table": f"loaded from {TABLE_RUNS}/<variant> (python -m dcn_numba.experiment segmentation)",
                "make": f"loaded from {MAKE_RUN} (make segment)",
                "short": f"trained here, a short run ({' '.join(short_settings[:8])})"}[source])

# %% [markdown]
# ## Canvases labelled per pixel
#
# The canvases are those of the detector (notebook 8), made from the same seeds. Each pixel is
# labelled with the class of the digit whose ink covers it (0 to 9) or as background (class 10),
# and the background includes the fragments of other digits scattered as clutter: they look like
# strokes, and the net must learn that they are not digits.

# %%
mnist = load_mnist()
args = segment.parse_args(short_settings if source == "short" else ["--test-canvases", "24" if SMOKE else "60"])
test = segment.test_canvases(args, mnist)
background_share = float(np.mean(test.labels == BACKGROUND))
print(f"{len(test.images)} test canvases of {test.images.shape[-1]} × {test.images.shape[-1]} pixels, "
      f"{background_share:.1%} of their pixels background")
assert 0.5 < background_share < 1

colours = plt.get_cmap("tab20", CLASSES)
fig, axes = plt.subplots(2, 3, figsize=(8, 5.6), layout="constrained")
for column in range(3):
    axes[0, column].imshow(test.images[column, 0], cmap="gray")
    axes[1, column].imshow(test.labels[column], cmap=colours, vmin=-0.5, vmax=CLASSES - 0.5, interpolation="nearest")
    axes[0, column].set_title(f"canvas {column}: digits {', '.join(map(str, test.digit_labels[column]))}", fontsize=9)
for axis in axes.flat:
    axis.axis("off")
handles = [plt.Rectangle((0, 0), 1, 1, color=colours(c)) for c in range(CLASSES)]
fig.legend(handles, CLASS_NAMES, loc="outside right center", fontsize=8, title="class")
plt.show()

# %% [markdown]
# **Figure 1.** The first three test canvases (top) and their labels (bottom), one colour per
# class, background last. The fragments and noise of the top row are background below; most
# pixels of a canvas are background (the share is printed above the figure, and asserted to be
# more than half).

# %% [markdown]
# ## Exercise 9.1: mIoU
#
# Pixel accuracy, the share of pixels labelled right, is a poor score when most pixels are
# background: a net that calls everything background gets the background's share. PASCAL VOC
# scores segmentation by the **mean intersection over union**. Count, over all test pixels, the
# confusion matrix M[t, p]: pixels of true class t predicted as p. For each class c,
#
# $$\mathrm{IoU}_c = \frac{M_{cc}}{\sum_p M_{cp} + \sum_t M_{tc} - M_{cc}}$$
#
# true positives over the union of the pixels that are c and the pixels predicted c; mIoU is the
# mean over the classes. A class that is neither true nor predicted anywhere has 0/0: leave it
# out of the mean. A class predicted but never true has IoU 0 and counts.
#
# Write it for a confusion matrix (C, C).

# %%
@exercise
def mean_iou_by_hand(confusion):
    """mIoU of a confusion matrix M (C, C), M[t, p] = pixels of true class t predicted as p."""
    raise NotImplementedError("Exercise 9.1: IoU per class, then the mean over the classes that occur")


# %%
check(mean_iou_by_hand, checks.matches_mean_iou)

# %% [markdown]
# By hand, on three classes, background, "1" and "7", over 72 pixels:

# %%
small = np.array([[50, 2, 1],   # true background: 50 right, 2 called "1", 1 called "7"
                  [3, 8, 1],    # true "1"
                  [2, 1, 4]])   # true "7"
by_hand = [50 / (53 + 55 - 50), 8 / (12 + 11 - 8), 4 / (7 + 6 - 4)]
accuracy = np.trace(small) / small.sum()
print("IoU per class:", ", ".join(f"{name} {value:.3f}" for name, value in zip(("background", "1", "7"), by_hand)))
print(f"mIoU {np.mean(by_hand):.3f}, pixel accuracy {accuracy:.3f}")
assert np.allclose(by_hand, class_iou(small)) and np.isclose(np.mean(by_hand), mean_iou(small))
assert np.isclose(mean_iou_by_hand(small), mean_iou(small))
assert np.isclose(accuracy, 62 / 72) and mean_iou(small) < accuracy - 0.2

# %% [markdown]
# Pixel accuracy says 86%, dominated by the background; mIoU says 61%, because "7" overlaps its
# prediction by less than half. `dcn_numba.apps.segmentation.metrics` computes the same numbers
# from the confusion matrix of a whole test set.
#
# ## Three nets, one backbone
#
# `SegNet` takes a canvas down to stride 4 with two convolution and pooling stages, then applies
# res5: three 3 × 3 convolutions at stride 4, a 1 × 1 classifier, and bilinear upsampling back to
# the canvas, one score per class and pixel. The variants differ only in res5: regular, dilated by
# 2 (each tap two cells apart: a wider fixed grid), or deformable in all three layers (each tap
# moved by a learned offset, from a zero-initialised offset branch, so it starts as the regular
# net). With one seed all three draw the same weights.

# %%
nets = {variant: segment.make_net(variant, seed=0) for variant in VARIANTS}
for variant, net in nets.items():
    layers = ", ".join(f"{name} {type(conv).__name__} (dilation {conv.dilation})" for name, conv, _ in net.res5())
    print(f"{variant:12s} {net.num_parameters():7,} parameters; {layers}")
extra = nets["deformable3"].num_parameters() - nets["regular"].num_parameters()
assert nets["dilated2"].num_parameters() == nets["regular"].num_parameters() and extra > 0
print(f"the deformable net's offset branches add {extra:,} parameters")

# %% [markdown]
# ## Results
#
# Load the nets of the saved run, or train the short run now (the first cell said which). A
# loaded run's mIoU is read from its metrics, which count the confusion matrix of every pixel of
# its test canvases (500 in the commands' runs); the cell recomputes mIoU from that matrix.

# %%
confusions = {}
if source == "short":
    train = labelled_canvases(mnist.train, args.train_canvases, segment.TRAIN_CANVAS_SEED, segment.CANVAS_SIZE)
    for variant in VARIANTS:
        nets[variant], losses, _ = segment.train_variant(variant, train, args)
        confusions[variant] = confusion_matrix(segment.predict(nets[variant], test.images), test.labels, CLASSES)
        print(f"{variant:12s} loss {losses[0]:.3f} → {losses[-1]:.3f}")
        assert losses[-1] < losses[0], "training lowered the loss"
    counted = len(test.images)
else:
    for variant in VARIANTS:
        nets[variant] = segment.make_net(variant, runs[variant]["seed"]).load(folders[variant] / f"{variant}.npz")
        confusions[variant] = np.array(runs[variant]["confusion"])
        assert np.isclose(mean_iou(confusions[variant]), runs[variant]["miou"])
    counted = runs["regular"]["test_canvases"]
    print(f"{runs['regular']['steps']} training steps of {runs['regular']['batch_size']} canvases per net")
miou = {variant: mean_iou(confusion) for variant, confusion in confusions.items()}
for variant in VARIANTS:
    print(f"{variant:12s} mIoU {100 * miou[variant]:.1f}   ({counted} test canvases)")

# %%
iou = {variant: class_iou(confusion) for variant, confusion in confusions.items()}
fig, axis = plt.subplots(figsize=(8, 3), layout="constrained")
for n, variant in enumerate(VARIANTS):
    axis.bar(np.arange(CLASSES) + (n - 1) * 0.27, np.nan_to_num(iou[variant]), width=0.27,
             label=f"{variant} (mIoU {100 * miou[variant]:.1f})")
axis.set(xticks=range(CLASSES), xticklabels=CLASS_NAMES, ylabel="IoU", ylim=(0, 1))
axis.legend(fontsize=8, loc="upper left")
for variant in VARIANTS:
    assert np.nanargmax(iou[variant]) == BACKGROUND, f"{variant}: the background has the highest IoU"
plt.show()

# %% [markdown]
# **Figure 2.** The IoU of every class for the three nets, their mIoU in the legend (the mean of
# the eleven bars of a colour). For every net the background has the highest IoU (the cell asserts
# it): most pixels are background, and its pixels are the easiest. The digits are where the nets
# differ. Which net scores highest depends on the run: read the numbers above, and for a claim
# the table over seeds below. A short run trained here is far from converged, and its ranking
# means little.

# %% [markdown]
# ## The table over seeds
#
# `python -m dcn_numba.experiment segmentation --seeds 0 1 2` trains every variant (also 1 and 2
# deformable layers, dilation 4 and 6, and a regular net widened to the deformable net's
# parameter count) for 1,000 steps with three seeds, and writes the table to
# `docs/results_segmentation.md` with bootstrap intervals; `docs/results_segmentation.json` keeps
# each seed's mIoU.

# %%
if TABLE.is_file():
    table = json.loads(TABLE.read_text())
    regular = np.array(table["regular"]["miou"])
    print(f"{TABLE.name}: seeds {table['regular']['seeds']}")
    for variant, row in table.items():
        values = np.array(row["miou"])
        assert row["seeds"] == table["regular"]["seeds"] and len(values) == len(regular)
        print(f"{variant:14s} mIoU {100 * values.mean():5.1f} ± {100 * values.std(ddof=1) if len(values) > 1 else 0:.1f}"
              f"   gain over regular {100 * (values - regular).mean():+5.1f} points")
else:
    print(f"{TABLE} is not there yet: python -m dcn_numba.experiment segmentation --seeds 0 1 2 writes it "
          "(about two hours on two cores, its module's docstring says)")

# %% [markdown]
# ## Where res5 reads the canvas
#
# A unit of res5c reads 9 points of res5b's output, each of those reads 9 of res5a's output, and
# each of those 9 of res5a's input: 729 points, drawn in canvas pixels. The regular net reads a
# fixed grid whatever is under it; the deformable net reads wherever its offsets send each point.
# The figure shows one background unit, the smallest and the largest digit of the test canvases.

# %%
spreads = {variant: spread_by_size(nets[variant], test) for variant in ("regular", "deformable3")}
for variant, measured in spreads.items():
    cells = ", ".join(f"{low}–{high - 1} px: {'–' if s is None else f'{s:.1f}'}"
                      for (low, high), s in zip(measured["bins"], measured["object"]))
    print(f"{variant:12s} spread of the 729 points by digit height: {cells}; background {measured['background']:.1f}")
fixed = [s for s in spreads["regular"]["object"] if s is not None] + [spreads["regular"]["background"]]
assert np.allclose(fixed, fixed[0]), "the regular net reads one fixed grid everywhere"
figure = sampling_figure({"regular": nets["regular"], "deformable3": nets["deformable3"]}, test,
                         figure=plt.figure())
assert len(figure.axes) == 6
plt.show()

# %% [markdown]
# **Figure 3.** For the regular net (top) and the deformable one (bottom): a background unit, the
# smallest and the largest digit of this notebook's test canvases (green cross: the unit), with the
# 9 points of res5c (navy), the 81 of res5b (orange) and the 729 of res5a (red) that it reads,
# and their spread in each panel. The regular net reads the same grid everywhere: the spread
# printed above the figure is one value for every size bin and for the background (the cell
# asserts that they are equal). The deformable net's spreads per digit height are printed
# above the figure too: compare them with the paper's Figure 5, where the sampling points spread
# over large objects and gather on small ones. After a short run trained here its points have
# barely moved from the grid.

# %% [markdown]
# ## Summary
#
# * The segmentation toy labels every pixel of the detector's canvases: ten digit classes and a
#   background that includes the clutter.
# * mIoU averages each class's intersection over union of truth and prediction (exercise 9.1);
#   unlike pixel accuracy, it is not dominated by the background (86% accuracy against 61% mIoU
#   on the three-class example).
# * The three nets differ only in res5: regular, dilated by 2, or deformable in all three
#   layers, which adds the offset branches' parameters.
# * Their mIoU and per-class IoU come from the commands' saved runs when present (the first cell
#   says which); the claims belong to the table over seeds, `docs/results_segmentation.md`.
# * A regular res5 reads one fixed grid of 729 points everywhere; a deformable one reads where
#   its offsets send each point, and its spread per digit size is printed above Figure 3.
