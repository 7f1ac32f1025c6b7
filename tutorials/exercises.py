"""Exercises in the tutorials: the learner writes a function, a check says whether it is right.

A notebook marks each function the learner writes with the decorator `exercises_of(notebook)`
gives, and checks it right away:

    import checks
    from exercises import check, exercises_of
    exercise = exercises_of("01_sampling_off_the_grid")

    @exercise
    def sample_zero_padded(image, p_y, p_x):
        '''S(p) by the DCNv2 rule: ...'''
        raise NotImplementedError("Exercise 1.1: write the DCNv2 boundary rule")

    check(sample_zero_padded, checks.matches_dcn_sample)

where the test, a function of tutorials/checks.py, asserts what a right answer does. Until the body
is written, `check` fails and says which exercise to fill in. The worked solutions live in
tutorials/solutions/, one file per notebook named like it, one function per exercise under the
exercise's name. With the environment variable DCN_NUMBA_TUTORIAL_SOLUTIONS=1 set
before the notebook starts, `@exercise` hands back the solution instead of the learner's function,
so the rest of the notebook runs; the tests run every notebook that way. Inside a running notebook,
`exercises.SOLUTIONS = True` takes effect for the `@exercise` cells run after it: run it, then
re-run the exercise's cell (the decorator chooses when the cell defines the function).
"""

import ast
import importlib.util
import inspect
import os
import textwrap
from pathlib import Path

SOLUTIONS = os.environ.get("DCN_NUMBA_TUTORIAL_SOLUTIONS") == "1"
SOLUTIONS_DIR = Path(__file__).resolve().parent / "solutions"


def solutions_of(notebook):
    """The module tutorials/solutions/<notebook>.py (its name starts with a digit, so it is loaded
    from its path rather than imported)."""
    path = SOLUTIONS_DIR / f"{notebook}.py"
    if not path.is_file():
        raise FileNotFoundError(f"exercises_of: no solutions file {path} for notebook {notebook!r}")
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercises_of(notebook):
    """A decorator for the exercises of `notebook`: the learner's function, or, when SOLUTIONS is
    on, the solution of the same name from tutorials/solutions/<notebook>.py."""
    def mark(function):
        if not SOLUTIONS:
            return function
        solution = getattr(solutions_of(notebook), function.__name__, None)
        if solution is None:
            raise AttributeError(f"exercises_of: tutorials/solutions/{notebook}.py has no "
                                 f"{function.__name__}()")
        return solution
    return mark


def check(function, test):
    """Run test(function), which asserts what a right answer does; say plainly how it went.

    Whatever the learner's code raises becomes one AssertionError that names the function: "not
    written yet" for the NotImplementedError of an unwritten body, otherwise "not right yet" with
    the exception's type and message (a crash inside the answer is a wrong answer, not a bug of the
    notebook)."""
    try:
        test(function)
    except NotImplementedError as unwritten:
        raise AssertionError(f"{function.__name__} is not written yet ({unwritten}): fill in its "
                             f"body, or set exercises.SOLUTIONS = True and re-run its cell to use "
                             f"the solution") from None
    except AssertionError as wrong:
        raise AssertionError(f"{function.__name__} is not right yet: {wrong}") from None
    except Exception as error:
        raise AssertionError(f"{function.__name__} is not right yet: it raised "
                             f"{type(error).__name__}: {error}") from None
    print(f"{function.__name__}: right")


def scatters_with_atomics(function, array):
    """Assert that `function` writes `array` only through cuda.atomic.add, and does so at least once.

    A scatter in which two threads may add into the same element loses updates when it writes with
    `array[i] += v`: both threads read the old value, and the second write replaces the first. The
    CUDA simulator runs threads one after another often enough that such a kernel can still produce
    the right numbers there, so the check reads the code: no element of `array` is assigned
    directly, and some `*.atomic.add(array, ...)` call exists."""
    source = textwrap.dedent(inspect.getsource(function))
    tree = ast.parse(source)
    direct = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
              and isinstance(node.value, ast.Name) and node.value.id == array]
    assert not direct, (f"`{source.splitlines()[direct[0] - 1].strip()}` writes {array}[...] directly; threads "
                        f"that add into the same element lose updates: use cuda.atomic.add({array}, index, value)")
    atomic_adds = [node for node in ast.walk(tree)
                   if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                   and node.func.attr == "add" and isinstance(node.func.value, ast.Attribute)
                   and node.func.value.attr == "atomic" and node.args
                   and isinstance(node.args[0], ast.Name) and node.args[0].id == array]
    assert atomic_adds, f"no cuda.atomic.add({array}, ...) in the function: how does it add into {array}?"
