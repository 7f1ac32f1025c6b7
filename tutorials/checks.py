"""What each exercise of the tutorials is checked against: one function per exercise.

A notebook runs them through `exercises.check`, right after the learner's function:

    check(sample_zero_padded, checks.matches_dcn_sample)

Each check takes the learner's function, builds its own data from a fixed seed, and asserts what a
right answer does; the first line of its docstring says what that is. Because a check needs
nothing from the notebook, the test suite runs each one on plausible wrong answers too
(tests/tutorials/test_exercise_checks.py) and expects "not right yet": a check that a mistake can pass
would not be testing its lesson.

The checks are grouped by notebook, in course order.
"""

import types

import dcn_numba
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.data.canvases import box_iou
from dcn_numba.engine import functional as F
from dcn_numba.engine import optim, windows
from dcn_numba.engine.autograd import Tensor, unbroadcast
from dcn_numba.apps.mnist import receptive_field
from dcn_numba.reference import deform_conv_vectorised as conv_reference
from dcn_numba.reference.gradcheck import assert_close

import numpy as np

from exercises import scatters_with_atomics


# Notebook 1, sampling off the grid ----------------------------------------------------------------

def matches_dcn_sample(sample_zero_padded):
    """S(p) by the DCNv2 rule equals the reference's sampler at 2000 random positions in and around a 4 × 5 image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 10, (4, 5)).astype(np.float64)
    H, W = image.shape
    positions = rng.uniform([-1.5, -1.5], [H + 0.5, W + 0.5], size=(2000, 2))
    geometry = conv_reference.bilinear_geometry(*(positions[:, d].reshape(1, 1, 1, 1, -1) for d in (0, 1)), H, W)
    expected = conv_reference.bilinear_samples(image[None, None], geometry).ravel()
    for (p_y, p_x), value in zip(positions, expected):
        assert_close(sample_zero_padded(image, p_y, p_x), value, what=f"S at {(p_y, p_x)}")


# Notebook 2, deformable convolution forward -------------------------------------------------------

def conv2d(input, weight, bias=None, padding=0, dilation=1):
    """A regular convolution of arrays, by dcn_numba's sliding-window im2col and a GEMM."""
    wrapped_bias = None if bias is None else Tensor(bias)
    return windows.conv2d(Tensor(input), Tensor(weight), wrapped_bias, 1, padding, dilation).data


def acts_as_dilation(scale_offsets):
    """Offsets (s − 1)·p_n make a 3 × 3 deformable layer the regular convolution of dilation s, for s = 2 and 3."""
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 2, 12, 12))
    weight = rng.standard_normal((3, 2, 3, 3))
    for scale in (2, 3):
        bias = np.asarray(scale_offsets(scale, 3, 3), dtype=np.float64)
        assert bias.shape == (18,), f"scale_offsets(s, 3, 3) has shape {bias.shape}, expected (18,): 2K channels"
        offset = np.broadcast_to(bias.reshape(1, 18, 1, 1), (1, 18, 12, 12))
        assert_close(dcn_numba.deform_conv2d(image, offset, weight, padding=1, backend="reference"),
                     conv2d(image, weight, padding=scale, dilation=scale),
                     what=f"offsets (s − 1)·p_n against dilation s = {scale}")


def matches_deform_conv2d(forward_by_gemm):
    """weight @ col + bias, one GEMM per weight group, equals deform_conv2d with one and with two weight groups."""
    rng = np.random.default_rng(22)
    pairs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    features = rng.standard_normal((2, 4, 6, 6))
    offset = rng.normal(0, 1.5, (2, 18, 6, 6))
    for weight in (rng.standard_normal((5, 4, 3, 3)), rng.standard_normal((6, 2, 3, 3))):  # G = 1, then G = 2
        bias = rng.standard_normal(len(weight))
        col = conv_reference.columns(features, offset, weight, mask=None, **pairs)
        out = np.asarray(forward_by_gemm(weight, col, bias))
        expected = dcn_numba.deform_conv2d(features, offset, weight, bias, padding=1, backend="reference")
        assert out.size == expected.size, f"the output has {out.size} values, expected {expected.size}"
        assert_close(out.reshape(expected.shape), expected,
                     what=f"weight @ col + bias against deform_conv2d, {col.shape[1]} weight group(s)")


# Notebook 3, the backward pass by hand ------------------------------------------------------------

def backward_problem():
    """A tiny modulated layer, its samples S, their slopes ∂S/∂p, gcol, and the package's five gradients."""
    rng = np.random.default_rng(3)
    B, C_in, C_out, H, W, K = 2, 3, 2, 5, 5, 9
    x = rng.standard_normal((B, C_in, H, W))
    weight = rng.standard_normal((C_out, C_in, 3, 3))
    offset = rng.integers(-2, 2, (B, 2 * K, H, W)) + rng.uniform(0.2, 0.8, (B, 2 * K, H, W))
    mask = rng.uniform(0.2, 0.9, (B, K, H, W))
    grad_out = rng.standard_normal((B, C_out, H, W))
    geometry = conv_reference.sample_geometry(x, offset, weight, (1, 1), (1, 1), (1, 1))
    shape = (B, C_in, K, H, W)
    S = conv_reference.bilinear_samples(x, geometry).reshape(shape)
    dS_dpy, dS_dpx = (slope.reshape(shape) for slope in conv_reference.sample_gradients(x, geometry))
    gcol = np.einsum("ock,boij->bckij", weight.reshape(C_out, C_in, K), grad_out)
    gradients = dcn_numba.deform_conv2d_backward(grad_out, x, offset, weight, padding=1, mask=mask,
                                                 backend="reference")
    return types.SimpleNamespace(S=S, dS_dpy=dS_dpy, dS_dpx=dS_dpx, gcol=gcol, m=mask[:, None],
                                 **dict(zip(["input", "offset", "weight", "bias", "mask"], gradients)))


def matches_the_mask_gradient(mask_gradient):
    """Σ_c gcol · S equals deform_conv2d_backward's grad_mask on a layer of 2 images, 3 input channels."""
    problem = backward_problem()
    assert_close(mask_gradient(problem.gcol, problem.S), problem.mask, what="grad_mask")


def matches_the_offset_gradient(offset_gradient):
    """Σ_c gcol · m · ∂S/∂p, Δy at channel 2k and Δx at 2k + 1, equals deform_conv2d_backward's grad_offset."""
    problem = backward_problem()
    assert_close(offset_gradient(problem.gcol, problem.m, problem.dS_dpy, problem.dS_dpx), problem.offset,
                 what="grad_offset")


# Notebook 4, the autograd engine ------------------------------------------------------------------

def graph_node(*inputs):
    """A tensor as the engine sees it: a creator whose `inputs` made it, or None for a leaf."""
    return types.SimpleNamespace(creator=types.SimpleNamespace(inputs=inputs) if inputs else None)


def is_topological(topological_order):
    """Every tensor of a 7-tensor graph (two used twice) comes once, after all of its inputs, the loss last."""
    a, b = graph_node(), graph_node()
    product = graph_node(a, b)
    twice = graph_node(product, a)  # `product` and `a` are used twice
    total = graph_node(product, twice)
    loss = graph_node(total)
    order = list(topological_order(loss))
    assert len(order) == len({id(t) for t in order}) == 6, \
        f"expected 6 distinct tensors, each once, got {len(order)} entries for {len({id(t) for t in order})} tensors"
    position = {id(t): n for n, t in enumerate(order)}
    for t in order:
        for parent in (t.creator.inputs if t.creator else ()):
            assert position[id(parent)] < position[id(t)], "a tensor comes before one of its inputs"
    assert order[-1] is loss, "the loss, which uses everything, must come last"


def sums_like_the_package(unbroadcast_mine):
    """grad (2, 3, 4) summed down to eight shapes, from (2, 3, 4) to (), equals dcn_numba's unbroadcast."""
    grad = np.random.default_rng(4).standard_normal((2, 3, 4))
    for shape in [(2, 3, 4), (3, 4), (4,), (1, 4), (3, 1), (2, 1, 4), (1, 1, 1), ()]:
        mine = unbroadcast_mine(grad, shape)
        assert np.shape(mine) == shape, f"unbroadcast to {shape} returned shape {np.shape(mine)}"
        assert_close(mine, unbroadcast(grad, shape), what=f"unbroadcast to {shape}")


# Notebook 5, CUDA kernels in Numba ---------------------------------------------------------------

CUDA_LAYER = dict(C_in=2, size=5, kh=3, kw=3, padding=1)


def cuda_layer():
    """x (1, 2, 5, 5) and random offsets (1, 18, 5, 5) for a 3 × 3 layer with padding 1."""
    rng = np.random.default_rng(5)
    layer = CUDA_LAYER
    K = layer["kh"] * layer["kw"]
    x = rng.standard_normal((1, layer["C_in"], layer["size"], layer["size"]))
    offset = rng.normal(0, 1.5, (1, 2 * K, layer["size"], layer["size"]))
    return x, offset, K


def compiled(function):
    """`function` as a CUDA kernel (for the simulator when NUMBA_ENABLE_CUDASIM=1). numba.cuda is
    imported here, not at the top: the CUDA notebook sets the simulator switch before it loads."""
    from numba import cuda

    return cuda, cuda.jit(function)


def matches_the_reference_columns(naive_im2col):
    """The kernel, launched as 2 blocks × 8 threads, fills col (C_in, K, H_out, W_out) as reference.columns does."""
    cuda, kernel = compiled(naive_im2col)
    x, offset, K = cuda_layer()
    C_in, size, kh, kw, padding = (CUDA_LAYER[name] for name in ("C_in", "size", "kh", "kw", "padding"))
    col = cuda.to_device(np.zeros(C_in * K * size * size))
    kernel[2, 8](col.size, cuda.to_device(x.ravel()), cuda.to_device(offset.ravel()), size, size, kh, kw,
                 padding, size, size, col)
    expected = conv_reference.columns(x, offset, np.zeros((1, C_in, kh, kw)), (1, 1), (padding, padding),
                                      (1, 1), None)
    assert_close(col.copy_to_host(), expected.ravel(), what="naive_im2col against reference.columns")


def matches_the_package_backward(naive_col2im):
    """The kernel scatters gcol into grad_x as deform_conv2d_backward's grad_input, and only by cuda.atomic.add."""
    scatters_with_atomics(naive_col2im, "grad_x")
    cuda, kernel = compiled(naive_col2im)
    x, offset, K = cuda_layer()
    C_in, size, kh, kw, padding = (CUDA_LAYER[name] for name in ("C_in", "size", "kh", "kw", "padding"))
    gcol = np.random.default_rng(55).standard_normal((C_in * K, size, size))
    copy_weight = np.eye(C_in * K).reshape(C_in * K, C_in, kh, kw)  # output channel (c, k) = col[c, k]
    grad_x = cuda.to_device(np.zeros(C_in * size * size))
    kernel[2, 8](gcol.size, cuda.to_device(gcol.ravel()), cuda.to_device(offset.ravel()), size, size,
                 kh, kw, padding, size, size, grad_x)
    expected = dcn_numba.deform_conv2d_backward(gcol[None], x, offset, copy_weight, padding=padding,
                                                backend="reference")[0]
    assert_close(grad_x.copy_to_host(), expected.ravel(), what="naive_col2im against grad_input")


# Notebook 6, deformable RoI pooling --------------------------------------------------------------

def pools_like_deform_roi_pool(roi_align_pool):
    """Every bin of four RoIs (fractional corners, one past the border), without and with offsets, equals deform_roi_pool."""
    rng = np.random.default_rng(6)
    image = rng.standard_normal((2, 12, 14))
    rois = [(1.0, 2.0, 9.0, 10.0), (0.3, 4.6, 13.2, 11.7), (5.5, 0.5, 8.5, 3.0), (-1.5, 6.0, 15.0, 13.5)]
    for roi in rois:
        for offset in (None, rng.uniform(-1.5, 1.5, (2, 3, 3))):
            pooled = roi_align_pool(image, np.array(roi), offset, 3, 2, 0.1)
            expected = dcn_numba.deform_roi_pool(image[None], np.array([(0.0, *roi)]),
                                                 None if offset is None else offset[None],
                                                 output_size=3, sampling_ratio=2, gamma=0.1, backend="reference")[0]
            assert_close(pooled, expected, what=f"RoI {roi}, {'no offsets' if offset is None else 'offsets'}")


def matches_the_roi_backward(bin_offset_gradient):
    """(∂out/∂Δx̂, ∂out/∂Δŷ) of each of the 9 bins of a RoI with offsets equals deform_roi_pool_backward's."""
    from dcn_numba.reference import deform_roi_pool as roi_reference

    rng = np.random.default_rng(61)
    image = rng.standard_normal((1, 1, 16, 18))
    rois = np.array([[0, 2.3, 1.6, 14.5, 13.2]])
    offset = rng.uniform(-1, 1, (1, 2, 3, 3))
    _, grad_offset = dcn_numba.deform_roi_pool_backward(np.ones((1, 1, 3, 3)), image, rois, offset,
                                                        output_size=3, sampling_ratio=2, backend="reference")
    _, _, roi_width, roi_height = roi_reference.roi_box(rois[0], 1.0)
    for ph, pw, positions in roi_reference.bin_samples(rois[0], offset[0], (3, 3), 1.0, 2, 0.1):
        assert_close(bin_offset_gradient(image[0, 0], positions, roi_width, roi_height, 0.1),
                     grad_offset[0, :, ph, pw], what=f"∂out/∂(Δx̂, Δŷ) of bin {(ph, pw)}")


def reads_the_right_map(score_map_channel):
    """Pooling one-hot score maps (2 outputs, group 2, 4 × 4 bins) lights exactly the bins that read that channel."""
    output_dim, group_size, pooled_size = 2, 2, 4
    box = np.array([[0, 1, 1, 8, 8]], dtype=np.float64)
    for channel in range(output_dim * group_size ** 2):
        one_hot = np.zeros((1, output_dim * group_size ** 2, 10, 10))
        one_hot[0, channel] = 1
        lit = dcn_numba.deform_psroi_pool(one_hot, box, output_dim=output_dim, group_size=group_size,
                                          pooled_size=pooled_size, backend="reference")[0] > 0.5
        for ctop, ph, pw in np.ndindex(output_dim, pooled_size, pooled_size):
            reads = score_map_channel(ctop, ph, pw, group_size, pooled_size) == channel
            assert lit[ctop, ph, pw] == reads, f"bin {(ph, pw)} of output {ctop}: channel {channel}"


# Notebook 7, training on MNIST -------------------------------------------------------------------

def reference_step(net, optimizer, images, labels):
    """One step of gradient descent: the loss, fresh gradients of it, and the optimizer's update."""
    loss = F.cross_entropy(net(Tensor(images)), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def trains_like_the_package(training_step):
    """Three steps of a deformable MnistNet with Adam give the losses and weights of three right steps."""
    rng = np.random.default_rng(7)
    batches = [(rng.uniform(0, 1, (4, 1, 48, 48)).astype(np.float32), rng.integers(0, 10, 4)) for _ in range(3)]
    runs = {}
    for name, step in (("yours", training_step), ("expected", reference_step)):
        net = MnistNet(deformable=True, seed=0)
        optimizer = optim.Adam(net.parameters(), lr=0.01)
        losses = [float(step(net, optimizer, images, labels)) for images, labels in batches]
        runs[name] = losses, {key: p.data.copy() for key, p in net.named_parameters()}
    # float32, and the CPU kernels' threads add in an order that varies: equal to rounding, not bit for bit.
    assert_close(np.array(runs["yours"][0]), np.array(runs["expected"][0]), rtol=1e-4,
                 what="the loss of each of 3 steps")
    for key, expected in runs["expected"][1].items():
        assert_close(runs["yours"][1][key], expected, rtol=1e-3, atol=1e-5, what=f"{key} after 3 steps")


def matches_receptive_field_spread(spread):
    """σ of 20 random weighted point sets, unweighted too, and of a 3 × 3 grid (sqrt(4/3) px) equals receptive_field.spread."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        points = rng.normal(0, 5, (int(rng.integers(1, 50)), 2))
        weights = rng.random(len(points))
        assert np.isclose(spread(points, weights), receptive_field.spread(points, weights)), \
            f"weighted spread {spread(points, weights)}, expected {receptive_field.spread(points, weights)}"
        assert np.isclose(spread(points), receptive_field.spread(points)), "spread with weights None"
    grid = np.stack(np.meshgrid(np.arange(3.0), np.arange(3.0)), axis=-1).reshape(-1, 2)
    assert np.isclose(spread(grid), np.sqrt(4 / 3)), "a 3 × 3 grid of unit spacing spreads by sqrt(4/3) px"


# Notebook 8, the toy detector --------------------------------------------------------------------

def matches_box_iou(iou):
    """The IoU of 200 random pairs of boxes equals the detector's box_iou; boxes sharing only an edge give 0."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        corners = rng.uniform(0, 64, (2, 2, 2))
        box_a, box_b = (np.concatenate([c.min(axis=0), c.max(axis=0)]) for c in corners)
        expected = box_iou(box_a, box_b)[0, 0]
        assert np.isclose(iou(box_a, box_b), expected), \
            f"iou({box_a.round(1)}, {box_b.round(1)}) = {iou(box_a, box_b)}, expected {expected}"
    assert iou([0, 0, 2, 2], [2, 0, 4, 2]) == 0, "boxes that only share an edge overlap by 0"


# Notebook 9, semantic segmentation ---------------------------------------------------------------

def matches_mean_iou(mean_iou_by_hand):
    """mIoU of 30 random 4-class confusion matrices, of one missing a class in truth and prediction, and of one predicting a class never true, equals metrics.mean_iou."""
    from dcn_numba.apps.segmentation.metrics import mean_iou

    rng = np.random.default_rng(9)
    matrices = [rng.integers(0, 50, (4, 4)) for _ in range(30)]
    absent = rng.integers(0, 50, (4, 4))
    absent[2, :] = absent[:, 2] = 0  # class 2 neither true nor predicted: left out of the mean
    never_true = rng.integers(0, 50, (4, 4))
    never_true[3, :] = 0  # class 3 predicted but never true: IoU 0, in the mean
    for confusion in matrices + [absent, never_true]:
        mine = float(mean_iou_by_hand(confusion.copy()))
        assert np.isclose(mine, mean_iou(confusion)), \
            f"mean_iou_by_hand of\n{confusion}\n= {mine}, expected {mean_iou(confusion)}"


# Notebook 10, from DCNv2 to DCNv3 and DCNv4 ------------------------------------------------------

def matches_dcnv3(dcnv3_by_deform_conv2d):
    """On 2 groups of 3 channels, with a 3 × 3 and a 3 × 5 kernel, random offsets and masks, the output equals dcn_numba.dcnv3."""
    rng = np.random.default_rng(10)
    N, H, W, G, D = 2, 6, 7, 2, 3
    x = rng.standard_normal((N, H, W, G * D))
    for kernel_h, kernel_w in ((3, 3), (3, 5)):
        P = kernel_h * kernel_w
        pad_h, pad_w = kernel_h // 2, kernel_w // 2
        offset = rng.normal(0, 1.5, (N, H, W, G * P * 2))
        mask = rng.uniform(0.1, 1.0, (N, H, W, G * P))
        expected = dcn_numba.dcnv3(x, offset, mask, kernel_h, kernel_w, 1, 1, pad_h, pad_w, 1, 1, G,
                                   backend="reference")
        out = np.asarray(dcnv3_by_deform_conv2d(x, offset, mask, kernel_h, kernel_w, pad_h, pad_w, G))
        assert out.shape == expected.shape, \
            f"the output has shape {out.shape}, expected {expected.shape} (N, H_out, W_out, C), channels last"
        assert_close(out, expected, what=f"DCNv3 by deform_conv2d, {kernel_h} × {kernel_w} kernel")


def matches_grouped_softmax(softmax_over_taps):
    """The softmax over each of 3 groups' 9 taps equals the reference's, also for raw values up to 1000."""
    from dcn_numba.reference.dcnv3 import grouped_softmax

    rng = np.random.default_rng(100)
    for scale in (1.0, 1000.0):
        raw = scale * rng.standard_normal((2, 4, 5, 3 * 9))
        mine = np.asarray(softmax_over_taps(raw.copy(), 3))
        assert mine.shape == raw.shape, f"the mask has shape {mine.shape}, expected {raw.shape}"
        assert np.isfinite(mine).all(), f"raw values of size {scale:g} give non-finite masks: is exp overflowing?"
        assert_close(mine, grouped_softmax(raw, 3), what=f"softmax over each group's taps, raw values of size {scale:g}")


def unpacks_like_dcnv4(unpack_offset_mask):
    """With 3 groups of 8 taps (72 channels, no padding) and 4 groups of 9 (108 channels padded to 112), the offsets and mask equal the reference's unpacking."""
    from dcn_numba.reference.dcnv3 import pad8, unpack_offset_mask as reference_unpack

    rng = np.random.default_rng(101)
    for group, P in ((3, 8), (4, 9)):
        offset_mask = rng.standard_normal((2, 3, 4, pad8(3 * group * P)))
        expected_offset, expected_mask = reference_unpack(offset_mask, group, P)
        offset, mask = (np.asarray(a) for a in unpack_offset_mask(offset_mask.copy(), group, P))
        assert offset.shape == expected_offset.shape and mask.shape == expected_mask.shape, \
            (f"shapes {offset.shape} and {mask.shape}, expected {expected_offset.shape} (N, H_out, W_out, G·P·2) "
             f"and {expected_mask.shape} (N, H_out, W_out, G·P)")
        assert_close(offset, expected_offset, what=f"offset of {group} groups of {P} taps")
        assert_close(mask, expected_mask, what=f"mask of {group} groups of {P} taps")
