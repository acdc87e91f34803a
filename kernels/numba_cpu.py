"""numba CPU kernels for tinybn's hot primitives: `tinybn.use_backend("numba")` imports this.

Importing registers a twin of each primitive under the backend "numba", with the
reference's signature and return values (tinybn/ops/* hold the references):

    numba_conv   im2col, col2im                                   bit-identical
                 conv_batch_chunks: this backend's conv chunking (2 MB of windows)
                 conv2d_forward: by numba_winograd where its policy picks a tile, else by
                 kn2row (numba_kn2row: stride 1, O <= C), else, for narrow windows
                 (splits_forward), im2col + GEMM split across the cores (split_conv2d),
                 else im2col + GEMM on forward_chunks
    numba_winograd  conv2d_backprop_filter, and the Winograd F(4x4, 3x3) / F(4x4, 5x5) conv
                 for stride-1 convs of 16+ channels (its policy; numba_winograd_forward: the
                 forward's filter transform, then its fused chunks across the cores); other
                 filter gradients by numba_filter_gradient (im2col summed in lanes across the
                 cores, numba_threads, with dy's windows gathered where O < C) where it
                 splits, else the im2col reference (each
                 module's docstring: its error)
    numba_pool   max_pool_forward/values/backward, avg_pool_forward/backward   bit-identical
    numba_norm   batch_norm_train_forward/backward, batch_norm_inference
                 (float64 block sums: within an ulp of the reference's sums)
    numba_lrn    lrn_forward, lrn_backward                         float32 rounding
    numba_loss   softmax_cross_entropy                             float32 rounding
    numba_elementwise  bias_add, relu, relu_grad (bit-identical), bias_add_grad (float64 block sums)
    numba_activations  gelu, gelu_grad: float64 and the tanh form the reference's erfc term by
                 term (float64 bit-identical); the float32 exact form a branch-free vectorised
                 erfc, within 8 ulps of the float64 reference

Each is registered through dtype_guard.float32_or_float64: the kernels are compiled for
float32 and float64, and any other float dtype (float16) is refused there with a
one-line TypeError naming the op, instead of failing deep inside numba's compiler.

Conventions shared by every kernel module:
- Each kernel is a plain Python function `_name_plain`, bound as
  `_name_kernel = njit(parallel=True, cache=True)(_name_plain)`, so the plain one
  stays importable and NUMBA_DISABLE_JIT=1 runs the same code as Python.
- The module-level wrapper (the twin) allocates the outputs, makes inputs C-contiguous
  and geometry Python ints (one compiled specialisation per dtype), and calls the kernel.
- GEMMs stay on BLAS in the ops; kernels do the memory-bound parts only.
- Parallel loops (prange) run over batch x rows (or row blocks for (M, C) arrays;
  softmax cross-entropy, a few thousand values, runs serially);
  the channel loop is innermost and contiguous, so it vectorises.
- Long reductions accumulate in float64; float32 and float64 inputs both work.
- tinybn/__init__.py sets OMP_WAIT_POLICY=passive unless set (see numba_setup):
  spinning OpenMP workers starved the BLAS threads between kernels (6x slower steps).
- Kernel modules import numpy, numba, tinybn.geometry and (this file) the backend's
  registry, nothing else of tinybn: tinybn.backend loads this module on first use.
- cache=True writes the compiled code next to these files (__pycache__), so only
  the first process pays the compile time (a few seconds per dtype).
"""
from tinybn.backend import primitive

from . import (numba_activations, numba_conv, numba_elementwise, numba_loss, numba_lrn, numba_norm, numba_pool,
               numba_winograd)
from .dtype_guard import float32_or_float64

TWINS = {
    "conv2d_forward": numba_conv.conv2d_forward,
    "conv2d_backprop_filter": numba_winograd.conv2d_backprop_filter,
    "im2col": numba_conv.im2col, "col2im": numba_conv.col2im, "conv_batch_chunks": numba_conv.conv_batch_chunks,
    "max_pool_forward": numba_pool.max_pool_forward, "max_pool_values": numba_pool.max_pool_values,
    "max_pool_backward": numba_pool.max_pool_backward,
    "avg_pool_forward": numba_pool.avg_pool_forward, "avg_pool_backward": numba_pool.avg_pool_backward,
    "batch_norm_train_forward": numba_norm.batch_norm_train_forward,
    "batch_norm_train_backward": numba_norm.batch_norm_train_backward,
    "batch_norm_inference": numba_norm.batch_norm_inference,
    "lrn_forward": numba_lrn.lrn_forward, "lrn_backward": numba_lrn.lrn_backward,
    "softmax_cross_entropy": numba_loss.softmax_cross_entropy,
    "gelu": numba_activations.gelu, "gelu_grad": numba_activations.gelu_grad,
    "bias_add": numba_elementwise.bias_add, "bias_add_grad": numba_elementwise.bias_add_grad,
    "relu": numba_elementwise.relu, "relu_grad": numba_elementwise.relu_grad,
}
for _name, _twin in TWINS.items():
    primitive(_name, backend="numba")(float32_or_float64(_name, "numba", _twin))
