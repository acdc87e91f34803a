"""numba twins of gelu's primitives (tinybn/ops/activations.py holds the references).

    gelu       y  = 0.5 x erfc(-c x)                                  (approximate: 0.5 x (1 + tanh(u)))
    gelu_grad  dx = gy (0.5 erfc(-c x) + x exp(-(c x)**2) c / sqrt(pi))  (approximate: the tanh form's)

with c = float32(1/sqrt(2)) and u = sqrt(2/pi) (x + 0.044715 x**3), as tf.nn.gelu writes them
(the reference's docstring has the closed forms and the constants' float32 rounding).

erfc is the reference's, element by element: W. J. Cody's three rational approximations on
|x| <= 0.46875, <= 4 and < 26.543 (0 beyond), the same coefficients, the same nested
(Horner) evaluation in the same order, exp(-x**2) split as exp(-s**2) exp(-(x - s)(x + s))
at s = floor(16 x) / 16, and 2 - erfc(|x|) for x < -0.46875, every constant rounded to x's
dtype first as the reference's dtype(...) casts do, so float32 stays float32 throughout.
What can differ is the elementary functions: numpy's SIMD exp, tanh and power against the
libm ones numba calls, each within an ulp or so. Measured against the reference over 2
million normal x 3, every 1/64 of [-30, 30] and the specials: the exact form within 3.9 ulps
of the result in float32 (its gradient 2.9 ulps of the sum of its terms' sizes times |gy|)
and bit-identical in float64 on this machine; the tanh form within 2.0 ulps of
0.5 |x| (1 + |tanh u|) (1 + tanh u cancels, so the result itself is no scale there), its
gradient 2.2 ulps of its terms' sizes, in both dtypes. NaN and infinite results sit where the
reference's do. tests/test_activations_numba.py holds the twins to 8 ulps of those scales.

Each kernel is one pass over 64 blocks of the flattened array (prange), reading x (and gy)
once and recomputing erfc in the backward, as the reference does, but without its
temporaries and boolean masks. Interleaved against the reference at the fast model's
block-1 activations (128, 15, 15, 64) float32, 7 pairs, 2 shared cores: gelu 0.20x its time
(0.18..0.35; the reference took ~340 ms), gelu_grad 0.32x (0.28..0.41).

Floor: kernels (tests/test_layering.py): imports only numpy and numba.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)

_BLOCKS = 64

# W. J. Cody's CALERF coefficients (SPECFUN), as tinybn/ops/activations.py has them.
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
      8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
      2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
      6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)
_SQRT_HALF = float(np.float32(0.7071067811865476))      # tf.nn.gelu's, through float32
_SQRT_2_OVER_PI = 0.7978845608028654
_TANH_CUBIC = float(np.float32(0.044715))
# the constants array's entries, each rounded to the dtype where the kernels run
(_SMALL, _MID, _XBIG, _ONE, _TWO, _SIXTEEN, _ONE_OVER_SQRT_PI, _HALF, _C_GELU, _K_TANH, _CUBIC, _CUBIC3,
 _PDF, _THREE) = range(14)
_CONSTANTS = (0.46875, 4.0, 26.543, 1.0, 2.0, 16.0, 5.6418958354775628695e-1, 0.5, _SQRT_HALF,
              _SQRT_2_OVER_PI, _TANH_CUBIC, 3 * _TANH_CUBIC, _SQRT_HALF / np.sqrt(np.pi), 3.0)


def _tables(dtype):
    """Cody's coefficients and the constants above as arrays of `dtype`."""
    return tuple(np.array(t, dtype) for t in (_A, _B, _C, _D, _P, _Q, _CONSTANTS))


_TABLES = {np.dtype(t): _tables(t) for t in (np.float32, np.float64)}


def _rational_plain(t, num, den):
    """The reference's _rational: (((num[-1] t + num[0]) t + ...) + num[-2]) / (((t + den[0]) t + ...) + den[-1])."""
    n, d = num[num.shape[0] - 1] * t, t
    for k in range(num.shape[0] - 2):
        n, d = (n + num[k]) * t, (d + den[k]) * t
    return (n + num[num.shape[0] - 2]) / (d + den[den.shape[0] - 1])


_rational = njit(cache=True, inline="always")(_rational_plain)


def _exp_minus_square_plain(y, k):
    s = np.floor(y * k[_SIXTEEN]) / k[_SIXTEEN]
    return np.exp(-s * s) * np.exp(-(y - s) * (y + s))


_exp_minus_square = njit(cache=True, inline="always")(_exp_minus_square_plain)


def _erfc_plain(x, a, b, c, d, p, q, k):
    """erfc of one element, as the reference's erfc computes that element (NaN gives NaN)."""
    y = abs(x)
    if y <= k[_SMALL]:
        return k[_ONE] - x * _rational(x * x, a, b)
    if y <= k[_MID]:
        out = _exp_minus_square(y, k) * _rational(y, c, d)
    elif y < k[_XBIG]:
        inv = k[_ONE] / (y * y)
        out = _exp_minus_square(y, k) * ((k[_ONE_OVER_SQRT_PI] - inv * _rational(inv, p, q)) / y)
    elif y >= k[_XBIG]:
        out = k[_ONE] - k[_ONE]          # 0 in the dtype
    else:
        return x                         # NaN
    return k[_TWO] - out if x < 0 else out


_erfc = njit(cache=True, inline="always")(_erfc_plain)


def _gelu_plain(x, approximate, a, b, c, d, p, q, k, y):
    n = x.shape[0]
    for blk in prange(_BLOCKS):
        lo, hi = blk * n // _BLOCKS, (blk + 1) * n // _BLOCKS
        xs, ys = x[lo:hi], y[lo:hi]
        for i in range(hi - lo):
            v = xs[i]
            if approximate:
                ys[i] = k[_HALF] * v * (k[_ONE] + np.tanh(k[_K_TANH] * (v + k[_CUBIC] * v ** k[_THREE])))
            else:
                ys[i] = k[_HALF] * v * _erfc(-v * k[_C_GELU], a, b, c, d, p, q, k)


def _gelu_grad_plain(x, gy, approximate, a, b, c, d, p, q, k, gx):
    n = x.shape[0]
    for blk in prange(_BLOCKS):
        lo, hi = blk * n // _BLOCKS, (blk + 1) * n // _BLOCKS
        xs, gys, gxs = x[lo:hi], gy[lo:hi], gx[lo:hi]
        for i in range(hi - lo):
            v = xs[i]
            if approximate:
                t = np.tanh(k[_K_TANH] * (v + k[_CUBIC] * v ** k[_THREE]))
                slope = k[_HALF] * (k[_ONE] + t) + k[_HALF] * v * (k[_ONE] - t * t) * k[_K_TANH] * \
                    (k[_ONE] + k[_CUBIC3] * v * v)
            else:
                z = -v * k[_C_GELU]
                slope = k[_HALF] * _erfc(z, a, b, c, d, p, q, k) + v * (np.exp(-z * z) * k[_PDF])
            gxs[i] = gys[i] * slope


_gelu_kernel = njit(parallel=True, cache=True)(_gelu_plain)
_gelu_grad_kernel = njit(parallel=True, cache=True)(_gelu_grad_plain)


def _tables_for(x):
    tables = _TABLES.get(x.dtype)
    if tables is None:
        raise TypeError(f"gelu: the numba kernels take float32 or float64, got {x.dtype}")
    return tables


def gelu(x, approximate):
    """As tinybn.ops.activations.gelu_forward: gelu(x) in x's dtype, one parallel pass."""
    tables = _tables_for(x)
    y = np.empty(x.shape, x.dtype)
    _gelu_kernel(np.ascontiguousarray(x).reshape(-1), bool(approximate), *tables, y.reshape(-1))
    return y


def gelu_grad(x, gy, approximate):
    """As tinybn.ops.activations.gelu_grad: gy * gelu'(x) in x's dtype (gy is taken in x's dtype)."""
    tables = _tables_for(x)
    gx = np.empty(x.shape, x.dtype)
    _gelu_grad_kernel(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(gy, dtype=x.dtype).reshape(-1),
                      bool(approximate), *tables, gx.reshape(-1))
    return gx
