"""`python -m dcn_numba.experiment TABLE`: the multi-seed tables (dcn_numba.apps.mnist.experiment)."""

from dcn_numba.apps.mnist.experiment import main

if __name__ == "__main__":
    main()
