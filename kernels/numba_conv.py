"""numba twins of conv's hot primitives: im2col, its adjoint col2im, and conv2d_forward's policy.

Shapes as tinybn.ops.conv: x (N, H, W, C), a tinybn.geometry.Window (kernel KH x KW,
strides SH, SW, dilations DH, DW, pads ((top, bottom), (left, right)), output OH x OW);
a pointwise 1x1 conv never gets here (the op reads its pixels directly);
cols (N*OH*OW, KH*KW*C) viewed here as (N, OH, OW, KH, KW, C).

    im2col   cols[n, i, j, a, b, c] = x[n, i*SH + a*DH - top, j*SW + b*DW - left, c]  (0 outside x)
    col2im   dx[n, h, w, c] = sum over taps (a, b), in row-major order, of
             cols[n, i, j, a, b, c] with i*SH + a*DH - top = h and j*SW + b*DW - left = w

col2im is written as a gather (each dx pixel pulls its taps) instead of the
reference's scatter, so threads never write the same pixel. It visits the taps
in the reference's (a, b) order and adds in x's dtype, so it repeats the
reference's float additions one for one: the result is bit-identical.
Both loops run in parallel over (n, row) and copy channel runs in the inner loop.

conv2d_forward (which also computes the input gradient of stride-1 convs) takes the first
way its policy allows, each tested against the float64 im2col reference by
tests/test_conv_forward_numba.py:

    1. Winograd (numba_winograd.winograd_tile): stride-1 3x3 and 5x5 convs of 16+ channels
       and at least MIN_BATCH_TILES (48) tiles in the batch, or MIN_SMALL_OUTPUT_TILES (64)
       for outputs of fewer than two tiles across (7x7, 3x3) (CIFAR conv2, most of ResNet's
       3x3s, every 3x3 of the fast model at its batch), within WINOGRAD_RTOL;
    2. kn2row (numba_kn2row.kn2row_picks): the other stride-1 convs with O <= C (CIFAR conv3
       5x5x64x10: 1.8x; ResNet's 3x3x512 at 7x7 below 64 tiles (batch <= 15), forward and
       input gradient: 1.3x, 7-8x at load 5-7: numba_kn2row's table), within
       KN2ROW_RTOL (measured float32 <= 3.6e-7, float64 <= 5.5e-16 of the largest value);
    3. split_conv2d (splits_forward: windows of at most SPLIT_MAX_TAPS (256) values and an
       image's windows of at most SPLIT_CHUNK_BYTES): CIFAR conv1 and conv3's input gradient,
       im2col + GEMM in numba_threads' lanes, chunks of 256 kB of windows gathered by the
       serial run copy (numba_filter_gradient) and their GEMMs on one BLAS thread, written
       into y's rows; within IM2COL_RTOL (conv1 measured bit-identical). Measured, float32,
       batch 128, against the way below, alternating, median of 9 ratios (min..max), one to
       1.5 of the 2 cores busy with other jobs: conv1 1.26x (0.89-1.56), 1.08x-1.13x at
       chunks of 1-2 MB; conv3's input gradient 1.12x (0.97-1.27); ResNet's root (7x7/2,
       batch 8, 7.4 MB of windows an image) 0.88x-0.92x, so it keeps the way below;
    4. im2col + GEMM, the reference's on this backend's im2col, on forward_chunks: the
       reference's chunks (bit-identical), grown to MIN_GEMM_ROWS output pixels where an
       image has fewer (within IM2COL_RTOL). Measured, batch 8, against 2 MB chunks, at load
       average 5-7 and ~4 (median of 9 ratios, min..max):
       ResNet 3x3/2 28->14, 256 channels (1 -> 3 images a GEMM): 2.73x (1.39-4.99), 1.16x (1.05-2.05);
       3x3/2 14->7, 512 channels (2 -> 8 images): 2.38x (1.30-3.73), 1.19x (1.17-4.96).

Few input channels (CIFAR conv1 5x5x3x64, ResNet's 7x7/2 root) stay on im2col + GEMM; what
was tried, float32, batch 128 (root: 8), interleaved with it on this 2-core machine, busy:
- Its GEMM alone, (73728 x 75) @ (75 x 64), took 13.2 ms at a quiet moment (54 GFLOP/s), the
  whole conv 18.7 ms. This CPU (AMD Zen 1: AVX2 at half rate, 16 float32 FLOP per cycle per
  core) ran BLAS at 67 GFLOP/s at best on both cores (ResNet's 3x3x512 at 14->7); 12 ms for
  conv1's 0.71 GFLOP would need 59 GFLOP/s, window gather included.
- Direct kernels in numba (output channels innermost and contiguous, 4 or 8 taps per
  pass; or one dot product per output channel): 0.5-0.8x. One core: 17 GFLOP/s against
  BLAS's 32, as numba keeps the accumulators in memory, not in a block of registers.
- Each of two worker threads gathering its own chunks' windows and running their GEMMs on
  one BLAS thread (numba_threads.split): 1.08-1.12x (0.87 at worst) at conv1, 0.67-0.83x at
  ResNet's strided convs; now split_conv2d for narrow windows only (way 3 above), with
  chunks of 256 kB. Chunks of 288 to 4608 rows with BLAS's 2 threads: within the noise.
- Winograd: 0.57x (numba_winograd's table), the transforms outweigh 3 channels' GEMMs.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from tinybn import backend

from . import numba_setup  # noqa: F401  (before the first parallel call)
from . import numba_filter_gradient, numba_kn2row, numba_threads, numba_winograd


def _im2col_plain(x, cols, KH, KW, SH, SW, DH, DW, top, left):
    N, H, W, C = x.shape
    _, OH, OW = cols.shape[:3]
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        for j in range(OW):
            for a in range(KH):
                h = i * SH + a * DH - top
                for b in range(KW):
                    w = j * SW + b * DW - left
                    if 0 <= h < H and 0 <= w < W:
                        for c in range(C):
                            cols[n, i, j, a, b, c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            cols[n, i, j, a, b, c] = 0


def _col2im_plain(cols, dx, KH, KW, SH, SW, DH, DW, top, left):
    N, H, W, C = dx.shape
    _, OH, OW = cols.shape[:3]
    for row in prange(N * H):
        n, h = row // H, row % H
        for w in range(W):
            for c in range(C):
                dx[n, h, w, c] = 0
            for a in range(KH):
                hi = h + top - a * DH           # = i*SH for the window row i that tap a reads h in
                if hi < 0 or hi % SH != 0 or hi // SH >= OH:
                    continue
                i = hi // SH
                for b in range(KW):
                    wj = w + left - b * DW
                    if wj < 0 or wj % SW != 0 or wj // SW >= OW:
                        continue
                    j = wj // SW
                    for c in range(C):
                        dx[n, h, w, c] += cols[n, i, j, a, b, c]


_im2col_kernel = njit(parallel=True, cache=True)(_im2col_plain)
_col2im_kernel = njit(parallel=True, cache=True)(_col2im_plain)


def _ints(window):
    """(KH, KW, SH, SW, DH, DW, top, left): what the kernels take of a geometry.Window."""
    return (*window[:6], window.top, window.left)


def im2col(x, window):
    """As tinybn.ops.conv.im2col: cols (N*OH*OW, KH*KW*C), columns ordered (a, b, c)."""
    N, _, _, C = x.shape
    cols = np.empty((N, window.OH, window.OW, window.KH, window.KW, C), x.dtype)
    _im2col_kernel(np.ascontiguousarray(x), cols, *_ints(window))
    return cols.reshape(N * window.OH * window.OW, window.KH * window.KW * C)


def col2im(cols, x_shape, window):
    """As tinybn.ops.conv.col2im: the adjoint of im2col, an x_shape array."""
    N, H, W, C = x_shape
    dx = np.empty((N, H, W, C), cols.dtype)
    cols = np.ascontiguousarray(cols).reshape(N, window.OH, window.OW, window.KH, window.KW, C)
    _col2im_kernel(cols, dx, *_ints(window))
    return dx


# The numba backend's conv chunking: im2col + GEMM on a few images at a time, so the
# window buffers stay about this size, in cache for the GEMM that reads them, instead of
# the whole batch's (118 MB for the CIFAR models' conv2 at batch 128); backward gathers
# the windows again rather than keeping them: faster, not just smaller (bench/README.md
# has the measurements behind 2 MB).
CHUNK_BYTES = 2 << 20


def conv_batch_chunks(x, cols_per_image):
    """As tinybn.ops.conv.conv_batch_chunks: batch slices of about CHUNK_BYTES of windows each."""
    per_image = cols_per_image * x.shape[3] * x.dtype.itemsize
    step = max(1, CHUNK_BYTES // max(per_image, 1))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


# The forward's GEMMs get at least this many rows (output pixels): one image of ResNet's
# deep strided convs is 196 or 49 rows of 2304 or 4608 windows, and OpenBLAS ran such
# GEMMs 2-6x slower per FLOP than ones of 392 rows and more (below, 3x3/2 convs).
MIN_GEMM_ROWS = 512
# Where that changes the chunks, the result is the reference's products and sums with BLAS
# splitting other GEMMs, equal up to rounding (measured: 3.8e-7 and 4.3e-7 of the largest
# value from the float64 reference at the convs below, the reference's own error there):
IM2COL_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def forward_chunks(x, window):
    """Batch slices of conv_batch_chunks' size, grown to MIN_GEMM_ROWS output pixels where that is more."""
    rows = window.OH * window.OW
    per_image = rows * window.KH * window.KW * x.shape[3] * x.dtype.itemsize
    step = max(1, CHUNK_BYTES // max(per_image, 1), -(-MIN_GEMM_ROWS // max(rows, 1)))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


def _im2col_conv2d(x, w, window):
    """The reference's im2col + GEMM, on forward_chunks."""
    O = w.shape[3]
    w2 = w.reshape(-1, O)
    y = np.empty((x.shape[0], window.OH, window.OW, O), x.dtype)
    for part in forward_chunks(x, window):
        np.matmul(im2col(x[part], window), w2, out=y[part].reshape(-1, O))
    return y


# Narrow windows (few input channels: CIFAR conv1, 75 values a window; conv3's input gradient,
# 250) go by split_conv2d: lanes of numba_threads.split, each gathering its chunks' windows
# serially (numba_filter_gradient's run copy) and running their GEMMs on one BLAS thread, chunks
# of about SPLIT_CHUNK_BYTES of windows (in the core's L2 cache for the GEMM that reads them).
SPLIT_MAX_TAPS = 256
SPLIT_CHUNK_BYTES = 256 << 10


def splits_forward(w_shape, window, dtype):
    """The policy: whether conv2d_forward's im2col + GEMM goes by split_conv2d: windows of at
    most SPLIT_MAX_TAPS values and an image's windows of at most SPLIT_CHUNK_BYTES."""
    KH, KW, C, _ = w_shape
    return (not window.is_pointwise and KH * KW * C <= SPLIT_MAX_TAPS
            and window.OH * window.OW * KH * KW * C * np.dtype(dtype).itemsize <= SPLIT_CHUNK_BYTES)


def split_conv2d(x, w, window):
    """im2col + GEMM in numba_threads' lanes: each lane gathers the windows of its consecutive
    chunks (numba_filter_gradient.batch_chunks of SPLIT_CHUNK_BYTES) and writes their GEMMs
    straight into y's rows. Each output row is one GEMM row on one BLAS thread: the result
    does not depend on the core count; against the reference it is BLAS's rounding of the
    same sums (within IM2COL_RTOL)."""
    N, H, W, C = x.shape
    KH, KW, _, O = w.shape
    x, w2 = np.ascontiguousarray(x), np.ascontiguousarray(w).reshape(-1, O)
    y = np.empty((N, window.OH, window.OW, O), x.dtype)
    flat = x.reshape(N, H, W * C)
    per_image = window.OH * window.OW * KH * KW * C * x.dtype.itemsize
    chunks, lanes = numba_filter_gradient.batch_chunks(N, per_image, SPLIT_CHUNK_BYTES), numba_threads.LANES

    def lane(k):
        for part in chunks[k * len(chunks) // lanes:(k + 1) * len(chunks) // lanes]:
            cols = np.empty((part.stop - part.start, window.OH, window.OW, KH * KW * C), x.dtype)
            numba_filter_gradient._windows_kernel(flat[part], cols, *_ints(window))
            np.matmul(cols.reshape(-1, KH * KW * C), w2, out=y[part].reshape(-1, O))
    numba_threads.split(lane, lanes)
    return y


def conv2d_forward(x, w, window):
    """As tinybn.ops.conv.conv2d_forward: Winograd where numba_winograd.winograd_tile picks a tile,
    else kn2row where numba_kn2row.kn2row_picks it, else im2col + GEMM (a pointwise conv: the
    reference itself; split in lanes where splits_forward says so; else the reference's, on
    this backend's im2col and forward_chunks)."""
    m = numba_winograd.winograd_tile(x.shape, w.shape, window, x.dtype)
    if m is not None:
        return numba_winograd.winograd_conv2d(x, w, window, m)
    if numba_kn2row.kn2row_picks(x.shape, w.shape, window, x.dtype):
        return numba_kn2row.kn2row_conv2d(x, w, window)
    if window.is_pointwise:
        return backend.implementation("conv2d_forward", "numpy")(x, w, window)
    if splits_forward(w.shape, window, x.dtype) and x.shape[0] > 0:
        return split_conv2d(x, w, window)
    return _im2col_conv2d(x, w, window)
