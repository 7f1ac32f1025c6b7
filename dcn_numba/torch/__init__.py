"""dcn_numba from PyTorch: its ops as registered PyTorch ops, and drop-in modules.

    import dcn_numba.torch as dt
    out = dt.deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)

The ops are registered with torch.library as dcn_numba::deform_conv2d,
dcn_numba::deform_roi_pool and dcn_numba::deform_psroi_pool (each with its backward), so they work
under torch.compile, torch.export, torch.fx, TorchScript (as torch.ops.dcn_numba.*) and autocast,
and the deformable convolution exports to ONNX's DeformConv. Their forward and backward are
dcn_numba's own, on CPU tensors through their NumPy views and on CUDA tensors through DLPack, on
torch's current stream, without copies.

    bridge.py    tensors to dcn_numba's arrays and back: devices, streams, dtypes
    library.py   what registering an op with torch.library takes, step by step
    ops.py       the three ops registered, and the functions that call them
    modules.py   DeformConv2d, DeformRoIPool, DeformPSRoIPool
    dcnv3.py     DCNv3 and DCNv4 registered as dcn_numba::dcnv3 and dcn_numba::dcnv4 (channels last;
                 torch.compile, torch.export, autocast; no ONNX operator exists for them)
    dcnv3_modules.py  the published DCNv3 and DCNv4 layers, whose state dicts load as they are
    onnx.py      the ONNX export of the convolution, and the refusal of the RoI ops and DCNv3/DCNv4

This package needs PyTorch, which dcn_numba itself does not: pip install "dcn_numba[torch]".
"""

try:
    import torch
except ImportError as error:  # torch is optional for dcn_numba, required by this package
    raise ImportError(
        "dcn_numba.torch needs PyTorch, which is not installed: pip install 'dcn_numba[torch]'"
    ) from error

from dcn_numba.torch.dcnv3 import dcnv3, dcnv4
from dcn_numba.torch.dcnv3_modules import DCNv3, DCNv4
from dcn_numba.torch.modules import DeformConv2d, DeformPSRoIPool, DeformRoIPool
from dcn_numba.torch.ops import deform_conv2d, deform_psroi_pool, deform_roi_pool

__all__ = ["deform_conv2d", "deform_roi_pool", "deform_psroi_pool", "dcnv3", "dcnv4",
           "DeformConv2d", "DeformRoIPool", "DeformPSRoIPool", "DCNv3", "DCNv4"]
