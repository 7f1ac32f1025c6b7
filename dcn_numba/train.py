"""`python -m dcn_numba.train`: the scaled-digits training command (dcn_numba.apps.mnist.train)."""

from dcn_numba.apps.mnist.train import main

if __name__ == "__main__":
    main()
