"""TF1 optimizers, ExponentialMovingAverage and exponential_decay against TensorFlow.

Each optimizer takes the same 10 random float32 gradients (some None) as its
tf.compat.v1.train twin applied eagerly to tf.Variables; the float32 parameters
(and EMA shadows) after the 10 steps must be bitwise equal to TF's, as tinybn.optim
claims: same update formulas, same float32 order of operations, hyperparameters
rounded to float32 as TF's tensors are.
"""
import numpy as np
import tensorflow as tf
from hypothesis import example, given, strategies as st

import parity
from tinybn.nn.module import Parameter
from tinybn.optim import Adam, ExponentialDecay, ExponentialMovingAverage, GradientDescent, Momentum, \
    exponential_decay

SHAPES = [(3, 4), (5,), (2, 2, 3)]
STEPS = 10


def _gradients(seed, scale):
    rng = np.random.default_rng(seed)
    grads = []
    for step in range(STEPS):
        gs = [(rng.standard_normal(s) * scale).astype(np.float32) for s in SHAPES]
        if step % 3 == 2:
            gs[1] = None        # a parameter without a gradient this step is skipped by both
        grads.append(gs)
    return grads


def run_both(make_tb, make_tf, seed=0, scale=1.0, tf_global_step=None):
    rng = np.random.default_rng(seed + 1000)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = [Parameter(a.copy()) for a in init]
    variables = [tf.Variable(a) for a in init]
    opt_tb, opt_tf = make_tb(params), make_tf()
    for gs in _gradients(seed, scale):
        for p, g in zip(params, gs):
            p.grad = g
        opt_tb.step()
        pairs = [(tf.constant(g), v) for g, v in zip(gs, variables) if g is not None]
        opt_tf.apply_gradients(pairs, global_step=tf_global_step)
    return params, variables


def assert_bit_exact(op, direction, ours, theirs, what):
    """The TF1 update rules are reproduced bit for bit in float32: equality, not a tolerance."""
    np.testing.assert_array_equal(ours, theirs, err_msg=f"{op} {direction} {what}: not bit-exact to TF")
    parity.assert_parity(op, direction, ours, theirs, what)      # records the worst error (0) for the table


def compare(op, make_tb, make_tf, **kw):
    params, variables = run_both(make_tb, make_tf, **kw)
    for i, (p, v) in enumerate(zip(params, variables)):
        assert p.data.dtype == v.numpy().dtype == np.float32
        assert_bit_exact(op, "parameters", p.data, v.numpy(), f"(parameter {i})")


@given(st.integers(0, 2**16), st.sampled_from([0.1, 0.01]), st.sampled_from([1e-3, 1.0, 100.0]))
def test_gradient_descent(seed, lr, scale):
    compare("GradientDescent", lambda ps: GradientDescent(ps, lr),
            lambda: tf.compat.v1.train.GradientDescentOptimizer(lr), seed=seed, scale=scale)


@given(st.integers(0, 2**16), st.sampled_from([0.9, 0.5]), st.booleans())
def test_momentum(seed, momentum, nesterov):
    compare("Momentum", lambda ps: Momentum(ps, 0.05, momentum, use_nesterov=nesterov),
            lambda: tf.compat.v1.train.MomentumOptimizer(0.05, momentum, use_nesterov=nesterov), seed=seed)


@given(st.integers(0, 2**16), st.sampled_from([(0.001, 0.9, 0.999, 1e-8), (0.01, 0.8, 0.99, 1e-3),
                                                 (0.1, 0.5, 0.9, 1.0)]), st.sampled_from([1e-3, 1.0]))
def test_adam(seed, hyper, scale):
    lr, b1, b2, eps = hyper
    compare("Adam", lambda ps: Adam(ps, lr, b1, b2, eps),
            lambda: tf.compat.v1.train.AdamOptimizer(lr, b1, b2, eps), seed=seed, scale=scale)


def test_schedules_read_pre_increment_global_step():
    # staircase drop every 3 steps: Momentum rescales its whole velocity, Adam its step
    for op, make_tb, make_tf in [
            ("Momentum", lambda s: (lambda ps: Momentum(ps, s, 0.9)),
             lambda lr: tf.compat.v1.train.MomentumOptimizer(lr, 0.9)),
            ("Adam", lambda s: (lambda ps: Adam(ps, s)), lambda lr: tf.compat.v1.train.AdamOptimizer(lr)),
            ("GradientDescent", lambda s: (lambda ps: GradientDescent(ps, s)),
             lambda lr: tf.compat.v1.train.GradientDescentOptimizer(lr))]:
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        tf_lr = tf.compat.v1.train.exponential_decay(0.1, global_step, 3, 0.5, staircase=True)  # a callable
        compare(op, make_tb(ExponentialDecay(0.1, 3, 0.5, staircase=True)), lambda: make_tf(tf_lr),
                seed=7, tf_global_step=global_step)
        assert int(global_step.numpy()) == STEPS


@given(st.sampled_from([0.9999, 0.9, 0.5]), st.sampled_from([None, 0, 100]), st.integers(0, 2**16))
def test_exponential_moving_average(decay, first_update, seed):
    """num_updates None (plain decay), or a counter starting at first_update (0: the global step)."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    params = [Parameter(a.copy()) for a in init]
    variables = [tf.Variable(a) for a in init]
    counter = None if first_update is None else tf.Variable(first_update, dtype=tf.int64, trainable=False)
    ema_tf = tf.train.ExponentialMovingAverage(decay, num_updates=counter)
    ema_tb = ExponentialMovingAverage(decay, num_updates=None if counter is None else lambda: int(counter.numpy()))
    for _ in range(STEPS):
        for p, v in zip(params, variables):       # a training step changes the weights ...
            new = (p.data + rng.standard_normal(p.shape) * 0.1).astype(np.float32)
            p.data[...] = new
            v.assign(new)
        if counter is not None:
            counter.assign_add(1)                 # ... and increments the global step, then the EMA
        ema_tf.apply(variables)
        ema_tb.apply(params)
    for i, (p, v) in enumerate(zip(params, variables)):
        assert_bit_exact("ExponentialMovingAverage", "shadow", ema_tb.average(p), ema_tf.average(v).numpy(),
                         f"(parameter {i})")


@example(2543, 20, 0.5, 0.01, False)        # 0.5 ** 127.15 is subnormal: TF flushes it to 0 (make fuzz)
@example(2000, 20, 0.5, 1e-10, False)       # a normal 0.5 ** 100, a subnormal product
@given(st.integers(0, 10 ** 6), st.integers(1, 200000), st.sampled_from([0.1, 0.5, 0.94, 0.96]),
       st.sampled_from([0.1, 0.01, 1.0]), st.booleans())
def test_exponential_decay(step, decay_steps, rate, lr0, staircase):
    theirs = tf.compat.v1.train.exponential_decay(lr0, step, decay_steps, rate, staircase=staircase)()
    ours = exponential_decay(lr0, step, decay_steps, rate, staircase)
    parity.assert_parity("exponential_decay", "learning rate", np.asarray(ours), theirs.numpy())
    assert ours.dtype == theirs.numpy().dtype == np.float32


def test_exponential_decay_cifar_tutorial():
    decay_steps = int(50000 / 128 * 350)
    steps = [0, 1, 136717, 136718, 136719, 273435, 273436, 400000]
    for staircase in (True, False):
        sched = ExponentialDecay(0.1, decay_steps, 0.1, staircase)
        tf_sched = tf.compat.v1.train.exponential_decay
        ours = np.array([sched(s) for s in steps])
        theirs = np.array([tf_sched(0.1, s, decay_steps, 0.1, staircase=staircase)().numpy() for s in steps])
        parity.assert_parity("exponential_decay", "learning rate", ours, theirs, f"(staircase={staircase})")
    assert ExponentialDecay(0.1, decay_steps, 0.1, True)(136718) == np.float32(0.0100000007)


def test_float32_conventions_bit_exact():
    """docs/tf-conventions.md#optimizers: the TF1 rules are bit-exact in float32, and only
    bit-exactness sees conventions such as float32 (1 - beta1) = 0.100000024 or the float32
    EMA decay; a 1e-6 tolerance cannot tell them from float64 hyperparameters."""
    for make_tb, make_tf in [
            (lambda ps: Momentum(ps, 0.05, 0.9, True), lambda: tf.compat.v1.train.MomentumOptimizer(0.05, 0.9,
                                                                                                     use_nesterov=True)),
            (lambda ps: Adam(ps), lambda: tf.compat.v1.train.AdamOptimizer())]:
        params, variables = run_both(make_tb, make_tf, seed=3)
        for p, v in zip(params, variables):
            np.testing.assert_array_equal(p.data, v.numpy())
    for with_counter in (True, False):     # decay (1 + n)/(10 + n), and the plain 0.9999
        params = [Parameter(np.full(4, 1.0, np.float32))]
        variables = [tf.Variable(params[0].data.copy())]
        counter = tf.Variable(0, dtype=tf.int64)
        ema_tf = tf.train.ExponentialMovingAverage(0.9999, num_updates=counter if with_counter else None)
        ema_tb = ExponentialMovingAverage(0.9999)
        for step in range(1, STEPS + 1):
            params[0].data[...] = np.float32(step) / np.float32(3)
            variables[0].assign(params[0].data)
            counter.assign(step)
            ema_tf.apply(variables)
            ema_tb.apply(params, num_updates=step if with_counter else None)
            np.testing.assert_array_equal(ema_tb.average(params[0]), ema_tf.average(variables[0]).numpy())
