"""conv2d, depthwise, separable and spatially separable conv: float64 gradchecks, naive-loop
references, TF's worked padding examples, im2col/col2im adjointness, rank-1 factoring, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinybn import Tensor
from tinybn.backend import dispatch
from tinybn.geometry import Window
from tinybn.gradcheck import check_gradients
from tinybn.ops.conv import conv2d, depthwise_conv2d
from tinybn.ops.padding import window_padding
from tinybn.ops.separable import (factor_separable, separable_conv2d, separable_kernel,
                                  spatially_separable_conv2d)

FAST = settings(max_examples=20, deadline=None)


def naive_conv(x, w, strides, pads, dilations=(1, 1)):
    """Direct float64 loop over output pixels and taps; pads are ((top, bottom), (left, right))."""
    (sh, sw), (dh, dw) = strides, dilations
    KH, KW, C, O = w.shape
    xpad = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    OH = (xpad.shape[1] - (KH - 1) * dh - 1) // sh + 1
    OW = (xpad.shape[2] - (KW - 1) * dw - 1) // sw + 1
    y = np.zeros((x.shape[0], OH, OW, O))
    for i in range(OH):
        for j in range(OW):
            for a in range(KH):
                for b in range(KW):
                    y[:, i, j, :] += xpad[:, i * sh + a * dh, j * sw + b * dw, :] @ w[a, b]
    return y


def naive_depthwise(x, f, strides, pads, dilations=(1, 1)):
    """Each input channel c convolved with its own CM filters, output channel c*CM + q."""
    outs = [naive_conv(x[..., c:c + 1], f[:, :, c:c + 1, :], strides, pads, dilations) for c in range(f.shape[2])]
    return np.concatenate(outs, axis=3)


@st.composite
def conv_case(draw, depthwise=False):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if depthwise and max(dh, dw) > 1:
        sh = sw = 1                                     # TF's rule: dilation > 1 needs stride 1
    mode = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    pads = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2)] if mode == "explicit" else None
    sizes = []
    for k, d, p in ((kh, dh, 0), (kw, dw, 1)):
        need = 1 if mode == "SAME" else max(1, (k - 1) * d + 1 - (sum(pads[p]) if pads else 0))
        sizes.append(need + draw(st.integers(0, 4)))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    o = draw(st.integers(1, 2 if depthwise else 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, *sizes, c))
    w = rng.standard_normal((kh, kw, c, o))
    return x, w, (sh, sw), pads if pads else mode, (dh, dw)


# ---- forward against the spec -------------------------------------------------------------

@pytest.mark.parametrize("n, k, s, expected", [
    (5, 2, 1, [3, 5, 7, 9, 5]), (6, 3, 2, [6, 12, 11]), (7, 3, 2, [3, 9, 15, 13]), (8, 5, 2, [10, 20, 30, 21])])
def test_same_padding_worked_examples(n, k, s, expected):
    """docs/tf-conventions.md#padding: SAME on a 1-D ramp, along W and along H."""
    ramp = np.arange(1, n + 1, dtype=np.float64)
    assert np.array_equal(conv2d(ramp.reshape(1, 1, n, 1), np.ones((1, k, 1, 1)), s, "SAME").numpy().ravel(), expected)
    assert np.array_equal(conv2d(ramp.reshape(1, n, 1, 1), np.ones((k, 1, 1, 1)), s, "SAME").numpy().ravel(), expected)


@given(conv_case())
@FAST
def test_conv2d_forward_matches_naive_loop(case):
    x, w, strides, padding, dilations = case
    pads, _ = window_padding(x.shape[1:3], w.shape[:2], strides, dilations, padding)
    y = conv2d(x, w, strides, padding, dilations=dilations).numpy()
    np.testing.assert_allclose(y, naive_conv(x, w, strides, pads, dilations), rtol=1e-12, atol=1e-12)


def test_conv2d_float32_and_tf_argument_forms():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    y = conv2d(Tensor(x), w, [1, 2, 1, 1], [[0, 0], [1, 2], [0, 1], [0, 0]], dilations=[1, 1, 2, 1])
    assert y.dtype == np.float32
    ref = naive_conv(x, w.astype(np.float64), (2, 1), ((1, 2), (0, 1)), (1, 2))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-5)


@given(conv_case(depthwise=True))
@FAST
def test_depthwise_forward_matches_naive_loop(case):
    x, f, strides, padding, dilations = case
    pads, _ = window_padding(x.shape[1:3], f.shape[:2], strides, dilations, padding)
    y = depthwise_conv2d(x, f, strides, padding, dilations=dilations).numpy()
    np.testing.assert_allclose(y, naive_depthwise(x, f, strides, pads, dilations), rtol=1e-12, atol=1e-12)


# ---- gradients: float64 finite differences -------------------------------------------------

@given(conv_case())
@FAST
def test_conv2d_gradients(case):
    x, w, strides, padding, dilations = case
    check_gradients(lambda x, w: conv2d(x, w, strides, padding, dilations=dilations), x, w)


@given(conv_case(depthwise=True))
@FAST
def test_depthwise_conv2d_gradients(case):
    x, f, strides, padding, dilations = case
    check_gradients(lambda x, f: depthwise_conv2d(x, f, strides, padding, dilations=dilations), x, f)


@given(conv_case(depthwise=True), st.integers(1, 3))
@settings(max_examples=15, deadline=None)
def test_separable_conv2d_gradients_and_forward(case, out_channels):
    x, f, strides, padding, dilations = case
    p = np.random.default_rng(0).standard_normal((1, 1, f.shape[2] * f.shape[3], out_channels))
    check_gradients(lambda x, f, p: separable_conv2d(x, f, p, strides, padding, dilations=dilations), x, f, p)
    pads, _ = window_padding(x.shape[1:3], f.shape[:2], strides, dilations, padding)
    ref = naive_depthwise(x, f, strides, pads, dilations) @ p[0, 0]
    np.testing.assert_allclose(separable_conv2d(x, f, p, strides, padding, dilations=dilations).numpy(), ref,
                               rtol=1e-12, atol=1e-12)


@given(conv_case(), st.integers(1, 3))
@settings(max_examples=15, deadline=None)
def test_spatially_separable_gradients_and_equivalence(case, m):
    x, k, strides, padding, dilations = case
    rng = np.random.default_rng(2)
    a = rng.standard_normal((k.shape[0], 1, k.shape[2], m))
    b = rng.standard_normal((1, k.shape[1], m, k.shape[3]))
    check_gradients(lambda x, a, b: spatially_separable_conv2d(x, a, b, strides, padding, dilations), x, a, b)
    one = conv2d(x, separable_kernel(a, b), strides, padding, dilations=dilations).numpy()
    np.testing.assert_allclose(spatially_separable_conv2d(x, a, b, strides, padding, dilations).numpy(), one,
                               rtol=1e-12, atol=1e-12)


def test_skips_gradient_of_input_that_needs_none():
    x, w = Tensor(np.ones((1, 4, 4, 2))), Tensor(np.ones((3, 3, 2, 1)), requires_grad=True)
    conv2d(x, w, 1, "SAME").backward(np.ones((1, 4, 4, 1)))
    assert x.grad is None and w.grad[1, 1, 0, 0] == 16.0 and w.grad[0, 0, 0, 0] == 9.0


@given(conv_case(), st.booleans())
@FAST
def test_input_gradient_equals_col2im_of_dy_times_filters(case, stride_one):
    """dx = col2im(dy @ W^T), whichever way conv2d computes it (a convolution of dy when the
    strides are 1, col2im otherwise, and for explicit pads wider than the kernel)."""
    x, w, strides, padding, dilations = case
    if stride_one:
        strides = (1, 1)
    KH, KW, _, O = w.shape
    pads, (OH, OW) = window_padding(x.shape[1:3], (KH, KW), strides, dilations, padding)
    gy = np.random.default_rng(5).standard_normal((x.shape[0], OH, OW, O))
    X = Tensor(x, requires_grad=True)
    conv2d(X, w, strides, padding, dilations=dilations).backward(gy)
    expected = dispatch("col2im", gy.reshape(-1, O) @ w.reshape(-1, O).T, x.shape,
                        Window(KH, KW, *strides, *dilations, pads, OH, OW))
    np.testing.assert_allclose(X.grad, expected, rtol=1e-12, atol=1e-12)


def test_input_gradient_with_padding_wider_than_the_kernel():
    """Pads beyond the kernel's reach make the convolution form's pads negative: col2im takes over."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 4, 5, 2)), rng.standard_normal((2, 1, 2, 3))
    check_gradients(lambda x, w: conv2d(x, w, 1, [(3, 1), (2, 0)]), x, w)


# ---- primitives ------------------------------------------------------------------------------

@given(conv_case())
@FAST
def test_col2im_is_the_adjoint_of_im2col(case):
    x, w, strides, padding, dilations = case
    KH, KW = w.shape[:2]
    pads, (OH, OW) = window_padding(x.shape[1:3], (KH, KW), strides, dilations, padding)
    geometry = Window(KH, KW, *strides, *dilations, pads, OH, OW)
    cols = dispatch("im2col", x, geometry)
    assert cols.shape == (x.shape[0] * OH * OW, KH * KW * x.shape[3])
    c = np.random.default_rng(3).standard_normal(cols.shape)
    back = dispatch("col2im", c, x.shape, geometry)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-10)


def test_im2col_rows_hold_receptive_fields():
    x = np.arange(2 * 5 * 4 * 3, dtype=np.float64).reshape(2, 5, 4, 3)
    cols = dispatch("im2col", x, Window(3, 2, 2, 1, 1, 2, ((1, 1), (0, 2)), 3, 2))
    xpad = np.pad(x, ((0, 0), (1, 1), (0, 2), (0, 0)))
    # row of (n=1, i=2, j=1): window rows 4..6, columns 1 and 3
    np.testing.assert_array_equal(cols[1 * 6 + 2 * 2 + 1], xpad[1, 4:7, 1:4:2, :].ravel())


# ---- rank-1 factoring ---------------------------------------------------------------------------

def test_factor_separable_exact_on_rank1_kernels():
    rng = np.random.default_rng(4)
    u, v = rng.standard_normal((5, 1, 3, 2)), rng.standard_normal((1, 4, 3, 2))
    k = u * v                                          # every (c, o) slice is an outer product
    a, b, error = factor_separable(k)
    assert a.shape == (5, 1, 3, 6) and b.shape == (1, 4, 6, 2) and error < 1e-12
    np.testing.assert_allclose(separable_kernel(a, b), k, atol=1e-12)
    x = rng.standard_normal((2, 8, 7, 3))
    np.testing.assert_allclose(spatially_separable_conv2d(x, a, b, 2, "SAME").numpy(),
                               conv2d(x, k, 2, "SAME").numpy(), atol=1e-11)


def test_factor_separable_reports_error_of_random_kernel():
    k = np.random.default_rng(5).standard_normal((3, 3, 2, 2))
    a, b, error = factor_separable(k)
    k1 = separable_kernel(a, b)
    assert error == pytest.approx(np.linalg.norm(k - k1) / np.linalg.norm(k)) and 0.1 < error < 1
    # each slice of k1 is the rank-1 truncation: the residual is orthogonal to it
    for c in range(2):
        for o in range(2):
            assert np.linalg.matrix_rank(k1[:, :, c, o]) == 1
            assert abs(np.sum((k - k1)[:, :, c, o] * k1[:, :, c, o])) < 1e-10


# ---- bad input ---------------------------------------------------------------------------------

X, W = np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 3, 2))


@pytest.mark.parametrize("call, match", [
    (lambda: conv2d(np.zeros((5, 5, 3)), W, 1, "SAME"), "input must be rank 4"),
    (lambda: conv2d(X, np.zeros((3, 3, 3)), 1, "SAME"), "filters must be rank 4"),
    (lambda: conv2d(X, np.zeros((3, 3, 4, 2)), 1, "SAME"), "channel mismatch"),
    (lambda: conv2d(X, np.zeros((7, 3, 3, 2)), 1, "VALID"), "kernel larger than the padded input along H"),
    (lambda: conv2d(X, W, 1, [(0, 0), (0, 0)], dilations=(1, 3)), "kernel larger than the padded input along W"),
    (lambda: conv2d(X, W, 1, "FULL"), "padding must be"),
    (lambda: conv2d(X, W, 0, "SAME"), "strides must be positive"),
    (lambda: conv2d(X, W, 1, "SAME", dilations=(1, -1)), "dilations must be positive"),
    (lambda: conv2d(X, W, 1, "SAME", data_format="NCHW"), "data_format"),
    (lambda: conv2d(X.astype(np.float32), W, 1, "SAME"), "dtype"),
    (lambda: depthwise_conv2d(X, W, 2, "SAME", dilations=2), "all strides must be 1"),
    (lambda: depthwise_conv2d(X, np.zeros((3, 3, 2, 1)), 1, "SAME"), "channel mismatch"),
    (lambda: separable_conv2d(X, W, np.zeros((1, 1, 5, 4)), 1, "SAME"), "pointwise_filter must have shape"),
    (lambda: spatially_separable_conv2d(X, np.zeros((3, 2, 3, 4)), np.zeros((1, 3, 4, 2)), 1, "SAME"),
     "filters_kx1 must have shape"),
    (lambda: spatially_separable_conv2d(X, np.zeros((3, 1, 3, 4)), np.zeros((1, 3, 5, 2)), 1, "SAME"),
     "filters_1xk expects 5"),
    (lambda: spatially_separable_conv2d(X, np.zeros((3, 1, 2, 4)), np.zeros((1, 3, 4, 2)), 1, "SAME"),
     "channel mismatch"),
    (lambda: separable_conv2d(X, np.zeros((3, 3, 3)), np.zeros((1, 1, 3, 4)), 1, "SAME"),
     "depthwise_filter must have shape"),
    (lambda: separable_conv2d(X, W, np.zeros((1, 1)), 1, "SAME"), "pointwise_filter must have shape"),
    (lambda: spatially_separable_conv2d(X, np.zeros((3,)), np.zeros((1, 3, 4, 2)), 1, "SAME"),
     "filters_kx1 must have shape"),
    (lambda: factor_separable(np.zeros((3, 3, 2))), "kernel must be rank 4"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
