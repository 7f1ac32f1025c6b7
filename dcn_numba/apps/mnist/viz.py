"""Figures of a training run: the learned sampling locations, and the training curves.

The sampling-location figure is the paper's (Dai et al. 2017, Fig. 6): one activation unit of the
last of three stacked 3×3 layers reads 3×3 points of the layer below, each of which reads 3×3
points of the one below that: 9, 81 and 3·3·3 = 729 points (`locations.trace_back_levels`),
drawn on the digit, for a unit on the background, one on a small digit and one on a large digit.
A regular network reads its points from a fixed grid whatever the digit; a deformable one places
them where its offset branches, looking at this digit, send them. How they move is learned, not
designed: the figure shows it.

Figures are drawn on matplotlib `Figure` objects and written with the Agg renderer: nothing is
shown and no global plotting state is touched, so the functions run on machines without a display.
"""

import numpy as np
from matplotlib.figure import Figure

from dcn_numba.data.mnist import scaled_digits
from dcn_numba.apps.mnist.receptive_field import background_units, feature_to_image, object_units, unit_traces

FIGURE_SCALES = (0.6, 1.8)  # the small and the large digit
FIGURE_LABEL = 3
CANVAS_SIZE = 48
# The three levels of points, last layer first: its 9 taps, their 81, and the 729 of the first layer.
LEVEL_STYLES = ((3, dict(s=30, c="navy")), (2, dict(s=12, c="darkorange", alpha=0.6)),
                (1, dict(s=5, c="red", alpha=0.25)))
LEGEND = ("the unit", "the last layer's 9 points", "the middle layer's 81", "the first layer's 729")


def figure_panels(digits, canvas_size=CANVAS_SIZE):
    """The three panels of the figure: the first test digit labelled FIGURE_LABEL (else the first
    digit), small and large (FIGURE_SCALES), and the unit of each panel: a background unit on the
    small digit, an object unit on the small and on the large digit.

    Returns (titles, images (3, 1, S, S), kinds: "background" or "object")."""
    labelled = np.flatnonzero(digits.labels == FIGURE_LABEL)
    index = labelled[0] if len(labelled) else 0
    digit = digits._replace(images=digits.images[index:index + 1], labels=digits.labels[index:index + 1])
    small, large = (scaled_digits(digit, factor, canvas_size=canvas_size).images for factor in FIGURE_SCALES)
    titles = (f"background (digit ×{FIGURE_SCALES[0]})", f"small object (×{FIGURE_SCALES[0]})",
              f"large object (×{FIGURE_SCALES[1]})")
    return titles, np.concatenate([small, small, large]), ("background", "object", "object")


def panel_units(net, images, kinds):
    """The unit (y, x) of the last stacked layer for each panel: (3, 2) integers."""
    stride = net.deform_layers_input_stride
    map_size = tuple(n // stride for n in images.shape[2:])
    chosen = {"background": background_units(images, stride, map_size),
              "object": object_units(images, stride, map_size)}
    return np.stack([chosen[kind][b] for b, kind in enumerate(kinds)])


def draw_sampling_points(axes, net, images, kinds, device):
    """Draw, on one row of axes, each panel's digit, its unit (green cross) and the 9, 81 and 729
    points (navy, orange, red; darker where several coincide) that the unit reads through the
    third, second and first layer of `net`, in image pixels. Returns the points per panel, first
    layer first."""
    units = panel_units(net, images, kinds)
    traces = unit_traces(net, images, units, device)
    for ax, image, unit, (levels, _) in zip(axes, images, units, traces):
        draw_unit_points(ax, image[0], levels, feature_to_image(unit, net.deform_layers_input_stride))
    return [levels for levels, _ in traces]


def draw_unit_points(ax, image, levels, centre):
    """One panel: the image (H, W), the unit at `centre` (green cross) and its points, `levels`
    first layer first (red 729, orange 81, navy 9, drawn in the reverse order)."""
    ax.imshow(image, cmap="gray_r", vmin=0, vmax=1)
    for level, style in LEVEL_STYLES:
        ax.scatter(levels[level - 1][:, 1], levels[level - 1][:, 0], linewidths=0, **style)
    ax.scatter([centre[1]], [centre[0]], s=80, c="limegreen", marker="+", linewidths=2)
    ax.set_xlim(-0.5, image.shape[-1] - 0.5)
    ax.set_ylim(image.shape[-2] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def add_points_legend(figure, ax, labels=LEGEND):
    """A legend under the figure naming the unit and its three levels of points, as `ax` (a panel
    of `draw_unit_points`) draws them."""
    points = ax.collections  # the three levels' scatters, then the unit's cross
    legend = figure.legend([points[-1], *points[:-1]], labels, loc="outside lower center", ncols=4, fontsize=8,
                           markerscale=1.5)
    for handle in legend.legend_handles:
        handle.set_alpha(1)  # the faint red of 729 overlapping points would be invisible alone


def plot_sampling_locations(nets, digits, device, path):
    """Write the figure for the nets `nets` ({name: MnistNet}): one row per net
    (`draw_sampling_points`), three panels (`figure_panels`) per row."""
    titles, images, kinds = figure_panels(digits)
    figure = Figure(figsize=(2.6 * len(images), 2.7 * len(nets)), layout="constrained")
    axes = figure.subplots(len(nets), len(images), squeeze=False)
    for row, (name, net) in enumerate(nets.items()):
        draw_sampling_points(axes[row], net, images, kinds, device)
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    add_points_legend(figure, axes[0, 0])
    figure.suptitle("Sampling points of three stacked 3×3 layers (9, 81 and 729) for one unit")
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
