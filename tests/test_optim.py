"""Optimizers, schedules and moving averages: hand-computed steps and TF's documented values."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from tinybn.nn.module import Parameter
from tinybn.optim import (Adam, ExponentialDecay, ExponentialMovingAverage, GradientDescent, Momentum,
                          exponential_decay)
from tinybn.tasks.cifar import make_optimizer

f32 = np.float32


def _param(values, grad=None):
    p = Parameter(np.array(values, np.float32))
    p.grad = None if grad is None else np.array(grad, np.float32)
    return p


def test_gradient_descent_one_step():
    p = _param([1.0, -2.0], [0.5, 1.0])
    GradientDescent([p], 0.1).step()
    np.testing.assert_array_equal(p.data, [f32(1) - f32(0.1) * f32(0.5), f32(-2) - f32(0.1)])
    np.testing.assert_allclose(p.data, [0.95, -2.1], rtol=1e-7)


def test_momentum_two_steps_plain_and_nesterov():
    p, q = _param([1.0], [1.0]), _param([1.0], [1.0])
    plain, nesterov = Momentum([p], 0.1, 0.9), Momentum([q], 0.1, 0.9, use_nesterov=True)
    for _ in range(2):
        plain.step()
        nesterov.step()
    # accum 1 then 1.9; plain: 1 - .1 - .19; nesterov: 1 - (.1 + .09) - (.1 + .171)
    np.testing.assert_allclose(p.data, [0.71], rtol=1e-6)
    np.testing.assert_allclose(q.data, [0.539], rtol=1e-6)
    np.testing.assert_allclose(plain.slots["Momentum"][0], [1.9], rtol=1e-7)


def test_momentum_rescales_whole_velocity_when_lr_changes():
    p = _param([0.0], [1.0])
    opt = Momentum([p], lambda step: 1.0 if step == 0 else 10.0, 0.5)
    opt.step()
    opt.step()              # accum = 1.5, all of it at the new lr 10 (TF1's rule)
    np.testing.assert_allclose(p.data, [-1.0 - 15.0], rtol=1e-7)


def test_adam_constant_gradient_moves_lr_per_step():
    p = _param([1.0, 1.0], [2.0, -0.5])
    opt = Adam([p], learning_rate=0.01)
    opt.step()
    assert opt.slots["Adam"][0][0] == f32(2) * f32(0.100000024)    # float32 (1 - beta1)
    one_minus_beta2 = float(f32(1) - f32(0.999))             # 0.00099998713, not 0.001
    np.testing.assert_allclose(opt.slots["Adam_1"][0], [4 * one_minus_beta2, 0.25 * one_minus_beta2], rtol=1e-6)
    # m_hat / sqrt(v_hat) = sign(g) for a constant gradient; eps is negligible here
    np.testing.assert_allclose(p.data, [0.99, 1.01], rtol=1e-6)
    opt.step()
    np.testing.assert_allclose(p.data, [0.98, 1.02], rtol=1e-6)
    # initialised to beta, multiplied by beta after each step: beta ** 3 after two steps
    assert opt.beta1_power == f32(0.9) * f32(0.9) * f32(0.9)
    assert opt.beta2_power == f32(0.999) * f32(0.999) * f32(0.999)


def test_adam_epsilon_hat_placement():
    # eps = 1 is added to sqrt(v) without bias correction. Step 1 with c = 1 - beta2 (float32):
    # alpha = sqrt(c) / (1 - beta1), m = (1 - beta1) g, v = c g^2, so the step is sqrt(c) / (sqrt(c) + 1)
    p = _param([0.0], [1.0])
    Adam([p], learning_rate=1.0, epsilon=1.0).step()
    c = float(f32(1) - f32(0.999))
    np.testing.assert_allclose(-p.data, [np.sqrt(c) / (np.sqrt(c) + 1)], rtol=1e-6)
    textbook = 1.0 / (1.0 + 1.0)         # m_hat / (sqrt(v_hat) + eps) with g = 1
    assert abs(-p.data[0] - textbook) > 0.4


def test_schedule_read_at_pre_increment_step_and_none_grads_skipped():
    p, q = _param([0.0], [1.0]), _param([5.0])
    seen = []
    opt = GradientDescent([p, q], lambda step: seen.append(step) or 1.0)
    opt.step()
    opt.step()
    assert seen == [0, 1] and opt.iterations == 2
    np.testing.assert_array_equal(p.data, [-2.0])
    np.testing.assert_array_equal(q.data, [5.0])
    opt.zero_grad()
    assert p.grad is None and q.grad is None


@pytest.mark.parametrize("make", [lambda ps: GradientDescent(ps, 0.1), lambda ps: Momentum(ps, 0.1, 0.9, True),
                                  lambda ps: Adam(ps, 0.01)])
def test_state_dict_round_trip(make):
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal((2, 3)).astype(f32), rng.standard_normal(4).astype(f32)] for _ in range(5)]
    a = [_param(np.ones((2, 3))), _param(np.zeros(4))]
    opt_a = make(list(zip(["w", "b"], a)))
    for g in grads[:3]:
        for p, gi in zip(a, g):
            p.grad = gi
        opt_a.step()
    state = opt_a.state_dict()
    b = [_param(p.data.copy()) for p in a]
    opt_b = make(list(zip(["w", "b"], b))).load_state_dict(state)
    assert opt_b.iterations == 3
    for g in grads[3:]:
        for ps in (a, b):
            for p, gi in zip(ps, g):
                p.grad = gi
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_state_dict_names_and_mismatch():
    p = _param(np.zeros((2, 2)))
    opt = Adam([("conv1/weights", p)])
    assert set(opt.state_dict()) == {"iterations", "beta1_power", "beta2_power",
                                     "conv1/weights/Adam", "conv1/weights/Adam_1"}
    state = opt.state_dict()
    del state["beta1_power"]
    with pytest.raises(ValueError, match=r"missing keys \['beta1_power'\]"):
        opt.load_state_dict(state)
    state = opt.state_dict()
    state["conv1/weights/Adam"] = np.zeros(3)
    with pytest.raises(ValueError, match="shape mismatch.*conv1/weights/Adam: expected"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match=r"unexpected keys \['0/Momentum'\]"):
        GradientDescent([p], 0.1).load_state_dict({"iterations": 0, "0/Momentum": np.zeros((2, 2))})


def test_optimizer_bad_inputs():
    with pytest.raises(ValueError, match="params is empty"):
        GradientDescent([], 0.1)
    with pytest.raises(ValueError, match=r"params\[0\] must be a Parameter"):
        GradientDescent([np.zeros(3)], 0.1)
    p = _param([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="gradient of '0' has shape"):
        GradientDescent([p], 0.1).step()


def test_ema_decay_sequence_float32():
    ema = ExponentialMovingAverage(0.9999)
    decays = [ema.effective_decay(n) for n in range(6)]
    np.testing.assert_allclose(decays, [0.1, 2 / 11, 0.25, 4 / 13, 5 / 14, 0.4], rtol=1e-7)
    assert all(isinstance(d, np.float32) for d in decays)
    assert decays[1] == f32(2) / f32(11)
    assert ExponentialMovingAverage(0.9).effective_decay() == f32(0.9)
    assert ExponentialMovingAverage(0.9, num_updates=10 ** 6).effective_decay() == f32(0.9)


def test_ema_first_apply_copies_then_averages():
    p = _param([5.0])
    ema = ExponentialMovingAverage(0.9)
    ema.apply([p])
    assert ema.average(p) is not p.data
    np.testing.assert_array_equal(ema.average(p), [5.0])
    p.data[...] = 10.0
    ema.apply([p])
    np.testing.assert_allclose(ema.average(p), [5.5], rtol=1e-7)


def test_ema_tutorial_order_uses_incremented_global_step():
    p = _param([0.0], [-1.0])
    opt = GradientDescent([p], 1.0)
    ema = ExponentialMovingAverage(0.9999, num_updates=lambda: opt.iterations)
    ema.apply([p])              # shadow = 0
    opt.step()                  # p = 1, iterations = 1
    ema.apply([p])              # decay 2/11: shadow = 1 - 2/11
    np.testing.assert_allclose(ema.average(p), [9 / 11], rtol=1e-6)


def test_ema_swap_back_even_on_exception():
    p, q = _param([1.0]), _param([2.0])
    ema = ExponentialMovingAverage(0.5)
    ema.apply([("a", p), ("b", q)])
    p.data[...] = 3.0
    ema.apply([("a", p), ("b", q)])          # shadow a = 1 - (1 - 3) * .5 = 2
    with ema.average_weights([p, q]):
        np.testing.assert_array_equal(p.data, [2.0])
        np.testing.assert_array_equal(ema.average(p), [2.0])
        with pytest.raises(RuntimeError, match="swap back first"):
            ema.apply([p])
    np.testing.assert_array_equal(p.data, [3.0])
    with pytest.raises(ZeroDivisionError):
        with ema.average_weights():
            np.testing.assert_array_equal(p.data, [2.0])
            1 / 0
    np.testing.assert_array_equal(p.data, [3.0])
    np.testing.assert_array_equal(ema.average(p), [2.0])


def test_ema_state_dict_round_trip_and_mismatch():
    p = _param([[1.0, 2.0]])
    ema = ExponentialMovingAverage(0.5)
    ema.apply([("conv1/weights", p)])
    p.data[...] = 3.0
    ema.apply([("conv1/weights", p)])
    state = ema.state_dict()
    assert list(state) == ["conv1/weights/ExponentialMovingAverage"]
    fresh_p = _param([[0.0, 0.0]])
    fresh = ExponentialMovingAverage(0.5).load_state_dict(state, [("conv1/weights", fresh_p)])
    np.testing.assert_array_equal(fresh.average(fresh_p), [[2.0, 2.5]])
    np.testing.assert_array_equal(fresh_p.data, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        ExponentialMovingAverage(0.5).load_state_dict(state, [("other", _param([[0.0, 0.0]]))])
    with pytest.raises(ValueError, match="shape mismatch"):
        ExponentialMovingAverage(0.5).load_state_dict(state, [("conv1/weights", _param([0.0]))])
    with pytest.raises(ValueError, match="decay must be in"):
        ExponentialMovingAverage(1.5)
    with pytest.raises(ValueError, match="not averaged"):
        ema.average(_param([0.0]))


@pytest.mark.parametrize("batch_size, decay_steps", [(128, 136718), (100, 175000), (256, 68359)])
def test_tutorial_schedule_decays_every_350_epochs(batch_size, decay_steps):
    # decay_steps = int(50000 / batch_size * 350): the tutorial's 350 epochs of 50000 images, truncated
    opt = make_optimizer("tutorial", [("w", _param([1.0]))], batch_size)
    assert isinstance(opt, GradientDescent) and opt.learning_rate.decay_steps == decay_steps
    for step, lr in [(0, f32(0.1)), (decay_steps - 1, f32(0.1)), (decay_steps, f32(0.0100000007)),
                     (2 * decay_steps - 1, f32(0.0100000007)), (2 * decay_steps, f32(0.00100000005))]:
        opt.iterations = step
        assert opt.current_learning_rate() == lr and opt.current_learning_rate().dtype == np.float32
    assert exponential_decay(0.1, decay_steps, decay_steps, 0.1, staircase=True) == f32(0.1) * f32(0.1)


def test_exponential_decay_flushes_subnormals_to_zero_as_tf():
    # TF's values: 0.5 ** 127.15 = 5.3e-39 is subnormal in float32, and so is 1e-10 * 0.5 ** 100 = 7.9e-41
    assert exponential_decay(0.01, 2543, 20, 0.5) == 0
    assert exponential_decay(1e-10, 2000, 20, 0.5) == 0
    smallest_kept = exponential_decay(1.0, 2503, 20, 0.5)          # 0.5 ** 125.15 = 2.1e-38, normal
    assert smallest_kept == np.power(f32(0.5), f32(2503) / f32(20)) and smallest_kept > np.finfo(np.float32).tiny


def test_bn_model_schedule_is_adam_decaying_every_1000_steps():
    opt = make_optimizer("bn", [("w", _param([1.0]))], 128)
    assert isinstance(opt, Adam) and isinstance(opt.learning_rate, ExponentialDecay)
    for step, lr in [(0, f32(0.04)), (999, f32(0.04)), (1000, f32(0.04) * f32(0.9)),
                     (2500, f32(0.04) * np.power(f32(0.9), f32(2)))]:
        opt.iterations = step
        assert opt.current_learning_rate() == lr


@settings(max_examples=25, deadline=None)
@example(step=103, decay_steps=1, rate=0.8796256610342398)     # found by make fuzz (see below)
@given(step=st.integers(0, 10 ** 6), decay_steps=st.integers(1, 10 ** 5), rate=st.floats(0.05, 0.99))
def test_exponential_decay_continuous_closed_form(step, decay_steps, rate):
    lr = exponential_decay(0.5, step, decay_steps, rate)
    # The closed form in float64 on TF's float32 operands: rate and p = step/decay_steps are rounded
    # to float32 before the pow, and rate**p multiplies their rounding errors by up to |p ln rate|
    # (~100 before the result underflows), so the float64 rate's value is 1e-5 away at worst.
    # A result below float32's smallest normal is flushed to 0, as TF's kernels do (atol).
    p = np.float64(np.float32(step) / np.float32(decay_steps))
    np.testing.assert_allclose(lr, 0.5 * np.float64(np.float32(rate)) ** p, rtol=4e-7, atol=np.finfo(np.float32).tiny)
    assert lr == 0 or lr >= np.finfo(np.float32).tiny
    with pytest.raises(ValueError, match="decay_steps must be positive"):
        exponential_decay(0.5, step, 0, rate)
