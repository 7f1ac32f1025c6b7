"""The README's example runs and prints what the README says it prints."""

import contextlib
import io
import pathlib
import re

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


def test_readme_embeds_the_measured_mnist_table():
    """The README's results block is docs/results_mnist.md as the experiment command wrote it."""
    measured = (README.parent / "docs" / "results_mnist.md").read_text().split("\n", 1)[1].strip()
    text = README.read_text()
    block = re.search(r"<!-- BEGIN docs/results_mnist.md -->\n(.*?)\n<!-- END docs/results_mnist.md -->", text, re.S)
    assert block, "README.md should embed docs/results_mnist.md between BEGIN/END markers"
    assert block.group(1).strip() == measured
