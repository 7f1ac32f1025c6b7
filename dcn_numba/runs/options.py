"""The command-line pieces the application commands share: argparse types, the output options
(`--out`, `--resume`, `--overwrite`, `--checkpoint-seconds`), and the mean ± std cells of their
tables.

    parser = argparse.ArgumentParser(...)
    add_output_options(parser, default="runs/latest")
    args = parser.parse_args(argv)
    run = outputs.open_run(args.out, "python -m dcn_numba.train", run_settings(args), args.resume,
                           args.overwrite)
"""

import argparse
import math
import os

import numpy as np

# Options that say where and how a run is written, not what it computes: a resumed run may
# change them.
OUTPUT_OPTIONS = ("out", "resume", "overwrite", "checkpoint_seconds")
DEFAULT_CHECKPOINT_SECONDS = 120.0


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed_int(text):
    """argparse type: an integer >= 0 (NumPy's generators take no negative seeds)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text):
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_output_options(parser, default, checkpoints=True):
    """--out (the run's folder), --resume or --overwrite, and, for commands that train,
    --checkpoint-seconds."""
    parser.add_argument("--out", default=default,
                        help="output folder: one run, metrics.json written last as the mark of a finished run")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint (a finished run is read back)")
    choice.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    if checkpoints:
        add_checkpoint_option(parser)


def add_checkpoint_option(parser):
    """--checkpoint-seconds, for commands that train."""
    parser.add_argument("--checkpoint-seconds", type=non_negative_float, default=DEFAULT_CHECKPOINT_SECONDS,
                        help="save a checkpoint at most this often (and at the end of each training)")


def memory_bytes():
    """This machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(parser, option, count, bytes_each, what):
    """Refuse, as a usage error naming `option`, a count of items (`what`) that cannot fit in
    this machine's memory: a clear error before any work rather than one from the allocator."""
    size = count * bytes_each
    if size > memory_bytes():
        parser.error(f"argument {option}: {count:,} {what} would take {size:.3g} bytes, more than this "
                     f"machine's {memory_bytes():.3g} bytes of memory")


def run_settings(args):
    """The options that define a run's results: every option but the output options."""
    return {name: value for name, value in vars(args).items() if name not in OUTPUT_OPTIONS}


def mean_std(values, scale=100, digits=1):
    """'mean ± std' (sample standard deviation; 0 for one value) of `values` × `scale`."""
    values = scale * np.asarray(values, dtype=np.float64)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {spread:.{digits}f}"


def with_seeds(values, scale=100, digits=1):
    """`mean_std`, then every seed's value in parentheses."""
    each = ", ".join(f"{scale * v:.{digits}f}" for v in values)
    return f"{mean_std(values, scale, digits)} ({each})"


def threads():
    """How many threads the kernels and BLAS were allowed, as the environment set them."""
    names = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    given = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    return ", ".join(given) if given else "default threads"
