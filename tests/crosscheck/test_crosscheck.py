"""python -m dcn_numba.crosscheck: the battery, the table, the named conventions, the exit status.

These run without any optional package: dcn_numba's own backends, and user implementations from
tests/crosscheck/crosscheck_callables.py given as module:function. The runs against torchvision, OpenVINO
and ONNX Runtime need those packages and are made by hand (docs/crosscheck.md).
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dcn_numba
from dcn_numba.crosscheck.battery import battery
from dcn_numba.crosscheck.main import main
from dcn_numba.ops.locations import sampling_locations


def run(capsys, *implementations):
    """The exit status and the printed table of the command for `implementations`."""
    status = main(list(implementations))
    return status, capsys.readouterr().out


def result_of(table, implementation, case):
    """The result column of one row of the printed table."""
    for line in table.splitlines():
        if line.startswith(implementation) and case in line:
            return line.rsplit("  ", 1)[-1].strip()
    raise AssertionError(f"no row for {implementation!r} and {case!r} in\n{table}")


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
def test_dcn_numba_backends_agree_on_every_case(capsys, backend):
    status, table = run(capsys, backend)
    assert status == 0, table
    for case in battery():
        assert result_of(table, backend, case.name) == "agrees"


def test_the_reference_gives_the_hand_computed_values():
    for case in battery():
        if case.hand is not None:
            computed = dcn_numba.deform_conv2d(**case.arrays, **case.parameters, backend="reference")
            np.testing.assert_allclose(computed, case.hand, rtol=0, atol=1e-15)


def test_the_battery_samples_exactly_on_minus_one_and_on_H_and_inside_the_edge_pixels():
    cases = {case.name: case for case in battery()}

    def locations(name):
        case = cases[name]
        return case.arrays["input"].shape[2:], sampling_locations(
            case.arrays["offset"], case.arrays["weight"].shape[2:], **case.parameters)

    (H, W), exact = locations("samples exactly on -1 and H")
    assert np.any(exact == -1)
    assert np.any(exact[..., 0] == H)
    assert np.any(exact[..., 1] == W)
    (H, W), inside = locations("samples in (-1, 0) and (H-1, H)")
    assert np.any((inside > -1) & (inside < 0))
    assert np.any((inside[..., 0] > H - 1) & (inside[..., 0] < H))


def test_a_correct_user_callable_agrees_forward_and_gradients(capsys):
    status, table = run(capsys, "crosscheck_callables:correct")
    assert status == 0, table
    rows = [line for line in table.splitlines() if line.startswith("crosscheck_callables")]
    convolutions = [line for line in rows if " deform_conv2d " in line]
    assert len(convolutions) == 8
    assert all(line.endswith("agrees") for line in convolutions)
    assert all("—" not in line for line in convolutions)  # gradients were compared


def test_the_mxnet_dcnv1_rule_is_named_and_accepted(capsys):
    status, table = run(capsys, "crosscheck_callables:mxnet_dcnv1")
    assert status == 0, table
    name = "crosscheck_callables:mxnet_dcnv1"
    assert result_of(table, name, "samples in (-1, 0)") == "convention: MXNet DCNv1 rule (forward)"
    assert result_of(table, name, "hand: 2x2 means") == "convention: MXNet DCNv1 rule (forward)"
    assert result_of(table, name, "samples exactly on -1 and H") == "agrees"
    assert "MXNet DCNv1 rule: samples in (-1, 0) read 0" in table


@pytest.mark.parametrize("callable_, verdict", [
    ("swapped_offsets", "MISMATCH (forward)"),
    ("doubled_offset_gradient", "MISMATCH (gradients)"),
    ("raises", "FAILED: forward raised RuntimeError: not implemented yet"),
])
def test_a_wrong_user_callable_exits_non_zero(capsys, callable_, verdict):
    status, table = run(capsys, f"crosscheck_callables:{callable_}")
    assert status == 1
    assert result_of(table, f"crosscheck_callables:{callable_}", "offset groups 2") == verdict
    assert table.rstrip().endswith("unexplained")
    assert not table.rstrip().endswith(" 0 unexplained")


def test_one_wrong_implementation_among_right_ones_fails_the_run(capsys):
    status, _ = run(capsys, "reference", "crosscheck_callables:swapped_offsets")
    assert status == 1


def test_an_unknown_implementation_is_a_usage_error_naming_it(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["tensorflow"])
    assert exit.value.code == 2
    assert "unknown implementation 'tensorflow'" in capsys.readouterr().err


@pytest.mark.parametrize("callable_, verdict", [
    ("edits_its_offset", "FAILED: forward changed its input offset"),
    ("edits_its_grad_output", "FAILED: backward changed its input grad_output"),
])
def test_an_implementation_that_changes_its_inputs_fails_and_the_next_one_sees_the_battery_unchanged(
        capsys, callable_, verdict):
    name = f"crosscheck_callables:{callable_}"
    status, table = run(capsys, name, "reference")
    assert status == 1
    for case in battery():
        if case.op == "deform_conv2d":
            assert result_of(table, name, case.name) == verdict
        assert result_of(table, "reference", case.name) == "agrees"


def test_the_command_runs_as_a_module():
    run = subprocess.run([sys.executable, "-m", "dcn_numba.crosscheck", "--help"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "module:function" in run.stdout


def test_the_module_exits_non_zero_on_a_mismatch():
    tests = str(pathlib.Path(__file__).resolve().parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "dcn_numba.crosscheck", "crosscheck_callables:swapped_offsets"],
                         capture_output=True, text=True, env=environment, timeout=600)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "MISMATCH (forward)" in run.stdout
