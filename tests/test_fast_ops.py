"""The fast CIFAR recipe's ops: erfc against Python's math.erfc, gelu and the label-smoothed
cross-entropy against float64 finite differences and their closed forms, and their bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinybn import Tensor
from tinybn.gradcheck import check_gradients
from tinybn.ops.activations import erfc, gelu
from tinybn.ops.losses import (softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy_with_label_smoothing,
                               sparse_softmax_cross_entropy_with_logits)

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
fast = settings(max_examples=20, deadline=None)
TF_C = float(np.float32(0.7071067811865476))     # tf.nn.gelu's constant, through float32 as TF casts it


def _erfc_grid():
    """Every interval of Cody's and its edges, tiny arguments, and where erfc underflows."""
    tiny = np.geomspace(1e-300, 1.0, 2000)
    return np.concatenate([np.linspace(-27, 27, 100001), tiny, -tiny,
                           [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0, 26.543, -26.543, 30.0, 1e300, -1e300]])


def test_erfc_against_math_erfc():
    """float64: at most 8 units in the last place (measured 6) wherever erfc is a normal float; below,
    the absolute error is below the smallest normal; float32: 2e-6 relative (measured 6e-7)."""
    x = _erfc_grid()
    ours, ref = erfc(x), np.array([math.erfc(v) for v in x])
    normal = ref > 1e-300
    assert (np.abs(ours - ref)[normal] / np.spacing(ref[normal])).max() <= 8
    assert np.abs(ours - ref)[~normal].max() < 1e-300
    x32 = x[np.abs(x) < 1e30].astype(np.float32)
    ours32, ref32 = erfc(x32), np.array([math.erfc(float(v)) for v in x32])
    assert ours32.dtype == np.float32
    normal = ref32 > 1e-30
    assert (np.abs(ours32 - ref32)[normal] / ref32[normal]).max() < 2e-6


def test_erfc_special_values():
    np.testing.assert_array_equal(erfc(np.array([np.inf, -np.inf, 0.0, 40.0, -40.0])), [0.0, 2.0, 1.0, 0.0, 2.0])
    assert np.isnan(erfc(np.array([np.nan]))).all()
    assert erfc(np.array(0.5)).shape == () and erfc(np.array(0.5)) == pytest.approx(math.erfc(0.5), rel=1e-15)


@pytest.mark.parametrize("approximate", [False, True])
@fast
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_gelu_gradients(approximate, shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape) * 3
    check_gradients(lambda t: gelu(t, approximate), x)


def test_gelu_closed_forms():
    """Exact: 0.5 x erfc(-c x) with TF's c, to 7 ulps of math.erfc's; approximate: the tanh
    formula; both 0 at 0, x for large x, 0 for very negative x (no cancellation to NaN)."""
    x = np.linspace(-12, 12, 4801)
    ref = np.array([0.5 * v * math.erfc(-v * TF_C) for v in x])
    np.testing.assert_allclose(gelu(x).data, ref, rtol=1.5e-15, atol=1e-300)
    tanh = np.tanh(0.7978845608028654 * (x + float(np.float32(0.044715)) * x ** 3))
    np.testing.assert_allclose(gelu(x, approximate=True).data, 0.5 * x * (1 + tanh), rtol=1e-15, atol=1e-300)
    for approximate in (False, True):
        y = gelu(np.array([0.0, 50.0, -50.0]), approximate).data
        np.testing.assert_array_equal(y, [0.0, 50.0, -0.0])
    assert gelu(np.array([-10.0])).data[0] == pytest.approx(-10 * 0.5 * math.erfc(10 * TF_C), rel=1e-15)
    # TF's rounded constant, not 1/sqrt(2): the difference is visible in float64, as in TF
    assert abs(gelu(np.array([1.4142669628924138])).data[0] - 1.3030465104601752) > 4e-9


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_float32_stays_float32(approximate):
    x = Tensor(np.linspace(-5, 5, 101, dtype=np.float32), requires_grad=True)
    y = gelu(x, approximate)
    y.backward(np.ones(101, np.float32))
    assert y.dtype == np.float32 and x.grad.dtype == np.float32
    # the tanh form's 1 + tanh(u) cancels for negative x: an absolute error of ~|x| * 2**-24 there
    np.testing.assert_allclose(y.data, gelu(x.data.astype(np.float64), approximate).data, rtol=3e-6, atol=5e-7)


def test_gelu_refuses_integers():
    with pytest.raises(ValueError, match="gelu: features must be floating point, got int64"):
        gelu(np.arange(3))


# ---- label-smoothed cross-entropy ---------------------------------------------------------

def _smoothed(labels, k, s):
    target = np.full(labels.shape + (k,), s / k)
    np.put_along_axis(target, labels[..., None], 1 - s + s / k, axis=-1)
    return target


@fast
@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple), k=st.integers(1, 7),
       s=st.sampled_from([0.0, 0.2, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_label_smoothing_gradients_and_dense_equivalent(lead, k, s, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(lead + (k,)) * 3
    labels = rng.integers(0, k, lead)
    check_gradients(lambda x: sparse_softmax_cross_entropy_with_label_smoothing(labels, x, s), logits)
    ours = sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, s).data
    dense = softmax_cross_entropy_with_logits(_smoothed(labels, k, s), logits).data
    np.testing.assert_allclose(ours, dense, rtol=1e-14, atol=1e-15)


def test_label_smoothing_closed_forms():
    """s = 0 is the sparse cross-entropy; equal logits give log K whatever s; the loss is
    (1 - s) * nll + s * mean over classes of -log softmax (PyTorch's form of the same loss)."""
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((6, 10)) * 2, rng.integers(0, 10, 6)
    np.testing.assert_array_equal(sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, 0.0).data,
                                  sparse_softmax_cross_entropy_with_logits(labels, logits).data)
    np.testing.assert_allclose(sparse_softmax_cross_entropy_with_label_smoothing(labels, np.zeros((6, 10)), 0.2).data,
                               np.log(10), rtol=1e-15)
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    nll = -log_p[np.arange(6), labels]
    np.testing.assert_allclose(sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, 0.2).data,
                               0.8 * nll + 0.2 * -log_p.mean(1), rtol=1e-14)


def test_label_smoothing_float32_target_rounding():
    """float32: the target is (1 - s) + s / K and s / K in float32, and the loss is float32."""
    logits = np.zeros((1, 3), np.float32)
    t = Tensor(logits, requires_grad=True)
    loss = sparse_softmax_cross_entropy_with_label_smoothing(np.array([1]), t, 0.2)
    loss.backward(np.ones(1, np.float32))
    s, k = np.float32(0.2), np.float32(3)
    expected = np.float32(1) / k - np.array([s / k, (np.float32(1) - s) + s / k, s / k], np.float32)
    assert loss.dtype == np.float32
    np.testing.assert_array_equal(t.grad[0], expected)


@pytest.mark.parametrize("labels, logits, s, message", [
    (np.array([0, 3]), np.zeros((2, 3)), 0.1, r"labels must be in \[0, 3\) \(number of classes\), got label value 3"),
    (np.array([-1, 0]), np.zeros((2, 3)), 0.1, r"labels must be in \[0, 3\) \(number of classes\), got label value -1"),
    (np.array([0.0, 1.0]), np.zeros((2, 3)), 0.1, "labels must be integer class indices, got dtype float64"),
    (np.array([0, 1, 2]), np.zeros((2, 3)), 0.1, r"labels must have shape logits.shape\[:-1\] = \(2,\)"),
    (np.array([0, 1]), np.zeros((2, 3), np.int32), 0.1, "logits must be floating point of rank >= 1, got int32"),
    (np.array([0, 1]), np.zeros((2, 3)), 1.5, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (np.array([0, 1]), np.zeros((2, 3)), -0.1, r"label_smoothing must be in \[0, 1\], got -0.1"),
])
def test_label_smoothing_bad_input(labels, logits, s, message):
    with pytest.raises(ValueError, match="sparse_softmax_cross_entropy_with_label_smoothing: " + message):
        sparse_softmax_cross_entropy_with_label_smoothing(labels, logits, s)
