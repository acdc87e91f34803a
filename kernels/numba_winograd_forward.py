"""numba_winograd's forward, fused and chunked: the filter transform U = G w G^T once per call,
then, chunk by chunk of tiles, the tile transform, the alpha^2 GEMMs and the output transform.

Shapes as numba_winograd: w (r, r, C, O), G (alpha, r), U (alpha^2, C, O); a chunk of t tiles
has V (alpha^2, t, C) and M (alpha^2, t, O); position k = p*alpha + q.

    U[p*alpha + q, c, o] = sum_j G[q, j] (sum_i G[p, i] w[i, j, c, o])     in float64, rounded once
    per chunk:   V = B^T d B (each tile),   M[k] = V[k] @ U[k],   y tile = A^T M A

The filter transform is one parallel pass over the input channels, summed in float64 and
rounded once, as the float64 GEMMs it replaces were: in float32 both are within half an ulp
of the exact value (they differ where the float64 sum lands on a float32 rounding tie, 0.2%
of the entries at 3x3x256x256). Those GEMMs of r terms, on one BLAS thread, took 17.6 ms at
3x3x256x256 (as long as the tile transform), the kernel 7.8 ms; 2.4 and 1.5 ms at 3x3x128,
1.2 and 0.9 ms at the CIFAR conv2 (float32, median of 7, load ~2).

A chunk is a run of whole tile rows (n, th) of the batch, of about FORWARD_CHUNK_BYTES of V
and M together (at least one row, at most a lane's share of the rows: chunk_rows), and a lane
of numba_threads.split: its transforms are serial (nogil) numba kernels, its GEMMs one np.matmul
over the positions on one BLAS thread, on whichever worker is free. Its V and M stay in the
caches between the three steps, where the whole batch's went to memory and back (19 MB each at
the CIFAR conv2, batch 128; 600 MB of M at the fast model's 64 -> 256 conv at batch 1024). Each
output tile is one chunk's, no GEMM's sum is split: the same bits on 1 core or many
(tests/test_winograd.py). Chunk sizes in tiles, the forward's time against 128 tiles, float32,
interleaved, 5 rounds, median (min..max), load 1-3 (conv2 batch 128; the rest 3x3, batch 256;
ResNet batch 32), and the tiles of 2 MB:

    conv                       32 tiles           64                 256                512      2 MB
    CIFAR conv2 5x5x64 12x12   0.95x (0.89-1.06)  0.95x (0.85-1.06)  0.98x (0.93-1.02)  0.99x      64
    fast 3x3x24->64 31x31      1.16x (1.10-1.23)  1.03x (0.99-1.06)  1.02x (1.00-1.06)  1.06x     165
    fast 3x3x64 15x15          1.02x (0.97-1.07)  0.99x (0.92-1.00)  1.03x (0.96-1.05)  1.03x     113
    fast 3x3x64->256 15x15     0.88x (0.40-0.98)  0.97x (0.93-1.02)  0.95x (0.79-1.23)  0.91x      45
    ResNet 3x3x64 56x56        1.05x (1.05-1.06)  1.01x (0.96-1.05)  0.94x (0.93-0.98)  0.94x     113
    ResNet 3x3x256 14x14       0.89x (0.85-0.96)  1.03x (0.97-1.08)  0.98x (0.91-1.01)  1.00x      28

(16 tiles: 1.16x-1.41x the time at 31x31, 15x15 and 56x56.) Narrow convs ran best at 64-512
tiles, the 256-channel ones at 32 (ResNet 3x3x256 at 14x14: 32 tiles 1.11x and 1.12x as fast as
128 at batches 32 and 16 in a second run, 7 rounds): a chunk's bytes, not its tiles, set the
size. Against 128 tiles, 2 MB ran 1.16x (0.96x against the whole batch's forward, 0.83x for 128
tiles) at ResNet's 3x3x256, 0.97x-1.05x elsewhere (7 rounds, load 3.5). On one thread at the CIFAR
conv2 the chunks took the GEMMs from 50-60 ms (the whole batch's V) to 33 ms and the output
transform from 8.5-22 to 9 ms, the tile transform 12 ms either way.
The fused forward against the whole batch's (its transforms parallel numba kernels, its GEMMs
one position a lane, below), float32, interleaved, 7 pairs, median (min..max), load ~3.5 on
the 2 cores (a second run, 7 rounds, forward only, in brackets); ResNet at batch 32:

    conv (batch)                     forward                     input gradient
    CIFAR conv2 5x5x64 12x12 (128)   0.96x (0.84-1.01) [0.92x]   1.17x (0.94-1.40)
    ResNet 3x3x64 56x56              1.46x (0.91-2.14) [0.96x]   1.31x (1.21-2.31)
    ResNet 3x3x256 14x14             1.03x (0.87-1.43) [0.96x]   0.89x (0.77-1.41)
    fast 3x3x24->64 31x31 (256)      1.49x (0.98-3.55) [0.99x]   1.59x (1.07-1.93)
    fast 3x3x64 15x15 (256)          1.39x (0.95-1.46) [1.00x]   1.37x (1.10-1.71)
    fast 3x3x64->256 15x15 (256)     1.17x (0.37-1.80) [1.02x]   1.79x (1.44-2.08)

(conv2's two directions have the same shapes: their spread is the noise's.) At batch 1024,
chunks of 128 tiles, 3-5 pairs at load 3-8: 31x31 2.24x forward, 1.23x input gradient; 15x15
0.94x / 0.92x, then 1.29x / 1.65x at load 3; 64->256 1.20x / 1.03x. The fused forward holds up
where the cores are busy (a parallel kernel waits for its slowest thread, a lane does not),
and runs even with the whole batch's when they are not.
The filter gradient's lanes (numba_winograd.winograd_backprop_filter) run this tile transform
too, each for one row p of B^T on x's tiles and of A on dy's m x m tiles (rows_T). It replaced a
strip transform there (B^T along a strip's rows once for its TW overlapping tiles, then along
each tile's columns): the same additions in the same order, the same bits (checked at the fast
model's five 3x3 convs, batches 256 and 1024). As the forward's chunk transform the strip form
took 18 ms against the tile-by-tile gather's 12 (conv2, one thread), 33 ms in its flat (W*C)
form. In the filter gradient, the gather's time over the strip's, float32, interleaved, 5
rounds at batch 1024, median (min-max), load ~1.5: fast 3x3x24->64 31x31 1.12x (1.02-1.22),
3x3x64 15x15 0.91x (0.86-0.97), 64->256 15x15 0.94x (0.80-1.01), 3x3x256 7x7 0.94x
(0.87-1.03), 3x3 1.00x (0.98-1.04): about 0.1 s less per step of the fast model (7 rounds at
batch 256: 0.95x-1.05x, the same order).

Before the chunks, the whole batch's alpha^2 GEMMs (T x C) @ (C x O) ran one position a lane
of numba_threads.split, on one BLAS thread each, for this reason: OpenBLAS's two threads, woken for each call, now and then took
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

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)
from .numba_threads import LANES, split

FORWARD_CHUNK_BYTES = 2 << 20             # a chunk's V and M together (measured: above)


def _filter_transform_plain(w, G, U):
    """U[p*alpha + q, c, o] = sum_j G[q, j] sum_i G[p, i] w[i, j, c, o], in float64, stored in U's dtype."""
    r, _, C, O = w.shape
    alpha = G.shape[0]
    for c in prange(C):
        half = np.empty((alpha, r, O), np.float64)     # G applied along the filter's rows
        total = np.empty(O, np.float64)
        for p in range(alpha):
            for j in range(r):
                for o in range(O):
                    half[p, j, o] = 0
                for i in range(r):
                    coefficient = G[p, i]
                    for o in range(O):
                        half[p, j, o] += coefficient * w[i, j, c, o]
        for p in range(alpha):
            for q in range(alpha):
                for o in range(O):
                    total[o] = 0
                for j in range(r):
                    coefficient = G[q, j]
                    for o in range(O):
                        total[o] += coefficient * half[p, j, o]
                target = U[p * alpha + q, c]
                for o in range(O):
                    target[o] = total[o]


def _tile_transform_plain(x, rows_T, T, stride, top, left, out, TH, TW, row0=0):
    """out[p*alpha + q, (row - row0)*TW + tw, c]
           = sum_{i,j < s} rows_T[p, i] T[q, j] x[n, th*stride + i - top, tw*stride + j - left, c]
    for the tile rows row = n*TH + th from row0 on that out holds (out.shape[1] // TW of them); x is 0
    outside. T (alpha, s): B^T for the input tiles, A for dy's tiles (the filter gradient); rows_T:
    the rows p it computes, T itself (the forward) or one of them (a lane of the filter gradient).
    Serial: one chunk, on one core."""
    N, H, W, C = x.shape
    P = rows_T.shape[0]
    alpha, s = T.shape
    d = np.empty((s, s, C), x.dtype)
    half = np.empty((P, s, C), x.dtype)                # rows_T applied along the tile's rows
    for row in range(out.shape[1] // TW):
        n, th = (row0 + row) // TH, (row0 + row) % TH
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
            for p in range(P):
                for j in range(s):
                    for c in range(C):
                        half[p, j, c] = 0
                    for i in range(s):
                        coefficient = rows_T[p, i]
                        if coefficient != 0:          # a third of B^T is zeros
                            for c in range(C):
                                half[p, j, c] += coefficient * d[i, j, c]
            t = row * TW + tw
            for p in range(P):
                for q in range(alpha):
                    target = out[p * alpha + q, t]
                    for c in range(C):
                        target[c] = 0
                    for j in range(s):
                        coefficient = T[q, j]
                        if coefficient != 0:
                            for c in range(C):
                                target[c] += coefficient * half[p, j, c]


def _output_transform_plain(M, AT, y, TH, TW, row0=0):
    """y[n, th*m + i, tw*m + j, o] = sum_{p,q} A^T[i, p] A^T[j, q] M[p*alpha + q, (row - row0)*TW + tw, o],
    cropped to (OH, OW), for the tile rows row = n*TH + th from row0 on that M holds. Serial."""
    N, OH, OW, O = y.shape
    m, alpha = AT.shape
    half = np.empty((m, alpha, O), y.dtype)             # A^T applied along the tile's rows
    for row in range(M.shape[1] // TW):
        n, th = (row0 + row) // TH, (row0 + row) % TH
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


_filter_transform_kernel = njit(parallel=True, cache=True)(_filter_transform_plain)
_tile_transform_kernel = njit(cache=True, nogil=True)(_tile_transform_plain)
_output_transform_kernel = njit(cache=True, nogil=True)(_output_transform_plain)


def tile_transform(x, rows_T, T, stride, top, left, out, TH, TW, row0=0):
    """_tile_transform_kernel: the tile transform of rows_T's positions, serial (one core of a split)."""
    _tile_transform_kernel(x, rows_T, T, stride, top, left, out, TH, TW, row0)


def filter_transform(w, G):
    """U (alpha^2, C, O) = G w G^T at every (c, o), summed in float64, in w's dtype."""
    C, O = w.shape[2:]
    U = np.empty((G.shape[0] ** 2, C, O), w.dtype)
    _filter_transform_kernel(np.ascontiguousarray(w), np.ascontiguousarray(G, np.float64), U)
    return U


def chunk_rows(rows, TW, chunk_tiles):
    """(the first tile row of each chunk, rows a chunk): chunk_tiles // TW rows (at least one), at most
    a lane's share of the batch's rows (so that both cores get work). Fixed by the shapes alone,
    never by the core count."""
    per = max(1, min(chunk_tiles // TW, -(-rows // LANES)))
    return range(0, rows, per), per


def fused_conv2d(x, U, AT, BT, window, chunk_tiles=None):
    """y (N, OH, OW, O) = winograd conv of x with the transformed filter U, chunk by chunk of
    chunk_tiles tiles (by default those whose V and M hold FORWARD_CHUNK_BYTES): each
    chunk's tile transform, its alpha^2 GEMMs (tiles, C) @ (C, O), its output transform, back to
    back on one core of numba_threads.split (its GEMMs on one BLAS thread)."""
    N, _, _, C = x.shape
    m, alpha, O = AT.shape[0], BT.shape[0], U.shape[2]
    TH, TW = -(-window.OH // m), -(-window.OW // m)
    if chunk_tiles is None:
        chunk_tiles = FORWARD_CHUNK_BYTES // (alpha * alpha * (C + O) * x.dtype.itemsize)
    starts, per = chunk_rows(N * TH, TW, chunk_tiles)
    x, BT, AT = np.ascontiguousarray(x), BT.astype(x.dtype), AT.astype(x.dtype)
    y = np.empty((N, window.OH, window.OW, O), x.dtype)

    def chunk(k):
        row0 = starts[k]
        V = np.empty((alpha * alpha, min(per, N * TH - row0) * TW, C), x.dtype)
        tile_transform(x, BT, BT, m, window.top, window.left, V, TH, TW, row0)
        _output_transform_kernel(np.matmul(V, U), AT, y, TH, TW, row0)

    split(chunk, len(starts))
    return y
