"""The applications, one subpackage each: `mnist` (the scaled-digits classification experiment),
`detection` (the toy two-stage detector), `segmentation` (the DeepLab-style toy).

May import: dcn_numba.engine, dcn_numba.data, dcn_numba.runs, dcn_numba.ops, dcn_numba.runtime, and
dcn_numba.speed (the training commands switch it on). An application never imports another.
"""
