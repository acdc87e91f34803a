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


def _window_sums_plain(padded, radius, out):
    """out[k] = sum_{|j-k| <= radius, 0 <= j < C} v[j], ascending j, in v's dtype, where
    padded = (radius zeros, v, radius zeros): out[k] = sum_{d <= 2 radius} padded[k + d]."""
    channels = out.shape[0]
    # one offset d at a time over all k: contiguous, so it vectorises. The zeros stand for the
    # channels past the edges and add exactly nothing, so each sum is the clipped window's,
    # term by term in ascending j (0 + v[j0] + ...: the sign of a zero sum is the clipped sum's
    # too); without them every offset had its own clipped range (2x slower)
    for k in range(channels):
        out[k] = 0
    for d in range(2 * radius + 1):
        terms = padded[d:d + channels]
        for k in range(channels):
            out[k] += terms[k]


# The power loops are written out in both kernels, with the mode tested outside
# the channel loop: moved into a helper they stopped vectorising (2x slower).
# The channel loops index 1-D views of one pixel (x[n, h, w]): 1.5-2x faster than
# indexing the 4-D arrays, which LLVM did not vectorise as well.

def _lrn_forward_plain(x, radius, bias, alpha, neg_beta, mode, y, norm):
    N, H, W, C = x.shape
    t = x.dtype.type
    for row in prange(N * H):
        n, h = row // H, row % H
        padded, sums = np.zeros(C + 2 * radius, x.dtype), np.empty(C, x.dtype)
        terms = padded[radius:radius + C]
        for w in range(W):
            xv, yv, nv = x[n, h, w], y[n, h, w], norm[n, h, w]
            for c in range(C):
                terms[c] = xv[c] * xv[c]
            _window_sums(padded, radius, sums)
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
        padded, sums = np.zeros(C + 2 * radius, x.dtype), np.empty(C, x.dtype)
        terms = padded[radius:radius + C]
        for w in range(W):
            g, xv, yv, nv, into = dy[n, h, w], x[n, h, w], y[n, h, w], norm[n, h, w], dx[n, h, w]
            for c in range(C):
                terms[c] = g[c] * yv[c] / nv[c]
            _window_sums(padded, radius, sums)
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


def _radius(depth_radius, channels):
    """The radius clipped to C - 1: a wider window holds the same channels, and the kernels'
    zero padding grows with the radius."""
    return int(max(0, min(depth_radius, channels - 1)))


def lrn_forward(x, depth_radius, bias, alpha, beta):
    """As tinybn.ops.lrn.lrn_forward: (y, norm), both (N, H, W, C)."""
    x = np.ascontiguousarray(x)
    t = x.dtype.type
    y, norm = np.empty_like(x), np.empty_like(x)
    _lrn_forward_kernel(x, _radius(depth_radius, x.shape[-1]), t(bias), t(alpha), *_power_args(beta, t), y, norm)
    return y, norm


def lrn_backward(dy, x, y, norm, depth_radius, alpha, beta):
    """As tinybn.ops.lrn.lrn_backward: dx (N, H, W, C)."""
    t = dy.dtype.type
    dy, x, y, norm = (np.ascontiguousarray(a) for a in (dy, x, y, norm))
    dx = np.empty_like(dy)
    _lrn_backward_kernel(dy, x, y, norm, _radius(depth_radius, x.shape[-1]), t(2 * alpha * beta),
                         *_power_args(beta, t), dx)
    return dx
