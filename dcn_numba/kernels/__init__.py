"""Numba kernels, one module per op: CPU kernels (@njit(parallel=True)), CUDA kernels (@cuda.jit)
and the launchers that chain them, all calling the scalar mathematics of `sampling`."""
