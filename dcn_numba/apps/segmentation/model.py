"""A DeepLab-style fully convolutional net for digit canvases, with the paper's res5 variants.

    conv 3×3 (1 → C1) · BN · ReLU · max-pool 2        64×64 → 32×32
    conv 3×3 (C1 → C2) · BN · ReLU · max-pool 2       → 16×16: stride 4
    res5a, res5b, res5c: conv 3×3 (→ W) · BN · ReLU    at 16×16, the map size kept
    classifier: conv 1×1 (W → CLASSES)                 class scores at stride 4
    bilinear upsampling ×4 (`engine.upsample`)         (B, CLASSES, 64, 64) logits, one per pixel

The paper (Dai et al. 2017, Table 1) makes the last 1, 2 or 3 of the 3×3 convolutions of res5
deformable, and compares them with atrous (dilated) convolution of dilation 2, 4, 6 and 8 in the
same layers. Here `deformable_layers` = k makes the last k of res5a/b/c deformable convolutions
(res5c alone for k = 1), and `dilation` = d makes all three ordinary convolutions of dilation d
(padding d keeps the 16×16 map; at d = 6 the outer taps of a border unit read padding only, and
d = 8 would read past the whole map from half the units, so the table stops at 6).

With one seed, every variant draws the same weights in the same order (a deformable layer's
offset branch starts at zero and draws nothing), so the variants of a seed start from the same
function and differ in what they learn. `width` widens res5 (and the classifier reads it): the
width-matched control is a regular net widened until it has as many parameters as the
three-layer deformable one (`width_matched`).
"""

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.nn import BatchNorm2d, Conv2d, DeformConv2d, MaxPool2d, Module
from dcn_numba.engine.upsample import upsample_bilinear
from dcn_numba.apps.segmentation.data import CLASSES

RES5 = ("res5a", "res5b", "res5c")


class SegNet(Module):
    """forward(images (B, 1, H, W)) → per-pixel logits (B, CLASSES, H, W), for H and W multiples
    of the stride 4 (module docstring)."""

    stride = 4

    def __init__(self, deformable_layers=0, dilation=1, seed=0, channels=(16, 32), width=None):
        if deformable_layers not in (0, 1, 2, 3):
            raise ValueError(f"SegNet: deformable_layers must be 0, 1, 2 or 3, got {deformable_layers!r}")
        if deformable_layers and dilation != 1:
            raise ValueError(f"SegNet: dilation must be 1 in a deformable net, got {dilation!r}")
        rng = np.random.default_rng(seed)
        first, second = channels
        width = second if width is None else width
        self.deformable_layers, self.dilation = deformable_layers, dilation
        self.conv1 = Conv2d(1, first, 3, padding=1, bias=False, rng=rng)
        self.bn1 = BatchNorm2d(first)
        self.conv2 = Conv2d(first, second, 3, padding=1, bias=False, rng=rng)
        self.bn2 = BatchNorm2d(second)
        self.pool = MaxPool2d(2)
        for index, name in enumerate(RES5):
            in_channels = second if index == 0 else width
            deformable = index >= len(RES5) - deformable_layers
            geometry = dict(padding=dilation, dilation=dilation, bias=False, rng=rng)
            layer = DeformConv2d if deformable else Conv2d
            setattr(self, name, layer(in_channels, width, 3, **geometry))
            setattr(self, f"bn_{name}", BatchNorm2d(width))
        self.classifier = Conv2d(width, CLASSES, 1, rng=rng)

    def res5(self):
        """The three layers of res5, in order: (name, convolution, BatchNorm)."""
        return [(name, getattr(self, name), getattr(self, f"bn_{name}")) for name in RES5]

    def backbone(self, images):
        """images (B, 1, H, W) → the input of res5a, (B, C2, H/4, W/4)."""
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[2] % 4 or images.shape[3] % 4:
            raise ValueError(f"SegNet: images must be (B, 1, H, W) with H and W multiples of "
                             f"{self.stride}, got shape {tuple(images.shape)}")
        x = self.pool(F.relu(self.bn1(self.conv1(images))))
        return self.pool(F.relu(self.bn2(self.conv2(x))))

    def forward(self, images):
        x = self.backbone(images)
        for _, conv, norm in self.res5():
            x = F.relu(norm(conv(x)))
        return upsample_bilinear(self.classifier(x), images.shape[2:])


def pixel_cross_entropy(logits, labels):
    """L = −(1/N) Σ_pixels log softmax(logits)[label] over the N pixels: logits (B, C, H, W) a
    Tensor, labels (B, H, W) integers. The log-softmax runs along the class axis in place (no
    transpose of the scores), and the one-hot mask of the labels picks each pixel's term."""
    labels = np.asarray(labels)
    classes = logits.shape[1]
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"pixel_cross_entropy: labels have shape {labels.shape}, expected one per "
                         f"pixel of logits {tuple(logits.shape)}: {(logits.shape[0], *logits.shape[2:])}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"pixel_cross_entropy: labels must lie in [0, {classes}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    one_hot = (np.arange(classes)[None, :, None, None] == labels[:, None]).astype(logits.dtype)
    return (F.log_softmax(logits, axis=1) * Tensor(one_hot)).sum() * (-1.0 / labels.size)


def width_matched(target_parameters, channels=(16, 32)):
    """The res5 width of a regular SegNet whose parameter count is nearest to target_parameters
    (the smaller width on a tie)."""
    def count(width):
        return SegNet(channels=channels, width=width).num_parameters()

    width = channels[1]
    while count(width + 1) <= target_parameters:
        width += 1
    above = width + 1
    return above if abs(count(above) - target_parameters) < abs(count(width) - target_parameters) else width
