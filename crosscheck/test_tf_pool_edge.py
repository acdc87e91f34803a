"""max_pool2d against tf.nn.max_pool2d where windows hold nothing but -inf beside the padding.

TF's max-pool gradient scans only a window's real pixels and keeps the first one while
none is greater, so such a window sends its dy to its first real pixel. tinybn must do
the same (an argmax over the -inf-padded window would pick a padded tap and drop dy).

The forward differs on purpose, and only there: TF's running maximum starts at the
dtype's lowest finite value, so an all -inf window gives -3.4e38 (float32); tinybn gives
the true maximum, -inf. Everywhere else the forward is exact.
"""
import numpy as np
import pytest
import tensorflow as tf

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops.pool import max_pool2d

CASES = [   # (shape, ksize, strides, padding): each pads the top or the left, where a padded tap comes first
    ((2, 3, 3, 2), 3, 1, "SAME"),                             # pads (1, 1), (1, 1)
    ((2, 5, 5, 3), 3, 2, "SAME"),                             # pads (1, 1), (1, 1)
    ((2, 24, 24, 4), 5, 1, "SAME"),                           # pads (2, 2), (2, 2)
    ((2, 12, 12, 4), 4, 1, "SAME"),                           # even window: pads (1, 2)
    ((1, 5, 7, 2), (3, 2), (2, 3), "SAME"),                   # pads (1, 1), (0, 1)
    ((2, 6, 5, 2), 3, (2, 1), [[0, 0], [2, 1], [1, 2], [0, 0]]),
    ((1, 7, 6, 3), (3, 3), (1, 2), [[0, 0], [1, 0], [0, 2], [0, 0]]),
    ((2, 4, 6, 2), (2, 3), (1, 2), [[0, 0], [1, 1], [0, 0], [0, 0]]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("fill", [0.8, 1.0], ids=["mostly -inf", "all -inf"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_max_pool_windows_of_minus_inf(case, fill, dtype, rng):
    shape, ksize, strides, padding = CASES[case]
    x = np.where(rng.random(shape) < fill, -np.inf, rng.integers(-2, 2, shape)).astype(dtype)
    fn_tf = lambda t: tf.nn.max_pool2d(t, ksize, strides, padding)          # noqa: E731
    tf_y, _ = tf_forward_backward(fn_tf, [x])
    dy = rng.standard_normal(tf_y.shape).astype(dtype)
    tf_y, (tf_dx,) = tf_forward_backward(fn_tf, [x], dy)
    tb_y, (tb_dx,) = tb_forward_backward(lambda t: max_pool2d(t, ksize, strides, padding), [x], dy)
    what = f"-inf x{shape} ksize={ksize} strides={strides} padding={padding} {np.dtype(dtype).name}"

    empty = tf_y == np.finfo(dtype).min                 # TF's value for a window of only -inf
    assert empty.any(), "the case must hold a window of nothing but -inf"
    np.testing.assert_array_equal(tb_y[empty], -np.inf, err_msg=what)
    np.testing.assert_array_equal(tb_y[~empty], tf_y[~empty], err_msg=what)
    # the gradient: every window's dy on the same pixel as TF's, none lost
    parity.assert_parity("max_pool2d", "backward", tb_dx, tf_dx, what)
    eps = np.finfo(dtype).eps          # each entry sums a few dy: they agree to its rounding
    np.testing.assert_allclose(tb_dx, tf_dx, rtol=8 * eps, atol=8 * eps * np.abs(dy).max(), err_msg=what)
    np.testing.assert_allclose(tb_dx.sum(), dy.sum(), rtol=1e-5)
