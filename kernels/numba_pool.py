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
pixel) that add the contributions in the reference's offset order; the max pool's
finds those windows in per-axis tables (_holding_windows) instead of dividing by the strides.
The max pool channel loops read and write 1-D views of one pixel (x[n, h, w]) and
store selects instead of branching, so LLVM vectorises them. Three details of how
they are written matter as much (measured on this 2-core AMD EPYC, one thread,
(128, 24, 24, 64) float32, interleaved against the previous kernels):
- a select stored back where it was loaded (best[c] = p if p > best[c] else best[c])
  compiles to masked stores (vmaskmovps), microcoded on this CPU: the forward's running
  maximum (and argmax) moves instead between y's pixel and a spare at every tap, starting
  where the tap count's parity leaves the last one in y's;
- operands are read before the select (p, b, a = ...), else the select's other operand
  becomes a masked load;
- the argmax offset compared or stored is cast to argmax's int32, else each compare or
  store widens or narrows every lane.
Forward with argmax 0.29-0.44x the previous kernel's time (2x2/2 and 3x3/2 SAME), the
maxima alone 0.35-0.49x, backward 0.35-0.49x. Padding takes
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
        spare_best, spare_arg = np.empty(C, x.dtype), np.empty(C, argmax.dtype)
        for j in range(OW):
            w0 = j * SW - left
            dj0, dj1 = max(0, -w0), min(KW, W - w0)      # and columns
            # the running maximum moves between y's pixel and a spare at every tap, so that
            # the last tap leaves it in y's (see the module docstring: no select stored back)
            best, arg, other_best, other_arg = y[n, i, j], argmax[n, i, j], spare_best, spare_arg
            if ((di1 - di0) * (dj1 - dj0) - 1) % 2:
                best, arg, other_best, other_arg = spare_best, spare_arg, y[n, i, j], argmax[n, i, j]
            # start from the first real pixel, as the reference (and TF)
            start, first = x[n, h0 + di0, w0 + dj0], argmax.dtype.type(di0 * KW + dj0)
            for c in range(C):
                best[c] = start[c]
                arg[c] = first
            for di in range(di0, di1):
                for dj in range(dj0, dj1):
                    if di == di0 and dj == dj0:
                        continue                         # the start: never greater than itself
                    k = argmax.dtype.type(di * KW + dj)
                    pixel = x[n, h0 + di, w0 + dj]
                    for c in range(C):
                        p, b, a = pixel[c], best[c], arg[c]
                        better = p > b
                        other_best[c] = p if better else b
                        other_arg[c] = k if better else a
                    best, arg, other_best, other_arg = other_best, other_arg, best, arg


def _max_pool_values_plain(x, y, KH, KW, SH, SW, top, left):
    """_max_pool_forward_plain's maxima alone: without the argmax's selects and stores it runs
    faster (inference, and inputs that need no gradient)."""
    N, H, W, C = x.shape
    _, OH, OW, _ = y.shape
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        h0 = i * SH - top
        di0, di1 = max(0, -h0), min(KH, H - h0)
        spare = np.empty(C, x.dtype)
        for j in range(OW):
            w0 = j * SW - left
            dj0, dj1 = max(0, -w0), min(KW, W - w0)
            best, other = y[n, i, j], spare
            if ((di1 - di0) * (dj1 - dj0) - 1) % 2:
                best, other = spare, y[n, i, j]
            start = x[n, h0 + di0, w0 + dj0]
            for c in range(C):
                best[c] = start[c]
            for di in range(di0, di1):
                for dj in range(dj0, dj1):
                    if di == di0 and dj == dj0:
                        continue
                    pixel = x[n, h0 + di, w0 + dj]
                    for c in range(C):
                        p, b = pixel[c], best[c]
                        other[c] = p if p > b else b
                    best, other = other, best


def _max_pool_backward_plain(dy, argmax, dx, KW, row_windows, row_offsets, row_counts,
                             col_windows, col_offsets, col_counts):
    """dx[n, h, w] = sum over the windows (i, j) holding (h, w) of dy[n, i, j] where their argmax
    is that pixel's offset; the windows come from _holding_windows' tables, offsets ascending."""
    N, H, W, C = dx.shape
    zero = dx.dtype.type(0)
    for row in prange(N * H):
        n, h = row // H, row % H
        for w in range(W):
            into = dx[n, h, w]
            for c in range(C):
                into[c] = 0
            for a in range(row_counts[h]):
                i, di = row_windows[h, a], row_offsets[h, a]
                for e in range(col_counts[w]):
                    j, k = col_windows[w, e], argmax.dtype.type(di * KW + col_offsets[w, e])
                    grad, arg = dy[n, i, j], argmax[n, i, j]
                    for c in range(C):       # + 0 off the argmax, as the reference's where()
                        g = grad[c]
                        into[c] += g if arg[c] == k else zero


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


def _holding_windows(size, k, stride, before, out):
    """Along one axis: for each input position p, the windows o that hold it and p's offset d in
    each (o * stride - before + d == p), offsets ascending: (windows (size, k), offsets (size, k),
    counts (size,)), int64. The backward gathers by these instead of dividing by the stride."""
    windows, offsets = np.zeros((size, k), np.int64), np.zeros((size, k), np.int64)
    counts = np.zeros(size, np.int64)
    o = np.arange(out)
    for d in range(k):        # one offset at a time: its positions o * stride - before + d are distinct
        p = o * stride - before + d
        inside = (p >= 0) & (p < size)
        p, held = p[inside], counts[p[inside]]
        windows[p, held], offsets[p, held] = o[inside], d
        counts[p] += 1
    return windows, offsets, counts


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
    _, H, W, _ = dx.shape
    rows = _holding_windows(H, window.KH, window.SH, window.top, window.OH)
    cols = _holding_windows(W, window.KW, window.SW, window.left, window.OW)
    _max_pool_backward_kernel(np.ascontiguousarray(dy), np.ascontiguousarray(argmax, dtype=np.int32), dx,
                              window.KW, *rows, *cols)
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
