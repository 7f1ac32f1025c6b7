"""The course as a static web site: the executed notebooks with their figures, the README, the
specification and the results pages, to read without installing anything.

    python tutorials/course_site.py --out build/site          (what `make docs` runs)

executes every notebook tutorials/NN_*.py in a fresh kernel, as the tests do (the exercises'
solutions on, figures inline), writes the executed notebooks and the project's Markdown pages into
build/course, and renders them with mkdocs and mkdocs-jupyter (the `docs` extra), configured by
mkdocs.yml at the repository root. mkdocs-jupyter renders outputs as they are and executes
nothing, so a notebook runs once per build. The test suite reuses this module on the notebook it
has just executed (tests/tutorials/test_tutorials.py), so no notebook runs twice there either.

Links between the pages are rewritten for the site: a notebook source `NN_name.py` becomes its
page, `NN_name.ipynb`. The tutorials' helper modules (checks.py, exercises.py, solutions/) are
copied along, so the notebooks' links to them open the files.
"""

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
CONFIG = ROOT / "mkdocs.yml"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The kernel environment of an executed notebook: every exercise on its solution, figures inline,
# and no warning from tqdm that it draws text progress bars, not widgets (a page cannot run widgets).
NOTEBOOK_ENVIRONMENT = {"MPLBACKEND": INLINE_BACKEND, "DCN_NUMBA_TUTORIAL_SOLUTIONS": "1",
                        "PYTHONWARNINGS": "ignore:IProgress not found"}
CELL_TIMEOUT_S = 600


def sources():
    """The notebook sources, in course order."""
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def site_tool_missing():
    """None when mkdocs and mkdocs-jupyter import, else the reason the site cannot be built here."""
    try:
        import mkdocs  # noqa: F401
        import mkdocs_jupyter  # noqa: F401
    except ImportError as missing:
        return f"{missing.name} is not installed: pip install -e \".[docs]\""
    return None


def execute(source, timeout=CELL_TIMEOUT_S):
    """The notebook of `source`, run top to bottom in a fresh kernel in tutorials/ (figures inline,
    the exercises' solutions on)."""
    notebook = jupytext.read(source)
    previous = {name: os.environ.get(name) for name in NOTEBOOK_ENVIRONMENT}
    os.environ.update(NOTEBOOK_ENVIRONMENT)  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook


def site_links(markdown, prefix=""):
    """`markdown` of a Markdown page with every link to a notebook source (prefix + NN_name.py)
    pointing at the notebook, which mkdocs turns into a link to its page."""
    return re.sub(rf"\]\(({re.escape(prefix)}\d\d_\w+)\.py\)", r"](\1.ipynb)", markdown)


def notebook_links(markdown):
    """`markdown` of a notebook cell with its relative links made relative to the notebook's page,
    tutorials/NN_name/index.html, which mkdocs-jupyter does not do: a notebook source becomes its
    page, a Markdown page its folder, any other file is reached one folder up."""
    def relink(match):
        target = match.group(1)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        target = re.sub(r"^(\d\d_\w+)\.py$", r"\1/", target)
        target = re.sub(r"\.md(#.*)?$", r"/\1", target)
        return f"](../{target})"
    return re.sub(r"\]\(([^)\s]+)\)", relink, markdown)


def settled_streams(outputs):
    """`outputs` with consecutive stream outputs of the same name joined, and every line shown as a
    terminal leaves it: the text after its last carriage return. A progress bar, which redraws
    itself with carriage returns hundreds of times, keeps only its final state."""
    settled = []
    for output in outputs:
        if (output.get("output_type") == "stream" and settled and settled[-1].get("output_type") == "stream"
                and settled[-1]["name"] == output["name"]):
            settled[-1]["text"] += output["text"]
        else:
            settled.append(output)
    for output in settled:
        if output.get("output_type") == "stream":
            output["text"] = "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in output["text"].split("\n"))
    return settled


def assemble(notebooks, folder):
    """Lay out the site's sources in `folder`: index.md (the README), docs/ (specification, results,
    figures), benchmarks/RESULTS.md, tutorials/index.md (the tutorials' README), the executed
    notebooks {stem: notebook} as tutorials/<stem>.ipynb, and the tutorials' helper modules."""
    folder = Path(folder)
    (folder / "tutorials").mkdir(parents=True, exist_ok=True)
    readme = (ROOT / "README.md").read_text().replace("](tutorials/README.md)", "](tutorials/index.md)")
    (folder / "index.md").write_text(site_links(readme, "tutorials/"))
    shutil.copytree(ROOT / "docs", folder / "docs", dirs_exist_ok=True)
    (folder / "benchmarks").mkdir(exist_ok=True)
    shutil.copy(ROOT / "benchmarks" / "RESULTS.md", folder / "benchmarks" / "RESULTS.md")
    readme = (TUTORIALS / "README.md").read_text().replace("](README.md)", "](index.md)")
    (folder / "tutorials" / "index.md").write_text(site_links(readme))
    for helper in ("checks.py", "exercises.py", "course_site.py"):
        shutil.copy(TUTORIALS / helper, folder / "tutorials" / helper)
    shutil.copytree(TUTORIALS / "solutions", folder / "tutorials" / "solutions", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for stem, notebook in notebooks.items():
        notebook = nbformat.from_dict(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "markdown":
                cell.source = notebook_links(cell.source)
            elif cell.cell_type == "code":
                cell.outputs = settled_streams(cell.outputs)
        nbformat.write(notebook, folder / "tutorials" / f"{stem}.ipynb")


def build(notebooks, site_dir, course_dir):
    """Render the site into `site_dir` from the executed notebooks {stem: notebook}, their sources
    laid out in `course_dir` (emptied first). Returns site_dir."""
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config

    course_dir = Path(course_dir)
    shutil.rmtree(course_dir, ignore_errors=True)
    assemble(notebooks, course_dir)
    mkdocs_build(load_config(str(CONFIG), docs_dir=str(course_dir), site_dir=str(site_dir)))
    return Path(site_dir)


def notebook_page(site_dir, stem):
    """The HTML of a notebook's page in a built site."""
    return (Path(site_dir) / "tutorials" / stem / "index.html").read_text()


def page_images(html):
    """The images a page shows inline: <img> tags whose source is a data: URI."""
    return re.findall(r"<img\b[^>]*\bsrc=\"data:image/(?:png|jpeg|svg\+xml)[;,][^\"]+\"", html)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tutorials/course_site.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "site"), help="the site's folder")
    parser.add_argument("--course", default=str(ROOT / "build" / "course"),
                        help="where the executed notebooks and pages are laid out for mkdocs")
    args = parser.parse_args(argv)
    missing = site_tool_missing()
    if missing:
        parser.error(missing)
    notebooks = {}
    for source in sources():
        print(f"executing {source.name}", flush=True)
        notebooks[source.stem] = execute(source)
    site = build(notebooks, args.out, args.course)
    print(f"the course is in {site}/index.html")


if __name__ == "__main__":
    sys.exit(main())
