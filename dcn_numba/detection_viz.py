"""`python -m dcn_numba.detection_viz`: the part-offsets figure (dcn_numba.apps.detection.viz)."""

from dcn_numba.apps.detection.viz import main

if __name__ == "__main__":
    main()
