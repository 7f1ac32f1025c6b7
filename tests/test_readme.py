"""The README's example runs and prints what the README says it prints."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_prints_what_it_claims():
    text = README.read_text()
    match = re.search(r"```python\n(.*?)```\s*\n\s*prints\s*\n\s*```text\n(.*?)```", text, re.S)
    assert match, "README.md should hold a ```python example followed by 'prints' and a ```text block"
    code, expected = match.groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    assert printed.getvalue() == expected


RESULTS = sorted((README.parent / "docs").glob("results_*.md"))


@pytest.mark.parametrize("results", RESULTS, ids=lambda path: path.name)
def test_readme_embeds_every_measured_table(results):
    """Each README results block is its docs/results_*.md as the experiment command wrote it
    (figure links re-rooted at the README)."""
    measured = results.read_text().split("\n", 1)[1].strip().replace("](", "](docs/")
    text = README.read_text()
    name = f"docs/{results.name}"
    block = re.search(rf"<!-- BEGIN {name} -->\n(.*?)\n<!-- END {name} -->", text, re.S)
    assert block, f"README.md should embed {name} between BEGIN/END markers"
    assert block.group(1).strip() == measured


def test_the_main_table_is_there():
    assert "results_mnist.md" in [path.name for path in RESULTS]
