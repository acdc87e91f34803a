"""The two halves of numba_winograd's forward that sit between its tile transforms: the filter
transform U = G w G^T and the alpha^2 GEMMs M[k] = V[k] @ U[k] over the positions k.

Shapes as numba_winograd: w (r, r, C, O), G (alpha, r), V (alpha^2, T, C), U (alpha^2, C, O),
M (alpha^2, T, O); position k = p*alpha + q.

    U[p*alpha + q, c, o] = sum_j G[q, j] (sum_i G[p, i] w[i, j, c, o])     in float64, rounded once

The filter transform is one parallel pass over the input channels, summed in float64 and
rounded once, as the float64 GEMMs it replaces were: in float32 both are within half an ulp
of the exact value (they differ where the float64 sum lands on a float32 rounding tie, 0.2%
of the entries at 3x3x256x256). Those GEMMs of r terms, on one BLAS thread, took 17.6 ms at
3x3x256x256 (as long as the tile transform), the kernel 7.8 ms; 2.4 and 1.5 ms at 3x3x128,
1.2 and 0.9 ms at the CIFAR conv2 (float32, median of 7, load ~2).

The GEMMs (T, C) @ (C, O) run in lanes of numba_threads.split, one position a lane, each
on whichever worker is free, its GEMM on one BLAS thread: OpenBLAS's two threads woke for
each of the alpha^2 calls and now and then lost 10-30x where T is small (numba_winograd's
table). On the GEMMs alone, interleaved, lanes of one position ran 1.09x-1.23x as fast as
lanes of alpha positions at 36 GEMMs of 512 x 256 x 256 (one core busy with other work),
even at 1568 x 128 x 128 and 1152 x 64 x 64; halving each position's rows into two lanes
gained nothing clear. No two lanes write
the same M[k] and no GEMM's sum is split: the result is the same, bit for bit, on 1 core
or many (tests/test_winograd.py).

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)
from .numba_threads import split


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


_filter_transform_kernel = njit(parallel=True, cache=True)(_filter_transform_plain)


def filter_transform(w, G):
    """U (alpha^2, C, O) = G w G^T at every (c, o), summed in float64, in w's dtype."""
    C, O = w.shape[2:]
    U = np.empty((G.shape[0] ** 2, C, O), w.dtype)
    _filter_transform_kernel(np.ascontiguousarray(w), np.ascontiguousarray(G, np.float64), U)
    return U


def position_gemms(V, U):
    """M (alpha^2, T, O): M[k] = V[k] @ U[k], each position k a lane of numba_threads.split (its
    GEMM on one BLAS thread, on whichever worker is free)."""
    M = np.empty((V.shape[0], V.shape[1], U.shape[2]), V.dtype)
    split(lambda k: np.matmul(V[k], U[k], out=M[k]), V.shape[0])
    return M
