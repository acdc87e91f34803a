"""Batch norm family against TF: tf.nn.moments, tf.nn.batch_normalization,
tf.compat.v1.nn.fused_batch_norm (training, inference, exponential_avg_factor), and the
BatchNorm layer against Keras 3's BatchNormalization (plain and renorm) over several
training steps, plus its "bessel" rule and zero-debiased moving mean against TF1's ops."""
import numpy as np
import tensorflow as tf
import keras
from hypothesis import example, given, settings, strategies as st
from tensorflow.python.training import moving_averages

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn import Tensor
from tinybn.nn.batchnorm import BatchNorm
from tinybn.ops.batchnorm import batch_normalization, moments
from tinybn.ops.fused_batch_norm import fused_batch_norm

shapes = st.one_of(st.tuples(st.integers(2, 32), st.integers(1, 6)),
                   st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)))


def _data(shape, seed, loc=0.5, spread=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * spread + loc).astype(np.float32)


def _channel_inputs(c, seed):
    rng = np.random.default_rng(seed)
    f = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return f(rng.uniform(0.5, 1.5, c)), f(rng.standard_normal(c)), f(rng.standard_normal(c)), f(rng.uniform(0.3, 3, c))


def _assert_dx(op, ours, theirs, n, term_size, what):
    """x-gradient parity. With n <= 2 samples per channel dx = scale*inv_std*(dy - mean(dy) -
    xhat*mean(dy*xhat)) cancels to O(eps/(var+eps)) of its terms (exactly 0 for n = 1), so TF
    and tinybn are both only ~1e-7 of the terms' size from float64: compare absolutely then."""
    if n > 2:
        parity.assert_parity(op, "backward", ours, theirs, what)
    else:
        assert np.abs(ours - theirs).max() <= 1e-6 * term_size, f"{op} backward {what} (n = {n})"


def _assert_channel_sums(op, direction, ours, theirs, terms, what):
    """Parity of per-channel sums of terms (..., C): the gradients of scale, offset, gamma, beta,
    a running mean. TF sums in float32, tinybn in float64 rounded once, so they differ by
    ~eps * sum|terms|, which is many ulps of a sum that cancels to near 0 (make fuzz found
    5e-5 of the sum, tinybn's the closer to float64): so each channel's error is measured
    against the sum of its terms' magnitudes instead of the sum itself."""
    size = np.abs(np.asarray(terms, np.float64)).reshape(-1, ours.shape[-1]).sum(axis=0)
    err = (np.abs(ours.astype(np.float64) - theirs) / np.maximum(size, 1e-30)).max()
    tol = parity.TOLERANCES[op][direction]
    assert err <= tol, f"{op} {direction} {what}: max|tinybn - tf| / sum|terms| = {err:.3g} > tolerance {tol:g}"


def _xhat(x, mean, variance, epsilon):
    """(x - mean) / sqrt(variance + epsilon) in float64, per channel (last axis)."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    return (x - mean) / np.sqrt(np.asarray(variance, np.float64) + epsilon)


def _tf_multi(fn, arrays, upstreams):
    """TF outputs of fn and the gradients of sum_k <upstream_k, output_k> w.r.t. every array."""
    ts = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        tape.watch(ts)
        outs = fn(*ts)
    grads = tape.gradient(list(outs), ts, output_gradients=[tf.constant(u) for u in upstreams])
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def _tb_multi(fn, arrays, upstreams):
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    outs = fn(*ts)
    loss = sum(((o * Tensor(u)).sum() for o, u in zip(outs, upstreams)), Tensor(np.float32(0)))
    loss.backward()
    return [o.numpy() for o in outs], [t.grad for t in ts]


@given(shapes, st.booleans(), st.sampled_from([0.0, 3.0]), st.data())
def test_moments(shape, keepdims, loc, data):
    if data.draw(st.booleans()):
        axes = list(range(len(shape) - 1))
    else:
        axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, max_size=len(shape), unique=True))
    x = _data(shape, 1, loc)
    m_tf, v_tf = (o.numpy() for o in tf.nn.moments(tf.constant(x), axes, keepdims=keepdims))
    rng = np.random.default_rng(2)
    ups = [rng.standard_normal(m_tf.shape).astype(np.float32), rng.standard_normal(v_tf.shape).astype(np.float32)]
    (m_tf, v_tf), (g_tf,) = _tf_multi(lambda t: tf.nn.moments(t, axes, keepdims=keepdims), [x], ups)
    (m_tb, v_tb), (g_tb,) = _tb_multi(lambda t: moments(t, axes, keepdims=keepdims), [x], ups)
    parity.assert_parity("moments", "forward", m_tb, m_tf, "(mean)")
    parity.assert_parity("moments", "forward", v_tb, v_tf, "(variance)")
    parity.assert_parity("moments", "backward", g_tb, g_tf)


@example((7, 1, 2, 1), False, False, False)  # the mean gradient's sum cancels (found by make fuzz)
@given(shapes, st.booleans(), st.booleans(), st.booleans())
def test_batch_normalization(shape, keepdims, with_offset, with_scale):
    c = shape[-1]
    x = _data(shape, 3)
    scale, offset, mean, var = _channel_inputs(c, 4)
    stat = (1,) * (len(shape) - 1) + (c,) if keepdims else (c,)
    arrays = [x] + [a.reshape(stat) for a in (mean, var, offset, scale)]
    wrt = [0, 1, 2] + ([3] if with_offset else []) + ([4] if with_scale else [])

    def call(op):
        return lambda x, m, v, o, s: op(x, m, v, o if with_offset else None, s if with_scale else None, 1e-3)
    upstream = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    y_tf, g_tf = tf_forward_backward(call(tf.nn.batch_normalization), arrays, upstream, wrt=wrt)
    y_tb, g_tb = tb_forward_backward(call(batch_normalization), arrays, upstream, wrt=wrt)
    parity.assert_parity("batch_normalization", "forward", y_tb, y_tf)
    parity.assert_parity("batch_normalization", "backward", g_tb[0], g_tf[0], "(input 0)")
    # The other gradients are per-channel sums over x's entries of these terms; those of variance
    # and scale go through d inv = sum(dy*x) - mean*sum(dy), so their terms are dy*|x| and dy*|mean|.
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    dy, x_size, rs = f64(upstream), np.abs(f64(x)) + np.abs(f64(mean)), 1 / np.sqrt(f64(var) + 1e-3)
    s = f64(scale) if with_scale else 1.0
    terms = {1: dy * rs * s, 2: dy * x_size * s * 0.5 * rs ** 3, 3: dy, 4: dy * x_size * rs}
    for i, a, b in zip(wrt[1:], g_tb[1:], g_tf[1:]):
        _assert_channel_sums("batch_normalization", "backward", a, b, terms[i], f"(input {i})")


def _tf_fused(shape):
    """TF's fused op needs 4-D input: a 2-D (N, C) input goes in as (N, 1, 1, C)."""
    def reshaped(fn):
        def call(x, *rest, **kwargs):
            outs = fn(tf.reshape(x, (shape[0], 1, 1, shape[1])) if len(shape) == 2 else x, *rest, **kwargs)
            return (tf.reshape(outs[0], shape),) + tuple(outs[1:])
        return call
    return reshaped(tf.compat.v1.nn.fused_batch_norm)


# n = N*H*W = 1 always runs: the variance is 0 and its Bessel factor n/(n-1) is taken as 1, as TF
N_EQUALS_1 = [(1, 3), (1, 1, 1, 3)]


@example(N_EQUALS_1[0], 1e-3)
@example(N_EQUALS_1[1], 1e-5)
@example((4, 4, 6, 1), 1e-3)                # sum(dy) cancels to 2e-3 of sum|dy| (found by make fuzz)
@given(shapes, st.sampled_from([1e-3, 1e-5]))
def test_fused_batch_norm_training(shape, epsilon):
    c = shape[-1]
    x = _data(shape, 6, loc=1.0)
    scale, offset, _, _ = _channel_inputs(c, 7)
    up = [np.random.default_rng(8).standard_normal(shape).astype(np.float32), np.zeros(c, np.float32),
          np.zeros(c, np.float32)]
    tf_fn = _tf_fused(shape)
    outs_tf, g_tf = _tf_multi(lambda x, s, o: tf_fn(x, s, o, epsilon=epsilon), [x, scale, offset], up)
    outs_tb, g_tb = _tb_multi(lambda x, s, o: fused_batch_norm(x, s, o, epsilon=epsilon), [x, scale, offset], up)
    parity.assert_parity("fused_batch_norm (training)", "forward", outs_tb[0], outs_tf[0], "(y)")
    parity.assert_parity("fused_batch_norm (training)", "forward", outs_tb[1], outs_tf[1], "(batch mean)")
    parity.assert_parity("fused_batch_norm (training)", "forward", outs_tb[2], outs_tf[2],
                         "(Bessel-corrected variance)")
    n = int(np.prod(shape[:-1]))
    _assert_dx("fused_batch_norm (training)", g_tb[0], g_tf[0], n,
               np.abs(up[0]).max() * scale.max() / np.sqrt(epsilon), "(input 0)")
    xhat = _xhat(x, x.reshape(-1, c).astype(np.float64).mean(axis=0), x.reshape(-1, c).astype(np.float64).var(axis=0),
                 epsilon)
    dy = up[0].reshape(-1, c)
    for i, a, b, terms in zip((1, 2), g_tb[1:], g_tf[1:], (dy * xhat, dy)):     # sum(dy * xhat), sum(dy)
        _assert_channel_sums("fused_batch_norm (training)", "backward", a, b, terms, f"(input {i})")


@example(N_EQUALS_1[0], 0.1)
@example(N_EQUALS_1[1], 0.5)
@example((7, 1, 3, 1), 0.5)                 # the running mean cancels to 3e-3 of its terms (make fuzz)
@given(shapes, st.sampled_from([0.1, 0.5]))
def test_fused_batch_norm_exponential_avg_factor(shape, factor):
    c = shape[-1]
    x = _data(shape, 9)
    scale, offset, old_mean, old_var = _channel_inputs(c, 10)
    outs_tf = [o.numpy() for o in _tf_fused(shape)(tf.constant(x), scale, offset, old_mean, old_var,
                                                   exponential_avg_factor=factor)]
    outs_tb = fused_batch_norm(x, scale, offset, old_mean, old_var, exponential_avg_factor=factor)
    parity.assert_parity("fused_batch_norm (training)", "forward", outs_tb[0].data, outs_tf[0], "(y)")
    batch_mean = x.reshape(-1, c).astype(np.float64).mean(axis=0)      # (1 - f)*old_mean + f*mean can cancel
    _assert_channel_sums("fused_batch_norm (training)", "forward", outs_tb[1].data, outs_tf[1],
                         np.stack([(1 - factor) * old_mean, factor * batch_mean]), "(running mean)")
    parity.assert_parity("fused_batch_norm (training)", "forward", outs_tb[2].data, outs_tf[2], "(running variance)")


@example((8, 6, 6, 1))                      # the scale gradient's sum cancels (found by make fuzz)
@given(shapes)
def test_fused_batch_norm_inference(shape):
    c = shape[-1]
    x = _data(shape, 11)
    arrays = [x, *_channel_inputs(c, 12)]          # x, scale, offset, mean, variance
    upstream = np.random.default_rng(13).standard_normal(shape).astype(np.float32)
    tf_fn = _tf_fused(shape)
    y_tf, g_tf = tf_forward_backward(lambda *a: tf_fn(*a, is_training=False)[0], arrays, upstream, wrt=[0, 1, 2])
    y_tb, g_tb = tb_forward_backward(lambda *a: fused_batch_norm(*a, is_training=False)[0], arrays, upstream,
                                     wrt=[0, 1, 2])
    parity.assert_parity("fused_batch_norm (inference)", "forward", y_tb, y_tf)
    parity.assert_parity("fused_batch_norm (inference)", "backward", g_tb[0], g_tf[0], "(input 0)")
    dy = upstream.reshape(-1, c)
    for i, a, b, terms in zip((1, 2), g_tb[1:], g_tf[1:], (dy * _xhat(x, arrays[3], arrays[4], 1e-3), dy)):
        _assert_channel_sums("fused_batch_norm (inference)", "backward", a, b, terms, f"(input {i})")


# ---- BatchNorm layer vs Keras 3 -------------------------------------------------------------

def _run_against_keras(op, shape, steps, tb_kwargs, keras_kwargs, seed, stat_names):
    c = shape[-1]
    rng = np.random.default_rng(seed)
    keras_layer = keras.layers.BatchNormalization(**keras_kwargs)
    keras_layer.build((None,) + shape[1:])
    layer = BatchNorm(c, **tb_kwargs)
    trainables = [n for n in ("gamma", "beta") if getattr(layer, n, None) is not None]
    for name in trainables:
        value = rng.uniform(0.5, 1.5, c) if name == "gamma" else rng.standard_normal(c)
        getattr(keras_layer, name).assign(value.astype(np.float32))
        getattr(layer, name).data = value.astype(np.float32)
    lr = np.float32(0.1)
    for step in range(steps):
        x = (rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-2, 2)).astype(np.float32)
        upstream = rng.standard_normal(shape).astype(np.float32)
        xt = tf.constant(x)
        variables = [getattr(keras_layer, n) for n in trainables]
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y_tf = keras_layer(xt, training=True)
        g_tf = tape.gradient(y_tf, [xt] + variables, output_gradients=tf.constant(upstream))
        layer.zero_grad()
        xs = Tensor(x, requires_grad=True)
        y_tb = layer(xs)
        y_tb.backward(upstream)
        what = f"(step {step})"
        parity.assert_parity(op, "forward", y_tb.numpy(), y_tf.numpy(), what)
        g_tb = [xs.grad] + [getattr(layer, n).grad for n in trainables]
        gamma_max = np.abs(layer.gamma.data).max() if layer.gamma is not None else 1.0
        _assert_dx(op, g_tb[0], g_tf[0].numpy(), x.size // c,
                   np.abs(upstream).max() * gamma_max * 2 / np.sqrt(keras_kwargs.get("epsilon", 1e-3)),
                   f"(x, step {step})")
        # gamma's gradient sums dy * (y - beta)/gamma, beta's sums dy
        normalized = y_tf.numpy() - (layer.beta.data if layer.beta is not None else 0)
        if layer.gamma is not None:
            normalized = normalized / layer.gamma.data
        for name, a, b in zip(trainables, g_tb[1:], g_tf[1:]):
            terms = upstream * normalized if name == "gamma" else upstream
            _assert_channel_sums(op, "backward", a, b.numpy(), terms, f"({name}, step {step})")
        for name in stat_names:
            parity.assert_parity(op, "moving statistics", getattr(layer, name).data,
                                 getattr(keras_layer, name).numpy(), f"({name}, step {step})")
        for name, g in zip(trainables, g_tf[1:]):         # the same SGD step on each side's own gradient
            getattr(keras_layer, name).assign_sub(lr * g)
            getattr(layer, name).data = getattr(layer, name).data - lr * getattr(layer, name).grad
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    before = layer.state_dict()
    layer.eval()
    parity.assert_parity(op, "forward", layer(x).numpy(), keras_layer(tf.constant(x), training=False).numpy(),
                         "(inference)")
    assert all(np.array_equal(v, layer.state_dict()[k]) for k, v in before.items())


layer_shapes = st.one_of(st.tuples(st.integers(2, 16), st.integers(1, 5)),
                         st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(2, 4), st.integers(1, 5)))


@settings(max_examples=6)
@example((1, 2, 3, 1), 0.9, (False, True))  # gamma's gradient sum cancels (found by make fuzz)
@given(layer_shapes, st.sampled_from([0.9, 0.99]), st.sampled_from([(True, True), (False, True), (True, False)]))
def test_batchnorm_layer_vs_keras(shape, momentum, center_scale):
    center, scale = center_scale
    _run_against_keras("BatchNorm vs Keras", shape, 5,
                       dict(decay=momentum, epsilon=1e-3, center=center, scale=scale),
                       dict(momentum=momentum, epsilon=1e-3, center=center, scale=scale),
                       seed=sum(shape), stat_names=["moving_mean", "moving_variance"])


@settings(max_examples=4)
@given(layer_shapes)
def test_batchnorm_renorm_vs_keras(shape):
    clipping = {"rmax": 1.5, "rmin": 1 / 1.5, "dmax": 0.5}
    _run_against_keras("BatchNorm renorm vs Keras", shape, 4,
                       dict(decay=0.95, renorm=True, renorm_clipping=clipping, renorm_decay=0.9),
                       dict(momentum=0.95, renorm=True, renorm_clipping=clipping, renorm_momentum=0.9),
                       seed=sum(shape) + 1,
                       stat_names=["moving_mean", "moving_variance", "moving_stddev", "renorm_mean", "renorm_stddev"])


@settings(max_examples=5)
@example(N_EQUALS_1[0])
@example(N_EQUALS_1[1])
@given(layer_shapes)
def test_batchnorm_bessel_rule_vs_fused_exponential_avg_factor(shape):
    """moving_variance_rule="bessel" is TF1 fused batch norm's running variance."""
    c, decay = shape[-1], 0.9
    rng = np.random.default_rng(sum(shape) + 2)
    layer = BatchNorm(c, decay=decay, moving_variance_rule="bessel")
    running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        y = layer(x)
        y_tf, running_mean, running_var = (o.numpy() for o in _tf_fused(shape)(
            tf.constant(x), np.ones(c, np.float32), np.zeros(c, np.float32), running_mean, running_var,
            exponential_avg_factor=1 - decay))
        parity.assert_parity("BatchNorm vs Keras", "forward", y.numpy(), y_tf, "(bessel rule vs fused)")
        parity.assert_parity("BatchNorm vs Keras", "moving statistics", layer.moving_mean.data, running_mean,
                             f"(bessel rule vs fused: moving_mean, step {step})")
        parity.assert_parity("BatchNorm vs Keras", "moving statistics", layer.moving_variance.data, running_var,
                             f"(bessel rule vs fused: moving_variance, step {step})")


def test_zero_debias_moving_mean_vs_assign_moving_average():
    """zero_debias_moving_mean=True is TF1's assign_moving_average(zero_debias=True), float32-exact."""
    rng = np.random.default_rng(14)
    batches = [(rng.standard_normal((6, 3)) + 2).astype(np.float32) for _ in range(4)]
    layer = BatchNorm(3, decay=0.999, zero_debias_moving_mean=True)
    layer.moving_mean.data = np.full(3, 5.0, np.float32)
    graph = tf.Graph()
    with graph.as_default():
        var = tf.compat.v1.get_variable("moving_mean", initializer=np.full(3, 5.0, np.float32))
        value = tf.compat.v1.placeholder(tf.float32, [3])
        update = moving_averages.assign_moving_average(var, value, 0.999, zero_debias=True)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step, x in enumerate(batches):
                batch_mean = x.astype(np.float64).mean(axis=0).astype(np.float32)   # the layer's, exactly
                mean_tf = sess.run(update, {value: batch_mean})
                layer(x)
                parity.assert_parity("BatchNorm vs Keras", "moving statistics", layer.moving_mean.data, mean_tf,
                                     f"(zero-debiased moving_mean vs assign_moving_average, step {step})")
    np.testing.assert_allclose(layer.moving_mean.data, np.mean(batches, axis=(0, 1)), rtol=2e-3)
