"""Run every benchmark script in turn: `python benchmarks/bench.py` (or `make bench`).

Each script first checks its kernels against the reference, then prints timings and ratios
against baselines measured in the same run. Results measured so far: benchmarks/RESULTS.md.
"""

import pathlib
import subprocess
import sys

SCRIPTS = ["bench_deform_conv.py", "bench_roi_pool.py", "bench_train_step.py"]


def main():
    here = pathlib.Path(__file__).parent
    failed = []
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        if subprocess.call([sys.executable, str(here / script)] + sys.argv[1:]) != 0:
            failed.append(script)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
