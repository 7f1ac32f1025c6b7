"""Numba kernels. One module per op (deform_conv, deform_roi_pool, deform_psroi_pool): CPU kernels
(@njit(parallel=True)), CUDA kernels (@cuda.jit) and the launchers that chain them, all calling the
scalar mathematics of `sampling`. And the single-threaded CPU kernels of the autograd engine's
NumPy path (windows: im2col, col2im, max pooling; normalization: BatchNorm), which run between
BLAS calls (see `_targets.serial_kernel`)."""
