"""numba twins of the local response normalization primitives.

Shapes as tinybn.ops.lrn: x, y, norm, dy, dx (N, H, W, C); r = depth_radius; the
channel window |j - k| <= r is clipped at 0 and C - 1.

    forward    norm[k] = bias + alpha * sum_{|j-k| <= r} x[j]^2,   y[k] = x[k] * norm[k]^(-beta)
    backward   dx[k] = dy[k] * norm[k]^(-beta) - 2 alpha beta x[k] * sum_{|j-k| <= r} dy[j] y[j] / norm[j]

Each window sum is a direct sum of its at most 2r+1 terms in x's dtype, in
ascending j: short sums, so float32 is accurate enough, and no running prefix sum
(which would subtract large sums and lose the small ones, see tinybn/ops/lrn.py).
The reference gets the same sums from a GEMM with a 0/1 band matrix, whose
summation order BLAS chooses, so results agree to float32 rounding, not bit for bit.

norm^(-beta) is most of the cost: pow does not vectorise. For beta 0.5 and 0.75
(the CIFAR tutorial's) it is built from sqrt and division in float64, which
vectorise and round to the float32 a correctly rounded pow gives (numpy's float32
pow, the reference's, is within 0.5 ulp too); other betas call pow.
Parallel over (n, row); the channel loops are innermost.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)


_POW, _RSQRT, _RSQRT_3_4 = 0, 1, 2
_SPECIAL_BETAS = {0.5: _RSQRT, 0.75: _RSQRT_3_4}


def _window_sums_plain(v, radius, out):
    """out[k] = sum_{|j-k| <= radius, 0 <= j < C} v[j], ascending j, in v's dtype."""
    channels = v.shape[0]
    for k in range(channels):
        out[k] = 0
    # one offset d = j - k at a time, over slices: the loop over k is contiguous and
    # vectorises (2x faster than a loop over j for each k); each sum still adds in ascending j
    for d in range(-radius, radius + 1):
        lo, hi = max(0, -d), min(channels, channels - d)
        if lo < hi:
            into, terms = out[lo:hi], v[lo + d:hi + d]
            for k in range(hi - lo):
                into[k] += terms[k]


# The power loops are written out in both kernels, with the mode tested outside
# the channel loop: moved into a helper they stopped vectorising (2x slower).
# The channel loops index 1-D views of one pixel (x[n, h, w]): 1.5-2x faster than
# indexing the 4-D arrays, which LLVM did not vectorise as well.

def _lrn_forward_plain(x, radius, bias, alpha, neg_beta, mode, y, norm):
    N, H, W, C = x.shape
    t = x.dtype.type
    for row in prange(N * H):
        n, h = row // H, row % H
        terms, sums = np.empty(C, x.dtype), np.empty(C, x.dtype)
        for w in range(W):
            xv, yv, nv = x[n, h, w], y[n, h, w], norm[n, h, w]
            for c in range(C):
                terms[c] = xv[c] * xv[c]
            _window_sums(terms, radius, sums)
            for c in range(C):
                nv[c] = bias + alpha * sums[c]
            if mode == _RSQRT_3_4:
                for c in range(C):
                    s = np.sqrt(np.float64(nv[c]))
                    yv[c] = xv[c] * t(1.0 / (s * np.sqrt(s)))
            elif mode == _RSQRT:
                for c in range(C):
                    yv[c] = xv[c] * t(1.0 / np.sqrt(np.float64(nv[c])))
            else:
                for c in range(C):
                    yv[c] = xv[c] * nv[c] ** neg_beta


def _lrn_backward_plain(dy, x, y, norm, radius, coef, neg_beta, mode, dx):
    N, H, W, C = x.shape
    t = x.dtype.type
    for row in prange(N * H):
        n, h = row // H, row % H
        terms, sums = np.empty(C, x.dtype), np.empty(C, x.dtype)
        for w in range(W):
            g, xv, yv, nv, into = dy[n, h, w], x[n, h, w], y[n, h, w], norm[n, h, w], dx[n, h, w]
            for c in range(C):
                terms[c] = g[c] * yv[c] / nv[c]
            _window_sums(terms, radius, sums)
            if mode == _RSQRT_3_4:
                for c in range(C):
                    s = np.sqrt(np.float64(nv[c]))
                    into[c] = g[c] * t(1.0 / (s * np.sqrt(s))) - coef * xv[c] * sums[c]
            elif mode == _RSQRT:
                for c in range(C):
                    into[c] = g[c] * t(1.0 / np.sqrt(np.float64(nv[c]))) - coef * xv[c] * sums[c]
            else:
                for c in range(C):
                    into[c] = g[c] * nv[c] ** neg_beta - coef * xv[c] * sums[c]


_window_sums = njit(cache=True)(_window_sums_plain)
_lrn_forward_kernel = njit(parallel=True, cache=True)(_lrn_forward_plain)
_lrn_backward_kernel = njit(parallel=True, cache=True)(_lrn_backward_plain)


def _power_args(beta, t):
    return t(-beta), _SPECIAL_BETAS.get(float(beta), _POW)


def lrn_forward(x, depth_radius, bias, alpha, beta):
    """As tinybn.ops.lrn.lrn_forward: (y, norm), both (N, H, W, C)."""
    x = np.ascontiguousarray(x)
    t = x.dtype.type
    y, norm = np.empty_like(x), np.empty_like(x)
    _lrn_forward_kernel(x, int(depth_radius), t(bias), t(alpha), *_power_args(beta, t), y, norm)
    return y, norm


def lrn_backward(dy, x, y, norm, depth_radius, alpha, beta):
    """As tinybn.ops.lrn.lrn_backward: dx (N, H, W, C)."""
    t = dy.dtype.type
    dy, x, y, norm = (np.ascontiguousarray(a) for a in (dy, x, y, norm))
    dx = np.empty_like(dy)
    _lrn_backward_kernel(dy, x, y, norm, int(depth_radius), t(2 * alpha * beta), *_power_args(beta, t), dx)
    return dx
