"""`python -m dcn_numba.segment`: the segmentation toy's training command (dcn_numba.apps.segmentation.segment)."""

from dcn_numba.apps.segmentation.segment import main

if __name__ == "__main__":
    main()
