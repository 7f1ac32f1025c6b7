"""The DCNv3/DCNv4 cross-check (dcn_numba.crosscheck.dcnv3, run as `python -m dcn_numba.crosscheck
--op dcnv3`): dcn_numba's backends agree on every case, the hand-computed values are right, a wrong
convention is a MISMATCH, the documented conventions are named, and the exit status says so. The grid_sample adapters need torch and are skipped
without it."""

import numpy as np
import pytest

import dcn_numba
from dcn_numba.crosscheck.adapters import Implementation, NotApplicable
from dcn_numba.crosscheck import dcnv3 as crosscheck
from dcn_numba.crosscheck.main import main
from dcn_numba.reference import dcnv3 as reference


def results(implementation):
    """{case name: (forward verdict, gradients verdict, failure)} of every case."""
    return {row.case: (row.forward, row.gradients, row.failure)
            for row in (crosscheck.run_case(implementation, case) for case in crosscheck.battery())}


@pytest.mark.parametrize("backend", ["reference", "cpu", "cuda"])
def test_dcn_numba_backends_agree_on_every_case(backend):
    for case, verdicts in results(crosscheck.implementation(backend)).items():
        assert verdicts == ("agrees", "agrees", None), case


def test_the_reference_gives_the_hand_computed_values():
    hand = [case for case in crosscheck.battery() if case.hand is not None]
    assert len(hand) == 4
    for case in hand:
        np.testing.assert_allclose(dcn_numba.dcnv3(**case.arrays, **case.parameters, backend="reference"),
                                   case.hand, rtol=0, atol=1e-15)


def test_the_battery_covers_the_conventions():
    cases = {case.name: case for case in crosscheck.battery()}
    assert {case.op for case in cases.values()} == {"dcnv3", "dcnv4"}
    assert {case.parameters.get("softmax") for case in cases.values() if case.op == "dcnv4"} == {False, True}
    assert any(case.parameters["pad_h"] != case.parameters["pad_w"] for case in cases.values())
    assert any(case.parameters["remove_center"] for case in cases.values())
    assert any(case.parameters["offset_scale"] != 1 for case in cases.values() if case.hand is None)
    case = cases["samples exactly on -1 (integer offsets)"]
    parameters = reference.Parameters(**case.parameters)
    p_y, p_x = reference.tap_locations(case.arrays["offset"], 0, 0, (0, 0), parameters)
    assert np.any(p_y == -1) and np.any(p_x == -1)


def transposed_taps():
    """The reference with the taps numbered row-major: what an implementation that got §3.2
    wrong computes."""
    def forward(input, offset, mask, **parameters):
        N, H_out, W_out = offset.shape[:3]
        kh, kw = parameters["kernel_h"], parameters["kernel_w"]
        if parameters["remove_center"] or kh != kw:
            raise NotApplicable("only square kernels with their centre")
        order = [i_y * kw + i_x for i_x in range(kw) for i_y in range(kh)]  # row-major number of each tap
        G = parameters["group"]
        shuffled = mask.reshape(N, H_out, W_out, G, -1)[..., order].reshape(mask.shape)
        moved = offset.reshape(N, H_out, W_out, G, -1, 2)[..., order, :].reshape(offset.shape)
        return dcn_numba.dcnv3(input, moved, shuffled, **parameters, backend="reference")

    def backward(*arguments, **parameters):
        raise NotApplicable("forward only")

    return Implementation("row-major", forward={"dcnv3": forward, "dcnv4": backward},
                          backward={"dcnv3": backward, "dcnv4": backward})


def test_taps_numbered_row_major_are_a_mismatch():
    verdicts = results(transposed_taps())
    assert verdicts["hand: tap 1 is one column left (column-major)"][0] == "MISMATCH"
    assert verdicts["offset_scale 0.6, dilation (2, 1), stride 2"][0] == "MISMATCH"


def exchanged_pads():
    """The reference with pad_h and pad_w exchanged, as the published pure-PyTorch function pads;
    not applicable where that changes the output's shape (the published function fails there)."""
    def call(op, *arrays, **parameters):
        exchanged = dict(parameters, pad_h=parameters["pad_w"], pad_w=parameters["pad_h"])
        try:
            return getattr(dcn_numba, op)(*arrays, **exchanged, backend="reference")
        except ValueError as error:
            raise NotApplicable(str(error))

    return Implementation("exchanged-pads",
                          forward={op: (lambda op: lambda **kw: call(op, **kw))(op) for op in crosscheck.OPS},
                          backward={op: (lambda op: lambda grad, **kw: call(op + "_backward", grad, **kw))(op)
                                    for op in crosscheck.OPS})


def test_exchanged_pads_are_named():
    verdicts = results(exchanged_pads())
    assert verdicts["unequal pads (1, 2), stride 3"] == ("pads exchanged", "pads exchanged", None)
    assert verdicts["unequal pads (0, 2)"][:2] == ("n/a", "n/a")
    assert verdicts["3 groups, 2x3 kernel, offset_scale 1.5"] == ("agrees", "agrees", None)


def gradient_without_the_validity_test():
    """The reference's gradients with every sample exactly on −1 moved just inside: the bilinear
    formula's gradient there, as grid_sample computes it."""
    def backward(op):
        def run(grad_output, **arguments):
            case = crosscheck.Case("", op, {name: arguments.pop(name) for name in crosscheck.GRADIENTS[op]},
                                   arguments)
            return crosscheck.gradient_at_minus_one(case, grad_output)
        return run

    reference_backend = crosscheck.implementation("reference")
    return Implementation("no-validity-test", forward=reference_backend.forward,
                          backward={op: backward(op) for op in crosscheck.OPS})


def test_the_gradient_at_minus_one_is_named():
    verdicts = results(gradient_without_the_validity_test())
    assert verdicts["samples exactly on -1 (integer offsets)"] == ("agrees", "gradient at exactly -1", None)


def test_the_command_runs_this_battery_with_op_dcnv3(capsys):
    assert main(["--op", "dcnv3", "reference", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "22 cases run, 0 unexplained" in output
    assert "hand: tap 1 is one column left (column-major)" in output


def test_the_command_exits_1_on_a_mismatch_and_names_the_conventions(capsys, monkeypatch):
    """A wrong implementation makes the command exit 1; a convention met is named under the table."""
    wrong = {"row-major": transposed_taps(), "exchanged-pads": exchanged_pads()}
    monkeypatch.setattr(crosscheck, "implementation", lambda name: wrong[name])
    assert main(["--op", "dcnv3", "row-major"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["--op", "dcnv3", "exchanged-pads"]) == 0
    assert "pads exchanged: InternImage's pure-PyTorch function pads the rows by pad_w" in capsys.readouterr().out


def test_the_command_refuses_names_of_the_other_battery():
    with pytest.raises(SystemExit) as caught:
        main(["--op", "dcnv3", "torchvision"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        main(["--op", "dcnv5", "cpu"])


@pytest.mark.parametrize("name", ["torch-grid-sample", "torch-grid-sample-upstream-pads"])
def test_the_grid_sample_adapter_differs_only_by_named_conventions(name):
    pytest.importorskip("torch", reason="the grid_sample adapter runs on PyTorch, an optional dependency")
    verdicts = results(crosscheck.implementation(name))
    assert all(failure is None for _, _, failure in verdicts.values())
    assert verdicts["samples exactly on -1 (integer offsets)"] == ("agrees", "gradient at exactly -1", None)
    upstream = name.endswith("upstream-pads")
    assert verdicts["unequal pads (1, 2), stride 3"] == (
        ("pads exchanged", "pads exchanged", None) if upstream else ("agrees", "agrees", None))
    assert verdicts["unequal pads (0, 2)"][:2] == (("n/a", "n/a") if upstream else ("agrees", "agrees"))
    others = {case: v for case, v in verdicts.items() if "pads" not in case and "-1" not in case}
    assert all(v == ("agrees", "agrees", None) for v in others.values()), others
