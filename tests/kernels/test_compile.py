"""Real compilation of every CUDA kernel, without a GPU: NVVM (numba.cuda.compile_ptx) then ptxas.

The simulator runs kernels as Python, which accepts code that the CUDA compiler rejects, so every
CUDA kernel of every module of dcn_numba.kernels, with the argument types declared beside it
(`_targets.cuda_kernel`), is compiled for sm_80 and sm_90, and ptxas must report no register
spills. A CUDA kernel defined without declared types fails the test. The compilation runs in a
subprocess because the simulator, switched on for the rest of the tests, must be off there.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

COMPILE_ALL = r"""
import importlib, json, pkgutil, re, subprocess, sys, tempfile
from numba import cuda
from numba.cuda.dispatcher import CUDADispatcher
import dcn_numba.kernels
from dcn_numba.kernels._targets import CUDA_KERNELS, cuda_kernel_signatures

ptxas, arch = sys.argv[1], sys.argv[2]
cc = (int(arch[3]), int(arch[4]))
results = []
defined = set()
for info in pkgutil.iter_modules(dcn_numba.kernels.__path__):
    module = importlib.import_module("dcn_numba.kernels." + info.name)
    defined |= {f"{info.name}.{name}" for name, value in vars(module).items()
                if isinstance(value, CUDADispatcher) and value.py_func.__module__ == module.__name__}
declared = {f"{kernel.py_func.__module__.rsplit('.', 1)[1]}.{kernel.py_func.__name__}"
            for kernel, _ in CUDA_KERNELS}
for name in sorted(defined - declared):
    results.append(dict(kernel=name, error="a CUDA kernel without declared argument types"))
for name, kernel, argtypes in cuda_kernel_signatures():
    result = dict(kernel=f"{kernel.py_func.__module__.rsplit('.', 1)[1]}.{name}")
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, argtypes, cc=cc)
    except Exception as error:  # reported by the test with the kernel's name
        results.append(dict(result, error=f"compile_ptx: {type(error).__name__}: {error}"))
        continue
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as file:
        file.write(ptx)
        file.flush()
        run = subprocess.run([ptxas, "-v", f"-arch={arch}", file.name, "-o", "/dev/null"],
                             capture_output=True, text=True)
    report = run.stdout + run.stderr
    if run.returncode != 0:
        results.append(dict(result, error="ptxas: " + report))
        continue
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    registers = [int(n) for n in re.findall(r"Used (\d+) registers", report)]
    results.append(dict(result, registers=max(registers), spill_bytes=sum(spills)))
print(json.dumps(results))
"""


# Every CUDA kernel of the package: a kernel added without declaring its types, or left out of
# this list, fails the test.
EVERY_CUDA_KERNEL = [
    ("deform_conv", "channels_last_copy_cuda"),
    ("deform_conv_cuda", "locate_samples_cuda"), ("deform_conv_cuda", "deformable_im2col_cuda"),
    ("deform_conv_cuda", "deformable_col2im_cuda"), ("deform_conv_cuda", "offset_mask_gradient_cuda"),
    ("deform_roi_pool", "deform_roi_pool_forward_cuda"),
    ("deform_roi_pool", "deform_roi_pool_grad_input_cuda"),
    ("deform_roi_pool", "deform_roi_pool_grad_offset_cuda"),
    ("deform_psroi_pool", "deform_psroi_pool_forward_cuda"),
    ("deform_psroi_pool", "deform_psroi_pool_grad_input_cuda"),
    ("deform_psroi_pool", "deform_psroi_pool_grad_trans_cuda"),
    ("dcnv3", "dcnv3_forward_cuda"), ("dcnv3", "dcnv3_backward_cuda"),
]


def find_ptxas():
    """ptxas from the CUDA wheels, or None: nvidia/cu13/bin/ptxas from the CUDA 13 nvidia-cuda-nvcc
    wheel (the dev extra's cuda-toolkit[nvcc]), nvidia/cuda_nvcc/bin/ptxas from the CUDA 12 one
    (numba-cuda[cu12]); the first found in that order."""
    try:
        import nvidia
    except ImportError:
        return None
    for layout in ("cu13", "cuda_nvcc"):
        for root in nvidia.__path__:
            candidate = pathlib.Path(root) / layout / "bin" / "ptxas"
            if candidate.is_file():
                return str(candidate)
    return None


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_cuda_kernel_compiles_without_register_spills(arch):
    ptxas = find_ptxas()
    if ptxas is None:
        pytest.skip("ptxas not found: install the dev extra, whose cuda-toolkit[nvcc] brings it")
    environment = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    run = subprocess.run([sys.executable, "-c", COMPILE_ALL, ptxas, arch], capture_output=True,
                         text=True, env=environment, timeout=600)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    compiled = {r["kernel"] for r in results}
    expected = {f"{module}.{kernel}[{dtype}]" for module, kernel in EVERY_CUDA_KERNEL
                for dtype in ("float32", "float64")}
    assert compiled == expected, f"compiled {sorted(compiled)}, expected {sorted(expected)}"
    table = "\n".join(
        f"  {r['kernel']}: " + (r["error"] if "error" in r else
                               f"{r['registers']} registers, {r['spill_bytes']} bytes spilled")
        for r in results)
    failures = [r for r in results if "error" in r or r["spill_bytes"] != 0]
    assert not failures, f"{arch}: {len(failures)} kernels fail to compile or spill registers:\n{table}"
