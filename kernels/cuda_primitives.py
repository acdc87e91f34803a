"""The hot primitives as launches of tinybn's CUDA kernels, whatever runs the launches.

`CudaPrimitives(xp, launch)` has one method per primitive, with exactly the
reference's signature and return values (tinybn/ops/conv.py, pool.py,
fused_batch_norm.py, lrn.py, losses.py). Each method allocates its outputs with
`xp`, works out the launch geometry and calls

    launch(kernel, blocks, threads, args)

with kernel a name expression such as "im2col<float>", a 1-D grid of `blocks`
blocks of `threads` threads, and args the kernel's arguments in order: arrays
(C-contiguous, of the kernel's element type) and numpy scalars of the exact C
type (np.int32 for int, np.float32 for float, np.float64 for double).

Two things run launches:
    tinybn.kernels.cupy_gpu     xp = cupy, launch = a CuPy RawModule function on the GPU
    tinybn.kernels.cuda_build   xp = numpy, launch = the same CUDA source compiled with
                                g++ and kernels/cpu_emulation.h, called through ctypes
so CI checks this file's geometry and argument lists along with the kernels.

Every kernel is a grid-stride loop, so any grid is correct; `max_blocks` only
caps the launch near what the device holds at once (132 SMs x 2048 threads on
an H100 is ~1000 blocks of 256).

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import os

import numpy as np

from tinybn.geometry import real_counts

# source file -> kernels it defines; each is instantiated for float and double
KERNELS = {
    "im2col.cu": ("im2col", "col2im"),
    "pool.cu": ("max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"),
    "batchnorm.cu": ("bn_partial_sum", "bn_partial_sqdev", "bn_partial_grad", "bn_finish", "bn_inv_std",
                     "bn_train_forward_apply", "bn_train_backward_apply", "bn_inference"),
    "lrn.cu": ("lrn_forward", "lrn_backward"),
    "xent.cu": ("softmax_xent",),
}
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
PRIMITIVES = ("im2col", "col2im", "conv_batch_chunks", "max_pool_forward", "max_pool_values",
              "max_pool_backward", "avg_pool_forward",
              "avg_pool_backward", "batch_norm_train_forward", "batch_norm_train_backward",
              "batch_norm_inference", "lrn_forward", "lrn_backward", "softmax_cross_entropy")


def name_expressions(source):
    """The template instantiations of one source file: "im2col<float>", "im2col<double>", ..."""
    return [f"{kernel}<{ctype}>" for kernel in KERNELS[source] for ctype in C_TYPES.values()]


def nvrtc_source(source):
    """The text CuPy compiles for kernels/<source>: the file with common.cuh pasted in place of
    its #include (CuPy's on-disk cache is keyed by the text, so a changed header changes the key)."""
    def read(name):
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), encoding="utf-8") as f:
            return f.read()
    return read(source).replace('#include "common.cuh"', read("common.cuh"), 1)


def _i32(*values):
    return [np.int32(v) for v in values]


def _conv_ints(window):
    """KH, KW, SH, SW, DH, DW, top, left, OH, OW: the conv kernels' geometry arguments."""
    return (*window[:6], window.top, window.left, window.OH, window.OW)


class CudaPrimitives:
    def __init__(self, xp, launch, threads=256, max_blocks=1024, bn_rows_per_thread=256):
        self.xp, self.launch = xp, launch
        self.threads, self.max_blocks = threads, max_blocks
        self.bn_rows_per_thread = bn_rows_per_thread

    # ---- plumbing --------------------------------------------------------------
    def _run(self, kernel, dtype, work, *args):
        """Launch kernel<dtype> with enough threads for `work` items (none if there are none)."""
        dtype = np.dtype(dtype)
        if dtype not in C_TYPES:
            raise ValueError(f"{kernel}: CUDA kernels take float32 or float64 arrays, got {dtype}")
        if work > 0:
            blocks = min(-(-work // self.threads), self.max_blocks)
            self.launch(f"{kernel}<{C_TYPES[dtype]}>", blocks, self.threads, args)

    def _in(self, a, dtype=None):
        return self.xp.ascontiguousarray(a, dtype=dtype)

    # ---- im2col / col2im (tinybn/ops/conv.py): a pointwise 1x1 conv never gets here ----
    def im2col(self, x, window):
        N, H, W, C = x.shape
        x = self._in(x)
        cols = self.xp.empty((N * window.OH * window.OW, window.KH * window.KW * C), x.dtype)
        self._run("im2col", x.dtype, cols.size, x, *_i32(N, H, W, C, *_conv_ints(window)), cols)
        return cols

    def col2im(self, cols, x_shape, window):
        N, H, W, C = x_shape
        cols = self._in(cols)
        x = self.xp.empty((N, H, W, C), cols.dtype)
        self._run("col2im", cols.dtype, x.size, cols, *_i32(N, H, W, C, *_conv_ints(window)), x)
        return x

    def conv_batch_chunks(self, x, cols_per_image):
        """The GPU's conv chunking: the whole batch, one cuBLAS GEMM per conv (CPU-sized
        chunks made conv2 at batch 128 about 64 small GEMMs)."""
        return [slice(0, x.shape[0])]

    # ---- pooling (tinybn/ops/pool.py) -------------------------------------------
    @staticmethod
    def _pool_ints(in_shape, window):
        N, H, W, C = in_shape
        return _i32(N, H, W, C, window.KH, window.KW, window.SH, window.SW, window.top, window.left,
                    window.OH, window.OW)

    def max_pool_forward(self, x, window):
        x = self._in(x)
        out_shape = (x.shape[0], window.OH, window.OW, x.shape[3])
        y = self.xp.empty(out_shape, x.dtype)
        argmax = self.xp.empty(out_shape, self.xp.int32)
        self._run("max_pool_forward", x.dtype, y.size, x, *self._pool_ints(x.shape, window), y, argmax)
        return y, argmax

    def max_pool_values(self, x, window):
        """y alone: the kernel picks the argmax on the way (one register per thread); it is dropped."""
        return self.max_pool_forward(x, window)[0]

    def max_pool_backward(self, dy, argmax, in_shape, window):
        dy, argmax = self._in(dy), self._in(argmax, np.int32)
        dx = self.xp.empty(tuple(in_shape), dy.dtype)
        self._run("max_pool_backward", dy.dtype, dx.size, dy, argmax, *self._pool_ints(in_shape, window), dx)
        return dx

    def avg_pool_forward(self, x, window):
        x = self._in(x)
        y = self.xp.empty((x.shape[0], window.OH, window.OW, x.shape[3]), x.dtype)
        counts = real_counts(self.xp, x.shape[1:3], window, x.dtype)
        self._run("avg_pool_forward", x.dtype, y.size, x, counts, *self._pool_ints(x.shape, window), y)
        return y

    def avg_pool_backward(self, dy, in_shape, window):
        dy = self._in(dy)
        dx = self.xp.empty(tuple(in_shape), dy.dtype)
        counts = real_counts(self.xp, tuple(in_shape[1:3]), window, dy.dtype)
        self._run("avg_pool_backward", dy.dtype, dx.size, dy, counts, *self._pool_ints(in_shape, window), dx)
        return dx

    # ---- fused batch norm (tinybn/ops/fused_batch_norm.py) -----------------------
    def _column_sums(self, kernel, dtype, M, C, inputs, divisors):
        """Stage 1 (`kernel` writes len(divisors) partial-sum arrays) then stage 2 (bn_finish)."""
        P = min(max(-(-M // self.bn_rows_per_thread), 1), 1024)
        partials = [self.xp.empty((P, C), self.xp.float64) for _ in divisors]
        self._run(kernel, dtype, P * C, *inputs, *_i32(M, C, P), *partials)
        sums = []
        for partial, divisor in zip(partials, divisors):
            out = self.xp.empty((C,), dtype)
            self._run("bn_finish", dtype, C, partial, *_i32(P, C), np.float64(divisor), out)
            sums.append(out)
        return sums

    def batch_norm_train_forward(self, x, scale, offset, epsilon):
        x = self._in(x)
        t, (M, C) = x.dtype.type, x.shape
        scale, offset = self._in(scale, x.dtype), self._in(offset, x.dtype)
        (mean,) = self._column_sums("bn_partial_sum", x.dtype, M, C, (x,), (M,))
        (variance,) = self._column_sums("bn_partial_sqdev", x.dtype, M, C, (x, mean), (M,))
        inv_std = self.xp.empty((C,), x.dtype)
        self._run("bn_inv_std", x.dtype, C, variance, np.int32(C), t(epsilon), inv_std)
        y = self.xp.empty_like(x)
        self._run("bn_train_forward_apply", x.dtype, x.size, x, mean, inv_std, scale, offset, *_i32(M, C), y)
        return y, mean, variance, inv_std

    def batch_norm_train_backward(self, dy, x, scale, mean, inv_std):
        x = self._in(x)
        dy, scale, mean, inv_std = (self._in(a, x.dtype) for a in (dy, scale, mean, inv_std))
        M, C = x.shape
        doffset, dscale = self._column_sums("bn_partial_grad", x.dtype, M, C, (dy, x, mean, inv_std), (1, 1))
        dx = self.xp.empty_like(x)
        self._run("bn_train_backward_apply", x.dtype, x.size, dy, x, scale, mean, inv_std, doffset, dscale,
                  *_i32(M, C), x.dtype.type(1.0 / M), dx)
        return dx, dscale, doffset

    def batch_norm_inference(self, x, scale, offset, mean, variance, epsilon):
        x = self._in(x)
        scale, offset, mean, variance = (self._in(a, x.dtype) for a in (scale, offset, mean, variance))
        y = self.xp.empty_like(x)
        self._run("bn_inference", x.dtype, x.size, x, scale, offset, mean, variance, *_i32(*x.shape),
                  x.dtype.type(epsilon), y)
        return y

    # ---- LRN (tinybn/ops/lrn.py) ---------------------------------------------------
    def lrn_forward(self, x, depth_radius, bias, alpha, beta):
        x = self._in(x)
        t, C = x.dtype.type, x.shape[-1]
        y, norm = self.xp.empty_like(x), self.xp.empty_like(x)
        self._run("lrn_forward", x.dtype, x.size, x, *_i32(x.size // C, C, depth_radius), t(bias), t(alpha),
                  t(-beta), y, norm)
        return y, norm

    def lrn_backward(self, dy, x, y, norm, depth_radius, alpha, beta):
        dy = self._in(dy)
        x, y, norm = (self._in(a, dy.dtype) for a in (x, y, norm))
        t, C = dy.dtype.type, dy.shape[-1]
        dx = self.xp.empty_like(dy)
        self._run("lrn_backward", dy.dtype, dx.size, dy, x, y, norm, *_i32(dy.size // C, C, depth_radius),
                  t(-beta), t(2 * alpha * beta), dx)
        return dx

    # ---- softmax cross-entropy (tinybn/ops/losses.py) -------------------------------
    def softmax_cross_entropy(self, labels, logits):
        logits = self._in(logits)
        labels = self._in(labels, logits.dtype)
        N, K = logits.shape
        loss = self.xp.empty((N,), logits.dtype)
        backprop = self.xp.empty_like(logits)
        self._run("softmax_xent", logits.dtype, N, labels, logits, *_i32(N, K), loss, backprop)
        return loss, backprop
