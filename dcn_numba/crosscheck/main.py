"""`python -m dcn_numba.crosscheck IMPLEMENTATION ...`: see the package's docstring."""

import argparse

from dcn_numba.crosscheck.adapters import BUILT_IN, implementation
from dcn_numba.crosscheck.battery import battery
from dcn_numba.crosscheck.report import run_case, table


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.crosscheck",
        description="Check implementations of the deformable ops against dcn_numba's reference.")
    parser.add_argument("implementations", nargs="+", metavar="IMPLEMENTATION",
                        help=f"{', '.join(BUILT_IN)}, or module:function (a deform_conv2d with "
                             "dcn_numba's signature over NumPy arrays; optional .backward)")
    arguments = parser.parse_args(argv)
    cases = battery()
    rows = []
    try:
        chosen = [implementation(name) for name in arguments.implementations]
    except (ValueError, ImportError, AttributeError) as error:
        parser.error(str(error))
    for each in chosen:
        rows += [run_case(each, case) for case in cases]
    print(table(rows))
    unexplained = [r for r in rows if not r.explained]
    ran = [r for r in rows if r.forward != "n/a" or r.failure is not None]
    print(f"\n{len(ran)} cases run, {len(unexplained)} unexplained")
    return 1 if unexplained else 0
