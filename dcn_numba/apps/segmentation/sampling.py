"""Where a trained segmentation net's res5 reads the canvas: the paper's sampling-locations figure
(Dai et al. 2017, Fig. 5) on digit canvases, and the spread of those locations per digit size.

A unit of res5c reads 9 points of res5b's output, each of which reads 9 of res5a's output, each of
which reads 9 of res5a's input: 9, 81 and 729 points (`ops.locations.trace_back_levels`), drawn
in canvas pixels (`ops.locations.feature_to_image`, stride 4). A regular net reads a fixed grid,
a dilated one a wider fixed grid, a deformable one wherever its offsets send each point.

Units: a digit's unit is the cell nearest to the centre of its labelled pixels; a background unit
is a cell with no digit pixel within one cell of its own 4×4 block of pixels, the one nearest to
the canvas centre. Only units at least MARGIN cells from the map's border are measured:
`trace_back_levels` rounds each intermediate point to a cell and clips it into the map, which
shrinks a grid that reaches past the border. res5b's and res5c's taps reach 1 cell each (2 in
all, at dilation 1), so a regular net's 729 points are never clipped from these units; a
deformable net's may still be, where its offsets point outside.

Spread: the root-mean-square distance of the 729 points from their centre (`ops.locations.spread`),
in canvas pixels, 8 px for a regular net at stride 4, measured for every digit of the test
canvases with an interior unit and averaged within bins of digit height (its ink box's height).
"""

import numpy as np
from matplotlib.figure import Figure

from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.ops.locations import feature_to_image, level_points, spread, trace_back_levels
from dcn_numba.apps.mnist.viz import add_points_legend, draw_unit_points
from dcn_numba.apps.segmentation.data import BACKGROUND

MARGIN = 2
SIZE_BINS = (14, 20, 28, 40, 57)  # digit heights, pixels: bins [14, 20), [20, 28), [28, 40), [40, 57)
# The names of the unit and its three levels of points in the figure's legend.
LEGEND = ("the unit", "res5c's 9 points", "res5b's 81", "res5a's 729")


def res5_locations(net, images, batch_size=50):
    """The sampling locations of res5a, res5b and res5c on images (N, 1, H, W): a list, first
    layer first, of (N, 1, 9, H/4, W/4, 2) arrays of (y, x) in each layer's input cells."""
    net.eval()
    batches = []
    with no_grad():
        for start in range(0, len(images), batch_size):
            net(Tensor(images[start:start + batch_size]))
            batches.append([conv.sampling_locations() for _, conv, _ in net.res5()])
    return [np.concatenate(layer) for layer in zip(*batches)]


def unit_points(locations, b, unit, stride):
    """The points of unit (y, x) of res5c on image b, per level, first layer first (729, 81, 9
    points), in canvas pixels."""
    levels = trace_back_levels(locations, b, int(unit[0]), int(unit[1]))
    return [feature_to_image(points, stride) for points in level_points(locations, levels, b)]


def interior(unit, map_size):
    """Whether cell (y, x) lies at least MARGIN cells from every border of the map."""
    return all(MARGIN <= u < n - MARGIN for u, n in zip(unit, map_size))


def digit_units(labels, boxes, digit_labels, stride):
    """For each digit of one canvas (labels (H, W), its boxes and classes): the cell (y, x)
    nearest to the centre of the pixels labelled with its class inside its box, and its height;
    a digit whose pixels all lie under another digit is left out."""
    units = []
    for (x1, y1, x2, y2), digit in zip(np.asarray(boxes, dtype=int), digit_labels):
        rows, columns = np.nonzero(labels[y1:y2, x1:x2] == digit)
        if len(rows):
            centre = np.array([y1 + rows.mean(), x1 + columns.mean()])
            units.append((np.rint((centre - (stride - 1) / 2) / stride).astype(int), y2 - y1))
    return units


def background_unit(labels, stride):
    """The background unit of one canvas (module docstring), or None when no interior cell is
    free of digits."""
    map_size = (labels.shape[0] // stride, labels.shape[1] // stride)
    digit = labels != BACKGROUND
    best, best_distance = None, np.inf
    centre = (np.array(map_size) - 1) / 2
    for i in range(MARGIN, map_size[0] - MARGIN):
        for j in range(MARGIN, map_size[1] - MARGIN):
            near = digit[max(0, (i - 1) * stride):(i + 2) * stride, max(0, (j - 1) * stride):(j + 2) * stride]
            distance = np.hypot(i - centre[0], j - centre[1])
            if not near.any() and distance < best_distance:
                best, best_distance = np.array([i, j]), distance
    return best


def spread_by_size(net, canvases):
    """The mean spread of the 729 points of the interior digit units in each SIZE_BINS bin, and
    of the canvases' interior background units, with how many units each mean holds:
    {"bins": [[low, high], ...], "object": [...], "object_units": [...], "background": float,
    "background_units": int}. A bin without units has spread None."""
    stride = net.stride
    locations = res5_locations(net, canvases.images)
    map_size = locations[0].shape[3:5]
    by_bin = [[] for _ in SIZE_BINS[:-1]]
    background = []
    for b, labels in enumerate(canvases.labels):
        for unit, height in digit_units(labels, canvases.boxes[b], canvases.digit_labels[b], stride):
            bin_index = np.searchsorted(SIZE_BINS, height, side="right") - 1
            if interior(unit, map_size) and 0 <= bin_index < len(by_bin):
                by_bin[bin_index].append(spread(unit_points(locations, b, unit, stride)[0]))
        unit = background_unit(labels, stride)
        if unit is not None:
            background.append(spread(unit_points(locations, b, unit, stride)[0]))
    return dict(bins=[[low, high] for low, high in zip(SIZE_BINS[:-1], SIZE_BINS[1:])],
                object=[float(np.mean(s)) if s else None for s in by_bin],
                object_units=[len(s) for s in by_bin],
                background=float(np.mean(background)) if background else None,
                background_units=len(background))


def figure_panels(canvases, stride):
    """The figure's three panels: the smallest and the largest digit of the canvases with an
    interior unit, and the background unit of the small digit's canvas (of the large one's when
    the small one's has none). Returns (titles, canvas index per panel, unit per panel)."""
    size = canvases.labels.shape[1:]
    map_size = (size[0] // stride, size[1] // stride)
    digits = [(height, b, tuple(unit)) for b, labels in enumerate(canvases.labels)
              for unit, height in digit_units(labels, canvases.boxes[b], canvases.digit_labels[b], stride)
              if interior(unit, map_size)]
    if not digits:
        raise ValueError("figure_panels: no digit of these canvases has a unit away from the border")
    small, large = min(digits), max(digits)
    for height, b, _ in (small, large):
        background = background_unit(canvases.labels[b], stride)
        if background is not None:
            break
    if background is None:
        raise ValueError("figure_panels: neither panel's canvas has a background unit away from the digits")
    titles = (f"background (canvas {b})", f"small digit ({small[0]} px)", f"large digit ({large[0]} px)")
    return titles, [b, small[1], large[1]], [background, np.array(small[2]), np.array(large[2])]


def sampling_figure(nets, canvases, figure=None):
    """The figure for `nets` ({name: SegNet}): one row per net, one panel per unit of
    `figure_panels`, each with its canvas, its unit (green cross) and the 9, 81 and 729 points
    (navy, orange, red) it reads, and the spread of the 729; a legend names them. Drawn into
    `figure` (an empty one, such as pyplot's in a notebook), or into a new Figure drawn without a
    display when None."""
    stride = next(iter(nets.values())).stride
    titles, indices, units = figure_panels(canvases, stride)
    images = canvases.images[indices]
    size = (2.8 * len(units), 2.9 * len(nets))
    if figure is None:
        figure = Figure(figsize=size, layout="constrained")
    else:
        figure.set_size_inches(*size)
        figure.set_layout_engine("constrained")
    axes = figure.subplots(len(nets), len(units), squeeze=False)
    for row, (name, net) in enumerate(nets.items()):
        locations = res5_locations(net, images)
        for b, (ax, unit) in enumerate(zip(axes[row], units)):
            levels = unit_points(locations, b, unit, stride)
            draw_unit_points(ax, images[b, 0], levels, feature_to_image(unit, stride))
            ax.text(1, 3, f"spread {spread(levels[0]):.1f} px", fontsize=7, color="navy")
        axes[row, 0].set_ylabel(name, fontsize=9)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    add_points_legend(figure, axes[0, 0], LEGEND)
    figure.suptitle("Sampling points of res5c, res5b and res5a (9, 81 and 729) for one unit")
    return figure
