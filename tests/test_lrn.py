"""local_response_normalization: a naive float64 loop, float64 finite differences, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinybn import Tensor
from tinybn.gradcheck import check_gradients
from tinybn.ops.lrn import local_response_normalization, lrn

params = st.fixed_dictionaries({
    "depth_radius": st.integers(0, 6),
    "bias": st.sampled_from([0.5, 1.0, 2.0]),
    "alpha": st.sampled_from([1e-3, 0.1, 1.0]),
    "beta": st.sampled_from([0.5, 0.75, 1.0]),
})
shapes = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 8))


def naive_lrn(x, depth_radius, bias, alpha, beta):
    """The TF op doc's formula, one channel at a time, window clipped at the edges."""
    y = np.zeros_like(x)
    depth = x.shape[-1]
    for d in range(depth):
        lo, hi = max(0, d - depth_radius), min(depth - 1, d + depth_radius)
        sqr_sum = np.sum(x[..., lo:hi + 1] ** 2, axis=-1)
        y[..., d] = x[..., d] / (bias + alpha * sqr_sum) ** beta
    return y


@settings(max_examples=30, deadline=None)
@given(shapes, params, st.integers(0, 2**16))
def test_forward_matches_naive_loop(shape, kwargs, seed):
    x = 2 * np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_allclose(lrn(x, **kwargs).data, naive_lrn(x, **kwargs), rtol=1e-13, atol=0)


@settings(max_examples=30, deadline=None)
@given(shapes, params, st.integers(0, 2**16))
def test_gradcheck(shape, kwargs, seed):
    """depth_radius 0..6 against depths 1..8 covers radius > depth (the window is every channel)."""
    x = 2 * np.random.default_rng(seed).standard_normal(shape)
    check_gradients(lambda t: local_response_normalization(t, **kwargs), x)


def test_radius_larger_than_depth_sums_every_channel():
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 1, 3)
    y = lrn(x, depth_radius=7, bias=1.0, alpha=1.0, beta=1.0).data
    np.testing.assert_allclose(y.ravel(), x.ravel() / 15.0, rtol=1e-15)


def test_alpha_is_not_divided_by_window_size():
    """depth_radius=1 at the middle of three channels of ones: N = bias + alpha * 3."""
    y = lrn(np.ones((1, 1, 1, 3)), depth_radius=1, bias=2.0, alpha=0.5, beta=1.0).data
    np.testing.assert_allclose(y.ravel(), [1 / 3.0, 1 / 3.5, 1 / 3.0], rtol=1e-15)


def test_op_defaults():
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 16))
    np.testing.assert_allclose(local_response_normalization(x).data,
                               naive_lrn(x, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5), rtol=1e-13)


def test_float32_stays_float32():
    t = Tensor(np.random.default_rng(1).standard_normal((2, 4, 4, 64)).astype(np.float32), requires_grad=True)
    y = lrn(t, 4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
    y.backward(np.ones(y.shape, np.float32))
    assert y.dtype == np.float32 and t.grad.dtype == np.float32
    ref = naive_lrn(t.data.astype(np.float64), 4, 1.0, 0.001 / 9.0, 0.75)
    assert np.abs(y.data - ref).max() <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("kwargs, match", [
    (dict(input=np.zeros((3, 3, 4))), "rank 4"),
    (dict(depth_radius=-1), "depth_radius must be an int >= 0"),
    (dict(depth_radius=1.5), "depth_radius must be an int >= 0"),
    (dict(input=np.zeros((1, 2, 2, 4), np.int32)), "floating point"),
])
def test_bad_input(kwargs, match):
    args = dict(input=np.zeros((1, 2, 2, 4))) | kwargs
    with pytest.raises(ValueError, match=match):
        local_response_normalization(**args)
