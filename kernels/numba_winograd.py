"""Winograd convolution: the numba backend's conv2d_forward and conv2d_backprop_filter for 3x3
and 5x5 stride-1 convs.

Shapes as tinybn.ops.conv: x (N, H, W, C), w (KH, KW, C, O), a tinybn.geometry.Window;
y (N, OH, OW, O). r = KH = KW, m the output tile, alpha = m + r - 1 the input tile,
T = N * TH * TW tiles (TH = ceil(OH / m), TW = ceil(OW / m)).

    y tile (m x m) = A^T [ sum_c (G w[:, :, c, o] G^T) * (B^T d_c B) ] A     (Lavin & Gray 2016)

d_c is the alpha x alpha window of channel c of the padded input that the tile reads
(tiles start every m pixels; past the padding, zeros), * the elementwise product.
Per tile, the alpha^2 products of the transformed filter and input are a GEMM over C
at each of the alpha^2 positions: V (alpha^2, T, C) @ U (alpha^2, C, O), m^2 r^2 / alpha^2
fewer multiplies than im2col + GEMM (F(4x4, 5x5): 6.25x, F(4x4, 3x3): 4x). The forward
(numba_winograd_forward.fused_conv2d) runs them chunk by chunk of tiles, each chunk's input
transform, GEMMs and output transform back to back on one core, so that its V and M stay in
cache; the filter transform U = G w G^T (numba_winograd_forward.filter_transform) is summed
in float64 once per call and rounded to x's dtype.
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
    fast 3x3x256x256, 7x7, F(4,3)         float32   3.1e-6    2.4e-6       1.3e-6
                                          float64   7.5e-15   8.3e-15      2.9e-15
    fast 3x3x256x256, 3x3, F(4,3)         float32   4.0e-6    4.3e-6       1.2e-6
                                          float64   6.1e-15   7.7e-15      2.5e-15
    ResNet 3x3x512x512, 7x7, F(4,3)       float32   3.8e-6    4.1e-6       1.9e-6
                                          float64   7.6e-15   7.6e-15      3.0e-15
    im2col + GEMM in float32, the same convs: 3.5e-7 .. 6.4e-7 (float64: the reference)

(the 7x7 and 3x3 rows at batch 8, with the chunked forward; the forward's chunks change no
product or sum of a tile: conv2 measured again at 6.8e-6, 6.0e-6, 7.7e-6 in float32.)

The error grows with alpha (the transforms' entries, A^T up to 8 and B^T up to 21/4 for
alpha = 8, cancel in the output transform), not with the batch. WINOGRAD_RTOL, the tolerance of
tests/test_winograd.py and of the numba kernel tests, leaves 4x over the worst float32
value and 40x over float64. The crosscheck sweep's conv samples have 1 or 2 channels and
never reach this path.

Policy (which convs, which tile): WINOGRAD_TILES by kernel size, for stride 1,
dilation 1, square 3x3 or 5x5 kernels, float32 or float64, at least MIN_CHANNELS input
and output channels and at least MIN_BATCH_TILES tiles in the batch (below), or
MIN_SMALL_OUTPUT_TILES where the output has fewer than MIN_TILES whole tiles across (7x7
and 3x3 outputs, whose tiles the edge cuts off: the last table); everything else goes to kn2row or to
the reference, im2col + GEMM (itself on the numba im2col; the filter gradient's: split
over the batch where numba_filter_gradient.splits says so). Measured on this 2-core
machine under load (other jobs running), numba backend, float32, one process, im2col
and Winograd alternating, median of 5 ratios (min..max):

    conv (batch)                       forward           input gradient     filter gradient (*)
    CIFAR conv2 5x5x64x64 12x12 (128)  3.38x (3.05-3.53) 3.11x (3.01-3.34)  3.38x (2.85-4.10)
    ResNet 3x3x64x64 56x56 (8)         1.77x (1.63-1.97) 1.88x (1.67-2.00)  2.30x (1.19-2.84)
    ResNet 3x3x128x128 28x28 (8)       1.87x             1.70x              1.52x (1.29-1.60)
    ResNet 3x3x256x256 14x14 (8)       1.76x             1.32x              1.79x (1.20-4.95)
    ResNet 3x3x512x512 7x7 (8)         0.86x             0.67x              -> MIN_SMALL_OUTPUT_TILES
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
tile transform of row p (numba_winograd_forward.tile_transform, the forward's own kernel,
straight from x and dy) and its GEMMs on one BLAS thread, summed over chunks of
FILTER_CHUNK_TILES tiles (144: one thread's GEMMs ran fastest at that sum length, 1.24x of
18's speed and 1.6x of 1152's) so that V and dM stay in cache. No two lanes add into the same dU, so the
result does not depend on the core count. dW = G^T dU G is one float64 GEMM with
kron(G, G) (the two batched ones took twice the whole im2col path at 256 channels).
At the fast model's convs, batch 256 (interleaved, 5 rounds, load 2.5-4), Winograd's filter
gradient ran 2.06x (1.64-2.11) as fast as the split im2col at 3x3x24->64 31x31, 1.46x at
3x3x64 15x15, 4.38x at 3x3x64->256 15x15 (CIFAR conv2 at 128: 2.51x); chunks of 36-576 tiles
against 144: 31x31 1.07x-1.08x the time at 36-72, 0.98x at 288, 1.18x at 576; 64->256 and
3x3x256 7x7 1.03x-1.18x at 36-72, 1.7x-2.1x at 288-576: 144 kept.

The forward's GEMMs run on one BLAS thread too, in the chunks' lanes (numba_winograd_forward
has the measurements). Few tiles leave little to share: at 9-32 tiles in the batch (CIFAR conv2 at batch 1-2,
ResNet's 3x3x64 at 8x8 batch 4-8, 3x3x256 at 14x14 batch 1-2) the faster of im2col and
kn2row ran 0.94x-4x as fast (9-11 pairs each, two or three runs); at 36 (CIFAR conv2 at
batch 4) the two runs disagreed (Winograd 1.7x as fast, then kn2row 2.1x); from 49
(3x3x128 at 28x28, batch 1) to 98, Winograd ran 1.3x-1.9x as fast: MIN_BATCH_TILES = 48. The filter gradient against the
split im2col (9 pairs, two runs at load 0.5): 9-32 tiles 1.1x-2.8x slower, 36 (CIFAR conv2
at batch 4) 1.2x faster, 49 (3x3x128 at 28x28, batch 1) 1.2x slower, 98 1.23x faster: the
same minimum, within 1.2x of the best either side of it.
With the fused forward, at load 4-6 (9 pairs): conv2 at batches 1-6 (9-54 tiles) 2.5x-4.3x as
fast as kn2row, 3x3x64 at 8x8 batch 4 (16 tiles) 7.9x, 3x3x256 at 14x14 batches 1-3 (16-48)
1.05x-1.48x, 3x3x128 at 28x28 batch 1 (49) 1.68x; the filter gradient against the split im2col:
18 and 32 tiles 0.80x and 0.86x, 36-54 1.33x-2.03x. MIN_BATCH_TILES stays 48 until a quiet
machine says otherwise: the runs that set it were at load 0.5, where kn2row's GEMM has BLAS's
two threads on free cores.

Outputs smaller than two tiles across (F(4x4, 3x3) at 7x7: 4 tiles for 49 pixels, 3.1x fewer
multiplies than im2col; at 3x3: one tile, 2.25x) took kn2row (forward, input gradient) and the
split im2col (filter gradient) until MIN_TILES barred them; with the fused forward they go by
Winograd from MIN_SMALL_OUTPUT_TILES (64) tiles in the batch. The Winograd way's speedup over
those, float32, interleaved, 5-7 pairs, median (min..max), load 3-5 on the 2 cores. F(2x2, 3x3)
(alpha 4) ran 0.6x-0.75x as fast as F(4x4, 3x3) at 128-1024 tiles, about even at 32-64 and 2.1x
at 16 (below the minimum): not kept.

    conv (batch, tiles)                   forward           input gradient    filter gradient
    fast model 3x3x256 7x7 (256, 1024)    1.67x (1.65-1.78) 1.80x (1.67-1.88) 1.80x (1.76-2.14)
    fast model 3x3x256 3x3 (256, 256)     1.13x (0.89-2.06) 1.06x (0.94-1.45) 1.33x (1.27-1.47)
    ResNet 3x3x512 7x7 (32, 128)          1.60x (1.51-2.36) 1.60x (1.58-1.69) 1.83x (1.63-2.35)
    fast model 3x3x256 7x7 (16, 64)       1.32x (1.02-1.56)
    fast model 3x3x256 3x3 (64, 64)       1.11x (1.07-1.19)
    ResNet 3x3x512 7x7 (8, 32)            1.00x-1.25x (0.71-1.47), two runs      1.00x (0.97-1.15)
    fast model 3x3x256 3x3 (16, 16)       0.45x (0.40-0.69)

(a second run: 1.75x, 1.21x and 1.94x forward, 1.83x, 1.28x and 2.08x filter gradient, the
first three rows). At 32 tiles and fewer they keep the path before.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import functools

import numpy as np

from . import numba_setup  # noqa: F401  (before the first parallel call)
from .numba_filter_gradient import batch_chunks, im2col_backprop_filter
from .numba_threads import one_blas_thread, split
from .numba_winograd_forward import filter_transform, fused_conv2d, tile_transform

POINTS = {6: (0, 1, -1, 2, -0.5), 8: (0, 1, -1, 2, -2, 0.5, -0.5)}    # alpha -> finite points
WINOGRAD_TILES = {3: 4, 5: 4}             # r -> m: F(4x4, 3x3), F(4x4, 5x5)
MIN_CHANNELS = 16
MIN_TILES = 2                             # whole tiles across each output axis for MIN_BATCH_TILES
MIN_BATCH_TILES = 48                      # tiles in the whole batch (fewer: kn2row or im2col)
MIN_SMALL_OUTPUT_TILES = 64               # the same, for outputs of fewer whole tiles (7x7, 3x3)
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
    tiles = x_shape[0] * -(-window.OH // m) * -(-window.OW // m)
    small = min(window.OH, window.OW) < MIN_TILES * m
    return m if tiles >= (MIN_SMALL_OUTPUT_TILES if small else MIN_BATCH_TILES) else None


def winograd_conv2d(x, w, window, m):
    """conv2d_forward by F(m x m, r x r): y (N, OH, OW, O), chunk by chunk (numba_winograd_forward)."""
    AT, G, BT = transforms(m, w.shape[0])
    return fused_conv2d(x, filter_transform(w, G), AT, BT, window)


def winograd_backprop_filter(x, dy, window, w_shape, m):
    """conv2d_backprop_filter by F(m x m, r x r), the adjoint of winograd_conv2d in w:
    dM = A dy_tile A^T per tile (the transposed output transform; dy is 0 past OH, OW),
    dU = V^T @ dM at each of the alpha^2 positions (GEMMs over the T tiles), dW = G^T dU G.
    The positions are split into alpha lanes of numba_threads.split by their row p, each on
    one core (its serial tile_transform of that row, its GEMMs on one BLAS thread), and each
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
            tile_transform(x[chunk], BTx[p:p + 1], BTx, m, window.top, window.left, V, TH, TW)
            tile_transform(dy[chunk], Ady[p:p + 1], Ady, m, 0, 0, dM, TH, TW)
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
