"""Batch norm family: float64 gradient checks, closed forms of the statistics, bad input."""
import math

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from tinybn import Tensor
from tinybn.backend import dispatch, implementation
from tinybn.gradcheck import check_gradients
from tinybn.nn.batchnorm import BatchNorm
from tinybn.ops.batchnorm import batch_normalization, moments, renorm_correction
from tinybn.ops.fused_batch_norm import fused_batch_norm

SETTINGS = settings(max_examples=15, deadline=None)


@st.composite
def nhwc_or_nc(draw):
    """(shape, seed): a small (N, C) or (N, H, W, C) shape with at least 2 elements per channel."""
    c = draw(st.integers(1, 3))
    if draw(st.booleans()):
        shape = (draw(st.integers(2, 5)), c)
    else:
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(2, 3)), c)
    return shape, draw(st.integers(0, 2**31 - 1))


def _stats_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = rng.standard_normal(shape) * 1.5 + 0.5
    return (rng, x, rng.uniform(0.5, 1.5, c), rng.standard_normal(c),
            rng.standard_normal(c) * 0.3, rng.uniform(0.5, 2.0, c))


# ---- moments ------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.data(), st.booleans())
def test_moments_values_and_gradient(shape, data, keepdims):
    axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=len(shape),
                              unique_by=lambda a: a % len(shape)))
    x = np.random.default_rng(len(shape)).standard_normal(shape)
    mean, var = moments(x, axes, keepdims=keepdims)
    ax = tuple(a % len(shape) for a in axes)
    np.testing.assert_allclose(mean.data, x.mean(axis=ax, keepdims=keepdims), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var.data, x.var(axis=ax, keepdims=keepdims), rtol=1e-12, atol=1e-15)

    def both(t):
        m, v = moments(t, axes, keepdims=keepdims)
        return m * 0.7 + v        # gradients through both outputs at once
    check_gradients(both, x)


def test_moments_float32_long_reduction_is_accurate():
    # mean 3, std 0.5 over 2**18 samples per channel: float64 accumulation keeps the
    # float32 statistics at the float32 rounding level.
    x = (np.random.default_rng(1).standard_normal((64, 64, 64, 2)) * 0.5 + 3).astype(np.float32)
    mean, var = moments(x, [0, 1, 2])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean.data, x64.mean(axis=(0, 1, 2)), rtol=1e-7)
    np.testing.assert_allclose(var.data, x64.var(axis=(0, 1, 2)), rtol=2e-6)
    assert mean.dtype == np.float32 and var.dtype == np.float32


# ---- batch_normalization ------------------------------------------------------------------

@SETTINGS
@given(nhwc_or_nc(), st.booleans(), st.booleans(), st.booleans())
def test_batch_normalization_gradients_all_inputs(shape_seed, keepdims, with_offset, with_scale):
    shape, seed = shape_seed
    _, x, scale, offset, mean, var = _stats_inputs(shape, seed)
    stat_shape = (1,) * (len(shape) - 1) + (shape[-1],) if keepdims else (shape[-1],)
    arrays = [x] + [a.reshape(stat_shape) for a in (mean, var, offset, scale)]
    y = batch_normalization(*[Tensor(a) for a in arrays[:3]], Tensor(arrays[3]) if with_offset else None,
                            Tensor(arrays[4]) if with_scale else None, 1e-3)
    expected = (x - arrays[1]) / np.sqrt(arrays[2] + 1e-3) * (arrays[4] if with_scale else 1) \
        + (arrays[3] if with_offset else 0)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)

    def fn(x, m, v, o, s):
        return batch_normalization(x, m, v, o if with_offset else None, s if with_scale else None, 1e-3)
    wrt = [0, 1, 2] + ([3] if with_offset else []) + ([4] if with_scale else [])
    check_gradients(fn, *arrays, wrt=wrt)


def test_batch_normalization_float32_op_order():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    m, v, o, s = (rng.standard_normal(5).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    inv = np.float32(1) / np.sqrt(v + np.float32(1e-3)) * s
    expected = x * inv + (o - m * inv)       # TF's order, bitwise
    np.testing.assert_array_equal(batch_normalization(x, m, v, o, s, 1e-3).data, expected)


# ---- fused_batch_norm ---------------------------------------------------------------------

@SETTINGS
@given(nhwc_or_nc(), st.booleans())
def test_fused_training_forward_and_gradients(shape_seed, bessel):
    shape, seed = shape_seed
    _, x, scale, offset, _, _ = _stats_inputs(shape, seed)
    axes = tuple(range(len(shape) - 1))
    n = x.size // shape[-1]
    y, mean, var = fused_batch_norm(x, scale, offset, bessel_correction=bessel)
    mu, pop = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(y.data, (x - mu) / np.sqrt(pop + 1e-3) * scale + offset, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean.data, mu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(var.data, pop * n / (n - 1) if bessel else pop, rtol=1e-12, atol=1e-14)

    check_gradients(lambda x, s, o: fused_batch_norm(x, s, o)[0], x, scale, offset)

    def stats(x, s, o):      # gradients reaching x through the returned statistics
        _, m, v = fused_batch_norm(x, s, o, bessel_correction=bessel)
        return m * 0.3 + v
    check_gradients(stats, x, scale, offset)


def test_fused_training_backward_closed_form():
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((6, 2, 2, 3)), rng.standard_normal((6, 2, 2, 3))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    xt, gt, bt = Tensor(x, requires_grad=True), Tensor(gamma, requires_grad=True), Tensor(beta, requires_grad=True)
    fused_batch_norm(xt, gt, bt, epsilon=0.01)[0].backward(dy)
    axes, n = (0, 1, 2), 24
    inv_std = 1 / np.sqrt(x.var(axis=axes) + 0.01)
    xhat = (x - x.mean(axis=axes)) * inv_std
    dgamma, dbeta = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    np.testing.assert_allclose(gt.grad, dgamma, rtol=1e-12)
    np.testing.assert_allclose(bt.grad, dbeta, rtol=1e-12)
    np.testing.assert_allclose(xt.grad, gamma * inv_std / n * (n * dy - dbeta - xhat * dgamma), rtol=1e-10, atol=1e-12)


@SETTINGS
@given(nhwc_or_nc(), st.sampled_from([0.0, 0.25, 1.0]))
def test_fused_exponential_avg_factor(shape_seed, factor):
    shape, seed = shape_seed
    _, x, scale, offset, old_mean, old_var = _stats_inputs(shape, seed)
    axes = tuple(range(len(shape) - 1))
    n = x.size // shape[-1]
    _, mean, var = fused_batch_norm(x, scale, offset, old_mean, old_var, exponential_avg_factor=factor)
    if factor == 1.0:         # the running stats are ignored, as TF does
        old_mean, old_var = 0 * old_mean, 0 * old_var
    np.testing.assert_allclose(mean.data, (1 - factor) * old_mean + factor * x.mean(axis=axes), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(var.data, (1 - factor) * old_var + factor * x.var(axis=axes) * n / (n - 1),
                               rtol=1e-12, atol=1e-14)
    if factor != 1.0:
        def fn(x, s, o, m, v):
            y, rm, rv = fused_batch_norm(x, s, o, m, v, exponential_avg_factor=factor)
            return y.sum(axis=tuple(range(len(shape) - 1))) + rm * 0.5 + rv
        check_gradients(fn, x, scale, offset, old_mean, old_var)


@SETTINGS
@given(nhwc_or_nc())
def test_fused_inference_forward_and_gradients(shape_seed):
    shape, seed = shape_seed
    _, x, scale, offset, mean, var = _stats_inputs(shape, seed)
    y, m, v = fused_batch_norm(x, scale, offset, mean, var, is_training=False)
    np.testing.assert_allclose(y.data, scale * (x - mean) / np.sqrt(var + 1e-3) + offset, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(m.data, mean)
    np.testing.assert_array_equal(v.data, var)
    check_gradients(lambda *a: fused_batch_norm(*a, is_training=False)[0], x, scale, offset, mean, var)


def test_primitives_registered_and_used():
    for name in ("batch_norm_train_forward", "batch_norm_train_backward", "batch_norm_inference"):
        assert callable(implementation(name, "numpy"))
    x = np.random.default_rng(5).standard_normal((7, 3)).astype(np.float32)
    y, mean, var, inv_std = dispatch("batch_norm_train_forward", x, np.ones(3, np.float32),
                                     np.zeros(3, np.float32), 1e-3)
    assert y.dtype == mean.dtype == var.dtype == inv_std.dtype == np.float32
    np.testing.assert_allclose(var, x.astype(np.float64).var(axis=0), rtol=1e-6)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x.astype(np.float64).var(axis=0) + 1e-3), rtol=1e-6)


# ---- BatchNorm layer ------------------------------------------------------------------------

def _layer_fn(shape, layer_kwargs, state=None):
    """fn(x, gamma, beta) running a fresh float64 layer in training mode (buffers from `state`)."""
    def fn(x, gamma, beta):
        layer = BatchNorm(shape[-1], dtype=np.float64, **layer_kwargs)
        for name, value in (state or {}).items():
            getattr(layer, name).data = value.copy()
        if layer.scale:
            layer.gamma = gamma
        if layer.center:
            layer.beta = beta
        return layer(x)
    return fn


@SETTINGS
@given(nhwc_or_nc(), st.booleans(), st.booleans(), st.sampled_from(["population", "bessel"]))
def test_layer_training_gradients(shape_seed, center, scale, rule):
    shape, seed = shape_seed
    _, x, gamma, beta, _, _ = _stats_inputs(shape, seed)
    wrt = [0] + ([1] if scale else []) + ([2] if center else [])
    fn = _layer_fn(shape, dict(center=center, scale=scale, moving_variance_rule=rule, epsilon=1e-2))
    axes = tuple(range(len(shape) - 1))
    expected = (x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + 1e-2) * (gamma if scale else 1) \
        + (beta if center else 0)
    np.testing.assert_allclose(fn(Tensor(x), Tensor(gamma), Tensor(beta)).data, expected, rtol=1e-12, atol=1e-12)
    check_gradients(fn, x, gamma, beta, wrt=wrt)


@SETTINGS
@given(nhwc_or_nc())
def test_layer_inference_gradients(shape_seed):
    shape, seed = shape_seed
    _, x, gamma, beta, mm, mv = _stats_inputs(shape, seed)

    def fn(x, g, b):
        layer = BatchNorm(shape[-1], dtype=np.float64).eval()
        layer.gamma, layer.beta = g, b
        layer.moving_mean.data, layer.moving_variance.data = mm, mv
        return layer(x)
    np.testing.assert_allclose(fn(Tensor(x), Tensor(gamma), Tensor(beta)).data,
                               (x - mm) / np.sqrt(mv + 1e-3) * gamma + beta, rtol=1e-12, atol=1e-12)
    check_gradients(fn, x, gamma, beta)


@SETTINGS
@example(((1, 1, 2, 3), 0), False)          # two close samples: r was left unclipped (found by make fuzz)
@given(nhwc_or_nc(), st.booleans())
def test_renorm_gradients_with_saturated_corrections(shape_seed, scale):
    # r and d are stop_gradient constants; with both clipped they are also locally constant
    # in x, so finite differences see exactly the gradient through mean_B and stddev. A huge
    # renorm_stddev clips r = stddev/renorm_stddev at rmin and d = (mean - 5e4)/1e3 at -dmax for
    # any batch. (Clipping at rmax cannot be forced: renorm_stddev is floored at sqrt(eps), so for
    # two close samples r = stddev/sqrt(eps) can stay below rmax.)
    shape, seed = shape_seed
    _, x, gamma, beta, _, _ = _stats_inputs(shape, seed)
    c = shape[-1]
    state = {"renorm_stddev": np.full(c, 1e3), "renorm_mean": np.full(c, 5e4)}
    fn = _layer_fn(shape, dict(renorm=True, scale=scale, renorm_clipping={"rmax": 1.5, "rmin": 0.5, "dmax": 0.7}),
                   state)
    axes = tuple(range(len(shape) - 1))
    expected = ((x - x.mean(axis=axes)) / np.sqrt(x.var(axis=axes) + 1e-3) * 0.5 - 0.7) * (gamma if scale else 1) + beta
    np.testing.assert_allclose(fn(Tensor(x), Tensor(gamma), Tensor(beta)).data, expected, rtol=1e-12, atol=1e-12)
    check_gradients(fn, x, gamma, beta, wrt=[0, 1, 2] if scale else [0, 2])


def test_renorm_step_closed_form():
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((5, 3, 3, 4)) * 2 + 1, rng.standard_normal((5, 3, 3, 4))
    rmin, rmax, dmax = 1 / 1.5, 1.5, 0.5
    layer = BatchNorm(4, decay=0.95, renorm=True, renorm_decay=0.9, dtype=np.float64,
                      renorm_clipping={"rmax": rmax, "rmin": rmin, "dmax": dmax})
    mu, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    sd = np.sqrt(var + 1e-3)
    # The renorm state is set from this batch's statistics so that, per channel, the unclipped
    # r = sd/rs0 and d = (mu - rm0)/rs0 are: r above rmax, below rmin, inside, inside; d inside,
    # below -dmax, above dmax, inside. Every bound clips one channel and one channel clips nothing.
    r_raw, d_raw = np.array([2.0, 0.5, 1.2, 0.9]), np.array([0.3, -0.9, 0.8, -0.2])
    rs0 = sd / r_raw
    rm0, ms0 = mu - d_raw * rs0, rng.uniform(0.5, 2, 4)
    layer.renorm_mean.data, layer.renorm_stddev.data, layer.moving_stddev.data = rm0.copy(), rs0.copy(), ms0.copy()
    layer.gamma.data, layer.beta.data = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    gamma, beta = layer.gamma.data.copy(), layer.beta.data.copy()
    xt = Tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(dy)
    r, d = np.clip(sd / rs0, rmin, rmax), np.clip((mu - rm0) / rs0, -dmax, dmax)
    np.testing.assert_array_equal(r == rmax, [True, False, False, False])     # clipped at rmax
    np.testing.assert_array_equal(r == rmin, [False, True, False, False])     # clipped at rmin
    np.testing.assert_array_equal(d == -dmax, [False, True, False, False])    # clipped at -dmax
    np.testing.assert_array_equal(d == dmax, [False, False, True, False])     # clipped at +dmax
    np.testing.assert_allclose(r[2:], r_raw[2:], rtol=1e-12)                  # r unclipped
    np.testing.assert_allclose(d[[0, 3]], d_raw[[0, 3]], rtol=1e-12)          # d unclipped
    np.testing.assert_allclose(renorm_correction(mu, var, rm0, rs0, 1e-3, layer.renorm_clipping), (r, d), rtol=1e-12)
    xhat = (x - mu) / sd
    np.testing.assert_allclose(y.data, (xhat * r + d) * gamma + beta, rtol=1e-12, atol=1e-12)
    # gradient of the composition with r, d constant: BN backward with effective scale r*gamma
    g = gamma * r
    dxhat = dy * g
    dx = (dxhat - dxhat.mean(axis=(0, 1, 2)) - xhat * (dxhat * xhat).mean(axis=(0, 1, 2))) / sd
    np.testing.assert_allclose(xt.grad, dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.gamma.grad, (dy * (xhat * r + d)).sum(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(layer.renorm_mean.data, rm0 * 0.9 + mu * 0.1, rtol=1e-12)
    np.testing.assert_allclose(layer.renorm_stddev.data, rs0 * 0.9 + sd * 0.1, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_mean.data, mu * 0.05, rtol=1e-12)
    ms = ms0 * 0.95 + sd * 0.05
    np.testing.assert_allclose(layer.moving_stddev.data, ms, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance.data, np.maximum(ms ** 2 - 1e-3, 0), rtol=1e-12)


@pytest.mark.parametrize("rule", ["population", "bessel"])
@pytest.mark.parametrize("shape", [(8, 3), (2, 3, 4, 3)])
def test_moving_statistics_after_steps(rule, shape):
    rng = np.random.default_rng(7)
    layer = BatchNorm(3, momentum=0.9, moving_variance_rule=rule, dtype=np.float64)
    assert layer.decay == 0.9
    mm, mv = np.zeros(3), np.ones(3)
    n = int(np.prod(shape[:-1]))
    for _ in range(3):
        x = rng.standard_normal(shape) * 3 + 2
        layer(x)
        v = x.reshape(-1, 3).var(axis=0) * (n / (n - 1) if rule == "bessel" else 1)
        mm, mv = mm * 0.9 + x.reshape(-1, 3).mean(axis=0) * 0.1, mv * 0.9 + v * 0.1
        np.testing.assert_allclose(layer.moving_mean.data, mm, rtol=1e-12)
        np.testing.assert_allclose(layer.moving_variance.data, mv, rtol=1e-12)


def test_zero_debias_moving_mean_float32_matches_tf():
    layer = BatchNorm(2, zero_debias_moving_mean=True)          # decay 0.999, float32
    layer.moving_mean.data = np.full(2, 5.0, np.float32)       # ignored: the mean is assigned
    x = np.array([[2.0, 1.0], [2.0, 3.0]], np.float32)
    layer(x)
    # TF: 1 - (1 - decay)^t cancels in float32, giving 2.0000257, not 2 (docs/tf-conventions.md#zero-debias-moving-mean)
    np.testing.assert_array_equal(layer.moving_mean.data, np.float32([2.0000257, 2.0000257]))
    assert layer.local_step.data == 1
    layer(x)
    np.testing.assert_array_equal(layer.moving_mean.data, np.float32([2.000039, 2.000039]))
    np.testing.assert_allclose(layer.moving_variance.data, [0.999 * 0.999, 0.999 * 0.999 + 0.001 * (1 + 0.999)],
                               rtol=1e-6)


def test_zero_debias_moving_mean_float64_is_unbiased():
    layer = BatchNorm(1, decay=0.9, zero_debias_moving_mean=True, dtype=np.float64)
    layer.moving_mean.data = np.array([5.0])
    biased, means = 0.0, [1.0, 3.0, -2.0]
    for t, m in enumerate(means, 1):
        layer(np.array([[m - 1], [m + 1]]))
        biased = biased * 0.9 + m * 0.1
        np.testing.assert_allclose(layer.moving_mean.data, [biased / (1 - 0.9 ** t)], rtol=1e-12)
        np.testing.assert_allclose(layer.moving_mean_biased.data, [biased], rtol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"renorm": True}, {"zero_debias_moving_mean": True},
                                    {"moving_variance_rule": "bessel", "center": False, "scale": False}])
def test_inference_never_changes_buffers(kwargs):
    rng = np.random.default_rng(8)
    layer = BatchNorm(4, decay=0.5, **kwargs)
    layer(rng.standard_normal((6, 2, 2, 4)).astype(np.float32))
    before = layer.state_dict()
    layer.eval()
    x = rng.standard_normal((3, 2, 2, 4)).astype(np.float32) * 3
    y = layer(Tensor(x, requires_grad=True))
    y.backward(np.ones_like(x))
    after = layer.state_dict()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    scale = before.get("gamma", 1)
    expected = (x - before["moving_mean"]) / np.sqrt(before["moving_variance"] + 1e-3) * scale + before.get("beta", 0)
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-5)
    layer.train()
    layer(x)
    assert not np.array_equal(layer.moving_mean.data, before["moving_mean"])


def test_state_dict_names():
    assert list(BatchNorm(3).state_dict()) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert list(BatchNorm(3, center=False, scale=False).state_dict()) == ["moving_mean", "moving_variance"]
    renorm = BatchNorm(3, renorm=True).state_dict()
    assert list(renorm)[2:] == ["moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"]
    np.testing.assert_array_equal(renorm["renorm_stddev"], np.ones(3, np.float32))
    debias = BatchNorm(3, zero_debias_moving_mean=True).state_dict()
    assert list(debias)[-2:] == ["moving_mean_biased", "local_step"] and debias["local_step"].shape == ()
    assert all(v.dtype == np.float32 for v in debias.values())
    assert BatchNorm(3, dtype=np.float64).state_dict()["gamma"].dtype == np.float64


# ---- bad input ----------------------------------------------------------------------------

def test_bad_inputs():
    x = np.zeros((4, 3), np.float32)
    c3 = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="axes .* out of range"):
        moments(x, [2])
    with pytest.raises(ValueError, match="repeat an axis"):
        moments(x, [0, -2])
    with pytest.raises(ValueError, match="mean of shape \\(4,\\) does not broadcast"):
        batch_normalization(x, np.zeros(4, np.float32), c3, None, None, 1e-3)
    with pytest.raises(ValueError, match="variance is required"):
        batch_normalization(x, c3, None, None, None, 1e-3)
    with pytest.raises(ValueError, match="scale has dtype float64"):
        batch_normalization(x, c3, c3, None, np.ones(3), 1e-3)
    with pytest.raises(ValueError, match="scale must have shape \\(3,\\)"):
        fused_batch_norm(x, np.ones(2, np.float32), c3)
    with pytest.raises(ValueError, match="data_format must be 'NHWC'"):
        fused_batch_norm(x, c3, c3, data_format="NCHW")
    with pytest.raises(ValueError, match="x must have rank >= 2"):
        fused_batch_norm(c3, c3, c3)
    with pytest.raises(ValueError, match="inference .* needs mean and variance"):
        fused_batch_norm(x, c3, c3, is_training=False)
    with pytest.raises(ValueError, match="no elements"):
        fused_batch_norm(np.zeros((0, 3), np.float32), c3, c3)
    with pytest.raises(ValueError, match="needs the running mean and variance"):
        fused_batch_norm(x, c3, c3, exponential_avg_factor=0.1)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        fused_batch_norm(x, c3, c3, epsilon=-1.0)


def test_layer_bad_inputs():
    layer = BatchNorm(3)
    with pytest.raises(ValueError, match="input has 4 channels .* num_features is 3"):
        layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="rank >= 2"):
        layer(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="input dtype float64 differs"):
        layer(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        BatchNorm(0)
    with pytest.raises(ValueError, match="moving_variance_rule must be one of"):
        BatchNorm(3, moving_variance_rule="unbiased")
    with pytest.raises(ValueError, match="decay must be in"):
        BatchNorm(3, decay=1.5)
    with pytest.raises(ValueError, match="not both"):
        BatchNorm(3, decay=0.9, momentum=0.8)
    with pytest.raises(ValueError, match="unknown keys \\['rmaxx'\\]"):
        BatchNorm(3, renorm=True, renorm_clipping={"rmaxx": 2})
    with pytest.raises(ValueError, match="rmax=1 is less than rmin=2"):
        BatchNorm(3, renorm=True, renorm_clipping={"rmax": 1, "rmin": 2})
    with pytest.raises(ValueError, match="dmax=-1 must be >= 0"):
        BatchNorm(3, renorm=True, renorm_clipping={"dmax": -1})
    with pytest.raises(ValueError, match="renorm_clipping is only valid with renorm"):
        BatchNorm(3, renorm_clipping={"dmax": 1})
    with pytest.raises(ValueError, match="'bessel' cannot be combined with renorm"):
        BatchNorm(3, renorm=True, moving_variance_rule="bessel")
    with pytest.raises(ValueError, match="zero_debias_moving_mean cannot be combined"):
        BatchNorm(3, renorm=True, zero_debias_moving_mean=True)


# ---- the numba backend's training statistics (kernels/numba_norm.py: one shifted pass) ----

def _hard_channels(rows, dtype, seed):
    """(rows, 4) channels that a one-pass E[x^2] - E[x]^2 would ruin: a large mean over a unit
    spread, an outlier in the first row (the shift), a constant, a tiny spread around 1e3."""
    rng = np.random.default_rng(seed)
    x = np.stack([1e4 + rng.standard_normal(rows), rng.standard_normal(rows), np.full(rows, 3.25),
                  1e3 + 1e-2 * rng.standard_normal(rows)], axis=1)
    x[0, 1] = 1e3
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("rows", [1, 7, 5000])
def test_numba_batch_statistics_near_the_exact_ones(rows, dtype):
    """The numba twin's mean and (population) variance against the statistics of the same data
    by exactly rounded float64 sums (math.fsum): within a float32 ulp in float32; in float64 within M ulps of the spread (the
    shift is a data point at most sqrt(M - 1) standard deviations from the mean); a constant
    channel's variance exactly 0."""
    from tinybn.kernels import numba_norm
    x = _hard_channels(rows, dtype, seed=rows)
    _, mean, variance, _ = numba_norm.batch_norm_train_forward(x, np.ones(4, dtype), np.zeros(4, dtype), 1e-3)
    exact = x.astype(np.float64)
    exact_mean = np.array([math.fsum(column) for column in exact.T]) / rows          # correctly rounded sums
    exact_variance = np.array([math.fsum(column) for column in ((exact - exact_mean) ** 2).T]) / rows
    assert mean.dtype == variance.dtype == dtype
    if dtype == np.float32:
        assert np.all(np.abs(mean - exact_mean) <= np.spacing(np.abs(exact_mean).astype(dtype)))
        assert np.all(np.abs(variance - exact_variance) <= np.spacing(exact_variance.astype(dtype)))
    else:
        eps = np.finfo(np.float64).eps
        spread = np.abs(exact_mean) + np.sqrt(rows * exact_variance)
        assert np.all(np.abs(mean - exact_mean) <= 4 * eps * spread)
        assert np.all(np.abs(variance - exact_variance) <= 4 * rows * eps * exact_variance)
    assert variance[2] == 0
