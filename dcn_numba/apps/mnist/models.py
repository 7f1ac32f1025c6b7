"""Small models to train and to look inside: an MNIST CNN with or without deformable layers, and a
RoI classifier over digits placed on a larger canvas."""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.engine.nn import (BatchNorm2d, Conv2d, DeformConv2d, DeformPSRoIPool, DeformRoIPool, Linear,
                                 MaxPool2d, Module)


def conv3x3(in_channels, out_channels, deformable, modulated, dilation, rng):
    """A 3×3 convolution without bias (a BatchNorm follows) that keeps the map size (padding =
    dilation): deformable or not."""
    geometry = dict(padding=dilation, dilation=dilation, bias=False, rng=rng)
    if deformable:
        return DeformConv2d(in_channels, out_channels, 3, modulated=modulated, **geometry)
    return Conv2d(in_channels, out_channels, 3, **geometry)


class MnistNet(Module):
    """An MNIST CNN whose last three 3×3 convolutions can be deformable, or dilated.

        conv 3×3 (1 → C1) · BN · ReLU · max-pool 2×2        48×48 → 24×24
        conv 3×3 (C1 → C2) · BN · ReLU · max-pool 2×2       24×24 → 12×12
        3 × [conv 3×3 (→ W) · BN · ReLU]                    the `deform_layers`, at 12×12
        head "grid":   adaptive average pool to 6×6 · linear (W·6·6 → 10)
        head "global": global average pool · linear (W → 10)

    (sizes for the 48×48 canvas of the scaled-digits experiment; any input of at least 4×4
    works). The `deform_layers` are three consecutive layers on a map of stride
    `deform_layers_input_stride` = 4 input pixels, as in the paper, where they sit in the last,
    coarsest stage; a sampling point of the last one can be traced back through all three
    (`locations.trace_back`). With `deformable`, the last `deformable_layers` of them (1, 2 or 3)
    are deformable convolutions (modulated ones, DCNv2, with `modulated`); the others, and all
    three of the regular net, are ordinary convolutions of dilation `dilation` (the atrous
    baseline for dilation > 1). With the same seed all variants draw the same weights, and since
    the offset branches start at zero, a deformable variant starts out computing exactly what the
    regular one does. Input (B, 1, H, W); output (B, 10) logits.

    The head decides how much the stacked layers' receptive field matters. The "grid" head's
    linear layer reads a 6×6 map of the whole canvas, so it can put together what units read at
    every position; the "global" head averages the map to one vector per image, as fully
    convolutional classifiers do, so each class score is built from what single units see.
    `width` W (default C2) widens the stacked layers, for a regular net with as many parameters
    as a deformable one.
    """

    deform_layers_input_stride = 4
    head_size = 6
    heads = ("grid", "global")

    def __init__(self, deformable=False, modulated=False, deformable_layers=3, dilation=1, seed=0,
                 channels=(16, 32), classes=10, head="grid", width=None):
        if deformable and deformable_layers not in (1, 2, 3):
            raise ValueError(f"MnistNet: deformable_layers must be 1, 2 or 3, got {deformable_layers!r}")
        if deformable and dilation != 1:
            raise ValueError(f"MnistNet: dilation must be 1 in a deformable net, got {dilation!r}")
        if head not in self.heads:
            raise ValueError(f"MnistNet: head must be one of {self.heads}, got {head!r}")
        rng = np.random.default_rng(seed)
        first, second = channels
        width = second if width is None else width
        self.deformable, self.modulated, self.head_kind = deformable, modulated, head
        self.stem = Conv2d(1, first, 3, padding=1, bias=False, rng=rng)
        self.stem_norm = BatchNorm2d(first)
        self.stem2 = Conv2d(first, second, 3, padding=1, bias=False, rng=rng)
        self.stem2_norm = BatchNorm2d(second)
        self.pool = MaxPool2d(2)
        is_deformable = [deformable and index >= 3 - deformable_layers for index in range(3)]
        self.deform_layers = [conv3x3(second if index == 0 else width, width, layer_is_deformable, modulated,
                                      dilation, rng)
                              for index, layer_is_deformable in enumerate(is_deformable)]
        self.norms = [BatchNorm2d(width) for _ in self.deform_layers]
        pooled_cells = self.head_size ** 2 if head == "grid" else 1
        self.classifier = Linear(width * pooled_cells, classes, rng=rng)

    def trunk(self, images):
        """The two stem stages: images (B, 1, H, W) → the input of the `deform_layers`."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"MnistNet: images must be (B, 1, H, W), got shape {tuple(images.shape)}")
        x = self.pool(F.relu(self.stem_norm(self.stem(images))))
        return self.pool(F.relu(self.stem2_norm(self.stem2(x))))

    def head(self, x):
        """The output of the `deform_layers` → (B, classes) logits."""
        pooled_size = self.head_size if self.head_kind == "grid" else 1
        return self.classifier(F.flatten(F.adaptive_avg_pool2d(x, pooled_size)))

    def forward(self, images):
        x = self.trunk(images)
        for conv, norm in zip(self.deform_layers, self.norms):
            x = F.relu(norm(conv(x)))
        return self.head(x)


class RoIClassifier(Module):
    """Classifies the digit inside each given box of a canvas.

        2 × [conv 3×3 · BN · ReLU · max-pool 2×2]            feature map of stride 4
        pooling="roi":   DeformRoIPool (P×P bins) · linear (C·P² → classes)
        pooling="psroi": 1×1 conv to classes·P² score maps · DeformPSRoIPool · mean over the P×P
                         bins (the R-FCN vote)

    forward(images (B, 1, H, W), rois (N, 5) rows (batch_index, x1, y1, x2, y2) in pixels)
    → (N, classes) logits.
    """

    feature_stride = 4

    def __init__(self, pooling="roi", seed=0, channels=(16, 32), pooled_size=3, classes=10,
                 hidden_channels=64):
        if pooling not in ("roi", "psroi"):
            raise ValueError(f"RoIClassifier: pooling must be 'roi' or 'psroi', got {pooling!r}")
        rng = np.random.default_rng(seed)
        self.pooling = pooling
        self.convs = [Conv2d(c_in, c_out, 3, padding=1, bias=False, rng=rng)
                      for c_in, c_out in zip((1,) + channels[:-1], channels)]
        self.norms = [BatchNorm2d(c) for c in channels]
        self.pool = MaxPool2d(2)
        scale = 1.0 / self.feature_stride
        if pooling == "roi":
            self.roi_pool = DeformRoIPool(channels[-1], pooled_size, scale, sampling_ratio=2,
                                          hidden_channels=hidden_channels, rng=rng)
            self.classifier = Linear(channels[-1] * pooled_size ** 2, classes, rng=rng)
        else:
            self.scores = Conv2d(channels[-1], classes * pooled_size ** 2, 1, rng=rng)
            self.roi_pool = DeformPSRoIPool(classes * pooled_size ** 2, classes, pooled_size,
                                            spatial_scale=scale, sample_per_part=2, rng=rng)

    def forward(self, images, rois):
        x = images
        for conv, norm in zip(self.convs, self.norms):
            x = self.pool(F.relu(norm(conv(x))))
        if self.pooling == "roi":
            return self.classifier(F.flatten(self.roi_pool(x, rois)))
        return self.roi_pool(self.scores(x), rois).mean(axis=(2, 3))
