"""Numba kernels of the ops, for the CPU (@njit(parallel=True)) and CUDA (@cuda.jit), and their launchers.

The shared scalar mathematics, each formula one function that both targets call: `bilinear`
(bilinear sampling and the DCNv2 boundary rule, used by every op), and per op `deform_conv_math`
with the layouts of its buffers (`deform_conv_layout`), `deform_roi_pool_math`,
`deform_psroi_pool_math`. The kernels: `deform_conv` (its launchers and layout step), with its
CPU tile pipeline (`deform_conv_cpu`) and its GPU chunk pipeline (`deform_conv_cuda`);
`deform_roi_pool`; `deform_psroi_pool`. `_targets` compiles and launches for both targets,
`_cache` keys the compiled-kernel cache on every file here.

May import: dcn_numba.runtime, NumPy, Numba, SciPy's BLAS; of dcn_numba.reference, only what names
an op's parameters (`reference.dcnv3.Parameters` and its P, `taps_of`), which a kernel's geometry
extends so that the reference and the kernels define them once.
"""
