"""numba twins of the bias_add and relu primitives (tinybn/ops/basic.py holds the references).

    bias_add       y[r, c] = x[r, c] + b[c]                 rows r of x (..., C) as (M, C)
    bias_add_grad  db[c] = sum_r gy[r, c], float64 block sums (numba_norm's) cast to gy's dtype
    relu           y = 0 where x <= 0, else x               (NaN stays NaN, -0.0 becomes 0.0)
    relu_grad      gx = gy * (1 if y > 0 else 0)            (a product: NaN or inf gy at y <= 0 give NaN)

The reference runs these as numpy expressions on one thread; here each is one pass over
both cores (measured at the CIFAR convs' (128, 24, 24, 64): bias_add 1.3-1.5x, bias_add_grad
2-6x faster: numpy's float64 sum of float32 rows converts them in small buffers). bias_add is
the reference's own addition element by element, so bit-identical; bias_add_grad adds the same
float64 terms in blocks (the reference in row order): within an ulp in float32, ~sqrt(M) float64
ulps in float64, as batch norm's sums. Arrays under _PARALLEL_MIN elements (the dense layers'),
other dtypes and mixed dtypes take the reference's expression: waking the threads costs more.
The relu twins are one pass each at about a copy's speed, where numpy's maximum ran at
under half a copy's speed and the gradient's mask product makes two passes and a bool temporary; each
element is the reference's (the same comparison, the same product), so bit-identical.
Measured interleaved against the reference at the CIFAR relus' (128, 24, 24, 64) float32:
relu 0.38x its time (0.37..0.40), relu_grad 0.50x (0.43..0.59); at (128, 12, 12, 64) 0.30x, 0.49x.
The relu loops index 1-D slices of one block from 0: indexing the whole array from the
block's start compiled to slower code (relu_grad 2.5x slower, numpy's speed).

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)
from . import numba_norm

_PARALLEL_MIN = 1 << 16
_BLOCKS = 64
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _bias_add_plain(x, bias, y):
    m, channels = x.shape
    for b in prange(_BLOCKS):
        for r in range(b * m // _BLOCKS, (b + 1) * m // _BLOCKS):
            for c in range(channels):
                y[r, c] = x[r, c] + bias[c]


_bias_add_kernel = njit(parallel=True, cache=True)(_bias_add_plain)


def _relu_plain(x, y):
    """y = 0 where x <= 0, else x: NaN fails the comparison and passes through with its sign."""
    n = x.shape[0]
    zero = x.dtype.type(0)
    for b in prange(_BLOCKS):
        lo, hi = b * n // _BLOCKS, (b + 1) * n // _BLOCKS
        xs, ys = x[lo:hi], y[lo:hi]
        for i in range(hi - lo):
            ys[i] = zero if xs[i] <= zero else xs[i]


def _relu_grad_plain(gy, y, gx):
    """gx = gy * (y > 0) as the reference's product of gy and the mask cast to gy's dtype."""
    n = y.shape[0]
    one, zero = gy.dtype.type(1), gy.dtype.type(0)
    for b in prange(_BLOCKS):
        lo, hi = b * n // _BLOCKS, (b + 1) * n // _BLOCKS
        gys, ys, gxs = gy[lo:hi], y[lo:hi], gx[lo:hi]
        for i in range(hi - lo):
            gxs[i] = gys[i] * (one if ys[i] > zero else zero)


_relu_kernel = njit(parallel=True, cache=True)(_relu_plain)
_relu_grad_kernel = njit(parallel=True, cache=True)(_relu_grad_plain)


def _parallel(*arrays):
    """Whether the kernels take these arrays: big enough, one float32/float64 dtype."""
    return arrays[0].size >= _PARALLEL_MIN and arrays[0].dtype in _FLOATS and all(
        a.dtype == arrays[0].dtype for a in arrays)


def bias_add(x, b):
    """As tinybn.ops.basic.bias_add_forward: x + b over the last axis."""
    if not _parallel(x, b):
        return x + b
    y = np.empty(x.shape, x.dtype)
    channels = x.shape[-1]
    _bias_add_kernel(np.ascontiguousarray(x).reshape(-1, channels), np.ascontiguousarray(b),
                     y.reshape(-1, channels))
    return y


def bias_add_grad(gy):
    """As tinybn.ops.basic.bias_add_grad: float64 sums of gy over all but its last axis."""
    rows = gy.reshape(-1, gy.shape[-1])
    if not _parallel(rows):
        wide = np.float64 if gy.dtype.kind == "f" and gy.dtype.itemsize <= 8 else None   # the reference's
        return rows.sum(axis=0, dtype=wide).astype(gy.dtype)
    partial = numba_norm._partial(rows)
    numba_norm._column_sums_kernel(np.ascontiguousarray(rows), partial)
    return partial.sum(axis=0).astype(gy.dtype)


def relu(x):
    """As tinybn.ops.basic.relu_forward: max(x, 0) in one parallel pass."""
    if not _parallel(x):
        return np.maximum(x, 0)
    y = np.empty(x.shape, x.dtype)
    _relu_kernel(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
    return y


def relu_grad(gy, y):
    """As tinybn.ops.basic.relu_grad: gy * (y > 0) in one parallel pass, no mask array."""
    if not _parallel(gy, y) or gy.shape != y.shape:
        return gy * (y > 0)
    gx = np.empty(y.shape, gy.dtype)
    _relu_grad_kernel(np.ascontiguousarray(gy).reshape(-1), np.ascontiguousarray(y).reshape(-1), gx.reshape(-1))
    return gx
