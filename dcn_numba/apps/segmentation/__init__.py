"""The DeepLab-style segmentation toy on digit canvases (the paper's mIoU column): canvases
labelled per pixel (`data`), the fully convolutional net with regular, dilated or deformable res5
layers (`model`), mIoU (`metrics`), the training command (`segment`), the multi-seed tables
(`experiment`), the sampling-locations figure and the spread per digit size (`sampling`), and the
one place its files are written (`files`).

May import: dcn_numba.data, dcn_numba.engine, dcn_numba.ops, dcn_numba.runs (its output folders
and checkpoints), dcn_numba.runtime, dcn_numba.speed. Never imports another application.
"""
