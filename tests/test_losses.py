"""Losses: float64 finite-difference gradients, closed forms, TF's conventions, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinybn import Tensor
from tinybn.backend import implementation
from tinybn.gradcheck import check_gradients
from tinybn.ops.losses import (l2_loss, log_softmax, softmax, softmax_cross_entropy_with_logits,
                               sparse_softmax_cross_entropy_with_logits)

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
fast = settings(max_examples=20, deadline=None)


def _soft_labels(rng, shape, axis=-1):
    p = rng.random(shape) + 0.05
    return p / p.sum(axis=axis, keepdims=True)


def _onehot(rng, n, k):
    labels = np.zeros((n, k))
    labels[np.arange(n), rng.integers(0, k, n)] = 1
    return labels, labels.argmax(1)


@fast
@given(shape=shapes, seed=st.integers(0, 2**16), data=st.data())
def test_softmax_and_log_softmax_gradients(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    check_gradients(lambda t: softmax(t, axis), x)
    check_gradients(lambda t: log_softmax(t, axis), x)


@fast
@given(shape=shapes, seed=st.integers(0, 2**16), data=st.data())
def test_softmax_cross_entropy_gradients_soft_labels(shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape) * 3
    labels = _soft_labels(rng, shape, axis)
    # labels sum to 1 along the axis: there TF's softmax - labels is the true derivative
    check_gradients(lambda y, x: softmax_cross_entropy_with_logits(y, x, axis), labels, logits)


@fast
@given(n=st.integers(1, 6), k=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_cross_entropy_gradients_one_hot_and_sparse(n, k, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * 3
    onehot, sparse = _onehot(rng, n, k)
    check_gradients(lambda y, x: softmax_cross_entropy_with_logits(y, x), onehot, logits)
    check_gradients(lambda x: sparse_softmax_cross_entropy_with_logits(sparse, x), logits)
    dense = softmax_cross_entropy_with_logits(onehot, logits).data
    np.testing.assert_allclose(sparse_softmax_cross_entropy_with_logits(sparse, logits).data, dense, rtol=1e-15)


@fast
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), seed=st.integers(0, 2**16))
def test_l2_loss_gradient_and_value(shape, seed):
    t = np.random.default_rng(seed).standard_normal(shape)
    check_gradients(l2_loss, t)
    np.testing.assert_allclose(l2_loss(t).data, 0.5 * np.sum(t ** 2), rtol=1e-14)


def test_unnormalised_labels_get_tf_gradient_softmax_minus_labels():
    rng = np.random.default_rng(1)
    logits = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    labels = rng.random((3, 4)) * 2          # rows do not sum to 1
    g = np.array([1.0, -2.0, 0.5])
    softmax_cross_entropy_with_logits(labels, logits).backward(g)
    p = np.exp(logits.data) / np.exp(logits.data).sum(1, keepdims=True)
    np.testing.assert_allclose(logits.grad, g[:, None] * (p - labels), rtol=1e-12)
    true = g[:, None] * (labels.sum(1, keepdims=True) * p - labels)
    assert np.abs(logits.grad - true).max() > 0.1   # deliberately not the true derivative


def test_uniform_logits_give_log_k():
    for k in (1, 2, 10, 1000):
        logits = np.full((2, k), 3.5, np.float32)
        loss = sparse_softmax_cross_entropy_with_logits(np.array([0, k - 1]), logits).data
        np.testing.assert_allclose(loss, np.log(k), rtol=1e-6)
        np.testing.assert_allclose(softmax(logits).data, 1.0 / k, rtol=1e-6)


def test_large_logits_are_stable():
    logits = Tensor(np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32), requires_grad=True)
    loss = sparse_softmax_cross_entropy_with_logits(np.array([1, 0]), logits)
    assert loss.data.dtype == np.float32
    np.testing.assert_array_equal(loss.data, [1e4, 1e4 + np.float32(np.log(2))])
    loss.backward(np.ones(2, np.float32))
    np.testing.assert_allclose(logits.grad, [[1, -1, 0], [-1, 0.5, 0.5]], atol=1e-7)
    assert np.isfinite(log_softmax(logits).data).all()
    np.testing.assert_array_equal(softmax_cross_entropy_with_logits(np.eye(3, dtype=np.float32)[[1]],
                                                                    logits.data[:1]).data, [1e4])


def test_primitive_signature_and_backprop():
    xent = implementation("softmax_cross_entropy", "numpy")
    labels = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    logits = np.array([[0.0, np.log(3)], [5.0, 5.0]], np.float32)
    loss, backprop = xent(labels, logits)
    assert loss.shape == (2,) and backprop.shape == (2, 2)
    np.testing.assert_allclose(backprop, [[0.05, -0.05], [-0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(loss, [-(0.2 * np.log(0.25) + 0.8 * np.log(0.75)), np.log(2)], rtol=1e-6)


def test_labels_gradient_is_minus_log_softmax():
    logits = np.array([[1.0, 2.0, 3.0]])
    labels = Tensor(np.array([[0.1, 0.2, 0.7]]), requires_grad=True)
    softmax_cross_entropy_with_logits(labels, logits).backward(np.array([2.0]))
    expected = -2.0 * (logits - np.log(np.exp(logits).sum()))
    np.testing.assert_allclose(labels.grad, expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [-1, 3, 7])
def test_sparse_labels_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"labels must be in \[0, 3\).*value {bad}"):
        sparse_softmax_cross_entropy_with_logits(np.array([0, bad]), np.zeros((2, 3), np.float32))


def test_sparse_bad_inputs():
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="labels must be integer"):
        sparse_softmax_cross_entropy_with_logits(np.array([0.0, 1.0]), logits)
    with pytest.raises(ValueError, match="labels must have rank logits.rank - 1"):
        sparse_softmax_cross_entropy_with_logits(np.array([[0], [1]]), logits)
    with pytest.raises(ValueError, match="labels must have rank"):
        sparse_softmax_cross_entropy_with_logits(np.array([0, 1, 2]), logits)
    with pytest.raises(ValueError, match="logits must have rank >= 1"):
        sparse_softmax_cross_entropy_with_logits(np.array(0), np.float32(1.0))


def test_dense_bad_inputs():
    with pytest.raises(ValueError, match="labels and logits must have the same shape"):
        softmax_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="labels and logits must have the same shape"):
        softmax_cross_entropy_with_logits(np.zeros((3,)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="axis 2 is out of range for logits of rank 2"):
        softmax_cross_entropy_with_logits(np.zeros((2, 3)), np.zeros((2, 3)), axis=2)
    with pytest.raises(ValueError, match="logits must be floating point"):
        softmax(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="l2_loss: t must be floating point"):
        l2_loss(np.zeros(3, np.int64))
