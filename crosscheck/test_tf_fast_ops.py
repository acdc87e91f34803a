"""The fast CIFAR recipe's ops against TF: gelu (both forms) against tf.nn.gelu, and the
label-smoothed sparse cross-entropy against Keras's CategoricalCrossentropy(from_logits=True,
label_smoothing=s) on tf.one_hot labels, forward and backward (tf.GradientTape), float32 and float64.

Limits: max|ours - tf| / max|tf| as parity.relative_error, plus the elementwise check
|ours - tf| <= atol + rtol * |tf| with parity.ELEMENTWISE's limits. The float32 comparisons go
through parity.assert_parity, under TOLERANCES "gelu", "gelu (tanh form)" and
"sparse_softmax_cross_entropy_with_label_smoothing" (the sweep's rows use the same keys); the
float64 ones are held here to limits far below the sweep's 1e-10. What was measured (the dense
range and 2000 normal samples times 3):
- the exact form: float32 2.6e-8 forward, 7.9e-8 backward; float64 limits 1e-15 (measured
  2.4e-17 and 1.3e-16), with the default elementwise limits.
- the tanh form, whose 1 + tanh(u) and 1 - tanh(u)**2 cancel for |x| > 2 on both sides:
  TF's float32 tanh (Eigen's rational approximation) is up to 4 ulps from numpy's, and the
  backward multiplies 1 - tanh**2 by 0.5 x sqrt(2/pi) (1 + 0.134 x**2), 14 at x = 5; where
  tanh rounds to 1 in one library and not the other, that is 3.8e-6 of an entry of size 1.
  Measured: float32 forward 9.5e-7 and backward 9e-6 absolute (2.7e-6 of max|tf|); float64
  2.7e-15 and 2.9e-14 absolute (TF's chain rule sums its three terms in another order than
  the closed form). The limits leave 5x or more.
"""
import numpy as np
import pytest
import tensorflow as tf

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops.activations import gelu
from tinybn.ops.losses import sparse_softmax_cross_entropy_with_label_smoothing

SHAPES = [(7,), (3, 5), (2, 4, 4, 3), (0, 3), ()]
DTYPES = [np.float32, np.float64]
GELU_KEYS = {False: "gelu", True: "gelu (tanh form)"}
LOSS_KEY = "sparse_softmax_cross_entropy_with_label_smoothing"


def _limits(key):
    return tuple(parity.TOLERANCES[key][d] for d in ("forward", "backward"))


# (dtype, approximate) -> (forward, backward) max|ours - tf| / max|tf| and, where wider than
# parity.ELEMENTWISE's, (forward, backward) elementwise atol
GELU_LIMITS = {("float32", False): (_limits("gelu"), None),
               ("float32", True): (_limits("gelu (tanh form)"), (5e-6, 5e-5)),
               ("float64", False): ((1e-15, 1e-15), None), ("float64", True): ((1e-15, 1e-13), (2e-14, 2e-13))}


def _samples(shape, dtype, seed):
    """Standard normal times 3, with exact zeros and the tails where erfc is small, where room allows."""
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape) * 3)
    flat = x.reshape(-1)
    flat[:6] = [0.0, -8.0, 8.0, -30.0, 1.41421, -0.5][:flat.size]
    return x.astype(dtype)


def compare(tb_fn, tf_fn, arrays, limits, atols=None, wrt=None, seed=0, key=None):
    """limits: (forward, backward) on max|ours - tf| / max|tf|; atols: (forward, backward)
    elementwise atol, None for parity.ELEMENTWISE's; key: the TOLERANCES row float32 errors go to."""
    y_tf, _ = tf_forward_backward(tf_fn, arrays, wrt=wrt)
    dtype = y_tf.dtype
    upstream = np.random.default_rng(seed).standard_normal(y_tf.shape).astype(dtype)
    y_tf, g_tf = tf_forward_backward(tf_fn, arrays, upstream, wrt=wrt)
    y_tb, g_tb = tb_forward_backward(tb_fn, arrays, upstream, wrt=wrt)
    atol, rtol = parity.ELEMENTWISE[np.dtype(dtype).name]
    atols = atols or (atol, atol)
    assert y_tb.dtype == dtype
    pairs = [("forward", "", y_tb, y_tf)]
    pairs += [("backward", f"(input {i})", a, b) for i, (a, b) in enumerate(zip(g_tb, g_tf))]
    for k, (direction, what, a, b) in enumerate(pairs):
        assert a.dtype == dtype
        if dtype == np.float32:
            parity.assert_parity(key, direction, a, b, what)
        assert parity.relative_error(a, b) <= limits[min(k, 1)], f"{direction} {what}"
        parity.assert_elementwise(a, b, atols[min(k, 1)], rtol, what=f"{direction} {what}")


@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gelu(shape, dtype, approximate):
    x = _samples(shape, dtype, seed=len(shape))
    compare(lambda t: gelu(t, approximate), lambda t: tf.nn.gelu(t, approximate=approximate), [x],
            *GELU_LIMITS[np.dtype(dtype).name, approximate], key=GELU_KEYS[approximate])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_dense_range(dtype):
    """Every float32 step of [-6, 6] in 1/256 and the far tails, forward and backward."""
    x = np.concatenate([np.arange(-6 * 256, 6 * 256 + 1) / 256.0, [-40.0, -20.0, 20.0, 40.0]]).astype(dtype)
    for approximate in (False, True):
        compare(lambda t: gelu(t, approximate), lambda t: tf.nn.gelu(t, approximate=approximate), [x],
                *GELU_LIMITS[np.dtype(dtype).name, approximate], key=GELU_KEYS[approximate])


def _keras_smoothed(s, k):
    """Keras's categorical_crossentropy (the function CategoricalCrossentropy calls, without the
    class's cast of its inputs to float32) on one-hot labels: per example, in the logits' dtype."""
    return lambda labels, logits: tf.keras.losses.categorical_crossentropy(
        tf.one_hot(labels, k, dtype=logits.dtype), logits, from_logits=True, label_smoothing=s)


# one class is a legal edge (the loss is 0); Keras warns that it expects more than one
@pytest.mark.filterwarnings("ignore:In loss categorical_crossentropy, expected y_pred.shape")
@pytest.mark.parametrize("s", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(1, 1), (5, 10), (64, 10), (3, 7)])
def test_label_smoothed_cross_entropy_vs_keras(n, k, dtype, s):
    rng = np.random.default_rng(n * k)
    logits = (rng.standard_normal((n, k)) * 4).astype(dtype)
    labels = rng.integers(0, k, n).astype(np.int32)
    limits = _limits(LOSS_KEY) if dtype == np.float32 else (1e-15, 1e-15)
    compare(lambda y, x: sparse_softmax_cross_entropy_with_label_smoothing(y, x, s), _keras_smoothed(s, k),
            [labels, logits], limits, wrt=[1], key=LOSS_KEY)


def test_label_smoothed_cross_entropy_vs_compat_v1():
    """tf.compat.v1.losses.softmax_cross_entropy smooths the same way (its 1 - s and s / K are
    Python floats: an ulp of the target apart in float32, within the float32 limits). float32
    only: its compute_weighted_loss casts every loss to float32 and back, whatever the dtype."""
    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((32, 10)) * 4).astype(np.float32)
    labels = rng.integers(0, 10, 32).astype(np.int64)

    def compat(y, x):
        return tf.compat.v1.losses.softmax_cross_entropy(tf.one_hot(y, 10, dtype=x.dtype), x, label_smoothing=0.2,
                                                         reduction=tf.compat.v1.losses.Reduction.NONE)
    compare(lambda y, x: sparse_softmax_cross_entropy_with_label_smoothing(y, x, 0.2), compat,
            [labels, logits], _limits(LOSS_KEY), wrt=[1], key=LOSS_KEY)
