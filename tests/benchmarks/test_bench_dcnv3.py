"""The DCNv3 benchmark (benchmarks/bench_dcnv3.py) without its timings: its problem, how it judges a
target, and that an implementation disagreeing with the reference stops it before any timing."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_dcnv3 as bench  # noqa: E402


def test_the_problem_is_an_internimage_t_stage_with_normalised_masks():
    input, offset, mask, grad_output = bench.problem(**bench.SHAPE)
    assert input.shape == (1, 56, 56, 64) and input.dtype == np.float32
    assert offset.shape == (1, 56, 56, 4 * 9 * 2) and np.abs(offset).max() <= 1.5
    np.testing.assert_allclose(mask.reshape(1, 56, 56, 4, 9).sum(-1), 1.0, rtol=1e-5)


def test_a_target_passes_on_its_limit_and_misses_below_it():
    assert bench.verdict("forward", 1.0, 10.0).endswith("PASS")
    assert bench.verdict("forward", 1.0, 9.9).endswith("MISS")
    assert bench.verdict("forward+backward", 2.0, 10.0).endswith("PASS")
    assert bench.verdict("forward+backward", 2.0, 9.9).endswith("MISS")


def test_a_mismatch_is_printed_with_its_indices(capsys):
    expected = np.zeros((2, 3))
    wrong = expected.copy()
    wrong[1, 2] = 1.0
    assert not bench.check("cpu output", wrong, expected)
    assert "at (1, 2): got" in capsys.readouterr().out
    assert bench.check("cpu output", expected + 1e-6, expected)


def test_an_implementation_that_disagrees_is_not_timed(monkeypatch, capsys):
    monkeypatch.setattr(bench, "SHAPE", dict(N=1, H=4, W=5, group=2, group_channels=2))
    right = bench.ours()

    def wrong_backward(input, offset, mask, grad_output, **parameters):
        output, grad_input, grad_offset, grad_mask = right.forward_backward(input, offset, mask, grad_output,
                                                                            **parameters)
        return output, grad_input, -grad_offset, grad_mask

    monkeypatch.setattr(bench, "ours", lambda: bench.Implementation(right.forward, wrong_backward))
    monkeypatch.setattr(bench, "grid_sample_baseline", lambda: None)
    with pytest.raises(SystemExit, match="disagrees with the reference: not timing it"):
        bench.main(["--rounds", "1"])
    assert "MISMATCH dcn_numba cpu grad_offset" in capsys.readouterr().out


def test_page_faults_are_counted_per_call():
    import mmap

    def touch_fresh_pages(pages=64):
        region = mmap.mmap(-1, pages * mmap.PAGESIZE)  # anonymous memory: each page faults at first touch
        for page in range(pages):
            region[page * mmap.PAGESIZE] = 1
        region.close()

    assert 64 <= bench.page_faults_per_call(touch_fresh_pages, calls=4) < 128
    assert bench.page_faults_per_call(lambda: None, calls=4) < 8
