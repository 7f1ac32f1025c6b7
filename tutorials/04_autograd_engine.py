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
# # 4. The autograd engine
#
# Notebooks 2 and 3 wrote the deformable convolution's forward and backward pass by hand. To train a network,
# something must call those passes in the right order and hand each one the gradient it needs.
# dcn_numba's answer is a small reverse-mode autograd engine, `dcn_numba.engine.autograd`. This notebook
# first builds one like it in front of you, in a few dozen lines, then reads the package's and
# plugs notebook 3's hand-derived gradients into it.
#
# **What you will learn**
#
# * a `Tensor` records the `Function` that made it, so a forward pass builds a graph;
# * `backward()` is a topological sort and one reverse loop, calling each Function's backward, a
#   vector-Jacobian product, and summing the gradients of a tensor used twice;
# * why broadcasting needs `unbroadcast` in the backward pass;
# * how to write a Function and check it with finite differences, and notebook 3's gradients
#   wrapped into a Function that agrees with the package's;
# * how the deformable layer chains `deform_conv2d_backward` with the ordinary convolution that
#   computes its offsets, and a deformable layer trained by this engine, learning where to look.
#
# Two exercises: the topological order and `unbroadcast` (set `exercises.SOLUTIONS = True` in the
# next cell to use the worked solutions instead).

# %%
from dcn_numba.engine import functional as F
from dcn_numba.apps.mnist import models
from dcn_numba.engine import nn
from dcn_numba.engine import optim
from dcn_numba.engine.autograd import Function, Tensor, no_grad
from dcn_numba.data.mnist import Affine, affine_transform, load_mnist
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.kernels import bilinear

import inspect

import matplotlib.pyplot as plt
import numpy as np

import checks
import exercises
from exercises import check

exercise = exercises.exercises_of("04_autograd_engine")
rng = np.random.default_rng(0)

# %% [markdown]
# ## An engine from scratch
#
# Two classes are the whole idea. A **Function** is one operation: `forward` computes its result
# from plain arrays and keeps what the backward pass will need; `backward` turns ∂L/∂output, the
# gradient of a scalar loss L with respect to its output, into ∂L/∂input for each input. A
# **Tensor** wraps an array and remembers the Function that made it (its `creator`), so running
# the forward pass records a graph. Here are both, with three operations:

# %%
class MiniFunction:
    @classmethod
    def apply(cls, *inputs):
        function = cls()
        function.inputs = inputs
        output = MiniTensor(function.forward(*(t.data for t in inputs)))
        output.creator = function
        return output


class MiniTensor:
    def __init__(self, data):
        self.data, self.grad, self.creator = np.asarray(data, dtype=np.float64), None, None

    def __add__(self, other):
        return MiniAdd.apply(self, other)

    def __mul__(self, other):
        return MiniMul.apply(self, other)

    def sum(self):
        return MiniSum.apply(self)

    def backward(self):
        """∂self/∂leaf into leaf.grad: visit the graph from self back to the leaves, each tensor
        only after every tensor that uses it, so that its gradient is complete when passed on."""
        grads = {id(self): np.ones_like(self.data)}  # ∂L/∂L = 1
        for tensor in reversed(topological_order(self)):
            grad = grads.pop(id(tensor))
            if tensor.creator is None:
                tensor.grad = grad
                continue
            for parent, parent_grad in zip(tensor.creator.inputs, tensor.creator.backward(grad)):
                grads[id(parent)] = grads.get(id(parent), 0) + parent_grad  # summed over every use


class MiniAdd(MiniFunction):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, grad):
        return unbroadcast_mine(grad, self.shapes[0]), unbroadcast_mine(grad, self.shapes[1])


class MiniMul(MiniFunction):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, grad):
        return unbroadcast_mine(grad * self.b, self.a.shape), unbroadcast_mine(grad * self.a, self.b.shape)


class MiniSum(MiniFunction):
    def forward(self, a):
        self.shape = a.shape
        return a.sum()

    def backward(self, grad):
        return (np.broadcast_to(grad, self.shape),)


# %% [markdown]
# Two functions are missing, and they are yours.
#
# **Exercise 4.1, the topological order.** `backward` needs every tensor that leads to the loss,
# each listed *after* all of its inputs (the tensors its creator read), and each exactly once
# even when it is used twice. Write `topological_order(tensor)`: a depth-first walk from `tensor`
# through `creator.inputs` that appends a tensor once all its inputs have been appended. (Keep a
# set of the `id`s already visited.)

# %%
@exercise
def topological_order(tensor):
    """Every tensor that leads to `tensor` (itself included), each after all of its inputs."""
    raise NotImplementedError("Exercise 4.1: a depth-first walk through creator.inputs")


# %%
check(topological_order, checks.is_topological)

# %% [markdown]
# **Exercise 4.2, `unbroadcast`.** NumPy *broadcasts*: `a + b` with a of shape (3, 4) and b of
# shape (4,) adds b to every row, as if b had been repeated along a new leading axis; an axis of
# length 1, as in (1, 4) or (3, 1), is repeated the same way. Each repetition is another use of
# the same numbers, so the backward pass must sum the gradient over the repeated axes to get back
# to b's shape. Write `unbroadcast_mine(grad, shape)`: sum `grad` over its extra leading axes and
# over the axes where `shape` has length 1 (keeping them, with `keepdims=True`), and return an
# array of `shape`. The check compares it with the package's `dcn_numba.engine.autograd.unbroadcast`.

# %%
@exercise
def unbroadcast_mine(grad, shape):
    """Sum `grad` down to `shape`: the backward of broadcasting."""
    raise NotImplementedError("Exercise 4.2: sum over the leading axes and the axes of length 1")


# %%
check(unbroadcast_mine, checks.sums_like_the_package)

# %% [markdown]
# The engine is complete. Try it on a graph that broadcasts and reuses a tensor, and compare with
# the package's engine on the same computation:

# %%
values = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(4), "c": rng.standard_normal((3, 1))}
mine = {name: MiniTensor(value) for name, value in values.items()}
((mine["a"] * mine["b"] + mine["c"]) * mine["a"]).sum().backward()
package = {name: Tensor(value, requires_grad=True) for name, value in values.items()}
((package["a"] * package["b"] + package["c"]) * package["a"]).sum().backward()
for name in values:
    assert_close(mine[name].grad, package[name].grad, what=f"∂L/∂{name}, mini engine against the package's")
print("the mini engine and dcn_numba.engine.autograd give the same gradients for a (3, 4), b (4,), c (3, 1)")

# %% [markdown]
# ## The package's engine is the same engine
#
# `dcn_numba.engine.autograd` adds what a library needs around the same core: `requires_grad` (only
# tensors that lead to a parameter are recorded), `no_grad()` for evaluation, NumPy or CuPy
# arrays (`self.xp`), arithmetic with Python numbers, and more operations. Its `backward` is the
# loop you just read, and its topological sort walks the graph with a stack instead of recursion,
# so that a deep graph cannot overflow Python's call stack:

# %%
print(inspect.getsource(Tensor.backward))
print(inspect.getsource(Tensor._graph_in_topological_order))

# %% [markdown]
# A package `Tensor` used in arithmetic records its creator like ours; `backward()` fills the
# `.grad` of every leaf with `requires_grad=True`:

# %%
a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
loss = (a * a).sum()
loss.backward()
print("L =", loss.item(), "  ∂L/∂a =", a.grad, "  (= 2a)")
print("loss was made by", type(loss.creator).__name__, "from a tensor made by",
      type(loss.creator.inputs[0].creator).__name__)

# %% [markdown]
# ## Writing a Function
#
# A package Function is a class with `forward(self, *arrays, **params)` and
# `backward(self, grad_output)`, the latter returning one gradient per positional input.
# `self.xp` is the array module of the inputs, so the same code runs on NumPy and CuPy. Here is
# softplus, log(1 + eˣ), whose derivative is the sigmoid, and the check every Function deserves:
# finite differences of L = Σ grad_output · f(x), which is exactly what `backward` claims to
# compute.

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
# ## Notebook 3's gradients as a Function
#
# Notebook 3 derived the five gradients of a deformable convolution by hand. Wrapped into a
# Function, they become an operator the engine can train. The forward pass builds the samples S
# and their slopes ∂S/∂p with the package's scalar functions, as notebook 3 did, and keeps them;
# the backward pass is notebook 3's five steps, from gcol = weightᵀ · grad_out (no padding,
# stride or groups, to keep it short):

# %%
class ByHandDeformConv2d(Function):
    """out = bias + weight · (m · S), with the backward pass of notebook 3 (stride 1, no groups)."""

    def forward(self, x, offset, weight, bias, mask, padding):
        B, C_in, H, W = x.shape
        C_out, _, kh, kw = weight.shape
        K, H_out, W_out = kh * kw, offset.shape[2], offset.shape[3]
        tap_y, tap_x = np.divmod(np.arange(K), kw)
        delta = offset.reshape(B, K, 2, H_out, W_out)
        self.p_y = np.arange(H_out)[:, None] - padding + tap_y[:, None, None] + delta[:, :, 0]
        self.p_x = np.arange(W_out)[None, :] - padding + tap_x[:, None, None] + delta[:, :, 1]
        self.S = np.zeros((B, C_in, K, H_out, W_out))
        self.dS_dpy, self.dS_dpx = np.zeros_like(self.S), np.zeros_like(self.S)
        for b, c, k, i, j in np.ndindex(self.S.shape):
            y, x_ = self.p_y[b, k, i, j], self.p_x[b, k, i, j]
            self.S[b, c, k, i, j] = bilinear.dcn_sample(x[b, c].ravel(), 0, H, W, y, x_)
            self.dS_dpy[b, c, k, i, j], self.dS_dpx[b, c, k, i, j] = bilinear.dcn_sample_gradient(
                x[b, c].ravel(), 0, H, W, y, x_)
        self.m = mask[:, None]
        self.weight = weight.reshape(C_out, C_in, K)
        self.col = self.m * self.S
        return np.einsum("ock,bckij->boij", self.weight, self.col) + bias[None, :, None, None]

    def backward(self, grad_out):
        x, offset, weight, bias, mask = (t.data for t in self.inputs)
        H, W = x.shape[2:]
        grad_bias = grad_out.sum(axis=(0, 2, 3))                                          # step 1
        grad_weight = np.einsum("boij,bckij->ock", grad_out, self.col).reshape(weight.shape)
        gcol = np.einsum("ock,boij->bckij", self.weight, grad_out)                       # step 2
        grad_mask = (gcol * self.S).sum(axis=1)                                           # step 3
        grad_p = [(gcol * self.m * slope).sum(axis=1) for slope in (self.dS_dpy, self.dS_dpx)]
        grad_offset = np.stack(grad_p, axis=2).reshape(offset.shape)                      # step 4
        grad_input = np.zeros_like(x)                                                     # step 5
        for b, c, k, i, j in np.ndindex(self.S.shape):
            y, x_ = self.p_y[b, k, i, j], self.p_x[b, k, i, j]
            if not bilinear.dcn_is_valid(y, x_, H, W):
                continue
            l_y, l_x = bilinear.fractional_part(y), bilinear.fractional_part(x_)
            for corner in range(4):
                row, column = int(np.floor(y)) + corner // 2, int(np.floor(x_)) + corner % 2
                if 0 <= row < H and 0 <= column < W:
                    grad_input[b, c, row, column] += (self.m[b, 0, k, i, j] * gcol[b, c, k, i, j]
                                                      * bilinear.corner_weight(l_y, l_x, corner))
        return grad_input, grad_offset, grad_weight, grad_bias, grad_mask


# %% [markdown]
# Put it in a graph, a sigmoid on the mask and a squared loss after it, and run the same graph
# with the package's `F.deform_conv2d`: every leaf must receive the same gradient. The offsets
# keep a margin from integer coordinates, as in notebook 3.

# %%
shapes = dict(x=(1, 2, 5, 5), offset=(1, 18, 5, 5), weight=(3, 2, 3, 3), bias=(3,), mask_logits=(1, 9, 5, 5))
leaves = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
leaves["offset"] = rng.integers(-2, 2, shapes["offset"]) + rng.uniform(0.2, 0.8, shapes["offset"])
gradients = {}
for name, deform in (("by hand", lambda *t: ByHandDeformConv2d.apply(*t, padding=1)),
                     ("package", lambda x, o, w, b, m: F.deform_conv2d(x, o, w, b, padding=1, mask=m))):
    tensors = {key: Tensor(value, requires_grad=True) for key, value in leaves.items()}
    out = deform(tensors["x"], tensors["offset"], tensors["weight"], tensors["bias"],
                 F.sigmoid(tensors["mask_logits"]))
    (out * out).sum().backward()
    gradients[name] = {key: tensor.grad for key, tensor in tensors.items()}
for key in leaves:
    assert_close(gradients["by hand"][key], gradients["package"][key], what=f"∂L/∂{key}")
print("notebook 3's gradients, as a Function, give every leaf of this graph the gradient that the package's",
      "F.deform_conv2d gives it:", ", ".join(leaves))

# %% [markdown]
# ## The package's deformable Function
#
# The package's own Function is shorter still, because all the work is in the compiled
# `deform_conv2d` and `deform_conv2d_backward` (notebooks 2 and 3; notebook 5 compiles them for the GPU); the backward returns its five
# gradients in the order of the forward's inputs:

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
    boxes = {key: axis.text(column, row, labels[key], ha="center", va="center", fontsize=8,
                            bbox=dict(boxstyle="round", facecolor="white" if key in depth else "lightyellow",
                                      edgecolor="tab:orange" if labels[key] == "DeformConv2d" else "0.5"))
             for key, (column, row) in place.items()}
    # Each arrow is clipped to the boxes it joins, so that its head ends on the edge of the result's box.
    arrows = [(start, end, axis.annotate("", place[end], place[start], arrowprops=dict(
        arrowstyle="->", color="0.4", patchA=boxes[start].get_bbox_patch(), patchB=boxes[end].get_bbox_patch(),
        shrinkA=1, shrinkB=1))) for start, end in edges]
    columns, rows = zip(*place.values())
    axis.set(xlim=(min(columns) - 0.5, max(columns) + 0.5), ylim=(min(rows) - 0.6, max(rows) + 0.6))
    axis.axis("off")
    return place, boxes, labels, arrows


fig, axis = plt.subplots(figsize=(8, 3), layout="constrained")
place, boxes, labels, arrows = draw_graph(axis, loss, names)
(left, right), (bottom, top) = axis.get_xlim(), axis.get_ylim()
for column, row in place.values():  # every node is drawn inside the axes
    assert left < column < right and bottom < row < top, f"node at {(column, row)} outside the axes"
fig.canvas.draw()  # lay the figure out, so that boxes and arrows have their places in pixels
for start, end, arrow in arrows:  # no arrow, head included, reaches under the box it points at
    drawn = arrow.arrow_patch.get_path().transformed(arrow.arrow_patch.get_transform()).vertices
    inside = boxes[end].get_bbox_patch().get_window_extent().padded(-1.5)  # pixels, 1.5 inside the edge
    assert not any(inside.contains(*vertex) for vertex in drawn), \
        f"the arrowhead from {labels[start]} to {labels[end]} is hidden under {labels[end]}'s box"
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
# its bias alone can hold a constant shift.
#
# An *optimizer* turns gradients into updates. `optim.Adam(parameters, lr)` keeps, for every
# parameter, running means of its gradient and of the gradient's square, and `step()` moves each
# weight by lr times the first over the square root of the second, so every weight moves by about
# lr per step whatever the scale of its gradient. `zero_grad()` clears every `.grad` first, because
# `backward()` *adds* into them (a tensor used twice gets the sum). One step is those three calls
# around `backward()`; 120 of them:

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
# The same parts build the toy model of notebook 7, `models.MnistNet`: two convolution stages, then
# three 3 × 3 layers that are deformable in the deformable variant. At initialisation its offset
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
# Notebook 5 writes the CUDA kernels that the engine calls on a GPU, notebook 6 the other
# deformable operator, RoI pooling, trained by this engine too, and notebook 7 trains the toy MNIST
# model and looks at what its offsets learned.
