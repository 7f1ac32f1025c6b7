"""Small models to train and to look inside: an MNIST CNN with or without deformable layers, and a
RoI classifier over digits placed on a larger canvas."""

import numpy as np

from . import functional as F
from .nn import (BatchNorm2d, Conv2d, DeformConv2d, DeformPSRoIPool, DeformRoIPool, Linear,
                 MaxPool2d, Module)


def conv3x3(in_channels, out_channels, deformable, modulated, rng):
    """A 3×3, padding-1 convolution without bias (a BatchNorm follows): deformable or not."""
    if deformable:
        return DeformConv2d(in_channels, out_channels, 3, padding=1, bias=False,
                            modulated=modulated, rng=rng)
    return Conv2d(in_channels, out_channels, 3, padding=1, bias=False, rng=rng)


class MnistNet(Module):
    """An MNIST CNN whose last three 3×3 convolutions are deformable in the deformable variant.

        conv 3×3 (1 → C1) · BN · ReLU · max-pool 2×2           28×28 → 14×14
        3 × [conv 3×3 (→ C2) · BN · ReLU]                      the `deform_layers`, at 14×14
        adaptive average pool to 7×7 · linear (C2·7·7 → 10)   2×2 average pooling at 28×28

    The two variants share this definition and differ only by the offset (and, if modulated,
    mask) branches of the three `deform_layers`, which are consecutive, so that a sampling point
    of the last one can be traced back through all three (`locations.trace_back`); they work on
    a map of stride `deform_layers_input_stride` = 2 input pixels. Input (B, 1, H, W), any size
    at least 2×2 (28×28 for MNIST); output (B, 10) logits. The linear head reads a 7×7 map rather
    than a global average, which makes the few-epoch training of the toy experiment converge
    faster. With the same seed both variants draw the same weights, and since the offset branches
    start at zero, the deformable variant starts out computing exactly what the regular one does.
    """

    deform_layers_input_stride = 2
    head_size = 7

    def __init__(self, deformable=False, modulated=False, seed=0, channels=(16, 32), classes=10):
        rng = np.random.default_rng(seed)
        first, width = channels
        self.deformable, self.modulated = deformable, modulated
        self.stem = Conv2d(1, first, 3, padding=1, bias=False, rng=rng)
        self.stem_norm = BatchNorm2d(first)
        self.pool = MaxPool2d(2)
        self.deform_layers = [conv3x3(c, width, deformable, modulated, rng)
                              for c in (first, width, width)]
        self.norms = [BatchNorm2d(width) for _ in self.deform_layers]
        self.classifier = Linear(width * self.head_size ** 2, classes, rng=rng)

    def forward(self, images):
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"MnistNet: images must be (B, 1, H, W), got shape {tuple(images.shape)}")
        x = self.pool(F.relu(self.stem_norm(self.stem(images))))
        for conv, norm in zip(self.deform_layers, self.norms):
            x = F.relu(norm(conv(x)))
        return self.classifier(F.flatten(F.adaptive_avg_pool2d(x, self.head_size)))


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
