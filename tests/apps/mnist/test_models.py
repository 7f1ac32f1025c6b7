"""Whole models: gradients of every parameter against finite differences (float64, tiny sizes),
the same outputs and gradients on the reference, CPU and CUDA backends (simulated without a GPU),
a few training steps that reduce the loss, and state dicts that reload to identical outputs."""

import numpy as np
import pytest

from dcn_numba.engine import functional as F
from dcn_numba.engine.autograd import Tensor, no_grad
from dcn_numba.reference.gradcheck import assert_close, check_gradients
from dcn_numba.apps.mnist.models import MnistNet, RoIClassifier
from dcn_numba.engine.nn import Conv2d, DeformConv2d
from dcn_numba.engine.optim import SGD
from helpers import BACKENDS, ON_GPU, to_backend, to_numpy

TINY = dict(channels=(2, 3))


def move_off_the_grid(model, seed=0):
    """Give the offset (and mask) branches small random weights and biases, so that sampling
    positions are fractional: at integer positions bilinear sampling has kinks, where finite
    differences and the (one-sided) analytic gradient differ."""
    rng = np.random.default_rng(seed)
    for name, parameter in model.named_parameters():
        if any(branch in name for branch in ("offset_conv", "mask_conv", "offset_fc.layers.4", "trans_conv")):
            parameter.data[...] = 0.2 * rng.standard_normal(parameter.shape)
            if name.endswith("offset_conv.bias"):
                parameter.data += 0.35
    return model


def tiny_mnist(modulated=False):
    net = MnistNet(deformable=True, modulated=modulated, seed=3, **TINY).to(dtype=np.float64)
    return move_off_the_grid(net), np.random.default_rng(4).random((2, 1, 8, 8))


def tiny_roi_classifier(pooling):
    model = RoIClassifier(pooling, seed=5, classes=3, pooled_size=2, hidden_channels=4, **TINY)
    model = move_off_the_grid(model.to(dtype=np.float64), seed=6)
    images = np.random.default_rng(7).random((2, 1, 16, 16))
    rois = np.array([[0, 1.3, 2.2, 11.6, 12.1], [1, 4.7, 0.6, 15.2, 9.8], [1, 0.4, 5.1, 8.3, 14.9]])
    return model, images, rois


def check_model_gradients(model, run, output_shape, elementwise=()):
    """Every parameter's gradient against finite differences of L = Σ g · run(): along one random
    direction per parameter, and element by element for the parameters named in `elementwise`.
    The deformable operators run on the reference backend, the cheapest per call at these sizes
    (the backends are held to each other below)."""
    with F.backend("reference"):
        check_model_gradients_on_the_current_backend(model, run, output_shape, elementwise)


def check_model_gradients_on_the_current_backend(model, run, output_shape, elementwise):
    grad_output = np.random.default_rng(8).standard_normal(output_shape)
    parameters = dict(model.named_parameters())
    model.zero_grad()
    run().backward(grad_output)
    analytic = {name: p.grad for name, p in parameters.items()}

    def evaluate(**values):
        for name, value in values.items():
            parameters[name].data = value
        with no_grad():
            return run().data

    values = {name: p.data.copy() for name, p in parameters.items()}
    for name in parameters:
        mode = "elementwise" if name in elementwise else "random"
        check_gradients(evaluate, values, grad_output, {name: analytic[name]}, mode=mode,
                        rtol=1e-5, atol=1e-7)
        parameters[name].data = values[name]


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_mnist_net_gradients_of_every_parameter(modulated):
    net, images = tiny_mnist(modulated)
    branch = "deform_layers.2.mask_conv.weight" if modulated else "deform_layers.0.offset_conv.weight"
    check_model_gradients(net, lambda: net(Tensor(images)), (2, 10),
                          elementwise=(branch, "deform_layers.1.offset_conv.bias", "stem.weight"))


@pytest.mark.parametrize("pooling", ["roi", "psroi"])
def test_roi_classifier_gradients_of_every_parameter(pooling):
    model, images, rois = tiny_roi_classifier(pooling)
    elementwise = ("roi_pool.offset_fc.layers.4.bias",) if pooling == "roi" else ("roi_pool.trans_conv.bias",)
    check_model_gradients(model, lambda: model(Tensor(images), rois), (3, 3), elementwise)


def run_on_backend(backend, model, inputs):
    """Logits and every parameter's gradient of one forward/backward, with the deformable
    operators on `backend` (a real GPU takes CuPy arrays: the model moves there first)."""
    if backend == "cuda" and ON_GPU:
        model.to("cuda")
    inputs = [to_backend(backend, a) for a in inputs]
    with F.backend(backend):
        logits = model(Tensor(inputs[0]), *inputs[1:])
        F.cross_entropy(logits, to_backend(backend, np.arange(len(logits)) % 3)).backward()
    return [to_numpy(logits.data)] + [to_numpy(p.grad) for p in model.parameters()]


def mnist_case():
    return tiny_mnist(modulated=True)[0], [np.random.default_rng(9).random((1, 1, 6, 6))]


def roi_case(pooling):
    model, images, rois = tiny_roi_classifier(pooling)
    return model, [images, rois]


@pytest.mark.parametrize("make", [mnist_case, lambda: roi_case("roi"), lambda: roi_case("psroi")],
                         ids=["mnist-modulated", "roi", "psroi"])
def test_same_outputs_and_gradients_on_every_backend(make):
    results = {}
    for backend in BACKENDS:
        model, inputs = make()
        results[backend] = run_on_backend(backend, model, inputs)
    names = ["logits"] + [name for name, _ in make()[0].named_parameters()]
    for backend in ("cpu", "cuda"):
        for name, actual, expected in zip(names, results[backend], results["reference"]):
            assert_close(actual, expected, rtol=1e-7, atol=1e-9, what=f"{backend} {name}")


def training_losses(model, images, labels, steps, lr=0.05, rois=()):
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(Tensor(images), *rois), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("deformable", [False, True])
def test_a_few_training_steps_reduce_the_loss(deformable):
    rng = np.random.default_rng(12)
    images = rng.random((16, 1, 16, 16), dtype=np.float32)
    labels = rng.integers(0, 10, 16)
    losses = training_losses(MnistNet(deformable=deformable, seed=1, channels=(4, 8)), images,
                             labels, steps=15, lr=0.05)
    assert losses[-1] < 0.7 * losses[0], losses


def test_roi_classifier_training_reduces_the_loss():
    model, images, rois = tiny_roi_classifier("psroi")
    labels = np.array([0, 2, 1])
    losses = training_losses(model, images, labels, steps=10, lr=0.1, rois=(rois,))
    assert losses[-1] < 0.7 * losses[0], losses


def test_saved_model_reloads_to_identical_outputs(tmp_path):
    rng = np.random.default_rng(13)
    images, labels = rng.random((8, 1, 10, 10), dtype=np.float32), rng.integers(0, 10, 8)
    net = MnistNet(deformable=True, modulated=True, seed=1, channels=(3, 4))
    training_losses(net, images, labels, steps=2)
    net.save(tmp_path / "net.npz")
    reloaded = MnistNet(deformable=True, modulated=True, seed=2, channels=(3, 4)).load(tmp_path / "net.npz")
    with no_grad():
        expected = net.eval()(Tensor(images)).data
        assert_close(reloaded.eval()(Tensor(images)).data, expected, rtol=0, atol=0)


def test_variants_differ_only_by_the_offset_branches():
    regular, deformable = MnistNet(), MnistNet(deformable=True)
    modulated = MnistNet(deformable=True, modulated=True)
    widths = [(32, 32), (32, 32), (32, 32)]  # (C_in, C_out) of the three deform_layers
    offsets = sum(18 * c_in * 9 + 18 for c_in, _ in widths)
    masks = sum(9 * c_in * 9 + 9 for c_in, _ in widths)
    assert deformable.num_parameters() - regular.num_parameters() == offsets
    assert modulated.num_parameters() - deformable.num_parameters() == masks
    shared = {name for name, _ in regular.named_parameters()}
    assert shared <= {name for name, _ in deformable.named_parameters()}
    assert all(isinstance(layer, Conv2d) for layer in regular.deform_layers)
    assert all(isinstance(layer, DeformConv2d) for layer in deformable.deform_layers)


def test_both_variants_start_from_the_same_function():
    images = Tensor(np.random.default_rng(14).random((3, 1, 28, 28), dtype=np.float32))
    with no_grad():
        regular = MnistNet(seed=7)(images).data
        for modulated in (False, True):
            deformable = MnistNet(deformable=True, modulated=modulated, seed=7)(images).data
            # modulated: every sample is scaled by the initial mask 0.5, which BatchNorm undoes
            assert_close(deformable, regular, rtol=1e-4, atol=1e-4)


def test_deform_layers_work_on_the_stride_four_map_of_the_canvas():
    net = MnistNet(deformable=True, seed=0)
    with no_grad():
        logits = net(Tensor(np.zeros((2, 1, 48, 48), dtype=np.float32)))
    assert logits.shape == (2, 10)
    assert logits.dtype == np.float32
    assert net.deform_layers_input_stride == 4
    for layer in net.deform_layers:
        assert layer.sampling_locations().shape == (2, 1, 9, 12, 12, 2)
        assert layer.last_offset.shape == (2, 18, 12, 12)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_last_deformable_layers_are_deformable(count):
    net = MnistNet(deformable=True, deformable_layers=count)
    kinds = [type(layer) for layer in net.deform_layers]
    assert kinds == [Conv2d] * (3 - count) + [DeformConv2d] * count
    # The same seed draws the same main weights whichever layers are deformable.
    for layer, full in zip(net.deform_layers, MnistNet(deformable=True).deform_layers):
        np.testing.assert_array_equal(layer.weight.data, full.weight.data)


@pytest.mark.parametrize("dilation", [2, 3])
def test_dilated_variant_keeps_the_map_size_and_spreads_its_taps(dilation):
    net = MnistNet(dilation=dilation)
    with no_grad():
        net(Tensor(np.zeros((1, 1, 48, 48), dtype=np.float32)))
    for layer in net.deform_layers:
        locations = layer.sampling_locations()
        assert locations.shape == (1, 1, 9, 12, 12, 2)
        # Tap 0 of output (5, 5) reads (5 − d, 5 − d); tap 8 reads (5 + d, 5 + d).
        np.testing.assert_array_equal(locations[0, 0, 0, 5, 5], (5 - dilation, 5 - dilation))
        np.testing.assert_array_equal(locations[0, 0, 8, 5, 5], (5 + dilation, 5 + dilation))
    assert net.num_parameters() == MnistNet().num_parameters()


def test_models_reject_bad_input():
    with pytest.raises(ValueError, match=r"MnistNet: images must be \(B, 1, H, W\), got shape \(2, 3, 28, 28\)"):
        MnistNet()(Tensor(np.zeros((2, 3, 28, 28), dtype=np.float32)))
    with pytest.raises(ValueError, match="deformable_layers must be 1, 2 or 3, got 4"):
        MnistNet(deformable=True, deformable_layers=4)
    with pytest.raises(ValueError, match="dilation must be 1 in a deformable net, got 2"):
        MnistNet(deformable=True, dilation=2)
    with pytest.raises(ValueError, match=r"pooling must be 'roi' or 'psroi', got 'max'"):
        RoIClassifier("max")
