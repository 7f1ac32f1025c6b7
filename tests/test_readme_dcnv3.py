"""The README's section on v1 → v4 runs and prints what it says, and its API rows for DCNv3 and
DCNv4 give the functions' actual signatures."""

import contextlib
import inspect
import io
import pathlib
import re

import dcn_numba

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section(title):
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_the_v1_to_v4_example_prints_what_it_claims():
    match = re.search(r"```python\n(.*?)```\s*\n\s*prints\s*\n\s*```text\n(.*?)```", section("From v1 to v4"), re.S)
    assert match, "the section should hold a ```python example followed by 'prints' and a ```text block"
    code, expected = match.groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), {})
    assert printed.getvalue() == expected


def test_the_api_rows_give_the_signatures():
    rows = {name: signature for name, signature in
            re.findall(r"^\| `(dcnv[34](?:_backward)?)\((.*?)\)` \|", README.read_text(), re.M)}
    assert set(rows) == {"dcnv3", "dcnv3_backward", "dcnv4", "dcnv4_backward"}
    actual = str(inspect.signature(dcn_numba.dcnv3))[1:-1]
    assert rows["dcnv3"] == actual
    for name, listed in rows.items():
        parameters = list(inspect.signature(getattr(dcn_numba, name)).parameters)
        named = [part.strip().split("=")[0].lstrip("*") for part in listed.split(",")]
        named = [n for n in named if n and n != "..."]
        assert all(n in parameters for n in named), (name, named)
        assert named == [p for p in parameters if p in named], f"{name}: arguments out of order"
