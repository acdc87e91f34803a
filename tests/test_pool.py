"""max_pool2d / avg_pool2d: float64 finite differences, a per-window loop reference
(with TF's first-maximum tie rule), closed forms of TF's rules, windows of -inf beside
the padding, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinybn import Tensor
from tinybn.gradcheck import check_gradients
from tinybn.ops.pool import avg_pool2d, max_pool2d
from tinybn.ops.padding import window_padding


@st.composite
def geometries(draw):
    """(shape, ksize, strides, padding) with even and odd windows, stride > kernel, batch 1."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    h, w = draw(st.integers(kh, 7)), draw(st.integers(kw, 7))
    shape = (draw(st.integers(1, 2)), h, w, draw(st.integers(1, 3)))
    return shape, (kh, kw), (sh, sw), padding


def distinct_values(shape, seed):
    """No ties, spaced 1 apart: finite differences never cross a change of argmax."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) - 10.0).reshape(shape)


def loop_reference(x, dy, ksize, strides, padding, kind):
    """Per-window Python loops over the real pixels: y and dx for upstream dy."""
    n, h, w, c = x.shape
    ((pt, _), (pl, _)), (oh, ow) = window_padding((h, w), ksize, strides, (1, 1), padding)
    y = np.zeros((n, oh, ow, c))
    dx = np.zeros_like(x)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    pixels = [(r, q) for r in range(i * strides[0] - pt, i * strides[0] - pt + ksize[0])
                              for q in range(j * strides[1] - pl, j * strides[1] - pl + ksize[1])
                              if 0 <= r < h and 0 <= q < w]     # row-major order
                    values = [x[b, r, q, ch] for r, q in pixels]
                    if kind == "max":
                        first = int(np.argmax(values))          # np.argmax returns the first maximum
                        y[b, i, j, ch] = values[first]
                        dx[b, pixels[first][0], pixels[first][1], ch] += dy[b, i, j, ch]
                    else:
                        y[b, i, j, ch] = sum(values) / len(values)
                        for r, q in pixels:
                            dx[b, r, q, ch] += dy[b, i, j, ch] / len(values)
    return y, dx


def run(op, x, dy, ksize, strides, padding):
    t = Tensor(x, requires_grad=True)
    y = op(t, ksize, strides, padding)
    y.backward(dy)
    return y.data, t.grad


@settings(max_examples=25, deadline=None)
@given(geometries(), st.integers(0, 2**16))
def test_max_pool_gradcheck(geometry, seed):
    shape, ksize, strides, padding = geometry
    check_gradients(lambda t: max_pool2d(t, ksize, strides, padding), distinct_values(shape, seed))


@settings(max_examples=25, deadline=None)
@given(geometries(), st.integers(0, 2**16))
def test_avg_pool_gradcheck(geometry, seed):
    shape, ksize, strides, padding = geometry
    x = np.random.default_rng(seed).standard_normal(shape)
    check_gradients(lambda t: avg_pool2d(t, ksize, strides, padding), x)


@settings(max_examples=20, deadline=None)
@given(geometries(), st.integers(0, 2**16), st.sampled_from(["max", "avg"]))
def test_matches_loop_reference_with_ties(geometry, seed, kind):
    """Small integers make many ties: the gradient must pick the first maximum of each window."""
    shape, ksize, strides, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 2, shape).astype(np.float64)       # mostly negative: zero padding would show
    op = max_pool2d if kind == "max" else avg_pool2d
    dy = rng.standard_normal(op(x, ksize, strides, padding).shape)
    y, dx = run(op, x, dy, ksize, strides, padding)
    y_ref, dx_ref = loop_reference(x, dy, ksize, strides, padding, kind)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_explicit_padding_matches_loop_reference(kind):
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 0, (2, 6, 5, 3)).astype(np.float64)
    padding = [(2, 1), (0, 2)]
    op = max_pool2d if kind == "max" else avg_pool2d
    dy = rng.standard_normal(op(x, (3, 3), (2, 1), padding).shape)
    y, dx = run(op, x, dy, (3, 3), (2, 1), padding)
    y_ref, dx_ref = loop_reference(x, dy, (3, 3), (2, 1), padding, kind)
    assert y.shape == (2, 4, 5, 3)   # (6+3-3)//2+1, (5+2-3)//1+1
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    # TF's 4-entry NHWC form means the same
    y4, _ = run(op, x, dy, [1, 3, 3, 1], [1, 2, 1, 1], [[0, 0], [2, 1], [0, 2], [0, 0]])
    np.testing.assert_array_equal(y4, y)


def test_max_pool_ties_go_to_first_maximum_closed_form():
    """TF's gradient on an all-zero 5x5, 3x3/2 SAME (pads (1, 1)), dy = 1: every window ties."""
    y, dx = run(max_pool2d, np.zeros((1, 5, 5, 1)), np.ones((1, 3, 3, 1)), 3, 2, "SAME")
    expected = [[1, 1, 0, 1, 0],
                [1, 1, 0, 1, 0],
                [0, 0, 0, 0, 0],
                [1, 1, 0, 1, 0],
                [0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(y, np.zeros((1, 3, 3, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_max_pool_ignores_padding_for_negative_input():
    x = -1.0 - np.arange(25.0).reshape(1, 5, 5, 1)
    y, _ = run(max_pool2d, x, np.ones((1, 3, 3, 1)), 3, 2, "SAME")
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -2, -4], [-6, -7, -9], [-16, -17, -19]])


def test_max_pool_window_of_minus_inf_sends_its_gradient_to_the_first_real_pixel():
    """3x3 of -inf but x[2, 2] = 1, 3x3/1 SAME (pads (1, 1)), dy = 1: TF's scan visits only
    real pixels and keeps the first one while nothing is greater, so window (0, 0) (real
    rows 0..1, cols 0..1) sends dy to pixel (0, 0), window (0, 2) to (0, 1), (2, 0) to
    (1, 0); the four windows holding the 1 send theirs to (2, 2). No dy is lost in padding."""
    x = np.full((1, 3, 3, 1), -np.inf)
    x[0, 2, 2, 0] = 1.0
    y, dx = run(max_pool2d, x, np.ones((1, 3, 3, 1)), 3, 1, "SAME")
    inf = np.inf
    np.testing.assert_array_equal(y[0, :, :, 0], [[-inf, -inf, -inf], [-inf, 1, 1], [-inf, 1, 1]])
    np.testing.assert_array_equal(dx[0, :, :, 0], [[3, 1, 0], [1, 0, 0], [0, 0, 4]])
    assert dx.sum() == y.size                      # every window's dy landed on a pixel


@st.composite
def padded_geometries(draw):
    """geometries() with explicit padding too (each pad smaller than the window)."""
    shape, ksize, strides, padding = draw(geometries())
    if draw(st.booleans()):
        padding = [(draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in ksize]
    return shape, ksize, strides, padding


@settings(max_examples=30, deadline=None)
@given(padded_geometries(), st.integers(0, 2**16))
def test_max_pool_of_mostly_minus_inf_matches_loop_reference(geometry, seed):
    """Most pixels -inf: many windows hold nothing else, and their dy must reach their first
    real pixel (the loop reference's np.argmax over the real pixels picks it)."""
    shape, ksize, strides, padding = geometry
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(shape) < 0.8, -np.inf, rng.integers(-2, 2, shape).astype(np.float64))
    dy = rng.standard_normal(max_pool2d(x, ksize, strides, padding).shape)
    y, dx = run(max_pool2d, x, dy, ksize, strides, padding)
    y_ref, dx_ref = loop_reference(x, dy, ksize, strides, padding, "max")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12, atol=1e-12)


def test_avg_pool_same_divides_by_real_count_closed_form():
    """All-negative 5x5, 3x3/2 SAME: the corner window holds 2x2 real pixels, so it divides
    by 4 (zero padding counted would give sum/9); edge windows hold 2x3 (or 3x2) pixels."""
    x = -1.0 - np.arange(25.0).reshape(1, 5, 5, 1)
    y, dx = run(avg_pool2d, x, np.ones((1, 3, 3, 1)), 3, 2, "SAME")
    assert y[0, 0, 0, 0] == (-1 - 2 - 6 - 7) / 4
    assert y[0, 0, 1, 0] == (-2 - 3 - 4 - 7 - 8 - 9) / 6
    assert y[0, 1, 1, 0] == np.mean(x[0, 1:4, 1:4, 0])
    # gradient: dx[0, 0] is in the corner window only -> 1/4; dx[1, 1] in 4 windows of 4, 6, 6, 9 pixels
    assert dx[0, 0, 0, 0] == pytest.approx(1 / 4)
    assert dx[0, 1, 1, 0] == pytest.approx(1 / 4 + 1 / 6 + 1 / 6 + 1 / 9)


@pytest.mark.parametrize("op", [max_pool2d, avg_pool2d])
def test_float32_stays_float32(op):
    t = Tensor(np.ones((2, 6, 6, 3), np.float32), requires_grad=True)
    y = op(t, 3, 2, "SAME")
    y.backward(np.ones(y.shape, np.float32))
    assert y.dtype == np.float32 and t.grad.dtype == np.float32 and y.shape == (2, 3, 3, 3)


@pytest.mark.parametrize("op", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize("kwargs, match", [
    (dict(input=np.zeros((5, 5, 1))), "rank 4"),
    (dict(ksize=0), "ksize must be positive"),
    (dict(ksize=(2, 2, 2)), "ksize must be an int or a pair"),
    (dict(strides=(1, -1)), "strides must be positive"),
    (dict(strides=[2, 1, 1, 1]), "strides: the batch and channel entries"),
    (dict(padding="FULL"), "padding must be 'SAME', 'VALID'"),
    (dict(ksize=6, padding="VALID"), "kernel larger than the padded input along H"),
    (dict(padding=[(3, 0), (0, 0)]), r"padding \(3, 0\) along H must be smaller than the window size"),
    (dict(padding=[(0, 0), (-1, 0)]), "non-negative"),
    (dict(input=np.zeros((1, 5, 5, 1), np.int32)), "floating point"),
    (dict(data_format="NCHW"), "data_format"),
])
def test_bad_input(op, kwargs, match):
    args = dict(input=np.zeros((1, 5, 5, 1)), ksize=3, strides=2, padding="SAME") | kwargs
    with pytest.raises(ValueError, match=match):
        op(**args)
