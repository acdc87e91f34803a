"""gelu's numba twins (kernels/numba_activations.py) against the numpy reference (tinybn/ops/activations.py).

Float64 and the tanh form evaluate the reference's formulas element by element with its
constants and its order of operations; only the elementary functions (exp, tanh, power) are
numba's libm rather than numpy's. So each result must be within 8 ulps (in its dtype) of a
scale no smaller than the terms it is made of: |y| for the exact form, 0.5 |x| (1 + |tanh u|)
for the tanh form (1 + tanh u cancels there), and for the gradients the sum of the sizes of
their terms times |gy|. Measured: at most 2.2 ulps (tanh form); the float64 exact form was
bit-identical.

The float32 exact form is another evaluation (one exp, one division, no branches): it is held
to FLOAT32_ULPS of those scales against the float64 reference evaluated at the same float32
inputs, which the float32 reference itself misses by up to ~150 ulps in the tails (it rounds
c x to float32 before erfc). Non-finite results (gelu(-inf) = -inf * 0) sit where the
reference's do. Both dtypes, views, rank 0 and size 0 keep shape and dtype.
"""
import math

import numpy as np
import pytest

from tinybn.kernels import numba_activations as twins
from tinybn.ops import activations as reference

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DTYPES = (np.float32, np.float64)
ULPS = 8
FLOAT32_ULPS = 8          # the float32 exact kernels against the float64 reference; measured 6.7 (module docstring)
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 26.543, -26.543, 0.46875, -0.46875, 4.0, -4.0, 30.0, -30.0]


def _inputs(dtype):
    """3 x standard normal, every 1/64 of [-30, 30] (all three of Cody's intervals), and the specials."""
    x = np.concatenate([np.random.default_rng(0).standard_normal(200_000) * 3,
                        np.arange(-30 * 64, 30 * 64 + 1) / 64.0, SPECIAL])
    return x.astype(dtype)


def _scales(x, gy, approximate):
    """Float64 sizes of the forward's and the gradient's terms, which the roundings are relative to."""
    x = x.astype(np.float64)
    if approximate:
        t = np.abs(np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))
        forward = 0.5 * np.abs(x) * (1 + t)
        slope = 0.5 * (1 + t) + 0.5 * np.abs(x) * (1 + t * t) * 0.7978845608028654 * (1 + 0.134145 * x * x)
    else:
        cdf = 0.5 * reference.erfc(-x * 0.7071067690849304)
        forward = np.abs(x) * cdf
        slope = cdf + np.abs(x) * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    return forward, np.abs(gy.astype(np.float64)) * slope


def assert_within_ulps(ours, ref, scale, what, limit=ULPS):
    """ours within `limit` ulps (of ours' dtype) of scale, from ref (ours' dtype, or a _Float64Reference)."""
    dtype = getattr(ref, "checked_dtype", ref.dtype)
    ref = np.asarray(ref)
    assert ours.dtype == dtype and ours.shape == ref.shape, what
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref), err_msg=what)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(ours[~finite], ref[~finite].astype(dtype), err_msg=what)      # NaN == NaN here
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    ulps = np.abs(ours[finite].astype(np.float64) - ref[finite]) / np.maximum(scale[finite] * eps, tiny)
    if ulps.size:
        assert ulps.max() <= limit, f"{what}: {ulps.max():.2f} ulps at entry {np.flatnonzero(finite)[ulps.argmax()]}"


def _references(x, gy, approximate):
    """The reference's gelu and gelu_grad, and the ulps they are held to: the float32 exact form
    against the float64 reference at the same inputs (rounded to float32 only for the dtype check)."""
    if x.dtype == np.float32 and not approximate:
        x64, gy64 = x.astype(np.float64), gy.astype(np.float64)
        forward, backward = reference.gelu_forward(x64, False), reference.gelu_grad(x64, gy64, False)
        return _Float64Reference(forward, np.float32), _Float64Reference(backward, np.float32), FLOAT32_ULPS
    return reference.gelu_forward(x, approximate), reference.gelu_grad(x, gy, approximate), ULPS


class _Float64Reference(np.ndarray):
    """Float64 values that report the dtype of the kernel they are checked against."""
    def __new__(cls, values, dtype):
        obj = np.asarray(values, np.float64).view(cls)
        obj.checked_dtype = np.dtype(dtype)
        return obj


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_twins_match_the_reference(dtype, approximate):
    x = _inputs(dtype)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    forward, backward = _scales(x, gy, approximate)
    ref_forward, ref_backward, ulps = _references(x, gy, approximate)
    assert_within_ulps(twins.gelu(x, approximate), ref_forward, forward, "gelu", ulps)
    assert_within_ulps(twins.gelu_grad(x, gy, approximate), ref_backward, backward, "gelu_grad", ulps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, view", [((3, 4), True), ((2, 5, 5, 3), False), ((), False), ((0, 3), False)])
def test_shapes_views_and_dtypes(dtype, shape, view):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    if view:
        x, gy = np.ascontiguousarray(x.T).T, np.ascontiguousarray(gy.T).T
    for approximate in (False, True):
        forward, backward = _scales(x, gy, approximate)
        ref_forward, ref_backward, ulps = _references(x, gy, approximate)
        assert_within_ulps(np.asarray(twins.gelu(x, approximate)), ref_forward, np.asarray(forward), "gelu", ulps)
        assert_within_ulps(np.asarray(twins.gelu_grad(x, gy, approximate)), ref_backward, np.asarray(backward),
                           "gelu_grad", ulps)


def test_the_check_can_fail():
    """A twin off by the erfc constant's float64 value (the reference's float32 one is TF's) fails."""
    x = _inputs(np.float64)[:1000]
    off = 0.5 * x * reference.erfc(-x * 0.7071067811865476)
    with pytest.raises(AssertionError, match="ulps"):
        assert_within_ulps(off, reference.gelu_forward(x, False), _scales(x, x, False)[0], "gelu")


def test_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="gelu: the numba kernels take float32 or float64, got float16"):
        twins.gelu(np.ones(3, np.float16), False)


def test_constants_are_the_reference_ones():
    """kernels may not import tinybn.ops (tests/test_layering.py): the copies must stay equal."""
    for name in ("_A", "_B", "_C", "_D", "_P", "_Q", "_SQRT_HALF", "_SQRT_2_OVER_PI", "_TANH_CUBIC", "_XBIG"):
        ours = getattr(twins, name, None)
        ours = twins._CONSTANTS[twins._XBIG] if name == "_XBIG" else ours
        assert ours == getattr(reference, name), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_numba_backend_dispatches_gelu_to_the_twins(dtype):
    """Registered in kernels/numba_cpu.py: the op under the numba backend runs them, within their ulps."""
    import tinybn.backend as backend
    from tinybn import Tensor
    from tinybn.ops.activations import gelu
    with backend.backend("numba"):
        assert {"gelu", "gelu_grad"} <= {n for n, impls in backend._registry.items() if "numba" in impls}
    x = _inputs(dtype)[:4096].reshape(64, 64)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    results = {}
    for name in ("numba", "numpy"):
        with backend.backend(name):
            t = Tensor(x, requires_grad=True)
            y = gelu(t)
            y.backward(gy)
            results[name] = (y.data, t.grad)
    forward, slope = _scales(x, gy, False)
    ref_forward, ref_backward, ulps = _references(x, gy, False)
    np.testing.assert_array_equal(results["numpy"][0], reference.gelu_forward(x, False))
    assert_within_ulps(results["numba"][0], ref_forward, forward, "gelu under numba", ulps)
    assert_within_ulps(results["numba"][1], ref_backward, slope, "gelu's gradient under numba", ulps)


def test_float32_special_values_are_the_references():
    """inf, -inf (NaN: -inf * 0), NaN, signed zeros, and |x| past where erfc leaves float32, both directions.
    The signs of zeros too, but not at -14.8, where the gradient's float64 value is -1e-47: the
    float32 kernel's -0 has its sign, the float32 reference's 0 + -0 = 0 does not."""
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e30, -1e30, 3e38, -3e38, 14.8, -14.8, 20.0, -20.0], np.float32)
    gy = np.array([1, -1, 1, 1, -1, 1, -1, 1, 1, 2, 2, -1, -1], np.float32)
    for ours, ref in ((twins.gelu(x, False), reference.gelu_forward(x, False)),
                      (twins.gelu_grad(x, gy, False), reference.gelu_grad(x, gy, False))):
        np.testing.assert_array_equal(ours, ref)
        signed = ~np.isnan(ref) & (x != np.float32(-14.8))
        np.testing.assert_array_equal(np.signbit(ours[signed]), np.signbit(ref[signed]))


def test_float32_erfcx_fit():
    """The float32 kernels' erfcx(a) = t g(t - 0.58), t = 1 / (1 + a/2), against math.erfc on [0, 10.5]
    (in float64, so this pins the fit itself: 3.1e-8 relative with its float32 coefficients)."""
    a = np.linspace(0, 10.5, 4001)
    t = 1 / (1 + float(twins._T_SLOPE) * a)
    g = np.polynomial.polynomial.polyval(t - float(twins._T_MID), np.array(twins._G, np.float64))
    erfcx = np.array([math.erfc(v) * math.exp(v * v) for v in a])
    assert np.abs(t * g / erfcx - 1).max() < 4e-8


def test_float32_plain_functions_match_the_kernels():
    """What NUMBA_DISABLE_JIT=1 runs (the plain loops, float32 numpy scalars, no fused multiply-adds)
    keeps the float32 bound too."""
    x = np.concatenate([np.linspace(-15, 15, 301), SPECIAL]).astype(np.float32)
    gy = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    y, gx = np.empty_like(x), np.empty_like(x)
    twins._gelu32_plain(x, y)
    twins._gelu32_grad_plain(x, gy, gx)
    forward, backward = _scales(x, gy, False)
    ref_forward, ref_backward, ulps = _references(x, gy, False)
    assert_within_ulps(y, ref_forward, forward, "plain gelu", ulps)
    assert_within_ulps(gx, ref_backward, backward, "plain gelu_grad", ulps)
