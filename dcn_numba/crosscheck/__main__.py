"""`python -m dcn_numba.crosscheck IMPLEMENTATION ...`: see the package's docstring."""

from dcn_numba.crosscheck import main

main()
