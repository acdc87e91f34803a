"""numba twins of the pooling primitives (max and average, forward and backward).

Shapes as tinybn.ops.pool: x (N, H, W, C), a tinybn.geometry.Window (kernel KH x KW,
strides SH, SW, pads ((top, bottom), (left, right)), output OH x OW; its real-pixel
counts come from tinybn.geometry too), output (N, OH, OW, C). Window (i, j) covers
rows i*SH - top + di and columns j*SW - left + dj, di < KH, dj < KW.

    max forward   y = the window's maximum; argmax = di*KW + dj of the FIRST maximum of its
                  real pixels in row-major order (strictly-greater updates, as the reference);
                  max_pool_values: y alone, by its own kernel (no argmax to select and store)
    max backward  dx[p] = sum of dy over the windows whose argmax is p
    avg forward   y = window sum / count, count = real (non-padded) pixels in the window
    avg backward  dx[p] = sum over the windows that hold p of dy / count

Every kernel is bit-identical to the reference, not just close: the forward
passes visit the window offsets in the reference's (di, dj) order with the same
comparisons and additions, in x's dtype. The backward passes are gathers (each dx
pixel pulls from the windows that hold it, so parallel threads never write the same
pixel) that add the contributions in the reference's offset order. The max pool
channel loops read and write 1-D views of one pixel (x[n, h, w]) and store
selects instead of branching: so written, LLVM vectorises them (forward 1.2-1.7x,
backward 1.3-2.6x faster than indexing the 4-D arrays under an `if`). Padding takes
no part: the max forward scans only the window's real pixels, starting from the first
one as the reference does (its -inf padding never wins a strict comparison), and the
average's zero padding adds nothing. Every window must hold a real pixel (each pad
smaller than the window: the ops check it).
Parallel over (n, output row) in the forward passes and (n, input row) in the backward.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from tinybn.geometry import real_counts

from . import numba_setup  # noqa: F401  (before the first parallel call)


def _max_pool_forward_plain(x, y, argmax, KH, KW, SH, SW, top, left):
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        h0 = i * SH - top
        di0, di1 = max(0, -h0), min(KH, H - h0)          # the window's real rows
        for j in range(OW):
            w0 = j * SW - left
            dj0, dj1 = max(0, -w0), min(KW, W - w0)      # and columns
            # start from the first real pixel, as the reference (and TF)
            start, best, arg = x[n, h0 + di0, w0 + dj0], y[n, i, j], argmax[n, i, j]
            for c in range(C):
                best[c] = start[c]
                arg[c] = di0 * KW + dj0
            for di in range(di0, di1):
                for dj in range(dj0, dj1):
                    k = di * KW + dj
                    pixel = x[n, h0 + di, w0 + dj]
                    for c in range(C):
                        better = pixel[c] > best[c]
                        best[c] = pixel[c] if better else best[c]
                        arg[c] = k if better else arg[c]


def _max_pool_values_plain(x, y, KH, KW, SH, SW, top, left):
    """_max_pool_forward_plain's maxima alone: without the argmax's selects and stores it runs
    2-3.5x faster (inference, and inputs that need no gradient)."""
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        h0 = i * SH - top
        di0, di1 = max(0, -h0), min(KH, H - h0)
        for j in range(OW):
            w0 = j * SW - left
            dj0, dj1 = max(0, -w0), min(KW, W - w0)
            start, best = x[n, h0 + di0, w0 + dj0], y[n, i, j]
            for c in range(C):
                best[c] = start[c]
            for di in range(di0, di1):
                for dj in range(dj0, dj1):
                    pixel = x[n, h0 + di, w0 + dj]
                    for c in range(C):
                        best[c] = pixel[c] if pixel[c] > best[c] else best[c]


def _max_pool_backward_plain(dy, argmax, dx, KH, KW, SH, SW, top, left):
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    zero = dx.dtype.type(0)
    for row in prange(N * H):
        n, h = row // H, row % H
        for w in range(W):
            for c in range(C):
                dx[n, h, w, c] = 0
            for di in range(KH):
                hi = h + top - di                # = i*SH for the window row i holding h at di
                if hi < 0 or hi % SH != 0 or hi // SH >= OH:
                    continue
                i = hi // SH
                for dj in range(KW):
                    wj = w + left - dj
                    if wj < 0 or wj % SW != 0 or wj // SW >= OW:
                        continue
                    j = wj // SW
                    k = di * KW + dj
                    grad, arg, into = dy[n, i, j], argmax[n, i, j], dx[n, h, w]
                    for c in range(C):       # + 0 off the argmax, as the reference's where()
                        into[c] += grad[c] if arg[c] == k else zero


def _avg_pool_forward_plain(x, counts, y, KH, KW, SH, SW, top, left):
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        for j in range(OW):
            for c in range(C):
                y[n, i, j, c] = 0
            for di in range(KH):
                h = i * SH - top + di
                if h < 0 or h >= H:
                    continue
                for dj in range(KW):
                    w = j * SW - left + dj
                    if w < 0 or w >= W:
                        continue
                    for c in range(C):
                        y[n, i, j, c] += x[n, h, w, c]
            for c in range(C):
                y[n, i, j, c] /= counts[i, j]


def _avg_pool_backward_plain(dy, counts, dx, KH, KW, SH, SW, top, left):
    N, H, W, C = dx.shape
    _, OH, OW, _ = dy.shape
    for row in prange(N * H):
        n, h = row // H, row % H
        for w in range(W):
            for c in range(C):
                dx[n, h, w, c] = 0
            for di in range(KH):
                hi = h + top - di
                if hi < 0 or hi % SH != 0 or hi // SH >= OH:
                    continue
                i = hi // SH
                for dj in range(KW):
                    wj = w + left - dj
                    if wj < 0 or wj % SW != 0 or wj // SW >= OW:
                        continue
                    j = wj // SW
                    for c in range(C):
                        dx[n, h, w, c] += dy[n, i, j, c] / counts[i, j]


_max_pool_forward_kernel = njit(parallel=True, cache=True)(_max_pool_forward_plain)
_max_pool_values_kernel = njit(parallel=True, cache=True)(_max_pool_values_plain)
_max_pool_backward_kernel = njit(parallel=True, cache=True)(_max_pool_backward_plain)
_avg_pool_forward_kernel = njit(parallel=True, cache=True)(_avg_pool_forward_plain)
_avg_pool_backward_kernel = njit(parallel=True, cache=True)(_avg_pool_backward_plain)


def _ints(window):
    """(KH, KW, SH, SW, top, left): what the kernels take of a geometry.Window."""
    return window.KH, window.KW, window.SH, window.SW, window.top, window.left


def max_pool_forward(x, window):
    """As tinybn.ops.pool.max_pool_forward: (y, argmax int32), the first maximum's offset."""
    N, _, _, C = x.shape
    y = np.empty((N, window.OH, window.OW, C), x.dtype)
    argmax = np.empty((N, window.OH, window.OW, C), np.int32)
    _max_pool_forward_kernel(np.ascontiguousarray(x), y, argmax, *_ints(window))
    return y, argmax


def max_pool_values(x, window):
    """As tinybn.ops.pool.max_pool_values: y alone, by a kernel that keeps no argmax."""
    N, _, _, C = x.shape
    y = np.empty((N, window.OH, window.OW, C), x.dtype)
    _max_pool_values_kernel(np.ascontiguousarray(x), y, *_ints(window))
    return y


def max_pool_backward(dy, argmax, in_shape, window):
    """As tinybn.ops.pool.max_pool_backward: dx of in_shape."""
    dx = np.empty(tuple(in_shape), dy.dtype)
    _max_pool_backward_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(argmax, dtype=np.int32), dx,
                              *_ints(window))
    return dx


def avg_pool_forward(x, window):
    """As tinybn.ops.pool.avg_pool_forward: window sums / real-pixel counts."""
    N, H, W, C = x.shape
    y = np.empty((N, window.OH, window.OW, C), x.dtype)
    _avg_pool_forward_kernel(np.ascontiguousarray(x), real_counts(np, (H, W), window, x.dtype), y,
                             *_ints(window))
    return y


def avg_pool_backward(dy, in_shape, window):
    """As tinybn.ops.pool.avg_pool_backward: dx of in_shape."""
    dx = np.empty(tuple(in_shape), dy.dtype)
    counts = real_counts(np, tuple(in_shape[1:3]), window, dy.dtype)
    _avg_pool_backward_kernel(np.ascontiguousarray(dy), counts, dx, *_ints(window))
    return dx
