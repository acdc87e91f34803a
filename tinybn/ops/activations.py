"""GELU, exact (erfc form) and tanh-approximated, and the erfc it needs.

Floor: ops; imports the core (function), backend and numpy.

Shapes: any; elementwise, the output has the input's shape and dtype.

    gelu(x)                   = x * Phi(x) = 0.5 * x * erfc(-x / sqrt(2))
                                dx = g * (Phi(x) + x * phi(x)),
                                Phi(x) = 0.5 * erfc(-x / sqrt(2)),  phi(x) = exp(-x**2 / 2) / sqrt(2 pi)
    gelu(x, approximate=True) = 0.5 * x * (1 + tanh(u)),  u = sqrt(2/pi) * (x + 0.044715 * x**3)
                                dx = g * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * sqrt(2/pi) * (1 + 3 * 0.044715 * x**2)),
                                t = tanh(u)

(Hendrycks and Gimpel, "Gaussian Error Linear Units", arXiv:1606.08415, eq. 1 and the tanh
approximation of its section 2.)

TF conventions followed (tf.nn.gelu, tensorflow/python/ops/nn_ops.py):
- The exact form is computed as TF writes it, 0.5 * x * erfc(-x * c): erfc of a large positive
  argument is small and exact where 1 + erf(x / sqrt(2)) would cancel to 0, so gelu(-10) is
  -7.6e-23, not 0.
- TF writes c = cast(0.7071067811865476, dtype) and 0.044715 the same way: a Python float
  given to cast becomes a float32 tensor first, so in float64 c is 0.7071067690849304, not
  1/sqrt(2). TF's float64 gelu is therefore 0.5 * x * erfc(-x * 0.7071067690849304), which
  differs from x * Phi(x) by up to 5e-9 (near x = 1.41). tinybn rounds those two constants
  through float32 as TF does, so the two agree to rounding; float32 is unaffected. The
  approximate form's 0.7978845608028654 (a plain product in TF) keeps its float64 value.
  With that c, Phi(x) above is 0.5 * erfc(-c x) and the backward's x * phi(x) term is
  x * c / sqrt(pi) * exp(-(c x)**2), the exact derivative of what the forward computes.
- Integer inputs are refused (TF raises a ValueError for a non-floating dtype).
- TF differentiates its formula by the chain rule; the closed forms above are that derivative.

erfc(x) is W. J. Cody's rational Chebyshev approximation ("Rational Chebyshev approximations
for the error function", Math. Comp. 23 (1969) 631-637; the coefficients of his SPECFUN
routine CALERF), in three intervals of |x|:
    |x| <= 0.46875     erfc = 1 - x * P(x**2) / Q(x**2)                    (degree 4/4)
    0.46875 < |x| <= 4 erfc = exp(-x**2) * P(|x|) / Q(|x|)                 (degree 8/8)
    4 < |x|            erfc = exp(-x**2) / |x| * (1/sqrt(pi) + R(1/x**2) / x**2)  (degree 5/5)
and erfc(x) = 2 - erfc(|x|) for x < 0; 0 from |x| >= 26.543 (Cody's XBIG, where erfc
underflows float64). exp(-x**2) is taken as exp(-s**2) * exp(-(x - s)(x + s)), s = x rounded
down to a multiple of 1/16, so that the rounding of x**2 is not magnified by exp. Cody gives
the approximations' own error as below 1e-18 relative; in float64 the rounding of the
evaluation dominates: against Python's math.erfc over [-27, 27] the largest error is 6 units
in the last place (7.6e-16 relative, near 3.44) wherever erfc is a normal float
(tests/test_fast_ops.py::test_erfc_against_math_erfc holds it to 8). The same formulas run
in x's dtype, so float32 inputs stay float32 (6e-7 relative there).

The hot primitives are `gelu(x, approximate) -> y` and `gelu_grad(x, gy, approximate) -> dx`
on plain arrays of one float dtype; backward recomputes erfc from x instead of keeping
Phi(x), which a fused kernel does in the same pass. Kernels for other backends implement
those signatures.
"""
import numpy as np

from ..backend import array_module, dispatch, primitive
from ..function import Function

# W. J. Cody's CALERF coefficients (SPECFUN), at the precision he published.
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
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1
_XBIG = 26.543
# tf.nn.gelu's constants; the first and last pass through float32 there (math_ops.cast of a
# Python float), so they do here
_SQRT_HALF = float(np.float32(0.7071067811865476))
_SQRT_2_OVER_PI = 0.7978845608028654
_TANH_CUBIC = float(np.float32(0.044715))


def _rational(t, num, den, dtype):
    """Cody's nested form: (((num[-1] t + num[0]) t + ...) t + num[-2]) / ((((t + den[0]) t + ...) + den[-1])."""
    n, d = dtype(num[-1]) * t, t
    for a, b in zip(num[:-2], den[:-1]):
        n, d = (n + dtype(a)) * t, (d + dtype(b)) * t
    return (n + dtype(num[-2])) / (d + dtype(den[-1]))


def _exp_minus_square(y, dtype):
    """exp(-y**2) as exp(-s**2) * exp(-(y - s)(y + s)), s = floor(16 y) / 16 (Cody's split)."""
    xp = array_module(y)
    s = xp.floor(y * dtype(16)) / dtype(16)
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s))


def erfc(x):
    """The complementary error function of a float array, elementwise, in its dtype (no gradient)."""
    xp = array_module(x)
    shape, dtype = xp.shape(x), x.dtype.type
    x = xp.asarray(x).reshape(-1)        # numpy's 0-d results are scalars, which take no masks
    y = xp.abs(x)
    out = x.copy()                       # NaN stays NaN: no interval below claims it
    small = y <= 0.46875
    mid = (y > 0.46875) & (y <= 4)
    large = (y > 4) & (y < _XBIG)
    xs = x[small]
    out[small] = dtype(1) - xs * _rational(xs * xs, _A, _B, dtype)
    ym = y[mid]
    out[mid] = _exp_minus_square(ym, dtype) * _rational(ym, _C, _D, dtype)
    yl = y[large]
    inv = dtype(1) / (yl * yl)
    out[large] = _exp_minus_square(yl, dtype) * ((dtype(_ONE_OVER_SQRT_PI) - inv * _rational(inv, _P, _Q, dtype))
                                                 / yl)
    out[y >= _XBIG] = 0
    negative = (x < 0) & ~small          # the small interval's formula holds for both signs
    out[negative] = dtype(2) - out[negative]
    return out.reshape(shape)


# ---- gelu's hot primitives -----------------------------------------------------------

@primitive("gelu")
def gelu_forward(x, approximate):
    """y = gelu(x) (approximate: the tanh form), in x's dtype."""
    xp = array_module(x)
    t = x.dtype.type
    if approximate:
        return t(0.5) * x * (t(1) + xp.tanh(t(_SQRT_2_OVER_PI) * (x + t(_TANH_CUBIC) * x ** 3)))
    return t(0.5) * x * erfc(-x * t(_SQRT_HALF))


@primitive("gelu_grad")
def gelu_grad(x, gy, approximate):
    """dx = gy * gelu'(x), the closed forms of the module docstring."""
    xp = array_module(x)
    t = x.dtype.type
    if approximate:
        tanh = xp.tanh(t(_SQRT_2_OVER_PI) * (x + t(_TANH_CUBIC) * x ** 3))
        slope = t(0.5) * (t(1) + tanh) + t(0.5) * x * (t(1) - tanh * tanh) * t(_SQRT_2_OVER_PI) * \
            (t(1) + t(3 * _TANH_CUBIC) * x * x)
        return gy * slope
    z = -x * t(_SQRT_HALF)
    cdf = t(0.5) * erfc(z)
    with np.errstate(over="ignore"):      # z * z overflows to inf past |x| ~ 1e19 (float32), and exp(-inf) = 0
        pdf = xp.exp(-z * z) * t(_SQRT_HALF / np.sqrt(np.pi))     # 1/sqrt(2 pi) exp(-x**2/2) for c = 1/sqrt(2)
    return gy * (cdf + x * pdf)


class Gelu(Function):
    def __init__(self, approximate=False):
        self.approximate = bool(approximate)

    def forward(self, features):
        if features.dtype.kind != "f":
            raise ValueError(f"gelu: features must be floating point, got {features.dtype}")
        self.save_for_backward(features)
        return dispatch("gelu", features, self.approximate)

    def backward(self, gy):
        (x,) = self.saved
        return dispatch("gelu_grad", x, gy, self.approximate)


# ---- lowercase wrapper, named like its tf.nn twin ----------------------------------------

def gelu(features, approximate=False):
    """tf.nn.gelu: x * Phi(x) (approximate=True: TF's tanh approximation)."""
    return Gelu(approximate)(features)
