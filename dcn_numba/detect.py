"""`python -m dcn_numba.detect`: the toy detector's training command (dcn_numba.apps.detection.detect)."""

from dcn_numba.apps.detection.detect import main

if __name__ == "__main__":
    main()
