"""Data the applications share, generated or loaded from installed packages (nothing is
downloaded): `mnist` (MNIST digits and seeded geometric transforms), `canvases` (digits of many
sizes placed on a larger canvas with clutter, and their tight boxes); and `bootstrap`, the
interval the applications' tables put on a measurement over their test items.

May import: NumPy. Imports no other layer.
"""
