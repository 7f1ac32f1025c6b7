"""`python -m dcn_numba.crosscheck [--op dcnv3] IMPLEMENTATION ...`: see the package's docstring."""

import argparse

from dcn_numba.crosscheck import adapters, dcnv3
from dcn_numba.crosscheck.battery import battery
from dcn_numba.crosscheck.report import run_case, table

OPS = {"dcn": "deform_conv2d, deform_roi_pool and deform_psroi_pool (the default)",
       "dcnv3": "dcnv3 and dcnv4"}


def _battery(op):
    """(implementation by name, cases, run_case, report) of the battery of `op`."""
    if op == "dcnv3":
        return dcnv3.implementation, dcnv3.battery(), dcnv3.run_case, dcnv3.report
    return adapters.implementation, battery(), run_case, table


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dcn_numba.crosscheck",
        description="Check implementations of the deformable ops against dcn_numba's reference.")
    parser.add_argument("--op", choices=tuple(OPS), default="dcn",
                        help="the battery: " + "; ".join(f"{name}: {ops}" for name, ops in OPS.items()))
    parser.add_argument("implementations", nargs="+", metavar="IMPLEMENTATION",
                        help=f"with --op dcn: {', '.join(adapters.BUILT_IN)}, or module:function (a "
                             "deform_conv2d with dcn_numba's signature over NumPy arrays; optional "
                             f".backward); with --op dcnv3: {', '.join(dcnv3.BUILT_IN)}")
    arguments = parser.parse_args(argv)
    implementation, cases, run, report = _battery(arguments.op)
    try:
        chosen = [implementation(name) for name in arguments.implementations]
    except (ValueError, ImportError, AttributeError) as error:
        parser.error(str(error))
    rows = [run(each, case) for each in chosen for case in cases]
    print(report(rows))
    unexplained = [r for r in rows if not r.explained]
    ran = [r for r in rows if r.forward != "n/a" or r.failure is not None]
    print(f"\n{len(ran)} cases run, {len(unexplained)} unexplained")
    return 1 if unexplained else 0
