"""What every training command does around its run: parse the options, set the process up for the
kernels, train, print the report; a problem with the output folder ends as the command's usage
error, naming the option."""

from dcn_numba import speed
from dcn_numba.runs.outputs import OutputError
from dcn_numba.runtime.settings import keep_freed_memory


def train_command(argv, parse_args, run, build_parser, report):
    """parse_args(argv), then run(args) with freed memory kept for reuse and the speed layer's
    faster Functions on, then print(report(args, metrics)); an OutputError becomes
    build_parser().error (exit status 2, the message naming --out or the file)."""
    args = parse_args(argv)
    keep_freed_memory()
    speed.switch_on()
    try:
        metrics = run(args)
    except OutputError as error:
        build_parser().error(str(error))
    print(report(args, metrics))
    return metrics
