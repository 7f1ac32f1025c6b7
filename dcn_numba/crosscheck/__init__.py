"""Check an implementation of the deformable ops against dcn_numba's NumPy reference.

    python -m dcn_numba.crosscheck IMPLEMENTATION [IMPLEMENTATION ...]
    python -m dcn_numba.crosscheck --op dcnv3 IMPLEMENTATION [IMPLEMENTATION ...]

The first runs the battery of deform_conv2d, deform_roi_pool and deform_psroi_pool (below); the
second runs the battery of dcnv3 and dcnv4 (`dcnv3`, whose docstring names its implementations
and conventions).

IMPLEMENTATION is one of dcn_numba's backends ("reference", "cpu", "cuda"), "torchvision",
"openvino" (DeformableConvolution v8 with bilinear_interpolation_pad=true, and
DeformablePSROIPooling), "openvino-nopad" (the same with bilinear_interpolation_pad=false),
"onnxruntime" (the ONNX DeformConv operator, opset 19), or "module:function", a user's
deformable convolution with the signature

    function(input, offset, weight, bias, stride, padding, dilation, mask) -> output

over NumPy float64 arrays in dcn_numba.deform_conv2d's layouts (bias and mask may be None;
stride, padding and dilation are (h, w) pairs), returning the (B, C_out, H_out, W_out) output as
a NumPy array (float32 results are compared at float32 tolerance). When `function.backward`
exists, with the signature

    function.backward(grad_output, input, offset, weight, bias, stride, padding, dilation, mask)
        -> (grad_input, grad_offset, grad_weight, grad_bias, grad_mask)

(None for the gradients of None arguments), the gradients are checked too.

Every case of the battery runs each op an implementation has; the forward result and every
gradient are compared with the reference (with the hand-computed values where a case has them)
and the largest absolute error is printed. A difference is explained when the implementation
agrees, instead, with one of the documented conventions (CONVENTIONS) that the reference does not
follow; the table names it. The exit status is 0 when every difference is explained, 1 when any
result differs without an explanation or an implementation fails on a case. Each implementation
gets copies of the arrays of every call; one that changes them fails that case.

The modules: `battery` (the cases), `conventions` (what the reference computes and the documented
conventions it does not follow, how a result is judged), `adapters` (the implementations, and the
one adapter of each library, which the benchmarks and the GPU check also use), `report` (a case run
on an implementation, the table), `dcnv3` (the DCNv3/DCNv4 battery, conventions and grid_sample
adapter), `main` (the command).

May import: dcn_numba (the public ops), dcn_numba.ops, and the libraries it compares with, each
only when asked for.
"""
