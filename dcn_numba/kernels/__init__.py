"""Numba kernels. One module per op (deform_conv, deform_roi_pool, deform_psroi_pool): CPU kernels
(@njit(parallel=True)), CUDA kernels (@cuda.jit) and the launchers that chain them, all calling the
scalar mathematics of `sampling`. The autograd engine's own serial CPU kernels live apart, in the
speed layer `dcn_numba.speed`, compiled with the decorators of `_targets`."""
