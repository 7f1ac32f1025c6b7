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
# # 6. The autograd engine
#
# Notebooks 2 to 5 wrote each operator's forward and backward pass by hand. To train a network,
# something must call those passes in the right order and hand each one the gradient it needs.
# dcn_numba's answer is a small reverse-mode autograd engine, `dcn_numba.autograd`, short enough to
# read in one sitting. This notebook uses it.
#
# **What you will learn**
#
# * a `Tensor` records the `Function` that made it, so a forward pass builds a graph;
# * `backward()` visits that graph in reverse topological order, calling each Function's
#   backward, a vector-Jacobian product;
# * how to write a Function and check it with finite differences;
# * how the deformable layer chains the hand-written `deform_conv2d_backward` with the ordinary
#   convolution that computes its offsets, and a check of the whole chain;
# * a deformable layer trained by this engine, learning where to look.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

from dcn_numba import functional as F
from dcn_numba import models, nn, optim
from dcn_numba.autograd import Function, Tensor, no_grad
from dcn_numba.data import Affine, affine_transform, load_mnist
from dcn_numba.gradcheck import assert_close, check_gradients

rng = np.random.default_rng(0)

# %% [markdown]
# ## Tensors remember where they came from
#
# A `Tensor` wraps a NumPy (or CuPy) array. Operations on Tensors are `Function`s: each computes
# its result from plain arrays and keeps what its backward pass will need. A result that depends
# on a Tensor with `requires_grad=True` records its `creator`, and `backward()` fills the `.grad`
# of every such leaf:

# %%
a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
loss = (a * a).sum()
loss.backward()
print("L =", loss.item(), "  ∂L/∂a =", a.grad, "  (= 2a)")
print("loss was made by", type(loss.creator).__name__, "from a tensor made by",
      type(loss.creator.inputs[0].creator).__name__)

# %% [markdown]
# `backward()` is a topological sort followed by one loop: starting from ∂L/∂L = 1, it visits each
# tensor after every tensor that uses it, so that the gradient of a tensor used twice is complete
# (summed over both uses) before it is passed on to its creator's inputs. Each Function's backward
# turns ∂L/∂output into ∂L/∂input for every input, a *vector-Jacobian product*: the Jacobian itself
# is never formed.
#
# ## Writing a Function
#
# A Function is a class with `forward(self, *arrays, **params)` and `backward(self, grad_output)`,
# the latter returning one gradient per positional input. `self.xp` is the array module of the
# inputs, so the same code runs on NumPy and CuPy. Here is softplus, log(1 + eˣ), whose derivative
# is the sigmoid, and the check every Function deserves: finite differences of
# L = Σ grad_output · f(x), which is exactly what `backward` claims to compute.

# %%
class Softplus(Function):
    """out = log(1 + e^x); ∂L/∂x = ∂L/∂out · σ(x), σ(x) = 1 / (1 + e^−x)."""

    def forward(self, x):
        self.x = x
        return self.xp.logaddexp(0, x)

    def backward(self, grad_output):
        return (grad_output / (1 + self.xp.exp(-self.x)),)


x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
grad_output = rng.standard_normal((3, 4))
Softplus.apply(x).backward(grad_output)
check_gradients(lambda x: Softplus.apply(Tensor(x)).data, {"x": x.data}, grad_output, {"x": x.grad})
print("Softplus.backward matches finite differences")

# %% [markdown]
# ## The deformable Function: a wrapper around the hand-written passes
#
# The deformable operators enter the engine the same way. Their Functions are a few lines each,
# because all the work is in `deform_conv2d` and `deform_conv2d_backward` (notebooks 2 and 3); the
# backward returns its five gradients in the order of the forward's inputs:

# %%
print(inspect.getsource(F.DeformConv2d))

# %% [markdown]
# The *layer*, `nn.DeformConv2d`, adds the offset branch of notebook 2: an ordinary, zero-initialised
# convolution over the same input computes the offsets, and its output is an input of the
# deformable Function. Build a small graph with it, a 1 × 1 deformable layer and the squared error
# against target images (we will train this very loss below), and draw every Function in it:

# %%
mnist = load_mnist()
images = Tensor(mnist.train.images[:32])
shift = np.array([1.5, -2.0])  # (y, x): the targets are the digits moved down and to the left
B = len(images)
moved = Tensor(affine_transform(images.data, Affine(np.ones(B), np.zeros(B), np.tile(shift, (B, 1)),
                                                    np.full((B, 2), 13.5))))
layer = nn.DeformConv2d(1, 1, 1, bias=False, rng=rng)
loss = ((layer(images) - moved) ** 2).mean()

names = {id(p): name for name, p in layer.named_parameters()}
names.update({id(images): "images"})


def draw_graph(axis, output, names):
    """The Functions that made `output`, in columns by depth along the middle row, each with the
    leaves it reads (parameters, data, constants) above and below it, half a column earlier."""
    depth, place, labels = {}, {}, {}

    def visit(tensor):
        if id(tensor) in depth:
            return depth[id(tensor)]
        inputs = [t for t in tensor.creator.inputs if t is not None]
        depth[id(tensor)] = 1 + max((visit(t) for t in inputs if t.creator is not None), default=0)
        labels[id(tensor)] = type(tensor.creator).__name__
        leaves = [t for t in inputs if t.creator is None]
        for slot, leaf in enumerate(leaves):
            place[id(leaf)] = (depth[id(tensor)] - 0.5, (slot // 2 + 1) * (1 if slot % 2 == 0 else -1))
            labels[id(leaf)] = names.get(id(leaf), "constant")
        edges.extend((id(t), id(tensor)) for t in inputs)
        return depth[id(tensor)]

    edges = []
    visit(output)
    place.update({key: (column, 0) for key, column in depth.items()})
    for start, end in edges:
        axis.annotate("", place[end], place[start],
                      arrowprops=dict(arrowstyle="->", color="0.6", shrinkA=14, shrinkB=14))
    for key, (column, row) in place.items():
        axis.text(column, row, labels[key], ha="center", va="center", fontsize=8,
                  bbox=dict(boxstyle="round", facecolor="white" if key in depth else "lightyellow",
                            edgecolor="tab:orange" if labels[key] == "DeformConv2d" else "0.5"))
    axis.set(xlim=(0.2, max(depth.values()) + 0.5), ylim=(-1.6, 1.6))
    axis.axis("off")


fig, axis = plt.subplots(figsize=(8, 3), layout="constrained")
draw_graph(axis, loss, names)
plt.show()

# %% [markdown]
# **Figure 1.** The graph that the forward pass of a deformable layer and a squared error built:
# along the middle, each Function that made a tensor, in the order they ran; above and below, in
# yellow, the leaves they read (parameters, data, constants); arrows from inputs to results. Look
# at the orange `DeformConv2d`: one of its inputs is the output of `Conv2d`, the offset branch,
# whose weights are parameters. The backward pass runs right to left, so the offset gradient
# returned by `deform_conv2d_backward` flows on into `Conv2d`'s backward and becomes the gradient
# of `offset_conv.weight` and `offset_conv.bias`. (The mean is a `Sum` times a constant. The target
# enters the `Add` as a constant: it is negated by a `Neg`, but nothing behind it needs a
# gradient, so the engine records no graph there.)

# %% [markdown]
# ## Checking the whole chain
#
# Each piece has been checked; the chain deserves a check of its own. Take a modulated 3 × 3 layer
# in float64, so that the mask branch (a `Conv2d` and a `Sigmoid`) joins in, and compare the
# gradients of all its parameters with finite differences along one random direction (the
# cheap check of `check_gradients(mode="random")`, notebook 3's helper). One detail from
# notebook 3: zero offsets put every sample on an integer coordinate, where there is no derivative,
# so the offset branch first gets small random weights.

# %%
probe = nn.DeformConv2d(2, 3, 3, padding=1, modulated=True, rng=rng).to(dtype=np.float64)
probe.offset_conv.weight.data[...] = rng.normal(0, 0.3, probe.offset_conv.weight.shape)
probe.mask_conv.weight.data[...] = rng.normal(0, 0.3, probe.mask_conv.weight.shape)
features = rng.standard_normal((2, 2, 6, 6))
grad_output = rng.standard_normal((2, 3, 6, 6))
parameters = dict(probe.named_parameters())


def probe_output(**values):
    """The layer's output with its parameters set to `values` (name → array)."""
    for name, value in values.items():
        parameters[name].data = value
    with no_grad():
        return probe(Tensor(features)).data


probe(Tensor(features)).backward(grad_output)
analytic = {name: parameter.grad for name, parameter in parameters.items()}
check_gradients(probe_output, {name: p.data.copy() for name, p in parameters.items()}, grad_output,
                analytic, mode="random", rtol=1e-6)
print("gradients of", ", ".join(parameters), "match finite differences")

# %% [markdown]
# ## Learning where to look
#
# Now train. The task is chosen so that we know the answer: the target is each digit moved 1.5
# pixels down and 2 pixels left, and the model is a single 1 × 1 deformable layer whose weight is
# fixed at 1, so it can only *resample* its input, out(p) = x(p + Δp). To reproduce the target it
# must learn Δp = (−1.5, +2): read up and to the right. The offsets come from the offset branch;
# its bias alone can hold a constant shift. Adam, 120 steps, through the engine:

# %%
layer = nn.DeformConv2d(1, 1, 1, bias=False, rng=rng)
layer.weight.data[...] = 1
optimizer = optim.Adam(layer.offset_conv.parameters(), lr=0.05)

history = []
for step in range(120):
    loss = ((layer(images) - moved) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history.append((loss.item(), *layer.offset_conv.bias.data))
history = np.array(history)
print(f"learned Δp = ({history[-1, 1]:+.2f}, {history[-1, 2]:+.2f}), expected (−1.50, +2.00); "
      f"loss {history[0, 0]:.4f} → {history[-1, 0]:.6f}")
assert_close(history[-1, 1:], -shift, atol=0.1, what="the learned offset")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8), layout="constrained")
left.semilogy(history[:, 0], color="k")
left.set(xlabel="step", ylabel="mean squared error")
for column, (name, colour) in enumerate((("Δy", "tab:blue"), ("Δx", "tab:orange")), start=1):
    right.plot(history[:, column], color=colour, label=f"{name} (offset branch bias)")
    right.axhline(-shift[column - 1], color=colour, ls="--", lw=0.8)
right.set(xlabel="step", ylabel="offset (pixels)")
right.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Figure 2.** Training a 1 × 1 deformable layer to reproduce digits moved by (1.5, −2) pixels.
# Left: the loss. Right: the two offsets the layer applies everywhere (the bias of its offset
# branch); the dashed lines are the answer, (−1.5, +2). Look at how both offsets, starting at 0,
# walk to the answer: the gradient that moved them was computed by `deform_conv2d_backward`
# (∂L/∂offset), passed through the offset branch's `Conv2d.backward`, and applied by Adam.

# %% [markdown]
# ## A whole model
#
# The same parts build the toy model of notebook 7, `models.MnistNet`: a convolution, then three
# 3 × 3 layers that are deformable in the deformable variant. At initialisation its offset
# branches are zero, so it computes exactly what the regular variant computes, but their weights
# already receive gradients:

# %%
net = models.MnistNet(deformable=True, seed=0)
labels = mnist.train.labels[:32]
loss = F.cross_entropy(net(images), labels)
loss.backward()
print(f"{net.num_parameters()} parameters; loss at initialisation {loss.item():.3f}")
for name, parameter in net.named_parameters():
    if "offset_conv.weight" in name:
        print(f"{name:32s} |weight| = {np.abs(parameter.data).max():.1f}, |∂L/∂weight| = "
              f"{np.abs(parameter.grad).max():.2e}")

# %% [markdown]
# Finally, the backend of the deformable Functions is a context, not a rewrite: the same model runs
# on the NumPy reference, the CPU kernels or (with CuPy arrays) the CUDA kernels.

# %%
net.eval()
with no_grad():
    on_kernels = net(images).data
    with F.backend("reference"):
        on_reference = net(images).data
assert_close(on_kernels, on_reference, rtol=1e-4, atol=1e-5, what="the model on two backends")
print("the model gives the same logits on the CPU kernels and on the NumPy reference")

# %% [markdown]
# ## Summary
#
# * A Tensor remembers its creator; `backward()` walks the graph in reverse topological order,
#   calling each Function's vector-Jacobian product and summing gradients over every use.
# * A Function is `forward` + `backward`; check every new one with `check_gradients`.
# * The deformable Functions are thin wrappers around the hand-written forward and backward
#   passes; the layer chains them with an ordinary convolution for the offsets (and a sigmoid for
#   v2's masks), so the offset gradient trains the offset branch.
# * Trained by this engine, a deformable layer learns where to read its input; a context switches
#   the backend of a whole model.
#
# Notebook 7 trains the toy MNIST model and looks at what its offsets learned.
