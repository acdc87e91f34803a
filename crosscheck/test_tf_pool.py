"""max_pool2d / avg_pool2d against tf.nn.max_pool2d / tf.nn.avg_pool2d, forward and
backward (same upstream gradient), float32: generated geometries, the CIFAR 3x3/2 SAME
pools on 24 and 12, ties for the max-pool gradient, all-negative inputs for avg."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops.pool import avg_pool2d, max_pool2d

OPS = {"max_pool2d": (max_pool2d, tf.nn.max_pool2d), "avg_pool2d": (avg_pool2d, tf.nn.avg_pool2d)}


@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["SAME", "VALID"]))
    h, w = draw(st.integers(kh, 11)), draw(st.integers(kw, 11))   # VALID output never empty
    shape = (draw(st.integers(1, 3)), h, w, draw(st.integers(1, 4)))
    return shape, (kh, kw), (sh, sw), padding


def compare(op_name, x, ksize, strides, padding, rng, what=""):
    ours_op, tf_op = OPS[op_name]
    tf_y, _ = tf_forward_backward(lambda t: tf_op(t, ksize, strides, padding), [x])
    dy = rng.standard_normal(tf_y.shape).astype(np.float32)
    tf_y, (tf_dx,) = tf_forward_backward(lambda t: tf_op(t, ksize, strides, padding), [x], dy)
    tb_y, (tb_dx,) = tb_forward_backward(lambda t: ours_op(t, ksize, strides, padding), [x], dy)
    what = f"{what} x{x.shape} ksize={ksize} strides={strides} padding={padding}"
    parity.assert_parity(op_name, "forward", tb_y, tf_y, what)
    parity.assert_parity(op_name, "backward", tb_dx, tf_dx, what)
    return tf_dx


@given(geometries(), st.integers(0, 2**16))
def test_max_pool_generated(geometry, seed):
    shape, ksize, strides, padding = geometry
    rng = np.random.default_rng(seed)
    compare("max_pool2d", rng.standard_normal(shape).astype(np.float32), ksize, strides, padding, rng)


@given(geometries(), st.integers(0, 2**16))
def test_max_pool_generated_with_ties(geometry, seed):
    """Small integers: most windows hold several maxima, TF sends dy to the first one."""
    shape, ksize, strides, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 2, shape).astype(np.float32)
    compare("max_pool2d", x, ksize, strides, padding, rng, "ties")


@given(geometries(), st.integers(0, 2**16))
def test_avg_pool_generated_all_negative(geometry, seed):
    """All-negative inputs: counting padded zeros in the divisor would show."""
    shape, ksize, strides, padding = geometry
    rng = np.random.default_rng(seed)
    x = (-1.0 - np.abs(rng.standard_normal(shape))).astype(np.float32)
    compare("avg_pool2d", x, ksize, strides, padding, rng, "all negative")


@pytest.mark.parametrize("size", [24, 12])
@pytest.mark.parametrize("inputs", ["normal", "ties", "all negative"])
@pytest.mark.parametrize("op_name", ["max_pool2d", "avg_pool2d"])
def test_cifar_pool(op_name, inputs, size, rng):
    """cifar10.py: pool1 on 24x24x64 and pool2 on 12x12x64, 3x3 stride 2 SAME (pads (0, 1))."""
    shape = (4, size, size, 64)
    x = {"normal": lambda: rng.standard_normal(shape),
         "ties": lambda: rng.integers(0, 4, shape),
         "all negative": lambda: -1.0 - np.abs(rng.standard_normal(shape))}[inputs]().astype(np.float32)
    tf_dx = compare(op_name, x, [1, 3, 3, 1], [1, 2, 2, 1], "SAME", rng, inputs)
    if op_name == "max_pool2d" and inputs == "ties":
        # the case is only a tie test if a "last maximum" rule would give a different gradient
        assert np.abs(tf_dx).max() > 0 and _last_max_rule_differs(x)


def _last_max_rule_differs(x):
    """Whether some 3x3/2 SAME window of x holds its maximum more than once."""
    xpad = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    windows = np.stack([xpad[:, i:i + x.shape[1]:2, j:j + x.shape[2]:2] for i in range(3) for j in range(3)])
    return bool(((windows == windows.max(axis=0)).sum(axis=0) > 1).any())


@pytest.mark.parametrize("padding", [[[0, 0], [1, 1], [1, 0], [0, 0]], [[0, 0], [2, 0], [0, 2], [0, 0]]])
def test_max_pool_explicit_padding(padding, rng):
    x = (-1.0 - np.abs(rng.standard_normal((2, 7, 6, 3)))).astype(np.float32)
    compare("max_pool2d", x, 3, [1, 2, 1, 1], padding, rng, "explicit")
