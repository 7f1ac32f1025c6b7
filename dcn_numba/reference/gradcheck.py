"""One gradient-check helper, two modes: every element, or one random direction.

Both compare a hand-written backward with central finite differences of the scalar
L(x) = Σ grad_output · f(x), whose gradient is exactly what a backward pass returns:
every element checks the whole Jacobian-vector product of a tiny float64 problem; the random
direction u checks ⟨u, ∇L⟩ against (L(x + εu) − L(x − εu)) / 2ε, which covers the whole
Jacobian at the price of two forward calls and suits realistic shapes.
"""

import numpy as np


def _loss(func, inputs, grad_output):
    return float(np.sum(np.asarray(grad_output, dtype=np.float64) * func(**inputs)))


def numerical_gradient(func, inputs, grad_output, name, eps=1e-6):
    """∂L/∂inputs[name] by central differences, one element at a time (float64 inputs)."""
    x = inputs[name]
    gradient = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(*x.shape):
        original = x[index]
        x[index] = original + eps
        plus = _loss(func, inputs, grad_output)
        x[index] = original - eps
        minus = _loss(func, inputs, grad_output)
        x[index] = original
        gradient[index] = (plus - minus) / (2 * eps)
    return gradient


def directional_derivative(func, inputs, grad_output, directions, eps=1e-6):
    """(L(x + εu) − L(x − εu)) / 2ε, moving every input named in `directions` along its u."""
    def shifted(sign):
        moved = dict(inputs)
        for name, u in directions.items():
            moved[name] = inputs[name] + sign * eps * u
        return _loss(func, moved, grad_output)

    return (shifted(+1) - shifted(-1)) / (2 * eps)


def describe_mismatch(actual, expected, rtol, atol, limit=5):
    """The first `limit` indices where `actual` and `expected` differ beyond tolerance, as text."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    bad = ~np.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    lines = [f"{int(bad.sum())} of {bad.size} elements differ (rtol={rtol}, atol={atol})"]
    for index in list(zip(*np.nonzero(bad)))[:limit]:
        index = tuple(int(i) for i in index)
        lines.append(f"  at {index}: got {actual[index]!r}, expected {expected[index]!r}")
    return "\n".join(lines)


def assert_close(actual, expected, rtol=1e-5, atol=1e-8, what="values"):
    """np.allclose with a message that lists the first mismatching indices."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    if not np.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True):
        raise AssertionError(f"{what}:\n" + describe_mismatch(actual, expected, rtol, atol))


def check_gradients(func, inputs, grad_output, analytic, mode="elementwise", eps=1e-6,
                    rtol=1e-5, atol=1e-7, seed=0):
    """Assert that `analytic` (name → gradient array) matches finite differences of
    L = Σ grad_output · func(**inputs).

    mode="elementwise" compares every element of every named gradient; mode="random" compares
    ⟨u, ∇L⟩ for one random direction u across all named inputs at once.
    """
    inputs = {name: (np.array(v, dtype=np.float64) if name in analytic else v)
              for name, v in inputs.items()}
    if mode == "elementwise":
        for name, gradient in analytic.items():
            assert_close(gradient, numerical_gradient(func, inputs, grad_output, name, eps),
                         rtol=rtol, atol=atol, what=f"gradient of {name}")
    elif mode == "random":
        rng = np.random.default_rng(seed)
        directions = {name: rng.standard_normal(inputs[name].shape) for name in analytic}
        predicted = sum(float(np.sum(directions[n] * analytic[n])) for n in analytic)
        measured = directional_derivative(func, inputs, grad_output, directions, eps)
        if not np.isclose(predicted, measured, rtol=rtol, atol=atol):
            raise AssertionError(
                f"directional derivative: analytic {predicted!r} vs finite differences {measured!r}"
            )
    else:
        raise ValueError(f"mode must be 'elementwise' or 'random', got {mode!r}")
