"""Figures of a training run: the learned sampling locations, and the training curves.

The sampling-location figure is the paper's (Dai et al. 2017, Fig. 5): one activation unit of the
last of three stacked 3×3 deformable layers reads 3×3 points of the layer below, each of which
reads 3×3 points of the one below that, and so on: 3·3·3 = 729 points on the first layer's
input (`locations.trace_back`), drawn on the digit. A regular network reads the same 729 points
from a fixed grid whatever the digit; a deformable one places them where its offset branches,
looking at this digit, send them. How they move is learned, not designed: the figure shows it.

Figures are drawn on matplotlib `Figure` objects and written with the Agg renderer: nothing is
shown and no global plotting state is touched, so the functions run on machines without a display.
"""

import numpy as np
from matplotlib.figure import Figure

from ._arrays import to_device
from .autograd import Tensor, no_grad
from .data import random_transform
from .locations import regular_grid, trace_back

FIGURE_SCALES = (0.6, 1.4)
FIGURE_LABELS = (2, 5, 7)


def feature_to_image(points, stride):
    """Feature-map coordinates (..., 2) to input-image coordinates of the same (y, x) points.

    A feature cell of a map of stride s summarises the s×s block of image pixels
    [s·i, s·i + s − 1], whose centre is s·i + (s − 1)/2.
    """
    return np.asarray(points) * stride + (stride - 1) / 2


def image_to_feature(points, stride):
    """The inverse of `feature_to_image`."""
    return (np.asarray(points) - (stride - 1) / 2) / stride


def ink_centre(images):
    """The centre of mass (y, x) of each image's ink: images (B, 1, H, W) → (B, 2)."""
    ink = images[:, 0].astype(np.float64)
    total = np.maximum(ink.sum(axis=(1, 2)), 1e-12)
    rows, cols = np.arange(ink.shape[1]), np.arange(ink.shape[2])
    return np.stack([(ink.sum(axis=2) @ rows) / total, (ink.sum(axis=1) @ cols) / total], axis=1)


def layer_locations(net, images, device):
    """Run `net` on images (B, 1, H, W) and return, for its `deform_layers`, first layer first,
    the sampling locations they used and the fixed grid a regular layer would have used, each a
    list of NumPy arrays (B, G_off, kh·kw, H_out, W_out, 2) in the coordinates of each layer's input."""
    net.eval()
    with no_grad():
        net(Tensor(to_device(images, device)))
    learned = [layer.sampling_locations() for layer in net.deform_layers]
    fixed = [
        np.broadcast_to(
            regular_grid(layer.kernel_size, locations.shape[3:5], layer.stride, layer.padding, layer.dilation),
            (len(images), 1) + locations.shape[2:],
        )
        for layer, locations in zip(net.deform_layers, learned)
    ]
    return learned, fixed


def traced_points(locations, units, stride):
    """For each image b, the points (K^L, 2) of the input image that unit `units[b]` (y, x) of
    the last layer reads through all the layers, in image coordinates: (B, K^L, 2)."""
    return np.stack([
        feature_to_image(trace_back(locations, b, int(y), int(x)), stride)
        for b, (y, x) in enumerate(units)
    ])


def figure_digits(digits):
    """The first test digit of each label in FIGURE_LABELS (of the first labels present, if
    those are missing), each shown small and large (FIGURE_SCALES): images
    (digits·len(FIGURE_SCALES), 1, H, W), the sizes of one digit side by side."""
    labels, first_index = np.unique(digits.labels, return_index=True)
    wanted = np.isin(labels, FIGURE_LABELS)
    chosen = first_index[wanted] if wanted.any() else first_index[:len(FIGURE_LABELS)]
    originals = np.repeat(digits.images[chosen], len(FIGURE_SCALES), axis=0)
    factors = np.tile(FIGURE_SCALES, len(chosen))
    return np.concatenate([
        random_transform(image[None], seed=0, scale=(factor, factor))
        for image, factor in zip(originals, factors)
    ])


def plot_sampling_locations(nets, digits, device, path):
    """Write the 729-point figure for the deformable nets `nets` ({name: MnistNet}).

    Columns: test digits, small and large. First row: the fixed grid of a regular network;
    then one row per deformable net. The green cross is the activation unit, at the cell of the
    last deformable layer nearest to the centre of the digit's ink; red dots are the 729 points,
    darker where several coincide.
    """
    images = figure_digits(digits)
    first = next(iter(nets.values()))
    stride = first.deform_layers_input_stride
    units = np.rint(image_to_feature(ink_centre(images), stride)).astype(int)
    rows = {}
    for name, net in nets.items():
        learned, fixed = layer_locations(net, images, device)
        rows.setdefault("regular (fixed grid)", traced_points(fixed, units, stride))
        rows[name] = traced_points(learned, units, stride)

    figure = Figure(figsize=(2.2 * len(images), 2.3 * len(rows)), layout="constrained")
    axes = figure.subplots(len(rows), len(images), squeeze=False)
    for row, (name, points) in enumerate(rows.items()):
        for column, image in enumerate(images):
            ax = axes[row, column]
            ax.imshow(image[0], cmap="gray_r", vmin=0, vmax=1)
            ax.scatter(points[column, :, 1], points[column, :, 0], s=6, c="red", alpha=0.15, linewidths=0)
            unit = feature_to_image(units[column], stride)
            ax.scatter([unit[1]], [unit[0]], s=60, c="limegreen", marker="+", linewidths=2)
            ax.set_xlim(-0.5, image.shape[-1] - 0.5)
            ax.set_ylim(image.shape[-2] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"scale {FIGURE_SCALES[column % len(FIGURE_SCALES)]}", fontsize=9)
        axes[row, 0].set_ylabel(name, fontsize=9)
    figure.suptitle("Sampling locations of three stacked 3×3 layers: 729 points per activation unit")
    figure.savefig(path, dpi=110)


def plot_training_curves(histories, path):
    """Write training loss per step and test accuracy per epoch, one line per variant.

    histories: {variant: {"loss": [per step], "test_accuracy": [per epoch]}}.
    """
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for variant, history in histories.items():
        loss = np.asarray(history["loss"])
        window = max(1, min(20, len(loss) // 10))
        smoothed = np.convolve(loss, np.ones(window) / window, mode="valid")
        loss_axes.plot(np.arange(window, len(loss) + 1), smoothed, label=variant)
        epochs = np.arange(1, len(history["test_accuracy"]) + 1)
        accuracy_axes.plot(epochs, history["test_accuracy"], marker="o", label=variant)
    loss_axes.set(xlabel="step", ylabel="training loss (running mean)")
    accuracy_axes.set(xlabel="epoch", ylabel="test accuracy")
    loss_axes.legend()
    accuracy_axes.legend()
    figure.savefig(path, dpi=110)
