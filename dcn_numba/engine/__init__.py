"""The autograd engine a learner steps through: `autograd` (Tensor, Function, backward), `functional`
(the network Functions, each forward followed by its backward), `windows` (convolution and pooling
on sliding windows), `upsample` (bilinear upsampling), `nn` (layers), `optim` (optimisers and
schedules), `mode` (what the engine runs: no_grad, the deformable Functions' backend, and the
faster implementations registered).

May import: dcn_numba.runtime, dcn_numba.ops. The CPU speed layer (`dcn_numba.speed`) registers
faster implementations with it (`mode.register_faster`); the engine never imports the speed layer.
"""
