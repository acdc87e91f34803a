"""numba twins of gelu's primitives (tinybn/ops/activations.py holds the references).

    gelu       y  = 0.5 x erfc(-c x)                                  (approximate: 0.5 x (1 + tanh(u)))
    gelu_grad  dx = gy (0.5 erfc(-c x) + x exp(-(c x)**2) c / sqrt(pi))  (approximate: the tanh form's)

with c = float32(1/sqrt(2)) and u = sqrt(2/pi) (x + 0.044715 x**3), as tf.nn.gelu writes them
(the reference's docstring has the closed forms and the constants' float32 rounding).

Float64, and the tanh form in both dtypes: erfc is the reference's, element by element: W. J.
Cody's three rational approximations on |x| <= 0.46875, <= 4 and < 26.543 (0 beyond), the
same coefficients and nested (Horner) evaluation in the same order, exp(-x**2) split as
exp(-s**2) exp(-(x - s)(x + s)) at s = floor(16 x) / 16, and 2 - erfc(|x|) for x < -0.46875,
every constant rounded to x's dtype as the reference's dtype(...) casts do. What can differ is
the elementary functions (numba's libm exp, tanh, power against numpy's SIMD ones): float64
exact form bit-identical on this machine; the tanh form within 2.0 ulps of 0.5 |x| (1 + |tanh u|)
(1 + tanh u cancels, so the result is no scale there), its gradient 2.2 ulps of its terms' sizes.

Float32, exact form (what the fast recipe trains in): NOT bit-identical to the reference, and
closer to the exact value. Cody's branches and two libm exps per element do not vectorise, so
erfc(a), a = |c x|, is erfcx(a) exp(-a**2) with one exp and one division, branch-free (selects
only), in float32, which LLVM vectorises (8 lanes; no SVML here, so the exp is our own;
error_model="numpy" drops the zero-division check, a branch, and fastmath={"contract"} allows
fused multiply-adds, which leave Dekker's exact products exact):
- c x and (c x)**2 as high + low float32 pairs (Dekker's exact products, 12-bit halves cut by
  masking the mantissa): exp(-a**2) turns an error d in a**2 into a relative error d, and a**2
  reaches 110, so the float32 reference, which rounds c x first, is up to 150 ulps off there;
- exp(-a**2) = 2**k exp(r), k = round(-a**2 / ln 2), r = -a**2 - k ln 2 (ln 2 in two parts),
  exp(r) by Taylor to r**7 (5e-9 on |r| <= ln2/2), 2**(k + 64) from k's bits: the 2**64 keeps
  it normal down to a = 10.5, and the result is scaled back by one final multiplication;
- erfcx(a) = t g(t - 0.58), t = 1 / (1 + a/2), g a degree-9 polynomial (see _G);
- 0.5 erfc(-c x) = 1 - 0.5 erfc(a) for x > 0, 0.5 erfc(a) otherwise, by select; beyond a = 10.5
  (|x| > 14.85) erfc and exp(-a**2) are 0 (their float32 products with x are 0 there);
- the backward shares exp(-a**2) between its terms: that cdf + x c/sqrt(pi) exp(-a**2).
Measured against the float64 reference at the same float32 inputs (every 7th float32 in
[1e-6, 16] and its negatives, 57 million values, and the specials): gelu within 6.7 ulps of
|y| (4.2e-7 relative, largest near |x| = 0.004, where t's rounding is magnified), gelu_grad
within 6.0 ulps of |gy| (0.5 erfc(-c x) + |x| c/sqrt(pi) exp(-(c x)**2)), below the smallest
normal float32 within its spacing there; the float32 reference: 150 and 206 ulps. The results
at inf, -inf (NaN), NaN, +-0 and |x| past 14.85 are the reference's (where the gradient
underflows just above x = -14.85, its zero has the sign of the float64 value; the reference's
0 + -0 has none). The plain loops (NUMBA_DISABLE_JIT=1, no fused multiply-adds) keep the bound.
tests/test_activations_numba.py holds float64 and the tanh form to 8 ulps of the reference, the
float32 exact form to 8 ulps of the float64 reference.

Each kernel is one pass over 64 blocks of the flattened array (prange), reading x (and gy)
once and recomputing erfc in the backward, without the reference's temporaries and masks.
Float32 exact form against the Cody twin it replaces, interleaved in one process (5 pairs,
2 shared cores, median and min..max of the per-pair speed-up; the twin's times in brackets):
    (1024, 31, 31, 24)   gelu 4.1x (3.7..4.6) [599 ms]   gelu_grad 5.2x (4.7..7.0) [789 ms]
    (1024, 15, 15, 64)   gelu 4.2x (4.1..5.0) [374 ms]   gelu_grad 4.7x (3.8..7.3) [490 ms]
    (1024, 15, 15, 256)  gelu 4.3x (4.0..6.1) [2157 ms]  gelu_grad 5.3x (5.2..8.7) [1994 ms]
    (64, 15, 15, 64)     gelu 3.9x (3.5..4.4) [12 ms]    gelu_grad 4.4x (4.1..4.8) [15 ms]
Still compute-bound (a loop y = 0.5 x runs ~10x faster). Estrin's scheme for the two
polynomials gained ~10% but cost accuracy (7.3 ulps, and gelu'(0) = 0.49999997), so they are Horner's.

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

# ---- the exact form in float32: branch-free, so LLVM vectorises the loop (8 lanes) -------------

_F = np.float32
_C32 = _F(_SQRT_HALF)
_C32_HIGH = _F(0.70703125)                    # c's top 12 bits: products with 12-bit halves are exact
_C32_LOW = _F(_C32 - _C32_HIGH)
_U_MAX = _F(14.849242210388184)               # float32(10.5 / c): erfc(10.5) x 15 is below float32's range
_LOG2E, _MAGIC = _F(1.4426950408889634), _F(12582912.0)        # 1.5 * 2**23 rounds to an integer
_LN2_HIGH, _LN2_LOW = _F(0.693145751953125), _F(1.4286068e-06)  # ln 2 = high (16 bits) + low
_EXP = tuple(_F(1 / f) for f in (1, 1, 2, 6, 24, 120, 720, 5040))  # Taylor's 1 / k!: 5e-9 on |r| <= ln2 / 2
_T_SLOPE, _T_MID = _F(0.5), _F(0.58)
# erfcx(a) = exp(a**2) erfc(a) = t g(t - 0.58), t = 1 / (1 + a / 2), a in [0, 10.5]: a degree-9 fit
# (Chebyshev nodes, weighted to relative error, against mpmath's erfc at 30 digits): 3.1e-8 relative
# with the coefficients rounded to float32
_G = tuple(_F(g) for g in (0.5694087147712708, 0.7790186405181885, 0.586851179599762, 0.08516066521406174,
                           -0.20321409404277802, -0.05190884321928024, 0.11175788193941116, 0.006328773219138384,
                           -0.05901205912232399, 0.010814814828336239))
_PDF32 = _F(_SQRT_HALF / np.sqrt(np.pi))
_SCALE_DOWN = _F(2.0 ** -64)                  # the exp below is 2**64 exp(-a**2): normal down to a = 10.5


def _high12_plain(v):
    """v with its 12 low mantissa bits cleared (v = high + low exactly, each with 12 significant bits)."""
    return np.int32(np.float32(v).view(np.int32) & np.int32(-4096)).view(np.float32)


_high12 = njit(cache=True, inline="always")(_high12_plain)


def _erfc_scaled_plain(u):
    """(2**64 erfc(c u), 2**64 exp(-(c u)**2)) for 0 <= u <= _U_MAX, in float32 throughout.

    c u and its square are carried as high + low pairs (Dekker's exact products): exp(-a**2)
    magnifies an error d in a**2 to a relative d, and a**2 reaches 110."""
    uh = _high12(u)
    ul = u - uh
    ah = _C32 * u
    al = (((_C32_HIGH * uh - ah) + _C32_HIGH * ul) + _C32_LOW * uh) + _C32_LOW * ul
    hh = _high12(ah)
    hl = ah - hh
    sh = ah * ah
    sl = (((hh * hh - sh) + _F(2) * hh * hl) + hl * hl) + _F(2) * ah * al
    kd = sh * -_LOG2E + _MAGIC                    # round(-a**2 / ln 2) in its low mantissa bits
    k = kd - _MAGIC
    r = ((-sh - k * _LN2_HIGH) - k * _LN2_LOW) - sl
    p = _EXP[7]
    for j in range(6, -1, -1):
        p = p * r + _EXP[j]
    e = p * np.int32((np.float32(kd).view(np.int32) + np.int32(127 + 64)) << 23).view(np.float32)
    t = _F(1) / (_F(1) + _T_SLOPE * ah)
    w = t - _T_MID
    g = _G[9]
    for j in range(8, -1, -1):
        g = g * w + _G[j]
    return e * (t * g), e


_erfc_scaled = njit(cache=True, inline="always")(_erfc_scaled_plain)


def _gelu32_plain(x, y):
    n = x.shape[0]
    for blk in prange(_BLOCKS):
        for i in range(blk * n // _BLOCKS, (blk + 1) * n // _BLOCKS):
            v = x[i]
            m, e = _erfc_scaled(min(abs(v), _U_MAX))      # erfc(|c v|) 2**64 (NaN stays NaN)
            m = _F(0) if abs(v) > _U_MAX else m
            y[i] = v * (_F(1) - _F(0.5) * m * _SCALE_DOWN) if v > 0 else (_F(0.5) * v * m) * _SCALE_DOWN


def _gelu32_grad_plain(x, gy, gx):
    n = x.shape[0]
    for blk in prange(_BLOCKS):
        for i in range(blk * n // _BLOCKS, (blk + 1) * n // _BLOCKS):
            v = x[i]
            m, e = _erfc_scaled(min(abs(v), _U_MAX))
            far = abs(v) > _U_MAX
            half_erfc, pdf = _F(0) if far else _F(0.5) * m, v * _PDF32 * (_F(0) if far else e)   # both 2**64 x
            slope = _F(1) + (pdf - half_erfc) * _SCALE_DOWN if v > 0 else (half_erfc + pdf) * _SCALE_DOWN
            gx[i] = gy[i] * slope


_FLOAT32_KERNEL_OPTIONS = dict(parallel=True, cache=True, error_model="numpy", fastmath={"contract"})
_gelu32_kernel = njit(**_FLOAT32_KERNEL_OPTIONS)(_gelu32_plain)
_gelu32_grad_kernel = njit(**_FLOAT32_KERNEL_OPTIONS)(_gelu32_grad_plain)


def _tables_for(x):
    tables = _TABLES.get(x.dtype)
    if tables is None:
        raise TypeError(f"gelu: the numba kernels take float32 or float64, got {x.dtype}")
    return tables


def gelu(x, approximate):
    """As tinybn.ops.activations.gelu_forward: gelu(x) in x's dtype, one parallel pass."""
    tables = _tables_for(x)
    y = np.empty(x.shape, x.dtype)
    if x.dtype == np.float32 and not approximate:
        _gelu32_kernel(np.ascontiguousarray(x).reshape(-1), y.reshape(-1))
        return y
    _gelu_kernel(np.ascontiguousarray(x).reshape(-1), bool(approximate), *tables, y.reshape(-1))
    return y


def gelu_grad(x, gy, approximate):
    """As tinybn.ops.activations.gelu_grad: gy * gelu'(x) in x's dtype (gy is taken in x's dtype)."""
    tables = _tables_for(x)
    gx = np.empty(x.shape, x.dtype)
    if x.dtype == np.float32 and not approximate:
        _gelu32_grad_kernel(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(gy, dtype=x.dtype).reshape(-1),
                            gx.reshape(-1))
        return gx
    _gelu_grad_kernel(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(gy, dtype=x.dtype).reshape(-1),
                      bool(approximate), *tables, gx.reshape(-1))
    return gx
