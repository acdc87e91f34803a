"""numba twins of the bias_add primitives (tinybn/ops/basic.py holds the references).

    bias_add       y[r, c] = x[r, c] + b[c]                 rows r of x (..., C) as (M, C)
    bias_add_grad  db[c] = sum_r gy[r, c], float64 block sums (numba_norm's) cast to gy's dtype

The reference runs these as numpy expressions on one thread; here each is one pass over
both cores (measured at the CIFAR convs' (128, 24, 24, 64): bias_add 1.3-1.5x, bias_add_grad
2-6x faster: numpy's float64 sum of float32 rows converts them in small buffers). bias_add is
the reference's own addition element by element, so bit-identical; bias_add_grad adds the same
float64 terms in blocks (the reference in row order): within an ulp in float32, ~sqrt(M) float64
ulps in float64, as batch norm's sums. Arrays under _PARALLEL_MIN elements (the dense layers'),
other dtypes and mixed dtypes take the reference's expression: waking the threads costs more.
Relu has no twin: numpy's SIMD maximum and mask product were as fast as a numba pass here.

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
