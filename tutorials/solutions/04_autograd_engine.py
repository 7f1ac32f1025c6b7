"""Solutions to the exercises of notebook 4, The autograd engine."""


def topological_order(tensor):
    """Exercise 4.1: every tensor that leads to `tensor`, each after all of its inputs."""
    order, visited = [], set()

    def visit(t):
        if id(t) in visited:
            return
        visited.add(id(t))
        for parent in (t.creator.inputs if t.creator is not None else ()):
            visit(parent)
        order.append(t)  # after all of its inputs

    visit(tensor)
    return order


def unbroadcast_mine(grad, shape):
    """Exercise 4.2: sum `grad` over its extra leading axes and the axes where `shape` has length 1."""
    leading = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(leading)))
    repeated = tuple(axis for axis, length in enumerate(shape) if length == 1)
    return grad.sum(axis=repeated, keepdims=True).reshape(shape)
