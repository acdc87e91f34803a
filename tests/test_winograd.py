"""Winograd convolution (kernels/numba_winograd.py) against closed forms and the im2col reference.

The transforms against the direct correlation of one tile (1-D and 2-D, float64, to 1e-12
of the largest value: A^T and B^T are exact, G is rounded once); the conv and its filter
gradient against tinybn.ops.conv's im2col primitives over random shapes (odd sizes, every
padding, N = 1, C = 1), to WINOGRAD_RTOL of the dtype (max|ours - ref| / max|ref|, the
crosscheck measure; the module docstring states the measured errors); the op's gradients
under the numba backend by float64 finite differences; the policy (which convs go this
way); the plain (non-jitted) kernels.
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.geometry import window
from tinybn.gradcheck import check_gradients
from tinybn.kernels import numba_conv, numba_filter_gradient as fg, numba_threads
from tinybn.kernels import numba_winograd as wg, numba_winograd_forward as wf
from tinybn.ops.conv import conv2d
from tinybn.ops.padding import window_geometry

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)

TILES = [(4, 3), (2, 5), (4, 5), (6, 3)]          # (m, r): alpha 6 and 8, the point sets POINTS holds
DTYPES = (np.float32, np.float64)


def relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def reference(name):
    return backend.implementation(name, "numpy")


# ---- the transforms: closed-form identities ----------------------------------------------

@pytest.mark.parametrize("m, r", TILES)
def test_one_dimensional_transform_is_the_correlation(m, r):
    """y = A^T [(G g) * (B^T d)] equals y_i = sum_k d_{i+k} g_k for any d (alpha) and g (r)."""
    AT, G, BT = wg.transforms(m, r)
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(20):
        d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
        direct = np.array([d[i:i + r] @ g for i in range(m)])
        assert relative_error(AT @ ((G @ g) * (BT @ d)), direct) < 1e-12


@pytest.mark.parametrize("m, r", TILES)
def test_two_dimensional_transform_is_the_correlation_of_a_tile(m, r):
    """A^T [(G g G^T) * (B^T d B)] A equals the direct 2-D correlation of an alpha x alpha tile."""
    AT, G, BT = wg.transforms(m, r)
    rng = np.random.default_rng(m * 10 + r + 1)
    d, g = rng.standard_normal((m + r - 1, m + r - 1)), rng.standard_normal((r, r))
    direct = np.array([[np.sum(d[i:i + r, j:j + r] * g) for j in range(m)] for i in range(m)])
    assert relative_error(AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T, direct) < 1e-12


@pytest.mark.parametrize("m, r", TILES)
def test_output_and_input_transforms_are_exact_in_binary(m, r):
    """The points are dyadic: A^T and B^T hold small multiples of 1/64 (no rounding in any dtype)."""
    AT, _, BT = wg.transforms(m, r)
    for matrix in (AT, BT):
        assert np.array_equal(matrix * 64, np.round(matrix * 64))
        assert np.array_equal(matrix.astype(np.float32).astype(np.float64), matrix)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("m, r", TILES)
def test_filter_transform_is_g_w_g_transposed_rounded_once(m, r, dtype):
    """U[p*alpha + q, c, o] = (G w[:, :, c, o] G^T)[p, q]: the float64 sum, rounded once to the dtype
    (within half an ulp of the exact value, up to float64's rounding of the sum)."""
    _, G, _ = wg.transforms(m, r)
    w = np.random.default_rng(m + r).standard_normal((r, r, 5, 7)).astype(dtype)
    U = wf.filter_transform(w, G)
    exact = np.einsum("pi,qj,ijco->pqco", G, G, w.astype(np.float64)).reshape(-1, 5, 7)
    assert U.dtype == dtype and U.shape == ((m + r - 1) ** 2, 5, 7)
    bound = 0.5 * np.spacing(np.abs(exact).astype(dtype)) + 1e-14 * np.abs(exact).max()
    assert np.all(np.abs(U - exact) <= bound)


# ---- the conv and its filter gradient against the im2col reference ----------------------

@st.composite
def winograd_case(draw):
    r = draw(st.sampled_from([3, 5]))
    mode = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    pads = tuple((draw(st.integers(0, r - 1)), draw(st.integers(0, r - 1))) for _ in range(2))
    least = [1 if mode == "SAME" else max(1, r - (sum(p) if mode == "explicit" else 0)) for p in pads]
    hw = [n + draw(st.integers(0, 8)) for n in least]                  # odd and even sizes, tiles cut off
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    geometry = window_geometry(hw, (r, r), (1, 1), (1, 1), pads if mode == "explicit" else mode)
    return (n, *hw, c), (r, r, c, o), geometry, draw(st.integers(0, 2**32 - 1))


@pytest.fixture
def small_batches(monkeypatch):
    """The forward goes by Winograd however few tiles the batch has (MIN_BATCH_TILES 0)."""
    monkeypatch.setattr(wg, "MIN_BATCH_TILES", 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@settings(max_examples=30, deadline=None)
@given(case=winograd_case())
def test_conv_and_filter_gradient_equal_im2col(dtype, case):
    x_shape, w_shape, geometry, seed = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    dy = rng.standard_normal((x_shape[0], geometry.OH, geometry.OW, w_shape[3]))
    m = wg.WINOGRAD_TILES[w_shape[0]]
    tolerance = wg.WINOGRAD_RTOL[np.dtype(dtype)]
    with backend.backend("numba"):
        y = wg.winograd_conv2d(x.astype(dtype), w.astype(dtype), geometry, m)
        gw = wg.winograd_backprop_filter(x.astype(dtype), dy.astype(dtype), geometry, w_shape, m)
    assert y.dtype == gw.dtype == dtype
    assert relative_error(y, reference("conv2d_forward")(x, w, geometry)) <= tolerance
    assert relative_error(gw, reference("conv2d_backprop_filter")(x, dy, geometry, w_shape)) <= tolerance


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape, r", [((2, 12, 12, 64, 64), 5), ((1, 14, 14, 64, 64), 3)],
                         ids=["cifar conv2", "resnet 3x3"])
def test_error_on_the_model_convs_is_within_the_documented_bound(small_batches, shape, r, dtype):
    """The CIFAR models' conv2 (64 channels, 12x12, SAME) and a ResNet 3x3 conv, both directions."""
    n, h, w_, c, o = shape
    rng = np.random.default_rng(r)
    x, w = rng.standard_normal((n, h, w_, c)), rng.standard_normal((r, r, c, o))
    dy = rng.standard_normal((n, h, w_, o))
    geometry = window_geometry((h, w_), (r, r), (1, 1), (1, 1), "SAME")
    assert wg.winograd_tile(x.shape, w.shape, geometry, np.dtype(dtype)) == 4
    with backend.backend("numba"):
        y = numba_conv.conv2d_forward(x.astype(dtype), w.astype(dtype), geometry)
        gw = wg.winograd_backprop_filter(x.astype(dtype), dy.astype(dtype), geometry, w.shape, 4)
    tolerance = wg.WINOGRAD_RTOL[np.dtype(dtype)]
    assert relative_error(y, reference("conv2d_forward")(x, w, geometry)) <= tolerance
    assert relative_error(gw, reference("conv2d_backprop_filter")(x, dy, geometry, w.shape)) <= tolerance


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape, r", [((2, 12, 12, 16), 5), ((1, 9, 11, 16), 3)], ids=["5x5", "3x3 odd"])
def test_forward_does_not_depend_on_the_worker_count(shape, r, dtype):
    """The positions' GEMMs run in fixed lanes, each on one BLAS thread, and the transforms have no
    sums across threads: 1 worker (the calling thread, one numba thread) and numba's thread count
    of workers give the same bits."""
    rng = np.random.default_rng(r)
    x, w = rng.standard_normal(shape).astype(dtype), rng.standard_normal((r, r, shape[3], 24)).astype(dtype)
    geometry = window_geometry(shape[1:3], (r, r), (1, 1), (1, 1), "SAME")
    many = wg.winograd_conv2d(x, w, geometry, 4)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert numba_threads.workers() == 1
        one = wg.winograd_conv2d(x, w, geometry, 4)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(many, one)
    assert relative_error(many, reference("conv2d_forward")(x, w, geometry)) <= wg.WINOGRAD_RTOL[np.dtype(dtype)]


# ---- through the op: gradients and the policy ---------------------------------------------

@pytest.fixture
def winograd_calls(monkeypatch):
    """Every conv goes the Winograd way (MIN_CHANNELS 1, MIN_TILES 0, the filter gradient too);
    the tiles it ran with, in a list."""
    calls = []
    conv, filter_gradient = wg.winograd_conv2d, wg.winograd_backprop_filter
    monkeypatch.setattr(wg, "MIN_CHANNELS", 1)
    monkeypatch.setattr(wg, "MIN_TILES", 0)
    monkeypatch.setattr(wg, "MIN_BATCH_TILES", 0)
    monkeypatch.setattr(wg, "WINOGRAD_FILTER_GRADIENT", True)
    monkeypatch.setattr(wg, "winograd_conv2d", lambda *a: (calls.append(("forward", a[-1])), conv(*a))[1])
    monkeypatch.setattr(wg, "winograd_backprop_filter",
                        lambda *a: (calls.append(("filter", a[-1])), filter_gradient(*a))[1])
    return calls


@pytest.mark.parametrize("r, padding", [(3, "SAME"), (5, "SAME"), (3, ((0, 2), (1, 0))), (5, "VALID")])
def test_op_gradients_under_numba_by_finite_differences(winograd_calls, r, padding):
    """conv2d's dx (a stride-1 conv of dy with the flipped, transposed kernel) and dW, both by
    Winograd, equal float64 central differences."""
    rng = np.random.default_rng(r)
    x, w = rng.standard_normal((2, 6, 7, 2)), rng.standard_normal((r, r, 2, 3))
    with backend.backend("numba"):
        check_gradients(lambda x, w: conv2d(x, w, 1, padding), x, w)
    assert {("forward", 4), ("filter", 4)} <= set(winograd_calls)


@pytest.mark.parametrize("filter_gradient", [False, True])
def test_op_under_numba_equals_the_numpy_backend_on_a_model_conv(small_batches, filter_gradient, monkeypatch):
    """conv2d forward and both gradients under backend("numba") (Winograd, by the policy; the
    filter gradient as WINOGRAD_FILTER_GRADIENT says, else im2col split over the batch) against
    the numpy backend (im2col), float32, on the CIFAR conv2 geometry at batch 2."""
    monkeypatch.setattr(wg, "WINOGRAD_FILTER_GRADIENT", filter_gradient)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 12, 64)).astype(np.float32)
    w = (rng.standard_normal((5, 5, 64, 64)) * 0.05).astype(np.float32)
    dy = rng.standard_normal((2, 12, 12, 64)).astype(np.float32)
    results = {}
    for name in ("numpy", "numba"):
        X, W = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        with backend.backend(name):
            y = conv2d(X, W, 1, "SAME")
            y.backward(dy)
        results[name] = (y.data, X.grad, W.grad)
    f32 = np.dtype(np.float32)
    tolerances = (wg.WINOGRAD_RTOL[f32],) * 2 + ((wg.WINOGRAD_RTOL if filter_gradient else fg.SPLIT_RTOL)[f32],)
    for tolerance, ours, ref in zip(tolerances, results["numba"], results["numpy"]):
        assert ours.dtype == np.float32
        assert 0 < relative_error(ours, ref) <= tolerance      # > 0: Winograd (or the split's order) ran


@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, dtype, tile", [
    ((128, 12, 12, 64), (5, 5, 64, 64), 1, 1, np.float32, 4),     # the CIFAR models' conv2
    ((6, 12, 12, 64), (5, 5, 64, 64), 1, 1, np.float32, 4),       # 54 tiles: MIN_BATCH_TILES or more
    ((5, 12, 12, 64), (5, 5, 64, 64), 1, 1, np.float32, None),    # 45 tiles: kn2row
    ((1, 14, 14, 256), (3, 3, 256, 256), 1, 1, np.float32, None), # 16 tiles
    ((8, 56, 56, 64), (3, 3, 64, 64), 1, 1, np.float64, 4),       # a ResNet 3x3
    ((8, 14, 14, 256), (3, 3, 256, 256), 1, 1, np.float32, 4),    # 14x14: 4 tiles across
    ((8, 7, 7, 512), (3, 3, 512, 512), 1, 1, np.float32, None),   # 7x7: 32 tiles, cut off: kn2row
    ((32, 7, 7, 512), (3, 3, 512, 512), 1, 1, np.float32, 4),     # 128 tiles
    ((1024, 7, 7, 256), (3, 3, 256, 256), 1, 1, np.float32, 4),   # the fast model's block2 conv2
    ((1024, 3, 3, 256), (3, 3, 256, 256), 1, 1, np.float32, 4),   # its block3 conv2: one tile an image
    ((16, 3, 3, 256), (3, 3, 256, 256), 1, 1, np.float32, None),  # 16 tiles
    ((12, 7, 7, 256), (3, 3, 256, 256), 1, 1, np.float32, None),  # 48: under MIN_SMALL_OUTPUT_TILES
    ((16, 7, 7, 256), (3, 3, 256, 256), 1, 1, np.float32, 4),     # 64
    ((128, 24, 24, 3), (5, 5, 3, 64), 1, 1, np.float32, None),    # conv1: 3 channels, im2col is faster
    ((8, 56, 56, 64), (3, 3, 64, 64), 2, 1, np.float32, None),    # strided
    ((8, 56, 56, 64), (3, 3, 64, 64), 1, 2, np.float32, None),    # dilated
    ((8, 56, 56, 64), (1, 1, 64, 64), 1, 1, np.float32, None),    # pointwise
    ((8, 56, 56, 64), (3, 5, 64, 64), 1, 1, np.float32, None),    # not square
    ((8, 56, 56, 64), (4, 4, 64, 64), 1, 1, np.float32, None),    # no tile for 4x4
    ((8, 56, 56, 64), (3, 3, 64, 8), 1, 1, np.float32, None),     # few output channels
    ((8, 56, 56, 64), (3, 3, 64, 64), 1, 1, np.float16, None),    # the kernels' dtypes only
    ((0, 56, 56, 64), (3, 3, 64, 64), 1, 1, np.float32, None),    # an empty batch
])
def test_policy(x_shape, w_shape, strides, dilations, dtype, tile):
    geometry = window_geometry(x_shape[1:3], w_shape[:2], (strides,) * 2, (dilations,) * 2, "SAME")
    assert wg.winograd_tile(x_shape, w_shape, geometry, np.dtype(dtype)) == tile


@pytest.mark.parametrize("batch, tile", [(5, None), (6, 4)])
def test_policy_of_the_filter_gradient_has_the_same_minimum_batch(batch, tile):
    """45 tiles (5 images of 3 x 3): im2col; 54: Winograd, as for the forward."""
    geometry = window_geometry((12, 12), (5, 5), (1, 1), (1, 1), "SAME")
    assert wg.winograd_tile((batch, 12, 12, 64), (5, 5, 64, 64), geometry, np.dtype(np.float32), "filter") == tile


@pytest.mark.parametrize("enabled", [False, True])
def test_policy_of_the_filter_gradient_follows_its_switch(enabled, monkeypatch):
    monkeypatch.setattr(wg, "WINOGRAD_FILTER_GRADIENT", enabled)
    geometry = window_geometry((12, 12), (5, 5), (1, 1), (1, 1), "SAME")
    tile = wg.winograd_tile((128, 12, 12, 64), (5, 5, 64, 64), geometry, np.dtype(np.float32), "filter")
    assert tile == (4 if enabled else None)


def test_ineligible_convs_take_the_reference(monkeypatch):
    """A strided conv under numba is the im2col reference's result, bit for bit."""
    monkeypatch.setattr(wg, "winograd_conv2d", None)        # would fail if called
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 9, 9, 16)), rng.standard_normal((3, 3, 16, 16))
    geometry = window((9, 9), (3, 3), (2, 2), (1, 1), ((1, 1), (1, 1)))
    with backend.backend("numba"):
        ours = numba_conv.conv2d_forward(x, w, geometry)
    np.testing.assert_array_equal(ours, reference("conv2d_forward")(x, w, geometry))


def test_plain_kernels_equal_the_jitted(monkeypatch):
    """The Python functions the JIT compiles (what NUMBA_DISABLE_JIT=1 runs) give the same values."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 5, 6, 2)), rng.standard_normal((3, 3, 2, 3))
    dy = rng.standard_normal((1, 5, 6, 3))
    geometry = window((5, 6), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
    jitted = wg.winograd_conv2d(x, w, geometry, 4), wg.winograd_backprop_filter(x, dy, geometry, w.shape, 4)
    for name in ("_tile_transform", "_output_transform", "_filter_transform"):
        monkeypatch.setattr(wf, name + "_kernel", getattr(wf, name + "_plain"))
    plain = wg.winograd_conv2d(x, w, geometry, 4), wg.winograd_backprop_filter(x, dy, geometry, w.shape, 4)
    for a, b in zip(plain, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(b).max())
