"""The engine's deformable Functions beside BLAS: before the first deformable CPU kernel of the
process, they limit BLAS to one thread (`runtime.settings.leave_the_cores_to_the_kernels`), whose
idle threads would otherwise spin on the cores the parallel kernels need. Same numbers as the
engine's Functions, which they subclass."""

from dcn_numba.engine import functional
from dcn_numba.engine.mode import mode
from dcn_numba.runtime.settings import leave_the_cores_to_the_kernels


class BesideBLAS:
    """Mixin for a deformable Function: before its forward on the CPU kernels (the backend None
    or "cpu"; the speed layer runs only on NumPy arrays), leave the cores to the kernels."""

    def forward(self, *arrays, **params):
        if mode().backend in (None, "cpu"):
            leave_the_cores_to_the_kernels()
        return super().forward(*arrays, **params)


class DeformConv2d(BesideBLAS, functional.DeformConv2d):
    """The engine's DeformConv2d, beside BLAS."""


class DeformRoIPool(BesideBLAS, functional.DeformRoIPool):
    """The engine's DeformRoIPool, beside BLAS."""


class DeformPSRoIPool(BesideBLAS, functional.DeformPSRoIPool):
    """The engine's DeformPSRoIPool, beside BLAS."""
