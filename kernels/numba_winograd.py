"""Winograd convolution: the numba backend's conv2d_forward and conv2d_backprop_filter for 3x3
and 5x5 stride-1 convs.

Shapes as tinybn.ops.conv: x (N, H, W, C), w (KH, KW, C, O), a tinybn.geometry.Window;
y (N, OH, OW, O). r = KH = KW, m the output tile, alpha = m + r - 1 the input tile,
T = N * TH * TW tiles (TH = ceil(OH / m), TW = ceil(OW / m)).

    y tile (m x m) = A^T [ sum_c (G w[:, :, c, o] G^T) * (B^T d_c B) ] A     (Lavin & Gray 2016)

d_c is the alpha x alpha window of channel c of the padded input that the tile reads
(tiles start every m pixels; past the padding, zeros), * the elementwise product.
Per tile, the alpha^2 products of the transformed filter and input are a GEMM over C
at each of the alpha^2 positions: V (alpha^2, T, C) @ U (alpha^2, C, O), each position's
GEMM on one BLAS thread in numba_threads' lanes (numba_winograd_forward.position_gemms),
m^2 r^2 / alpha^2 fewer multiplies than im2col + GEMM (F(4x4, 5x5): 6.25x, F(4x4, 3x3):
4x). The input and output transforms are the numba kernels below; the filter transform
U = G w G^T (numba_winograd_forward.filter_transform) is summed in float64 once per call
and rounded to x's dtype.
The input gradient of a stride-1 conv is a stride-1 conv of dy (tinybn.ops.conv), so it
comes here too, with the flipped, transposed kernel: forward and backward each transform
their filter once.

The matrices (Cook-Toom, 1-D F(m, r) transposed from polynomial multiplication): for
the alpha - 1 finite points a_j and the point at infinity,
    A^T[i, j] = a_j^i                   B^T[j, :] = coefficients of prod_{l != j} (x - a_l)
    G[j, k]   = a_j^k / f_j             f_j = prod_{l != j} (a_j - a_l)
and for infinity A^T[:, -1] = e_{m-1}, G[-1] = e_{r-1}, B^T[-1] = coefficients of
prod_l (x - a_l). The points are dyadic (0, +-1, +-2, +-1/2), so A^T and B^T are exact
in binary and only G is rounded (in float64). POINTS holds the sets chosen by their
float32 error (measured on random tiles, 64 channels; the usual 0, 1, -1, 2, -2 for
alpha = 6 is 3x worse than 0, 1, -1, 2, -1/2).

Exactness: max|ours - ref| / max|ref| (crosscheck/parity.py's measure), ref the im2col
reference in float64, inputs standard normal, "SAME" padding:

    conv (tile)                           dtype     forward   input grad   filter grad
    CIFAR conv2 5x5x64x64, 12x12, F(4,5)  float32   6.3e-6    7.4e-6       9.7e-6
                                          float64   1.4e-14   1.5e-14      1.7e-14
    ResNet 3x3x64x64, 56x56, F(4,3)       float32   2.6e-6    2.7e-6       2.4e-6
                                          float64   5.0e-15   4.5e-15      4.8e-15
    ResNet 3x3x256x256, 14x14, F(4,3)     float32   4.9e-6    5.1e-6       3.0e-6
                                          float64   8.5e-15   8.2e-15      5.9e-15
    im2col + GEMM in float32, the same convs: 3.5e-7 .. 6.4e-7 (float64: the reference)

The error grows with alpha (the transforms' entries, A^T up to 8 and B^T up to 21/4 for
alpha = 8, cancel in the output transform), not with the batch. WINOGRAD_RTOL, the tolerance of
tests/test_winograd.py and of the numba kernel tests, leaves 4x over the worst float32
value and 40x over float64. The crosscheck sweep's conv samples have 1 or 2 channels and
never reach this path.

Policy (which convs, which tile): WINOGRAD_TILES by kernel size, for stride 1,
dilation 1, square 3x3 or 5x5 kernels, float32 or float64, at least MIN_CHANNELS input
and output channels, outputs at least MIN_TILES tiles across and at least MIN_BATCH_TILES
tiles in the batch (below); everything else goes to kn2row or to
the reference, im2col + GEMM (itself on the numba im2col; the filter gradient's: split
over the batch where numba_filter_gradient.splits says so). Measured on this 2-core
machine under load (other jobs running), numba backend, float32, one process, im2col
and Winograd alternating, median of 5 ratios (min..max):

    conv (batch)                       forward           input gradient     filter gradient (*)
    CIFAR conv2 5x5x64x64 12x12 (128)  3.38x (3.05-3.53) 3.11x (3.01-3.34)  3.38x (2.85-4.10)
    ResNet 3x3x64x64 56x56 (8)         1.77x (1.63-1.97) 1.88x (1.67-2.00)  2.30x (1.19-2.84)
    ResNet 3x3x128x128 28x28 (8)       1.87x             1.70x              1.52x (1.29-1.60)
    ResNet 3x3x256x256 14x14 (8)       1.76x             1.32x              1.79x (1.20-4.95)
    ResNet 3x3x512x512 7x7 (8)         0.86x             0.67x              -> MIN_TILES
    CIFAR conv1 5x5x3x64 24x24 (128)   0.57x             (not needed)       -> MIN_CHANNELS
    whole step, bn model (128)         train 1.60x (1.50-1.68), forward 2.02x (1.92-2.32)
    whole step, tutorial model (128)   train 1.26x (1.17-1.31), forward 1.41x (1.32-1.59)

(*) against im2col + GEMM with BLAS's threads (the filter gradient before the split below),
7 pairs at a load of 5 on the 2 cores (other runs at loads of 3-7: conv2 2.7x-3.8x, ResNet
56x56 1.3x-1.9x); with it (and numba_filter_gradient's im2col split) the whole training
step ran 2.14x (1.15-6.42) as fast for the bn model, 1.61x (1.18-2.55) for the tutorial
model, 3 steps a sample, 5-7 samples alternating.

The filter gradient (winograd_backprop_filter; WINOGRAD_FILTER_GRADIENT switches it) has
alpha^2 GEMMs (C x T) @ (T x O): a small result over a long sum. OpenBLAS's two threads
took 10-18x longer on those calls than one thread did (each call wakes its threads, on
busy cores), which kept it off until the work was split by hand (numba_threads): the
positions by their row p into alpha lanes, each a worker's on one core, with its serial
strip transform of row p (numba_filter_gradient.strip_transform, straight from x and dy)
and its GEMMs on one BLAS thread, summed over chunks of FILTER_CHUNK_TILES tiles (144:
one thread's GEMMs ran fastest at that sum length, 1.24x of 18's speed and 1.6x of
1152's) so that V and dM stay in cache. No two lanes add into the same dU, so the
result does not depend on the core count. dW = G^T dU G is one float64 GEMM with
kron(G, G) (the two batched ones took twice the whole im2col path at 256 channels).

The forward's alpha^2 GEMMs (T x C) @ (C x O) are split the same way, one position a lane
(numba_winograd_forward). OpenBLAS's two threads, woken for each call, now and then took
70-300 ms where the split took 9-72, even at a load of 1 (ResNet's 3x3x128 at 28x28 batch 2,
98 tiles: 12x-32x in four runs; 3x3x256 at 14x14 batches 8 and 16: 1.6x-8.2x in three; the
split then had alpha positions a lane). Each GEMM runs on one BLAS thread and no sum is
split between lanes: the same bits on 1 core or many (BLAS's own threads change float32
bits). The split against the batched GEMMs on BLAS's threads (with the filter transform's
float64 GEMMs), forward, float32, interleaved, 7 pairs, median (min..max) of a run at load
1.6-2 and one at load 1 (the input gradient's convs have these shapes), and im2col + GEMM's
time over the split's:

    conv (batch, tiles)                   split / before: load 1.6-2, load 1       im2col / split
    CIFAR conv2 5x5x64x64 12x12 (128)     1.14x (0.87-1.53), 1.32x (0.99-1.82)   2.4x, 2.2x
    ResNet 3x3x64 56x56 (8, 1568)         0.91x (0.89-0.94), 0.90x (0.86-0.97)   1.8x, 1.8x
    ResNet 3x3x64 56x56 (32, 6272)        0.99x (0.98-2.00), 1.01x (0.93-2.54)   1.9x, 1.7x
    ResNet 3x3x128 28x28 (2, 98)          1.23x (1.18-1.58), 1.28x (1.15-1.59)   1.5x, 1.5x
    ResNet 3x3x128 28x28 (8, 392)         0.93x (0.74-0.99), 0.95x (0.81-1.06)   1.8x, 1.9x
    ResNet 3x3x128 28x28 (32, 1568)       0.83x (0.76-0.86), 0.91x (0.54-1.11)   2.0x, 1.9x
    ResNet 3x3x256 14x14 (8, 128)         1.12x (0.79-1.29), 1.14x (1.10-1.36)   1.3x, 1.3x
    ResNet 3x3x256 14x14 (16, 256)        0.94x (0.90-1.27), 0.99x (0.93-1.27)   1.5x, 1.6x
    ResNet 3x3x256 14x14 (32, 512)        1.06x (0.81-1.36), 0.82x (0.77-1.17)   2.5x, 1.7x

(a third run, load 2: conv2 1.18x, 3x3x128 at batch 32 1.14x, 3x3x256 at 32 0.82x; the
whole training step at batch 128, 7 pairs of 2 steps: bn 1.07x (0.95-1.12) at load 0.5 and
0.98x (0.97-1.17) at load 2, tutorial 0.99x (0.50-1.14) at load 2.) Where
the GEMMs are long and wide (1568 x 128, 512 x 256) BLAS's two threads ran them up to 1.2x
faster when both cores were free; the split keeps the bits and avoids the worst cases.
Few tiles leave little to share: at 9-32 tiles in the batch (CIFAR conv2 at batch 1-2,
ResNet's 3x3x64 at 8x8 batch 4-8, 3x3x256 at 14x14 batch 1-2) the faster of im2col and
kn2row ran 0.94x-4x as fast (9-11 pairs each, two or three runs); at 36 (CIFAR conv2 at
batch 4) the two runs disagreed (Winograd 1.7x as fast, then kn2row 2.1x); from 49
(3x3x128 at 28x28, batch 1) to 98, Winograd ran 1.3x-1.9x as fast: MIN_BATCH_TILES = 48. The filter gradient against the
split im2col (9 pairs, two runs at load 0.5): 9-32 tiles 1.1x-2.8x slower, 36 (CIFAR conv2
at batch 4) 1.2x faster, 49 (3x3x128 at 28x28, batch 1) 1.2x slower, 98 1.23x faster: the
same minimum, within 1.2x of the best either side of it.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import functools

import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)
from .numba_filter_gradient import batch_chunks, im2col_backprop_filter, strip_transform
from .numba_threads import one_blas_thread, split
from .numba_winograd_forward import filter_transform, position_gemms

POINTS = {6: (0, 1, -1, 2, -0.5), 8: (0, 1, -1, 2, -2, 0.5, -0.5)}    # alpha -> finite points
WINOGRAD_TILES = {3: 4, 5: 4}             # r -> m: F(4x4, 3x3), F(4x4, 5x5)
MIN_CHANNELS = 16
MIN_TILES = 2                             # tiles across each output axis (a 7x7 output: im2col)
MIN_BATCH_TILES = 48                      # tiles in the whole batch (fewer: kn2row or im2col)
WINOGRAD_FILTER_GRADIENT = True           # split across the cores by batch (see above)
FILTER_CHUNK_TILES = 144                  # tiles per chunk of the filter gradient: its GEMMs' sum length
WINOGRAD_RTOL = {np.dtype(np.float32): 5e-5, np.dtype(np.float64): 1e-12}


@functools.cache
def transforms(m, r):
    """(A^T (m, alpha), G (alpha, r), B^T (alpha, alpha)) of F(m, r), float64."""
    alpha = m + r - 1
    points = np.array(POINTS[alpha], np.float64)
    AT, G, BT = np.zeros((m, alpha)), np.zeros((alpha, r)), np.zeros((alpha, alpha))
    for j, a in enumerate(points):
        others = np.delete(points, j)
        AT[:, j] = a ** np.arange(m)
        G[j] = a ** np.arange(r) / np.prod(a - others)
        BT[j, :alpha - 1] = np.poly(others)[::-1]       # np.poly: highest power first
    AT[m - 1, -1] = G[-1, r - 1] = 1.0
    BT[-1] = np.poly(points)[::-1]
    for a in (AT, G, BT):
        a.setflags(write=False)
    return AT, G, BT


def _tile_transform_plain(x, T, stride, top, left, out, TH, TW):
    """out[p*alpha + q, t, c] = sum_{i,j < s} T[p, i] T[q, j] x[n, th*stride + i - top, tw*stride + j - left, c]
    for tile t = (n*TH + th)*TW + tw; x is 0 outside. T (alpha, s): B^T for the input tiles."""
    N, H, W, C = x.shape
    alpha, s = T.shape
    for row in prange(N * TH):
        n, th = row // TH, row % TH
        d = np.empty((s, s, C), x.dtype)
        half = np.empty((alpha, s, C), x.dtype)        # T applied along the tile's rows
        for tw in range(TW):
            for i in range(s):
                h = th * stride + i - top
                for j in range(s):
                    w = tw * stride + j - left
                    if 0 <= h < H and 0 <= w < W:
                        for c in range(C):
                            d[i, j, c] = x[n, h, w, c]
                    else:
                        for c in range(C):
                            d[i, j, c] = 0
            for p in range(alpha):
                for j in range(s):
                    for c in range(C):
                        half[p, j, c] = 0
                    for i in range(s):
                        coefficient = T[p, i]
                        if coefficient != 0:          # a third of B^T is zeros
                            for c in range(C):
                                half[p, j, c] += coefficient * d[i, j, c]
            t = row * TW + tw
            for p in range(alpha):
                for q in range(alpha):
                    target = out[p * alpha + q, t]
                    for c in range(C):
                        target[c] = 0
                    for j in range(s):
                        coefficient = T[q, j]
                        if coefficient != 0:
                            for c in range(C):
                                target[c] += coefficient * half[p, j, c]


def _output_transform_plain(M, AT, y, TH, TW):
    """y[n, th*m + i, tw*m + j, o] = sum_{p,q} A^T[i, p] A^T[j, q] M[p*alpha + q, t, o], cropped to (OH, OW)."""
    N, OH, OW, O = y.shape
    m, alpha = AT.shape
    for row in prange(N * TH):
        n, th = row // TH, row % TH
        half = np.empty((m, alpha, O), y.dtype)         # A^T applied along the tile's rows
        for tw in range(TW):
            t = row * TW + tw
            for i in range(m):
                for q in range(alpha):
                    for o in range(O):
                        half[i, q, o] = 0
                    for p in range(alpha):
                        coefficient = AT[i, p]
                        if coefficient != 0:
                            source = M[p * alpha + q, t]
                            for o in range(O):
                                half[i, q, o] += coefficient * source[o]
            for i in range(min(m, OH - th * m)):
                for j in range(min(m, OW - tw * m)):
                    target = y[n, th * m + i, tw * m + j]
                    for o in range(O):
                        target[o] = 0
                    for q in range(alpha):
                        coefficient = AT[j, q]
                        if coefficient != 0:
                            for o in range(O):
                                target[o] += coefficient * half[i, q, o]


_tile_transform_kernel = njit(parallel=True, cache=True)(_tile_transform_plain)
_output_transform_kernel = njit(parallel=True, cache=True)(_output_transform_plain)


def winograd_tile(x_shape, w_shape, window, dtype, direction="forward"):
    """The numba backend's policy: the output tile m of the Winograd conv for these operands, or None
    for im2col + GEMM. direction: "forward" (conv2d_forward, which also serves the input gradient)
    or "filter" (conv2d_backprop_filter)."""
    KH, KW, C, O = w_shape
    if direction == "filter" and not WINOGRAD_FILTER_GRADIENT:
        return None
    if (KH != KW or KH not in WINOGRAD_TILES or tuple(window[2:6]) != (1, 1, 1, 1) or min(C, O) < MIN_CHANNELS
            or dtype not in WINOGRAD_RTOL or x_shape[0] == 0):
        return None
    m = WINOGRAD_TILES[KH]
    if min(window.OH, window.OW) < MIN_TILES * m:
        return None
    tiles = x_shape[0] * -(-window.OH // m) * -(-window.OW // m)
    return m if tiles >= MIN_BATCH_TILES else None


def winograd_conv2d(x, w, window, m):
    """conv2d_forward by F(m x m, r x r): y (N, OH, OW, O)."""
    N = x.shape[0]
    r, _, C, O = w.shape
    AT, G, BT = transforms(m, r)
    alpha = m + r - 1
    TH, TW = -(-window.OH // m), -(-window.OW // m)
    V = np.empty((alpha * alpha, N * TH * TW, C), x.dtype)
    _tile_transform_kernel(np.ascontiguousarray(x), BT.astype(x.dtype), m, window.top, window.left, V, TH, TW)
    M = position_gemms(V, filter_transform(w, G))      # alpha^2 GEMMs (T, C) @ (C, O), split
    y = np.empty((N, window.OH, window.OW, O), x.dtype)
    _output_transform_kernel(M, AT.astype(x.dtype), y, TH, TW)
    return y


def winograd_backprop_filter(x, dy, window, w_shape, m):
    """conv2d_backprop_filter by F(m x m, r x r), the adjoint of winograd_conv2d in w:
    dM = A dy_tile A^T per tile (the transposed output transform; dy is 0 past OH, OW),
    dU = V^T @ dM at each of the alpha^2 positions (GEMMs over the T tiles), dW = G^T dU G.
    The positions are split into alpha lanes of numba_threads.split by their row p, each on
    one core (its serial strip_transform of that row, its GEMMs on one BLAS thread), and each
    lane sums its positions' GEMMs over chunks of FILTER_CHUNK_TILES tiles, so that V and dM
    stay in cache. No two lanes add into the same dU: the result is the same on any core count."""
    r, _, C, O = w_shape
    AT, G, BT = transforms(m, r)
    alpha = m + r - 1
    TH, TW = -(-window.OH // m), -(-window.OW // m)
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    BTx, Ady = BT.astype(x.dtype), np.ascontiguousarray(AT.T, dy.dtype)
    chunks = batch_chunks(x.shape[0], TH * TW, FILTER_CHUNK_TILES, lanes=1)

    def lane_sum(p):                                              # the alpha positions (p, q) of row p
        total = None
        for chunk in chunks:
            tiles = x[chunk].shape[0] * TH * TW
            V, dM = np.empty((alpha, tiles, C), x.dtype), np.empty((alpha, tiles, O), dy.dtype)
            strip_transform(x[chunk], BTx[p:p + 1], BTx, m, window.top, window.left, V, TW)
            strip_transform(dy[chunk], Ady[p:p + 1], Ady, m, 0, 0, dM, TW)
            part = np.matmul(V.transpose(0, 2, 1), dM)              # (alpha, C, O)
            total = part if total is None else np.add(total, part, out=total)
        return total

    dU = np.concatenate(split(lane_sum, alpha)).reshape(alpha * alpha, C * O)
    with one_blas_thread():       # dW[i, j] = sum_{p,q} G[p, i] G[q, j] dU[p, q]: kron(G, G)^T @ dU in float64
        return (np.kron(G, G).T @ dU.astype(np.float64)).reshape(w_shape).astype(dy.dtype)


def conv2d_backprop_filter(x, dy, window, w_shape):
    """As tinybn.ops.conv.conv2d_backprop_filter: Winograd where winograd_tile picks a tile, else
    im2col + GEMM (numba_filter_gradient), both with the batch split across the cores."""
    m = winograd_tile(x.shape, w_shape, window, x.dtype, "filter")
    if m is None:
        return im2col_backprop_filter(x, dy, window, w_shape)
    return winograd_backprop_filter(x, dy, window, w_shape, m)
