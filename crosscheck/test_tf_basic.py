"""Basic ops against TF: arithmetic with broadcasting, matmul, shapes, reductions, relu, bias_add, dropout."""
import numpy as np
import tensorflow as tf
from hypothesis import given, strategies as st

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops import basic

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


def compare(op, tb_fn, tf_fn, arrays, seed=0):
    rng = np.random.default_rng(seed)
    y_tf, _ = tf_forward_backward(tf_fn, arrays)
    upstream = rng.standard_normal(y_tf.shape).astype(np.float32)
    y_tf, g_tf = tf_forward_backward(tf_fn, arrays, upstream)
    y_tb, g_tb = tb_forward_backward(tb_fn, arrays, upstream)
    parity.assert_parity(op, "forward", y_tb, y_tf)
    for i, (a, b) in enumerate(zip(g_tb, g_tf)):
        parity.assert_parity(op, "backward", a, b, f"(input {i})")


@st.composite
def broadcast_pair(draw):
    shape = draw(shapes)
    other = tuple(n if draw(st.booleans()) else 1 for n in shape)
    return shape, other[draw(st.integers(0, len(other) - 1)):]


@given(broadcast_pair(), st.sampled_from(["add", "sub", "mul", "div"]))
def test_arithmetic(pair, name):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(pair[0]).astype(np.float32)
    b = (rng.standard_normal(pair[1]) + 3).astype(np.float32)
    tf_fn = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide}[name]
    compare("add/sub/mul/div", getattr(basic, name), tf_fn, [a, b])
    compare("add/sub/mul/div", getattr(basic, name), tf_fn, [b, a])


@given(shapes, st.sampled_from([2.0, 3.0, 0.5, -1.5]))
def test_pow(shape, p):
    x = (np.abs(np.random.default_rng(2).standard_normal(shape)) + 0.5).astype(np.float32)
    compare("pow", lambda t: t ** p, lambda t: tf.pow(t, p), [x])


@given(st.integers(1, 40), st.integers(1, 70), st.integers(1, 30), st.sampled_from([(), (3,)]))
def test_matmul(m, k, n, batch):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(batch + (m, k)).astype(np.float32)
    b = rng.standard_normal(batch + (k, n)).astype(np.float32)
    compare("matmul", basic.matmul, tf.matmul, [a, b])


@given(shapes)
def test_reshape_transpose(shape):
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    perm = tuple(reversed(range(len(shape))))
    compare("reshape/transpose", lambda t: basic.reshape(t, (-1,)), lambda t: tf.reshape(t, (-1,)), [x])
    compare("reshape/transpose", lambda t: basic.transpose(t, perm), lambda t: tf.transpose(t, perm), [x])


@given(shapes, st.data())
def test_reductions(shape, data):
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    axis = data.draw(st.sampled_from([None] + list(range(len(shape)))))
    keep = data.draw(st.booleans())
    compare("reduce_sum/mean", lambda t: basic.reduce_sum(t, axis, keep),
            lambda t: tf.reduce_sum(t, axis, keep), [x])
    compare("reduce_sum/mean", lambda t: basic.reduce_mean(t, axis, keep),
            lambda t: tf.reduce_mean(t, axis, keep), [x])
    compare("reduce_max", lambda t: basic.reduce_max(t, axis, keep),
            lambda t: tf.reduce_max(t, axis, keep), [x])


def test_reduce_max_with_ties():
    x = np.random.default_rng(6).integers(0, 3, (6, 5)).astype(np.float32)
    compare("reduce_max", lambda t: basic.reduce_max(t, 1), lambda t: tf.reduce_max(t, 1), [x])


def test_get_item_and_concat():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 2)).astype(np.float32)
    compare("get_item/concat", lambda t: t[1:4, ::2], lambda t: t[1:4, ::2], [x])
    idx = np.array([0, 3, 3, 1])
    compare("get_item/concat", lambda t: t[idx], lambda t: tf.gather(t, idx), [x])
    compare("get_item/concat", lambda a, b: basic.concat([a, b], 1), lambda a, b: tf.concat([a, b], 1), [x, y])


@given(shapes)
def test_relu_and_bias_add(shape):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape + (3,)).astype(np.float32)
    x[0] = 0.0            # TF's ReluGrad sends nothing through x == 0
    b = rng.standard_normal(3).astype(np.float32)
    compare("relu", basic.relu, tf.nn.relu, [x])
    compare("bias_add", basic.bias_add, tf.nn.bias_add, [x, b])


def test_dropout_with_the_same_mask():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    rate = 0.3
    keep = np.random.default_rng(10).random(x.shape) >= rate     # what basic.dropout(seed=10) draws
    # TF's dropout is x * mask / (1 - rate); rebuild it with the same mask
    compare("dropout", lambda t: basic.dropout(t, rate, seed=10),
            lambda t: t * keep.astype(np.float32) / (1 - rate), [x])
    y = tf.nn.dropout(tf.ones((200, 200)), rate=rate, seed=1).numpy()
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - rate), rtol=1e-6)     # TF's own scaling rule
