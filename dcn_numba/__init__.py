"""dcn_numba: Deformable ConvNets as readable Numba CUDA and CPU kernels, with a NumPy reference.

Every op runs on one of three backends that must agree: "reference" (NumPy, a transcription of
docs/specification.md), "cpu" (Numba @njit(parallel=True) kernels) and "cuda" (Numba CUDA kernels over CuPy
arrays). backend=None picks "cuda" for CuPy arrays and "cpu" for NumPy arrays.
"""

from dcn_numba.ops.dcnv3 import dcnv3, dcnv3_backward, dcnv4, dcnv4_backward
from dcn_numba.ops.deform_conv import deform_conv2d, deform_conv2d_backward
from dcn_numba.ops.deform_psroi_pool import deform_psroi_pool, deform_psroi_pool_backward
from dcn_numba.ops.deform_roi_pool import deform_roi_pool, deform_roi_pool_backward

__version__ = "0.1.0"
