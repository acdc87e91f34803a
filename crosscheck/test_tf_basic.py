"""Basic ops against TF over generated inputs: arithmetic with hypothesis-drawn broadcast shapes, and
matmul with long inner dimensions (K up to 70). Every basic op's fixed samples (negative axes,
keepdims, scalars, size 0, views, float64 ...) are in the sweep, test_tf_sweep.py."""
import numpy as np
import tensorflow as tf
from hypothesis import example, given, strategies as st

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
    # A broadcast operand's gradient sums its terms over the broadcast axes, and they may cancel
    # (make fuzz: mul's gradient of a (1, 1, 1, 1) operand, 1.4e-6 of max|tf|); rounding is relative
    # to sum |terms|. For these ops that is the gradient at |inputs| with |upstream|, in float64.
    _, g_abs = tb_forward_backward(tb_fn, [np.abs(a).astype(np.float64) for a in arrays],
                                   np.abs(upstream).astype(np.float64))
    parity.assert_parity(op, "forward", y_tb, y_tf)
    for i, (a, b, terms) in enumerate(zip(g_tb, g_tf, g_abs)):
        parity.assert_parity(op, "backward", a, b, f"(input {i})", scale=np.abs(terms).max(initial=0.0))


@st.composite
def broadcast_pair(draw):
    shape = draw(shapes)
    other = tuple(n if draw(st.booleans()) else 1 for n in shape)
    return shape, other[draw(st.integers(0, len(other) - 1)):]


@given(broadcast_pair(), st.sampled_from(["add", "sub", "mul", "div"]))
@example(((2, 2, 3, 5), (1, 1, 1, 1)), "mul").via("make fuzz")
def test_arithmetic(pair, name):
    rng = np.random.default_rng(1)
    a = rng.standard_normal(pair[0]).astype(np.float32)
    b = (rng.standard_normal(pair[1]) + 3).astype(np.float32)
    tf_fn = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide}[name]
    compare("add/sub/mul/div", getattr(basic, name), tf_fn, [a, b])
    compare("add/sub/mul/div", getattr(basic, name), tf_fn, [b, a])


@given(st.integers(1, 40), st.integers(1, 70), st.integers(1, 30), st.sampled_from([(), (3,)]))
def test_matmul(m, k, n, batch):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(batch + (m, k)).astype(np.float32)
    b = rng.standard_normal(batch + (k, n)).astype(np.float32)
    compare("matmul", basic.matmul, tf.matmul, [a, b])
