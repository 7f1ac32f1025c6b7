"""The process the ops run in: where arrays live (`arrays`: NumPy or CuPy, the only CuPy glue) and
every process-wide setting (`settings`: BLAS threads, the threading layer, the allocator).

May import: NumPy, Numba, CuPy, threadpoolctl. Imported by every other layer; imports none of them.
"""
