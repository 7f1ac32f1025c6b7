"""The tutorials run top to bottom, headless, exactly as a reader would run them.

Each notebook's source is a jupytext percent-format script tutorials/NN_name.py; every one found
there is tested, whoever wrote it. The test converts it to a notebook and executes it with nbclient
in a fresh kernel (the venv's Python, started by the 'python3' kernelspec), in the tutorials
directory, with:

* matplotlib's inline backend, as in Jupyter, so that every figure becomes an image/png output
  of its cell, and the test can see that each figure cell drew one;
* DCN_NUMBA_TUTORIAL_SOLUTIONS=1, so that each exercise (tutorials/exercises.py) takes its
  solution from tutorials/solutions/ and its check runs on it;
* DCN_NUMBA_TUTORIAL_SMOKE=1, which notebooks read to shrink long runs (the training notebook);
* one thread for Numba's parallel loops and for BLAS: the suite runs two notebooks at a time on
  two cores, and oversubscribed threads that spin while they wait for each other made the
  training notebook eight times slower;
* no NUMBA_ENABLE_CUDASIM inherited from the test session: a reader's kernel starts without it,
  and the CUDA notebook decides for itself whether to simulate.

Every notebook checks its own claims with assertions (kernel against reference, analytic against
finite-difference gradients, captions against the numbers they state), so a wrong result fails
here as an error in the failing cell. The structural tests below hold every notebook to the
course's conventions: what you will learn first, a summary last, a caption after every figure,
exercises with solutions, dcn_numba imported before NumPy, tqdm.auto progress bars, and a README
that lists them all.
"""

import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
sys.path.insert(0, str(TUTORIALS))
import course_site  # noqa: E402  (the tutorials' own modules, found in tutorials/)
import exercises  # noqa: E402

# A bound per cell, generous for a loaded 2-core machine: the slowest cell is the short training
# run of notebook 7, and Numba's first compilation of a parallel kernel takes tens of seconds.
CELL_TIMEOUT_S = 240
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebook_id(path):
    return path.stem


def load(source):
    return jupytext.read(source)


def figure_cells(cells):
    """Indices of the code cells that draw a figure (they call plt.show())."""
    return [i for i, cell in enumerate(cells) if cell.cell_type == "code" and "plt.show()" in cell.source]


def test_the_tutorials_are_there():
    numbers = [int(path.name[:2]) for path in SOURCES]
    assert numbers == list(range(1, len(numbers) + 1)), \
        f"expected notebooks numbered 01, 02, ... without gaps in {TUTORIALS}, got {numbers}"
    assert len(numbers) >= 7, f"expected at least the seven notebooks 01..07, got {numbers}"


def test_notebooks_run_on_this_python():
    """The 'python3' kernelspec must start this interpreter, whose environment holds the package
    under test, and not some other Python found on the PATH."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3").execute()
    assert Path(notebook.cells[0].outputs[0]["text"].strip()) == Path(sys.executable)


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_notebook_runs_top_to_bottom_and_draws_every_figure(source, monkeypatch, tmp_path):
    """Every figure cell draws one image; and where mkdocs and mkdocs-jupyter are installed (the dev
    and docs extras), the notebook's page of the course site, built from this very execution
    rather than a second one, shows every image the notebook drew."""
    monkeypatch.setenv("MPLBACKEND", INLINE_BACKEND)
    monkeypatch.setenv("DCN_NUMBA_TUTORIAL_SOLUTIONS", "1")
    monkeypatch.setenv("DCN_NUMBA_TUTORIAL_SMOKE", "1")
    for threads in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(threads, "1")
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    notebook = load(source)
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    for index in figure_cells(notebook.cells):
        images = [output for output in notebook.cells[index].outputs
                  if output.get("output_type") == "display_data" and "image/png" in output.get("data", {})]
        assert len(images) == 1, \
            f"{source.name}: the figure cell {index} produced {len(images)} image/png outputs, expected 1"
    if course_site.site_tool_missing() is None:  # else test_the_course_site_links_every_notebook says why
        drawn = sum("image/png" in output.get("data", {}) for cell in notebook.cells
                    for output in cell.get("outputs", []))
        site = course_site.build({source.stem: notebook}, tmp_path / "site", tmp_path / "course")
        shown = course_site.page_images(course_site.notebook_page(site, source.stem))
        assert len(shown) == drawn, f"{source.name}: its page shows {len(shown)} images, the notebook drew {drawn}"


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_notebook_opens_with_goals_and_ends_with_a_summary(source):
    cells = load(source).cells
    assert cells[0].cell_type == "markdown", f"{source.name}: the first cell must be markdown"
    assert cells[0].source.startswith("# "), f"{source.name}: the first cell must open with the title"
    assert "what you will learn" in cells[0].source.lower(), \
        f"{source.name}: the first cell must say what you will learn"
    assert cells[-1].cell_type == "markdown", f"{source.name}: the last cell must be markdown"
    assert cells[-1].source.startswith("## Summary"), f"{source.name}: the last cell must be a '## Summary'"


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_every_figure_has_a_caption(source):
    """A figure is drawn by a code cell calling plt.show(); the next cell must be its caption,
    a markdown cell opening with '**Figure N.**', numbered in order through the notebook."""
    cells = load(source).cells
    figures = figure_cells(cells)
    assert figures, f"{source.name} draws no figure"
    for number, index in enumerate(figures, start=1):
        assert cells[index].source.count("plt.show()") == 1, \
            f"{source.name}: cell {index} draws several figures; give each its own cell and caption"
        assert index + 1 < len(cells), f"{source.name}: the figure of cell {index} has no caption after it"
        caption = cells[index + 1]
        assert caption.cell_type == "markdown", f"{source.name}: cell {index + 1} must be Figure {number}'s caption"
        assert caption.source.startswith(f"**Figure {number}.**"), \
            f"{source.name}: the figure drawn in cell {index} needs a caption cell right after it, " \
            f"starting with '**Figure {number}.**'"


def code_of(source):
    return "\n".join(cell.source for cell in load(source).cells if cell.cell_type == "code")


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_exercises_have_solutions(source):
    """Every notebook has exercises; each is an @exercise function with a check right after it
    and a solution of the same name in tutorials/solutions/<notebook>.py."""
    code = code_of(source)
    assert f'exercises_of("{source.stem}")' in code, \
        f"{source.name}: set up its exercises with exercise = exercises_of(\"{source.stem}\")"
    names = re.findall(r"^@exercise\ndef (\w+)\(", code, flags=re.MULTILINE)
    assert names, f"{source.name} has no exercise (a function decorated with @exercise)"
    solutions = exercises.solutions_of(source.stem)
    for name in names:
        assert callable(getattr(solutions, name, None)), \
            f"tutorials/solutions/{source.stem}.py has no solution {name}() for {source.name}"
        assert re.search(rf"^check\({name},", code, flags=re.MULTILINE), \
            f"{source.name}: exercise {name} is never checked (check({name}, ...))"


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_dcn_numba_is_imported_before_numpy(source):
    """dcn_numba sets the CPU runtime (BLAS threads) on import, which only counts before NumPy loads."""
    code = code_of(source)
    first_dcn_numba = re.search(r"^(import|from) dcn_numba\b", code, flags=re.MULTILINE)
    first_numpy = re.search(r"^(import|from) numpy\b", code, flags=re.MULTILINE)
    assert first_dcn_numba, f"{source.name} does not import dcn_numba"
    assert first_numpy is None or first_dcn_numba.start() < first_numpy.start(), \
        f"{source.name}: import dcn_numba before numpy"


@pytest.mark.parametrize("source", SOURCES, ids=notebook_id)
def test_progress_bars_are_tqdm_auto(source):
    """Plain tqdm writes hundreds of stderr chunks into a saved notebook; tqdm.auto draws a widget."""
    code = code_of(source)
    assert not re.search(r"^(from tqdm import|import tqdm$)", code, flags=re.MULTILINE), \
        f"{source.name}: use `from tqdm.auto import tqdm`"


def test_an_unwritten_exercise_fails_its_check():
    def unwritten(x):
        raise NotImplementedError("Exercise 0.1")
    with pytest.raises(AssertionError, match="unwritten is not written yet"):
        exercises.check(unwritten, lambda f: f(1))


def test_a_wrong_exercise_fails_its_check():
    def wrong(x):
        return x + 1
    def test(f):
        assert f(1) == 1, f"f(1) = {f(1)}, expected 1"
    with pytest.raises(AssertionError, match=r"wrong is not right yet: f\(1\) = 2, expected 1"):
        exercises.check(wrong, test)


def test_the_solutions_switch_hands_back_the_solution(monkeypatch):
    notebook = SOURCES[0].stem
    solutions = exercises.solutions_of(notebook)
    name = next(name for name, value in vars(solutions).items()
                if callable(value) and getattr(value, "__module__", None) == solutions.__name__)

    def learner():
        raise NotImplementedError
    learner.__name__ = name
    monkeypatch.setattr(exercises, "SOLUTIONS", False)
    assert exercises.exercises_of(notebook)(learner) is learner
    monkeypatch.setattr(exercises, "SOLUTIONS", True)
    solution = exercises.exercises_of(notebook)(learner)
    assert solution.__code__.co_filename == str(exercises.SOLUTIONS_DIR / f"{notebook}.py")
    assert solution.__name__ == name


def test_readme_lists_every_notebook():
    readme = (TUTORIALS / "README.md").read_text()
    listed = re.findall(r"\[[^\]]*\]\((\d\d_\w+\.py)\)", readme)
    assert listed == [path.name for path in SOURCES], \
        f"tutorials/README.md must link every notebook source in order; it links {listed}"


def test_a_crash_inside_an_answer_is_reported_as_not_right():
    def crashes(x):
        value, weights = x  # the tuple mistake of exercise 1.1: too many values to unpack
        return value
    with pytest.raises(AssertionError, match=r"crashes is not right yet: it raised ValueError"):
        exercises.check(crashes, lambda f: f((1, 2, 3)))


def test_a_scatter_without_atomics_fails_the_col2im_check():
    def plain_scatter(grad_x, index, value):
        grad_x[index] += value

    def atomic_scatter(grad_x, index, value):
        cuda.atomic.add(grad_x, index, value)  # noqa: F821 (only parsed, never run)

    def writes_elsewhere(grad_x, other, index, value):
        other[index] += value

    with pytest.raises(AssertionError, match=r"`grad_x\[index\] \+= value` writes grad_x\[...\] directly"):
        exercises.scatters_with_atomics(plain_scatter, "grad_x")
    with pytest.raises(AssertionError, match=r"no cuda.atomic.add\(grad_x, ...\)"):
        exercises.scatters_with_atomics(writes_elsewhere, "grad_x")
    exercises.scatters_with_atomics(atomic_scatter, "grad_x")


def test_the_col2im_solution_scatters_with_atomics():
    solution = exercises.solutions_of("05_cuda_kernels_in_numba").naive_col2im
    exercises.scatters_with_atomics(solution, "grad_x")


def test_the_course_site_links_every_notebook(tmp_path):
    """`make docs` renders README, specification and notebooks; built here from each notebook's
    title cell alone (the pages' figures are checked where each notebook runs), every notebook has
    its page, linked from the home page and from the course's index."""
    missing = course_site.site_tool_missing()
    if missing:
        pytest.skip(f"the course site cannot be built: {missing}")
    titles = {path.stem: nbformat.v4.new_notebook(cells=[load(path).cells[0]]) for path in SOURCES}
    site = course_site.build(titles, tmp_path / "site", tmp_path / "course")
    home = (site / "index.html").read_text()
    index = (site / "tutorials" / "index.html").read_text()
    for path in SOURCES:
        assert (site / "tutorials" / path.stem / "index.html").is_file(), f"no page for {path.name}"
        assert f'href="tutorials/{path.stem}/"' in home, f"the home page does not link {path.stem}"
        assert f'href="{path.stem}/"' in index, f"the course's index does not link {path.stem}"
    assert (site / "docs" / "specification" / "index.html").is_file(), "no page for the specification"


def test_the_site_lists_every_notebook_in_order():
    config = (TUTORIALS.parent / "mkdocs.yml").read_text()
    listed = re.findall(r"tutorials/(\d\d_\w+)\.ipynb", config)
    assert listed == [path.stem for path in SOURCES], f"mkdocs.yml's nav lists {listed}"
