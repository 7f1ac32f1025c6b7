"""`python -m dcn_numba.experiment TABLE`: the multi-seed tables. `segmentation` is the
segmentation toy's (dcn_numba.apps.segmentation.experiment), `detection` the toy detector's
(dcn_numba.apps.detection.experiment); every other table is the scaled-digits experiment's
(dcn_numba.apps.mnist.experiment)."""

import sys

from dcn_numba.apps.detection import experiment as detection_experiment
from dcn_numba.apps.mnist import experiment as mnist_experiment
from dcn_numba.apps.segmentation import experiment as segmentation_experiment


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["segmentation"]:
        segmentation_experiment.main(argv[1:])
    elif argv[:1] == ["detection"]:
        detection_experiment.main(argv[1:])
    else:
        mnist_experiment.main(argv)


if __name__ == "__main__":
    main()
