"""Layers: Modules that hold parameters and call `dcn_numba.engine.functional`.

A Module's parameters are its attributes that are Tensors requiring a gradient, found by walking
its attributes (sub-Modules and lists of Modules included), so a layer declares a parameter by
assigning it. Buffers, arrays that are saved but not trained (BatchNorm's running statistics),
are the attributes a class names in `buffer_names`. Parameters are created float32 on the CPU;
`Module.to(device, dtype)` moves and converts them, and the model then follows its data.
"""

import math
import os
import uuid

import numpy as np

from dcn_numba.engine import functional as F
from dcn_numba.runtime.arrays import array_module, is_cupy, to_device
from dcn_numba.ops.checks import FLOAT_DTYPES, as_int, as_pair
from dcn_numba.engine.autograd import Tensor
from dcn_numba.engine.optim import set_lr_multiplier
from dcn_numba.ops.locations import sampling_locations
from dcn_numba.engine.windows import SlidingWindows


class Module:
    """Base class of layers and models: parameters, buffers, train/eval mode, state dicts."""

    training = True
    buffer_names = ()

    def __call__(self, x, *args, **kwargs):
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a dcn_numba Tensor, got "
                            f"{type(x).__module__}.{type(x).__name__} (wrap an array as Tensor(array))")
        if x.ndim == 4 and x.shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: input has shape {tuple(x.shape)}, a batch of 0 "
                             "images; expected at least one")
        return self.forward(x, *args, **kwargs)

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                yield from ((f"{name}.{i}", v) for i, v in enumerate(value) if isinstance(v, Module))

    def modules(self):
        """This module and every module inside it, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self):
        return [parameter for _, parameter in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name in self.buffer_names:
            yield prefix + name, getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def num_parameters(self):
        """The number of trainable values."""
        return sum(parameter.size for parameter in self.parameters())

    def train(self, mode=True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for parameter in self.parameters():
            parameter.grad = None

    def to(self, device=None, dtype=None):
        """Move every parameter and buffer to `device` ("cpu" or "cuda") and/or cast it to `dtype`
        (float32 or float64, the dtypes of the kernels)."""
        if dtype is not None and np.dtype(dtype) not in FLOAT_DTYPES:
            raise TypeError(f"Module.to: dtype must be float32 or float64, got {np.dtype(dtype)}")
        def convert(array):
            array = array if device is None else to_device(array, device)
            return array if dtype is None else array.astype(dtype, copy=False)

        for parameter in self.parameters():
            parameter.data, parameter.grad = convert(parameter.data), None
        for module in self.modules():
            for name in module.buffer_names:
                setattr(module, name, convert(getattr(module, name)))
        return self

    def state_dict(self):
        """{name: copy of the array} for every parameter and buffer, e.g. 'layers.0.weight'."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update((name, array.copy()) for name, array in self.named_buffers())
        return state

    def load_state_dict(self, state):
        """Copy the arrays of `state` into this module's parameters and buffers (same names and
        shapes; values are moved to each parameter's device and dtype)."""
        targets = dict(self.named_parameters())
        targets.update(self.named_buffers())
        missing, unexpected = set(targets) - set(state), set(state) - set(targets)
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {sorted(missing)}, "
                           f"unexpected keys {sorted(unexpected)}")
        for name, target in targets.items():
            current = target.data if isinstance(target, Tensor) else target
            if tuple(state[name].shape) != tuple(current.shape):
                raise ValueError(f"load_state_dict: {name} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(current.shape)}")
            current[...] = to_device(state[name], "cuda" if is_cupy(current) else "cpu")

    def save(self, path):
        """Write the state dict to an .npz file (as NumPy arrays; ".npz" is appended to a path
        without it, as np.savez does), atomically: to a temporary name beside it, then renamed
        onto it, so that a kill leaves the old file or the whole new one, never a part."""
        path = os.fspath(path) + ("" if os.fspath(path).endswith(".npz") else ".npz")
        folder, name = os.path.split(path)
        temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
        file = open(temporary, "xb")
        try:
            with file:
                np.savez(file, **{name: to_device(a, "cpu") for name, a in self.state_dict().items()})
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:  # an error, or Ctrl-C, even one that lands just after the rename
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def load(self, path):
        """Load a state dict written by `save`."""
        with np.load(path) as stored:
            self.load_state_dict({name: stored[name] for name in stored.files})
        return self


def check_channel_groups(layer, in_channels, out_channels, groups, offset_groups=1):
    """groups divides in_channels and out_channels, offset_groups divides in_channels, all positive."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("groups", groups), ("offset_groups", offset_groups)):
        as_int(value, f"{layer}: {name}", 1)
    for name, count in (("in_channels", in_channels), ("out_channels", out_channels)):
        if count % groups:
            raise ValueError(f"{layer}: groups = {groups} must divide {name} = {count}")
    if in_channels % offset_groups:
        raise ValueError(f"{layer}: offset_groups = {offset_groups} must divide in_channels = {in_channels}")


def uniform(rng, shape, fan_in):
    """He (Kaiming) uniform initialisation for layers followed by a ReLU: U(±sqrt(6 / fan_in))."""
    bound = math.sqrt(6.0 / fan_in)
    return Tensor(rng.uniform(-bound, bound, shape).astype(np.float32), requires_grad=True)


def zeros(shape):
    return Tensor(np.zeros(shape, dtype=np.float32), requires_grad=True)


class Sequential(Module):
    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)


class Linear(Module):
    """out = x @ weightᵀ + bias, weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        rng = rng or np.random.default_rng()
        self.weight = uniform(rng, (out_features, in_features), in_features)
        self.bias = zeros(out_features) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Conv2d(Module):
    """2-D convolution with weight (C_out, C_in/groups, kh, kw) and an optional bias (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, rng=None):
        rng = rng or np.random.default_rng()
        check_channel_groups("Conv2d", in_channels, out_channels, groups)
        self.kernel_size = as_pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        self.weight = uniform(rng, (out_channels, in_channels // groups, *self.kernel_size), fan_in)
        self.bias = zeros(out_channels) if bias else None
        self.last_input_shape = None

    def forward(self, x):
        self.last_input_shape = tuple(x.shape)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)

    def sampling_locations(self):
        """The regular grid p0 + p_k read by the latest forward, as a NumPy array
        (B, 1, kh·kw, H_out, W_out, 2) of (y, x) input coordinates: a deformable layer's
        `sampling_locations()` with zero offsets."""
        if self.last_input_shape is None:
            raise RuntimeError("Conv2d.sampling_locations() needs a forward pass first")
        B, _, H, W = self.last_input_shape
        windows = SlidingWindows("Conv2d", self.last_input_shape, self.kernel_size, self.stride,
                                   self.padding, self.dilation)
        K = self.kernel_size[0] * self.kernel_size[1]
        still = np.zeros((B, 2 * K, *windows.output_size))
        return sampling_locations(still, self.kernel_size, self.stride, self.padding, self.dilation)


class DeformConv2d(Module):
    """A deformable convolution and its offset branch (Dai et al. 2017, §2.1).

    The offset branch is an ordinary convolution over the same input with the same kernel size,
    stride, padding and dilation, giving 2·G_off·kh·kw channels: a (dy, dx) pair per tap, per
    output position and per offset group. It starts at zero, so that training starts from an
    ordinary convolution. With modulated=True (DCNv2) a mask branch of G_off·kh·kw channels,
    through a sigmoid, scales each sample; it starts at sigmoid(0) = 0.5. The branches learn at
    offset_lr_multiplier × the optimizer's rate (`optim.set_lr_multiplier`).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, offset_groups=1, bias=True, modulated=False, offset_lr_multiplier=1.0, rng=None):
        rng = rng or np.random.default_rng()
        check_channel_groups("DeformConv2d", in_channels, out_channels, groups, offset_groups)
        self.kernel_size = as_pair(kernel_size, "DeformConv2d: kernel_size", 1)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        K = self.kernel_size[0] * self.kernel_size[1]
        fan_in = in_channels // groups * K
        self.weight = uniform(rng, (out_channels, in_channels // groups, *self.kernel_size), fan_in)
        self.bias = zeros(out_channels) if bias else None
        self.offset_lr_multiplier = offset_lr_multiplier
        self.offset_conv = self.branch(in_channels, 2 * offset_groups * K)
        self.mask_conv = self.branch(in_channels, offset_groups * K) if modulated else None
        self.last_offset = None
        self.last_mask = None

    def branch(self, in_channels, out_channels):
        """A zero-initialised convolution with this layer's geometry and learning-rate multiplier."""
        conv = Conv2d(in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                      self.dilation)
        conv.weight.data[...] = 0
        set_lr_multiplier(conv.parameters(), self.offset_lr_multiplier)
        return conv

    def forward(self, x):
        offset = self.offset_conv(x)
        mask = None if self.mask_conv is None else F.sigmoid(self.mask_conv(x))
        self.last_offset = offset.data
        self.last_mask = None if mask is None else mask.data
        return F.deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                               self.dilation, mask)

    def sampling_locations(self):
        """p0 + p_k + Δp_k of the latest forward: a NumPy array (B, G_off, kh·kw, H_out, W_out, 2)
        of (y, x) input coordinates."""
        if self.last_offset is None:
            raise RuntimeError("DeformConv2d.sampling_locations() needs a forward pass first")
        return sampling_locations(self.last_offset, self.kernel_size, self.stride, self.padding,
                                  self.dilation)


class BatchNorm2d(Module):
    """Batch normalisation of (B, C, H, W) per channel, with a learned scale and shift."""

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        self.weight = Tensor(np.ones(num_features, dtype=np.float32), requires_grad=True)
        self.bias = zeros(num_features)
        self.running_mean = np.zeros(num_features, dtype=np.float32)
        self.running_var = np.ones(num_features, dtype=np.float32)
        self.momentum, self.eps = momentum, eps

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"BatchNorm2d: input must be (B, C, H, W), got shape {tuple(x.shape)}")
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, self.momentum, self.eps)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Flatten(Module):
    def forward(self, x):
        return F.flatten(x)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)


class Dropout(Module):
    """Inverted dropout in training mode, the identity in evaluation mode. Masks come from a
    generator of the data's array module, seeded once."""

    def __init__(self, p=0.5, seed=0):
        self.p, self.seed, self.generators = p, seed, {}

    def forward(self, x):
        xp = array_module(x.data)
        if xp not in self.generators:
            self.generators[xp] = xp.random.default_rng(self.seed)
        return F.dropout(x, self.p, self.training, self.generators[xp])


class DeformRoIPool(Module):
    """Deformable RoI pooling with its offset branch (Dai et al. 2017, §2.2).

    The RoIs are first pooled without offsets; fully connected layers turn that (N, C·PH·PW)
    vector into normalised offsets (N, 2, PH, PW), x first; the operator scales them by γ and by
    the RoI's size and pools again at the shifted bins. The last fc layer starts at zero, so
    training starts from RoIAlign. The branch learns at offset_lr_multiplier × the optimizer's
    rate (the paper's code trains its offset fc at 0.01).
    """

    def __init__(self, in_channels, output_size=7, spatial_scale=1.0, sampling_ratio=0,
                 gamma=0.1, hidden_channels=256, offset_lr_multiplier=1.0, rng=None):
        rng = rng or np.random.default_rng()
        self.output_size = as_pair(output_size, "DeformRoIPool: output_size", 1)
        self.spatial_scale, self.sampling_ratio, self.gamma = spatial_scale, sampling_ratio, gamma
        bins = self.output_size[0] * self.output_size[1]
        self.offset_fc = Sequential(
            Linear(in_channels * bins, hidden_channels, rng=rng), ReLU(),
            Linear(hidden_channels, hidden_channels, rng=rng), ReLU(),
            Linear(hidden_channels, 2 * bins, rng=rng))
        self.offset_fc[-1].weight.data[...] = 0
        set_lr_multiplier(self.offset_fc.parameters(), offset_lr_multiplier)
        self.last_offset = None

    def pool(self, x, rois, offset):
        return F.deform_roi_pool(x, rois, offset, self.output_size, self.spatial_scale,
                                 self.sampling_ratio, self.gamma)

    def forward(self, x, rois):
        """x (B, C, H, W), rois (N, 5) rows (batch_index, x1, y1, x2, y2) → (N, C, PH, PW)."""
        offset = self.offset_fc(F.flatten(self.pool(x, rois, None)))
        offset = offset.reshape(len(offset), 2, *self.output_size)
        self.last_offset = offset.data
        return self.pool(x, rois, offset)


class DeformPSRoIPool(Module):
    """Position-sensitive deformable RoI pooling with its offset branch, as in R-FCN (Dai et al.
    2017, §2.2).

    The input holds output_dim·group_size² score maps. The offset branch is a zero-initialised
    1×1 convolution into 2·num_offset_classes·P² maps, pooled position-sensitively without
    offsets (group_size = P) into the normalised offsets (N, 2·num_offset_classes, P, P), x first,
    that shift the bins of the main pooling. It reads the score maps themselves, or, given
    offset_in_channels, the features passed to forward as offset_input (as R-FCN does: the
    features under the score maps). It learns at offset_lr_multiplier × the optimizer's rate.
    """

    def __init__(self, in_channels, output_dim, pooled_size=7, group_size=None, spatial_scale=1.0,
                 sample_per_part=4, trans_std=0.1, num_offset_classes=1, offset_in_channels=None,
                 offset_lr_multiplier=1.0, rng=None):
        self.output_dim, self.pooled_size = output_dim, pooled_size
        self.group_size = pooled_size if group_size is None else group_size
        if in_channels != output_dim * self.group_size ** 2:
            raise ValueError(f"DeformPSRoIPool: in_channels = {in_channels}, expected output_dim·"
                             f"group_size² = {output_dim}·{self.group_size}² = "
                             f"{output_dim * self.group_size ** 2}")
        self.spatial_scale, self.sample_per_part, self.trans_std = spatial_scale, sample_per_part, trans_std
        self.trans_channels = 2 * num_offset_classes
        self.trans_conv = Conv2d(in_channels if offset_in_channels is None else offset_in_channels,
                                 self.trans_channels * pooled_size ** 2, 1, rng=rng)
        self.trans_conv.weight.data[...] = 0
        set_lr_multiplier(self.trans_conv.parameters(), offset_lr_multiplier)
        self.last_trans = None

    def forward(self, x, rois, offset_input=None):
        """x (B, output_dim·group_size², H, W), rois (N, 5), offset_input (B, offset_in_channels,
        H, W) when the branch reads features → (N, output_dim, P, P)."""
        P = self.pooled_size
        branch_input = x if offset_input is None else offset_input
        trans = F.deform_psroi_pool(
            self.trans_conv(branch_input), rois, None, self.spatial_scale, output_dim=self.trans_channels,
            group_size=P, pooled_size=P, part_size=P, sample_per_part=self.sample_per_part)
        self.last_trans = trans.data
        return F.deform_psroi_pool(
            x, rois, trans, self.spatial_scale, output_dim=self.output_dim,
            group_size=self.group_size, pooled_size=P, part_size=P,
            sample_per_part=self.sample_per_part, trans_std=self.trans_std)
