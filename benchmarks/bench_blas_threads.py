"""The MNIST training step at batch 64 with BLAS's default threads and with one BLAS thread, in
one run, NumPy imported first (as user code and the tutorials do) and no environment variable set.

    python benchmarks/bench_blas_threads.py

OpenBLAS's idle threads spin for about 0.1 s after each matrix product; between the products of
a deformable net the parallel deformable kernels need those cores. The engine's speed layer, which
the training command switches on, therefore limits BLAS to one thread once it runs a deformable
CPU kernel (dcn_numba.runtime.settings); this script undoes that for the "default threads" runs,
so that both are timed in the same process, in turns.
"""

import numpy as np  # noqa: I001  (first, on purpose)
from threadpoolctl import threadpool_info, threadpool_limits

from bench_train_step import batch, our_step
from dcn_numba import speed
from dcn_numba.apps.mnist.models import MnistNet
from dcn_numba.runtime.settings import keep_freed_memory
from timing import interleaved_best_times, machine_description, row


def main():
    print(machine_description())
    keep_freed_memory()
    speed.switch_on()  # as the training command: the speed layer makes the engine's one-thread setting
    images, labels = batch()
    default_threads = max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
    print(f"BLAS threads by default: {default_threads}")
    for deformable in (False, True):
        name = "deformable" if deformable else "regular"
        step = our_step(MnistNet(deformable=deformable), images, labels)
        step()  # the first deformable step makes the engine's one-thread setting

        def with_default_threads():
            with threadpool_limits(limits=default_threads, user_api="blas"):
                return step()

        def with_one_thread():
            with threadpool_limits(limits=1, user_api="blas"):
                return step()

        seconds = interleaved_best_times({"default": with_default_threads, "one": with_one_thread},
                                         rounds=3, repeats=3, warmup=1)
        print(row(f"MnistNet {name}, one BLAS thread", seconds["one"], seconds["default"],
                  "default BLAS threads"))
        print(row(f"MnistNet {name}, default BLAS threads", seconds["default"]))


if __name__ == "__main__":
    main()
