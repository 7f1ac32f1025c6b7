"""`python -m dcn_numba.crosscheck IMPLEMENTATION ...`: see the package's docstring."""

import sys

from dcn_numba.crosscheck.main import main

sys.exit(main())
