"""A case run on an implementation, judged (`run_case`), and the table of every row (`table`).

Each call gets copies of the case's arrays, with their memory layout, so that every implementation
sees the battery as it is: an implementation that changes the arrays it is given fails the case."""

import dataclasses

import numpy as np

from dcn_numba.crosscheck.adapters import NotApplicable
from dcn_numba.crosscheck.conventions import (CONVENTIONS, grad_output_for, judge, max_error, reference_backward,
                                              reference_forward)


@dataclasses.dataclass
class Row:
    """One line of the table: a case run by an implementation."""

    implementation: str
    case: str
    op: str
    forward_error: float = None
    gradient_error: float = None
    forward: str = "n/a"
    gradients: str = "n/a"
    failure: str = None

    @property
    def explained(self):
        return self.failure is None and "MISMATCH" not in (self.forward, self.gradients)


def _first_line(error, limit=160):
    """The start of an exception's message, for one line of the table."""
    text = str(error).strip().splitlines()
    return text[0][:limit] if text else ""


def own_copies(arrays):
    """A copy of each array of a call (None stays None), laid out in memory as the original."""
    return {name: None if a is None else np.array(a, order="K", copy=True) for name, a in arrays.items()}


def changed(copies, originals):
    """The names of the arrays whose copies an implementation changed (NaN equals NaN)."""
    return [name for name, a in originals.items()
            if a is not None and not np.array_equal(copies[name], a, equal_nan=True)]


def run_case(implementation, case):
    """Run `case` on `implementation`; compare with the reference and the conventions."""
    row = Row(implementation.name, case.name, case.op)
    forward = implementation.forward.get(case.op)
    if forward is None:
        return row
    expected = reference_forward(case)
    given = own_copies(case.arrays)
    try:
        output = forward(**given, **case.parameters)
    except NotApplicable:
        return row
    except Exception as error:  # reported in the table with the case's name, then exit 1
        row.failure = f"forward raised {type(error).__name__}: {_first_line(error)}"
        return row
    edited = changed(given, case.arrays)
    if edited:
        row.failure = f"forward changed its input {', '.join(edited)}"
        return row
    row.forward_error = max_error(output, expected)
    row.forward = judge(case, "forward", [output], [expected], ())
    backward = implementation.backward.get(case.op)
    if backward is None:
        return row
    grad_output = grad_output_for(case, expected)
    originals = dict(case.arrays, grad_output=grad_output)
    given = own_copies(originals)
    try:
        gradients = backward(given["grad_output"], **{name: given[name] for name in case.arrays}, **case.parameters)
    except NotApplicable:
        return row
    except Exception as error:  # reported in the table with the case's name, then exit 1
        row.failure = f"backward raised {type(error).__name__}: {_first_line(error)}"
        return row
    edited = changed(given, originals)
    if edited:
        row.failure = f"backward changed its input {', '.join(edited)}"
        return row
    expected_gradients = reference_backward(case, grad_output)
    if len(gradients) != len(expected_gradients):
        row.failure = f"backward returned {len(gradients)} gradients, expected {len(expected_gradients)}"
        return row
    row.gradient_error = max(max_error(g, e) for g, e in zip(gradients, expected_gradients))
    row.gradients = judge(case, "backward", list(gradients), list(expected_gradients), (grad_output,))
    return row


def _error_text(error):
    return "—" if error is None else f"{error:.1e}"


def table(rows):
    """The rows as a text table, one line per case, then the conventions named and the failures."""
    header = ("implementation", "case", "op", "forward", "gradients", "result")
    lines = [(r.implementation, r.case, r.op, _error_text(r.forward_error),
              _error_text(r.gradient_error), _result_text(r)) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    text = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
            for line in [header, *lines]]
    named = sorted({v for r in rows for v in (r.forward, r.gradients)}
                   & {c.name for c in CONVENTIONS})
    if named:
        text.append("")
        text += [f"{c.name}: {c.about}" for c in CONVENTIONS if c.name in named]
    return "\n".join(text)


def _result_text(row):
    if row.failure is not None:
        return "FAILED: " + row.failure
    verdicts = []
    for quantity, verdict in (("forward", row.forward), ("gradients", row.gradients)):
        if verdict == "MISMATCH":
            verdicts.append(f"MISMATCH ({quantity})")
        elif verdict not in ("agrees", "n/a"):
            verdicts.append(f"convention: {verdict} ({quantity})")
    if verdicts:
        return "; ".join(verdicts)
    return "n/a" if row.forward == "n/a" else "agrees"
