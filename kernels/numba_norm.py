"""numba twins of the fused batch norm primitives (train forward/backward, inference).

Shapes as tinybn.ops.fused_batch_norm: x, dy, y, dx (M, C) with M = N*H*W;
scale, offset, mean, variance, inv_std (C,). Per channel:

    forward    mean = sum(x) / M,  variance = sum((x - mean)^2) / M    (one pass, below)
               inv_std = 1 / sqrt(variance + eps),  y = (x - mean) * (inv_std * scale) + offset
    backward   xhat = (x - mean) * inv_std,  doffset = sum(dy),  dscale = sum(dy * xhat)
               dx = (scale * inv_std) * (dy - doffset/M - xhat * dscale/M)
    inference  y = (x - mean) * (scale / sqrt(variance + eps)) + offset

Each sum over M is a pass in parallel over a fixed number of row blocks, each block
accumulating float64 column sums; the block sums are added in numpy. The block
count does not depend on the thread count, so results are reproducible on any
machine. The elementwise terms are computed in x's dtype in the reference's order,
and the (C,) arithmetic is the reference's own numpy code, so outputs differ from
the reference only where the float64 sums round differently (<= 1 float32 ulp of
mean, variance, dscale, doffset, and what follows from them; the variance, summed from
the shifted values below, rounds the exact value where the reference squares float32
deviations: within the same ulp).

The forward's statistics take one read of x: float64 sums of d = x - K and d^2 with K the
first row (a data point), then mean = K + S1/M and variance = S2/M - (S1/M)^2 in float64.
The subtraction cancels at most (K - mean)^2 / variance <= M - 1 (no data point lies more
than sqrt(M - 1) standard deviations from the mean), so its error stays near M float64 ulps
of the variance, below a float32 ulp for any M up to 10^8; it is never E[x^2] - E[x]^2 of
the unshifted data. Measured against the two passes it replaced (a sum, then the squared
deviations from the rounded mean), bn1's (73728, 64) float32, alternating, median of 15
ratios, one of the 2 cores busy with other jobs: 1.16x (1.12-1.36), 8.0 -> 6.9 ms.

Tried and not taken (measured interleaved at bn1's (73728, 64) float32 on this 2-core
machine): the statistics in one visit of each block (its sum, then its squared deviations
from its own mean while the block sits in the core's cache, blocks combined by Chan's
formula: two loops over each block) ran 0.97x the two passes (0.96..0.98), and 1.14x at
bn2's (18432, 64), whose 4.7 MB stay in the L3 between the passes anyway: the passes here
are bound by their float64 accumulation as much as by memory. Unrolling the sums over 2 or 4 rows showed no clear gain.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)


_BLOCKS = 64        # row blocks of every reduction: enough to keep a few cores busy


def _column_sums_plain(x, partial):
    """partial[b, c] = float64 sum of x[r, c] over the rows r of block b (numba_elementwise's bias gradient)."""
    m, channels = x.shape
    blocks = partial.shape[0]
    for b in prange(blocks):
        lo, hi = b * m // blocks, (b + 1) * m // blocks
        for c in range(channels):
            partial[b, c] = 0.0
        for r in range(lo, hi):
            for c in range(channels):
                partial[b, c] += x[r, c]


def _shifted_sums_plain(x, shift, sums, squares):
    """sums[b, c], squares[b, c] = float64 sums of d and d^2, d = x[r, c] - shift[c] in float64,
    over the rows r of block b: both statistics in one read of x."""
    m, channels = x.shape
    blocks = sums.shape[0]
    for b in prange(blocks):
        lo, hi = b * m // blocks, (b + 1) * m // blocks
        for c in range(channels):
            sums[b, c] = 0.0
            squares[b, c] = 0.0
        for r in range(lo, hi):
            for c in range(channels):
                d = np.float64(x[r, c]) - shift[c]
                sums[b, c] += d
                squares[b, c] += d * d


def _normalize_plain(x, mean, factor, offset, y):
    """y = (x - mean) * factor + offset, row blocks in parallel."""
    m, channels = x.shape
    for b in prange(_BLOCKS):
        lo, hi = b * m // _BLOCKS, (b + 1) * m // _BLOCKS
        for r in range(lo, hi):
            for c in range(channels):
                y[r, c] = (x[r, c] - mean[c]) * factor[c] + offset[c]


def _grad_sums_plain(dy, x, mean, inv_std, partial_dy, partial_dy_xhat):
    """Block float64 sums of dy and of dy * xhat, xhat = (x - mean) * inv_std in x's dtype."""
    m, channels = x.shape
    blocks = partial_dy.shape[0]
    for b in prange(blocks):
        lo, hi = b * m // blocks, (b + 1) * m // blocks
        for c in range(channels):
            partial_dy[b, c] = 0.0
            partial_dy_xhat[b, c] = 0.0
        for r in range(lo, hi):
            for c in range(channels):
                g = dy[r, c]
                partial_dy[b, c] += g
                partial_dy_xhat[b, c] += g * ((x[r, c] - mean[c]) * inv_std[c])


def _grad_input_plain(dy, x, mean, inv_std, k, mean_dy, mean_dy_xhat, dx):
    """dx = k * ((dy - mean_dy) - xhat * mean_dy_xhat), the reference's operation order."""
    m, channels = x.shape
    for b in prange(_BLOCKS):
        lo, hi = b * m // _BLOCKS, (b + 1) * m // _BLOCKS
        for r in range(lo, hi):
            for c in range(channels):
                xhat = (x[r, c] - mean[c]) * inv_std[c]
                dx[r, c] = k[c] * ((dy[r, c] - mean_dy[c]) - xhat * mean_dy_xhat[c])


_column_sums_kernel = njit(parallel=True, cache=True)(_column_sums_plain)
_shifted_sums_kernel = njit(parallel=True, cache=True)(_shifted_sums_plain)
_normalize_kernel = njit(parallel=True, cache=True)(_normalize_plain)
_grad_sums_kernel = njit(parallel=True, cache=True)(_grad_sums_plain)
_grad_input_kernel = njit(parallel=True, cache=True)(_grad_input_plain)


def _partial(x):
    return np.empty((min(_BLOCKS, max(x.shape[0], 1)), x.shape[1]), np.float64)


def _vec(v, dtype):
    """A (C,) parameter as a contiguous array of x's dtype (as the reference's broadcasting keeps it)."""
    return np.ascontiguousarray(v, dtype=dtype)


def batch_norm_train_forward(x, scale, offset, epsilon):
    """As the reference: (y, mean, variance (population), inv_std), all in x's dtype."""
    x = np.ascontiguousarray(x)
    t, m = x.dtype.type, x.shape[0]
    shift = x[0].astype(np.float64) if m else np.zeros(x.shape[1])
    sums, squares = _partial(x), _partial(x)
    _shifted_sums_kernel(x, shift, sums, squares)
    with np.errstate(invalid="ignore", divide="ignore"):       # an empty batch: NaN, as the reference
        shift_to_mean = sums.sum(axis=0) / m
        mean = (shift + shift_to_mean).astype(x.dtype)
        variance = np.maximum(squares.sum(axis=0) / m - shift_to_mean * shift_to_mean, 0).astype(x.dtype)
    inv_std = t(1) / np.sqrt(variance + t(epsilon))
    y = np.empty_like(x)
    _normalize_kernel(x, mean, _vec(inv_std * scale, x.dtype), _vec(offset, x.dtype), y)
    return y, mean, variance, inv_std


def batch_norm_train_backward(dy, x, scale, mean, inv_std):
    """As the reference: (dx (M, C), dscale (C,), doffset (C,))."""
    dy, x = np.ascontiguousarray(dy), np.ascontiguousarray(x)
    mean, inv_std = _vec(mean, x.dtype), _vec(inv_std, x.dtype)
    partial_dy, partial_dy_xhat = _partial(x), _partial(x)
    _grad_sums_kernel(dy, x, mean, inv_std, partial_dy, partial_dy_xhat)
    doffset = partial_dy.sum(axis=0).astype(x.dtype)
    dscale = partial_dy_xhat.sum(axis=0).astype(x.dtype)
    one_over_m = x.dtype.type(1.0 / x.shape[0])
    dx = np.empty_like(x)
    _grad_input_kernel(dy, x, mean, inv_std, _vec(scale * inv_std, x.dtype),
                       _vec(doffset * one_over_m, x.dtype), _vec(dscale * one_over_m, x.dtype), dx)
    return dx, dscale, doffset


def batch_norm_inference(x, scale, offset, mean, variance, epsilon):
    """As the reference: y = (x - mean) * (rsqrt(variance + eps) * scale) + offset."""
    x = np.ascontiguousarray(x)
    t = x.dtype.type
    factor = t(1) / np.sqrt(variance + t(epsilon)) * scale
    y = np.empty_like(x)
    _normalize_kernel(x, _vec(mean, x.dtype), _vec(factor, x.dtype), _vec(offset, x.dtype), y)
    return y
