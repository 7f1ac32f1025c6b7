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


@pytest.mark.parametrize("results", ["docs/results_mnist.md", "docs/results_detection.md"])
def test_readme_embeds_the_measured_table(results):
    """The README's results block is the docs/ file as the experiment command wrote it (the
    file's first line, the comment saying so, aside)."""
    measured = (README.parent / results).read_text().split("\n", 1)[1].strip()
    text = README.read_text()
    block = re.search(f"<!-- BEGIN {re.escape(results)} -->\n(.*?)\n<!-- END {re.escape(results)} -->", text, re.S)
    assert block, f"README.md should embed {results} between BEGIN/END markers"
    assert block.group(1).strip() == measured
