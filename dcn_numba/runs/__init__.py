"""What the application commands share about their outputs: `outputs` (an output folder is one run,
written atomically, metrics last), `checkpoint` (save and resume a training run), `options` (the
command-line options and table cells the commands share).

May import: NumPy and the standard library; matplotlib only where figures are saved (the figures
are passed in, so this package never imports it). Imports no other layer.
"""
