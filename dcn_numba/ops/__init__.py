"""The public ops: each function checks its arguments (`checks`), picks the backend and calls the
reference (`dcn_numba.reference`) or the kernels (`dcn_numba.kernels`); `locations` gives the
absolute sampling positions of a deformable convolution, for plots.

May import: dcn_numba.runtime, dcn_numba.reference, dcn_numba.kernels.
"""
