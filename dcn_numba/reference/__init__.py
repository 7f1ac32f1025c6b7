"""NumPy references of every op: direct transcriptions of docs/specification.md, slow on purpose, read first.

The kernels in dcn_numba.kernels are held to these functions by the tests, and these functions
are held to hand-computed cases and finite differences.

May import: NumPy alone: the reference does not depend on the kernels it checks.
"""
