"""The tutorials run top to bottom, headless, exactly as a reader would run them.

Each notebook's source is a jupytext percent-format script in tutorials/. The test converts it to
a notebook and executes it with nbclient in a fresh kernel (the venv's Python, started by the
'python3' kernelspec), in the tutorials directory, with:

* MPLBACKEND=Agg, so figures render without a display;
* DCN_NUMBA_TUTORIAL_SMOKE=1, which notebooks read to shrink long runs (the training notebook);
* one thread for Numba's parallel loops and for BLAS: the suite runs two notebooks at a time on
  two cores, and oversubscribed threads that spin while they wait for each other made the
  training notebook eight times slower;
* no NUMBA_ENABLE_CUDASIM inherited from the test session: a reader's kernel starts without it,
  and the CUDA notebook decides for itself whether to simulate.

Every notebook checks its own claims with assertions (kernel against reference, analytic against
finite-difference gradients), so a wrong result fails here as an error in the failing cell. The
structural tests below hold the notebooks to the issue's rules: what you will learn first, a
summary last, a caption after every figure, and a README that lists them all.
"""

import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
# A bound per cell, generous for a loaded 2-core machine: the slowest cell is the short training
# run of notebook 7, and Numba's first compilation of a parallel kernel takes tens of seconds.
CELL_TIMEOUT_S = 240


def notebook_id(path):
    return path.stem


def load(source):
    return jupytext.read(source)


def test_the_tutorials_are_there():
    numbers = [int(path.name[:2]) for path in SOURCES]
    assert numbers == list(range(1, 8)), f"expected notebooks 01..07 in {TUTORIALS}, got {numbers}"


def test_notebooks_run_on_this_python():
    """The 'python3' kernelspec must start this interpreter, whose environment holds the package
    under test, and not some other Python found on the PATH."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3").execute()
    assert Path(notebook.cells[0].outputs[0]["text"].strip()) == Path(sys.executable)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_notebook_runs_top_to_bottom(source, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("DCN_NUMBA_TUTORIAL_SMOKE", "1")
    for threads in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(threads, "1")
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    client = NotebookClient(
        load(source),
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_notebook_opens_with_goals_and_ends_with_a_summary(source):
    cells = load(source).cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# "), \
        f"{source.name}: the first cell must be a markdown cell with the notebook's title"
    assert "what you will learn" in cells[0].source.lower(), \
        f"{source.name}: the first cell must say what you will learn"
    assert cells[-1].cell_type == "markdown" and cells[-1].source.startswith("## Summary"), \
        f"{source.name}: the last cell must be a markdown '## Summary'"


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_every_figure_has_a_caption(source):
    """A figure is drawn by a code cell calling plt.show(); the next cell must be its caption,
    a markdown cell opening with '**Figure N.**', numbered in order through the notebook."""
    cells = load(source).cells
    figure_cells = [i for i, cell in enumerate(cells)
                    if cell.cell_type == "code" and "plt.show()" in cell.source]
    assert figure_cells, f"{source.name} draws no figure"
    for number, index in enumerate(figure_cells, start=1):
        assert cells[index].source.count("plt.show()") == 1, \
            f"{source.name}: cell {index} draws several figures; give each its own cell and caption"
        caption = cells[index + 1] if index + 1 < len(cells) else None
        assert caption is not None and caption.cell_type == "markdown" \
            and caption.source.startswith(f"**Figure {number}.**"), \
            f"{source.name}: the figure drawn in cell {index} needs a caption cell right after it, " \
            f"starting with '**Figure {number}.**'"


def test_readme_lists_every_notebook():
    readme = (TUTORIALS / "README.md").read_text()
    listed = re.findall(r"\[[^\]]*\]\((\d\d_\w+\.py)\)", readme)
    assert listed == [path.name for path in SOURCES], \
        f"tutorials/README.md must link every notebook source in order; it links {listed}"
