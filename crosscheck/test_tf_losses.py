"""Losses against tf.nn: softmax, log_softmax, both cross-entropies (incl. large logits), l2_loss."""
import numpy as np
import tensorflow as tf
from hypothesis import given, strategies as st

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops import losses

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
scales = st.sampled_from([1.0, 10.0, 1e4])      # 1e4: far beyond exp's float32 range without the max shift


def compare(op, tb_fn, tf_fn, arrays, wrt=None, seed=0):
    y_tf, _ = tf_forward_backward(tf_fn, arrays, wrt=wrt)
    upstream = np.asarray(np.random.default_rng(seed).standard_normal(y_tf.shape), np.float32)
    y_tf, g_tf = tf_forward_backward(tf_fn, arrays, upstream, wrt=wrt)
    y_tb, g_tb = tb_forward_backward(tb_fn, arrays, upstream, wrt=wrt)
    parity.assert_parity(op, "forward", y_tb, y_tf)
    for i, (a, b) in enumerate(zip(g_tb, g_tf)):
        parity.assert_parity(op, "backward", a, b, f"(input {i})")


@given(shapes, scales, st.data())
def test_softmax_and_log_softmax(shape, scale, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = (np.random.default_rng(1).standard_normal(shape) * scale).astype(np.float32)
    compare("log_softmax", lambda t: losses.log_softmax(t, axis), lambda t: tf.nn.log_softmax(t, axis), [x])
    if scale == 1.0 and shape[axis] > 1:
        compare("softmax", lambda t: losses.softmax(t, axis), lambda t: tf.nn.softmax(t, axis), [x])
        return
    # A saturated softmax (one class, or logits far apart) has a true gradient of ~0. TF's
    # oneDNN softmax (rank >= 3) rounds its exp by an ulp (exp(0) = 0.99999994), so TF's
    # gradient there is pure float32 noise and max|tf| no measure of scale: compare the
    # forward by parity and the gradient in absolute terms against the upstream's size.
    y_tf, _ = tf_forward_backward(lambda t: tf.nn.softmax(t, axis), [x])
    upstream = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y_tf, (g_tf,) = tf_forward_backward(lambda t: tf.nn.softmax(t, axis), [x], upstream)
    y_tb, (g_tb,) = tb_forward_backward(lambda t: losses.softmax(t, axis), [x], upstream)
    parity.assert_parity("softmax", "forward", y_tb, y_tf)
    assert np.abs(g_tb - g_tf).max() <= 1e-6 * np.abs(upstream).max(), "saturated softmax gradient"


@given(shapes, scales, st.sampled_from(["soft", "onehot", "unnormalised"]), st.data())
def test_softmax_cross_entropy_with_logits(shape, scale, kind, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal(shape) * scale).astype(np.float32)
    if kind == "onehot":
        classes = rng.integers(0, shape[axis], np.moveaxis(logits, axis, -1).shape[:-1])
        labels = np.moveaxis(np.eye(shape[axis], dtype=np.float32)[classes], -1, axis)
    else:
        labels = rng.random(shape).astype(np.float32) * 2
        if kind == "soft":
            labels /= labels.sum(axis=axis, keepdims=True)
    # TF gives the logits gradient softmax - labels even for unnormalised labels, and -log_softmax to
    # labels. TF's axis must be given non-negative: a negative one other than -1 fails in its _move_dim_to_end.
    compare("softmax_cross_entropy_with_logits",
            lambda y, x: losses.softmax_cross_entropy_with_logits(y, x, axis),
            lambda y, x: tf.nn.softmax_cross_entropy_with_logits(y, x, axis % len(shape)), [labels, logits])


@given(st.lists(st.integers(1, 6), min_size=1, max_size=2).map(tuple), st.integers(1, 12), scales)
def test_sparse_softmax_cross_entropy_with_logits(lead, k, scale):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal(lead + (k,)) * scale).astype(np.float32)
    for dtype in (np.int32, np.int64):
        labels = rng.integers(0, k, lead).astype(dtype)
        compare("sparse_softmax_cross_entropy_with_logits", losses.sparse_softmax_cross_entropy_with_logits,
                tf.nn.sparse_softmax_cross_entropy_with_logits, [labels, logits], wrt=[1])


def test_xent_logits_1e4_exact():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32)
    labels = np.array([1, 0], np.int32)
    compare("sparse_softmax_cross_entropy_with_logits", losses.sparse_softmax_cross_entropy_with_logits,
            tf.nn.sparse_softmax_cross_entropy_with_logits, [labels, logits], wrt=[1])
    y_tf, _ = tf_forward_backward(tf.nn.sparse_softmax_cross_entropy_with_logits, [labels, logits], wrt=[])
    assert y_tf[0] == 1e4


@given(st.lists(st.integers(1, 7), min_size=0, max_size=4).map(tuple), st.sampled_from([1e-3, 1.0, 1e3]))
def test_l2_loss(shape, scale):
    t = (np.random.default_rng(4).standard_normal(shape) * scale).astype(np.float32)
    compare("l2_loss", losses.l2_loss, tf.nn.l2_loss, [t])


def test_l2_loss_large():
    t = np.random.default_rng(5).standard_normal((5, 5, 64, 64)).astype(np.float32) * 0.05
    compare("l2_loss", losses.l2_loss, tf.nn.l2_loss, [t])
