"""One training step (forward, backward, SGD update) of the MNIST nets at batch 64 on the CPU, on
the 48×48 canvases of the scaled-digits experiment.

    python benchmarks/bench_train_step.py

Times the regular and the deformable `MnistNet` on NumPy arrays (the engine's im2col convolutions
and the CPU deformable kernels). When torch and torchvision are installed, the same architecture
is built in PyTorch, with torchvision.ops.deform_conv2d for the deformable layers, loaded with the
same weights, and checked first: logits and every parameter gradient must match ours (the offset
branches are perturbed away from zero for the check, so that no sample sits on an integer
position, where the two libraries' boundary conventions differ; docs/specification.md §1). Then both are timed
in the same run, in turns, PyTorch with as many threads as there are cores.

Both libraries run in this one process under the same malloc settings: by default those of
`dcn_numba.runtime.settings.keep_freed_memory()`, which the training command uses too (freed memory stays
in the process instead of being page-faulted back in every step); `--default-malloc` keeps
glibc's defaults instead.

Targets on a 2-core machine: our deformable step at most 2.5× our regular one and at most a
quarter of PyTorch + torchvision's, our regular step within 1.5× of PyTorch's.
"""

import argparse
import os
import sys

import numpy as np

from dcn_numba import speed
from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor
from dcn_numba.runtime.settings import keep_freed_memory
from dcn_numba.reference.gradcheck import describe_mismatch
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.engine.optim import SGD
from timing import interleaved_best_times, machine_description, row

BATCH = 64
CANVAS_SIZE = 48  # the scaled-digits experiment's canvas (dcn_numba.apps.mnist.train.CANVAS_SIZE)
RTOL, ATOL = 1e-6, 1e-8  # the check runs in float64


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((BATCH, 1, CANVAS_SIZE, CANVAS_SIZE), dtype=np.float32), rng.integers(0, 10, BATCH)


def our_step(net, images, labels):
    """A closure running one SGD step of `net` on the batch."""
    optimizer = SGD(net.parameters(), lr=0.01, momentum=0.9)
    images = Tensor(images)

    def step():
        optimizer.zero_grad()
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def torch_twin(net):
    """The PyTorch module computing what `net` computes, holding copies of its weights."""
    import torch
    import torchvision

    def tensor(array):
        return torch.nn.Parameter(torch.from_numpy(array.copy()))

    def norm(ours):
        layer = torch.nn.BatchNorm2d(len(ours.weight.data))
        layer.weight, layer.bias = tensor(ours.weight.data), tensor(ours.bias.data)
        return layer

    def conv(ours):
        layer = torch.nn.Conv2d(*ours.weight.shape[1::-1], ours.kernel_size, padding=ours.padding,
                                dilation=ours.dilation, bias=ours.bias is not None)
        layer.weight = tensor(ours.weight.data)
        if ours.bias is not None:
            layer.bias = tensor(ours.bias.data)
        return layer

    class DeformLayer(torch.nn.Module):
        def __init__(self, ours):
            super().__init__()
            self.offset_conv = conv(ours.offset_conv)
            self.weight = tensor(ours.weight.data)
            self.padding = ours.padding

        def forward(self, x):
            return torchvision.ops.deform_conv2d(x, self.offset_conv(x), self.weight, padding=self.padding)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.stem_norm = conv(net.stem), norm(net.stem_norm)
            self.stem2, self.stem2_norm = conv(net.stem2), norm(net.stem2_norm)
            self.deform_layers = torch.nn.ModuleList(
                DeformLayer(layer) if hasattr(layer, "offset_conv") else conv(layer)
                for layer in net.deform_layers)
            self.norms = torch.nn.ModuleList(norm(n) for n in net.norms)
            self.classifier = torch.nn.Linear(*net.classifier.weight.shape[::-1])
            self.classifier.weight = tensor(net.classifier.weight.data)
            self.classifier.bias = tensor(net.classifier.bias.data)

        def forward(self, images):
            x = torch.nn.functional.max_pool2d(torch.relu(self.stem_norm(self.stem(images))), 2)
            x = torch.nn.functional.max_pool2d(torch.relu(self.stem2_norm(self.stem2(x))), 2)
            for layer, batch_norm in zip(self.deform_layers, self.norms):
                x = torch.relu(batch_norm(layer(x)))
            return self.classifier(torch.nn.functional.adaptive_avg_pool2d(x, net.head_size).flatten(1))

    return Twin()


def check_against_torch(deformable, images, labels):
    """Logits and all parameter gradients of one forward/backward in float64, ours against the
    twin's (in float32 the last digits of the early layers' gradients differ by rounding alone)."""
    import torch

    net = MnistNet(deformable=deformable, seed=1).to(dtype=np.float64)
    images = images.astype(np.float64)
    if deformable:
        rng = np.random.default_rng(2)
        for layer in net.deform_layers:
            layer.offset_conv.weight.data[...] = 0.05 * rng.standard_normal(layer.offset_conv.weight.shape)
            layer.offset_conv.bias.data[...] = 0.3 + 0.1 * rng.standard_normal(layer.offset_conv.bias.shape)
    twin = torch_twin(net).double()
    logits = net(Tensor(images))
    F.cross_entropy(logits, labels).backward()
    twin_logits = twin(torch.from_numpy(images))
    torch.nn.functional.cross_entropy(twin_logits, torch.from_numpy(labels)).backward()
    pairs = [("logits", logits.data, twin_logits.detach().numpy())]
    twin_parameters = dict(twin.named_parameters())
    # The twin's modules carry our attribute names, so every parameter has the same name in both.
    pairs += [(name, p.grad, twin_parameters[name].grad.numpy()) for name, p in net.named_parameters()]
    ok = True
    for name, ours, theirs in pairs:
        if not np.allclose(ours, theirs, rtol=RTOL, atol=ATOL):
            print(f"MISMATCH {name} ({'deformable' if deformable else 'regular'}):\n"
                  + describe_mismatch(ours, theirs, RTOL, ATOL))
            ok = False
    return ok


def torch_step(deformable, images, labels, device="cpu", **net_options):
    """A closure running one SGD step of the PyTorch twin of MnistNet(deformable, **net_options)
    on `device`."""
    import torch

    twin = torch_twin(MnistNet(deformable=deformable, **net_options)).to(device)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.as_tensor(images, device=device), torch.as_tensor(labels, device=device)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(twin(images), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's malloc settings instead of keep_freed_memory()'s")
    args = parser.parse_args()
    print(machine_description())
    kept = not args.default_malloc and keep_freed_memory()
    speed.switch_on()  # the engine's CPU speed layer, as the training command runs it
    print("malloc: " + ("freed memory kept in the process (keep_freed_memory), for both libraries"
                        if kept else "default settings"))
    images, labels = batch()
    try:
        import torch
        import torchvision  # noqa: F401  (the deformable baseline needs it)
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(os.cpu_count())
        if not all([check_against_torch(deformable, images, labels) for deformable in (False, True)]):
            sys.exit("the engine and PyTorch disagree: not timing them")
        print("checks passed: logits and every parameter gradient match PyTorch (+ torchvision)")

    ours, theirs = {}, {}
    for deformable in (False, True):
        name = "deformable" if deformable else "regular"
        net = MnistNet(deformable=deformable)
        print(f"MnistNet {name}: {net.num_parameters():,} parameters")
        candidates = {"ours": our_step(net, images, labels)}
        if torch is not None:
            candidates["theirs"] = torch_step(deformable, images, labels)
        seconds = interleaved_best_times(candidates, rounds=2 if deformable else 5, repeats=3, warmup=1)
        ours[name] = seconds["ours"]
        if torch is not None:
            theirs[name] = seconds["theirs"]
    print(f"one training step (forward, backward, SGD) at batch {BATCH}, float32:")
    for name in ours:
        baseline = "PyTorch" if name == "regular" else "PyTorch + torchvision"
        print(row(f"dcn_numba MnistNet {name}", ours[name], theirs.get(name), baseline))
    for name in theirs:
        print(row(f"PyTorch MnistNet {name}", theirs[name]))
    print(f"target: deformable/regular = {ours['deformable'] / ours['regular']:.2f} (want <= 2.5)")
    if theirs:
        print(f"targets: deformable ours/theirs = {ours['deformable'] / theirs['deformable']:.2f} "
              f"(want <= 0.25), regular ours/theirs = {ours['regular'] / theirs['regular']:.2f} "
              "(want <= 1.5)")


if __name__ == "__main__":
    main()
