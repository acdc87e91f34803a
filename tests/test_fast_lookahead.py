"""The fast CIFAR recipe's Lookahead average: the lerp's two forms against float64, the weights set back to the
shadows, BN buffers averaged, airbench's decay schedule, and the state round trip."""
import numpy as np
import pytest

from tinybn.lookahead import LookaheadAverage, airbench_decay
from tinybn.nn.batchnorm import BatchNorm
from tinybn.nn.layers import Dense, Sequential


def _model(seed=0):
    return Sequential(("dense", Dense(3, 4, rng=np.random.default_rng(seed))), ("bn", BatchNorm(4)))


@pytest.mark.parametrize("decay", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_update_is_the_lerp_then_copy_back(decay):
    """float32 tensors against the lerp in float64, s + w (t - s) with the same float32 weight
    w = 1 - decay: either of the two forms rounds three times in float32, so within 3 ulps of
    the larger of |s| and |t|."""
    model = _model()
    average = LookaheadAverage(model)
    start = {n: t.data.copy() for n, t in average._tensors(model)}
    rng = np.random.default_rng(1)
    for _, t in average._tensors(model):
        t.data[...] += rng.standard_normal(t.shape).astype(np.float32)
    moved = {n: t.data.copy() for n, t in average._tensors(model)}
    average.update(model, decay)
    assert set(start) == {"dense/kernel", "dense/bias", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"}
    for name, t in average._tensors(model):
        s, m = start[name].astype(np.float64), moved[name].astype(np.float64)
        want = s + np.float64(np.float32(1.0 - decay)) * (m - s)
        size = np.maximum(np.abs(s), np.abs(m))
        assert np.all(np.abs(t.data - want) <= 3 * np.finfo(np.float32).eps * size), name
        if decay in (0.0, 1.0):
            np.testing.assert_array_equal(t.data, moved[name] if decay == 0.0 else start[name])
        np.testing.assert_array_equal(average.shadow[name], t.data)


def test_update_closed_form():
    """shadow = shadow + (1 - decay) (t - shadow), the tensor set to it; float64, both lerp forms."""
    model = Sequential(("dense", Dense(2, 3, rng=np.random.default_rng(0), dtype=np.float64)))
    average = LookaheadAverage(model)
    kernel = dict(model.named_parameters())["dense/kernel"]
    start = kernel.data.copy()
    for decay in (0.9, 0.2):
        kernel.data[...] = start + 1.0
        before = average.shadow["dense/kernel"].copy()
        average.update(model, decay)
        np.testing.assert_allclose(kernel.data, before + (1 - decay) * (start + 1.0 - before), rtol=1e-15)


def test_decay_one_copies_the_shadows_back():
    model = _model()
    average = LookaheadAverage(model)
    kernel = dict(model.named_parameters())["dense/kernel"]
    first = kernel.data.copy()
    kernel.data[...] = 7.0
    average.update(model, 1.0)
    np.testing.assert_array_equal(kernel.data, first)


def test_airbench_decay_schedule():
    assert airbench_decay(476, 476) == pytest.approx(0.95 ** 5, rel=1e-15)
    assert airbench_decay(238, 476) == pytest.approx(0.95 ** 5 / 8, rel=1e-15)


def test_state_round_trip_and_bad_input():
    model = _model()
    average = LookaheadAverage(model)
    other = LookaheadAverage(_model(seed=5)).load_state_dict(average.state_dict())
    for name in average.shadow:
        np.testing.assert_array_equal(other.shadow[name], average.shadow[name])
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\], got 1.5"):
        average.update(model, 1.5)
    with pytest.raises(ValueError, match="not those the average started from"):
        average.update(Sequential(("dense", Dense(3, 4))), 0.5)
