"""The three CIFAR-10 models (tutorial, tutorial_bn, bn) against the same networks in TF.

Weights come from the tinybn model (fixed seed, biases and BN state randomised so
none is a trivial 0 or 1) and are exported into crosscheck/tf_models.TFModel with
tinybn.models.export; both sides then see the same batches of 8 random 24x24x3
images.

float32, one step: logits, loss, every parameter gradient and (BN models) the
    moving statistics after the training-mode forward, at the initial weights and
    again at the weights reached by the 20 steps below.
float64, 20 steps: all parameters and BN moving statistics after 20 optimizer
    steps on 20 different batches, then inference-mode logits (eval() vs
    training=False). The optimizers are the real ones: tutorial models
    GradientDescent(0.1) vs tf.compat.v1.train.GradientDescentOptimizer(0.1); bn
    Adam(exponential_decay(0.04, step, 1000, 0.9, staircase)) vs AdamOptimizer on
    TF's exponential_decay of its global_step (eps 1e-8).

Why the trajectories run in float64: in float32 they part at the first max-pool
near-tie. Two values of a window within float32 noise (~4e-6 here) of each other
make TF and tinybn route that window's gradient to different inputs, an O(1)
change of one pixel's gradient (2.7e-2 of max|dW| measured), which training then
amplifies. Measured with batches of 8: 8 of 10 float32 20-step bn trajectories
(Adam, lr 0.002, eps 1e-4) and 1 of 6 per tutorial model (GD 0.1) hit one and
ended 1e-4..7e-2 apart, while the other runs stayed at ~1e-6. Adam's eps-hat step
lr*g/(|g| + eps/sqrt(1-beta2)) also has slope 1.3e5*lr near g=0, which turns the
noise of the few near-zero gradients into 1e-3 parameter differences at eps 1e-8.
In float64 the same runs, with the real hyperparameters, agree to ~1e-12.
TF has no float64 LRN kernel; tf_models.lrn writes its formula (checked below
against tf.nn.lrn). BN decay is 0.9 here (default 0.999) so that the moving
statistics after 20 steps are mostly batch statistics, not their initial values.

The float32 one-step checks use fixed seeds: a near-tie inside a single step is
possible too (seen in 1 of 20 steps along one bn trajectory, in none of 36 steps
at initial weights) and would show as a backward error of ~1e-2 in one conv kernel.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import parity
from tf_models import TFModel, lrn
from tinybn.models.cifar10 import MODELS
from tinybn.models.export import from_tf_variables, tf_name, tinybn_name, to_tf_variables
from tinybn.optim import Adam, ExponentialDecay, GradientDescent

KINDS = ("tutorial", "tutorial_bn", "bn")
BATCH, STEPS, BN_DECAY = 8, 20, 0.9


def build(kind, seed, dtype=np.float32):
    """A tinybn model (seeded weights, randomised biases and BN state) and its TF twin."""
    kwargs = {} if kind == "tutorial" else {"bn_decay": BN_DECAY}
    model = MODELS[kind](rng=np.random.default_rng(seed), dtype=dtype, **kwargs)
    rng = np.random.default_rng(seed + 1)
    state = model.state_dict()
    for name, a in state.items():
        leaf = name.rpartition("/")[2]
        if leaf in ("bias", "beta", "moving_mean"):
            a += 0.1 * rng.standard_normal(a.shape)
        elif leaf == "gamma":
            a *= np.exp(0.2 * rng.standard_normal(a.shape))
        elif leaf == "moving_variance":
            a[...] = rng.uniform(0.5, 1.5, a.shape)
    model.load_state_dict(state)
    tf_model = TFModel(kind, bn_decay=BN_DECAY, dtype=tf.as_dtype(dtype)).load(to_tf_variables(model))
    return model, tf_model


def batch(rng, dtype=np.float32):
    return rng.standard_normal((BATCH, 24, 24, 3)).astype(dtype), rng.integers(0, 10, BATCH)


def tb_gradients(model, images, labels):
    model.zero_grad()
    logits = model(images)
    loss = model.loss(logits, labels)
    loss.backward()
    return logits, loss, {tf_name(k): p.grad for k, p in model.named_parameters()}


def check_one_step(kind, model, tf_model, images, labels, when):
    """float32 logits, loss, gradients and updated moving statistics of one training forward."""
    key = f"model {kind}"
    logits, loss, grads = tb_gradients(model, images, labels)
    tf_logits, tf_loss, tf_grads = tf_model.gradients(images, labels)
    parity.assert_parity(key, "forward", logits.numpy(), tf_logits.numpy(), f"logits ({when})")
    parity.assert_parity(key, "forward", loss.numpy(), tf_loss.numpy(), f"loss ({when})")
    assert list(grads) == list(tf_grads)
    for name, g in grads.items():
        parity.assert_parity(key, "backward", g, tf_grads[name].numpy(), f"d loss / d {name} ({when})")
    ours, theirs = to_tf_variables(model), tf_model.export()
    for name in ours:
        if "moving" in name:
            parity.assert_parity(key, "forward", ours[name], theirs[name], f"{name} ({when})")
    return loss


@pytest.mark.parametrize("kind", KINDS)
def test_forward_loss_gradients_float32(kind):
    model, tf_model = build(kind, seed=1)
    images, labels = batch(np.random.default_rng(2))
    loss = check_one_step(kind, model, tf_model, images, labels, "initial weights")
    assert 2.0 < float(loss.numpy()) < 6.0       # ln 10 plus the tutorial's weight decay


def train_both(kind, model, tf_model, rng, dtype):
    if kind == "bn":
        opt = Adam(model.named_parameters(), ExponentialDecay(0.04, 1000, 0.9, staircase=True))
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        tf_lr = tf.compat.v1.train.exponential_decay(0.04, global_step, 1000, 0.9, staircase=True)
        tf_opt = tf.compat.v1.train.AdamOptimizer(tf_lr)
    else:
        opt, global_step = GradientDescent(model.named_parameters(), 0.1), None
        tf_opt = tf.compat.v1.train.GradientDescentOptimizer(0.1)
    losses = []
    for _ in range(STEPS):
        images, labels = batch(rng, dtype)
        model.zero_grad()
        loss = model.loss(model(images), labels)
        loss.backward()
        opt.step()
        tf_model.train_step(tf_opt, images, labels, global_step)
        losses.append(float(loss.numpy()))
    assert opt.iterations == STEPS and (global_step is None or int(global_step.numpy()) == STEPS)
    return losses


@pytest.mark.parametrize("kind", KINDS)
def test_20_steps_then_one_float32_step(kind):
    key = f"model {kind}"
    model, tf_model = build(kind, seed=3, dtype=np.float64)
    start = to_tf_variables(model)
    rng = np.random.default_rng(4)
    train_both(kind, model, tf_model, rng, np.float64)

    ours, theirs = to_tf_variables(model), tf_model.export()
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == np.float64
        parity.assert_parity(key, "after 20 steps", ours[name], theirs[name], name)
        # every parameter and moving statistic has moved: the comparison is not of initial values
        assert parity.relative_error(start[name], theirs[name]) > 1e-4, f"{name} did not change"

    images, labels = batch(rng, np.float64)
    logits, tf_logits = model.eval()(images).numpy(), tf_model(images, training=False).numpy()
    parity.assert_parity(key, "after 20 steps", logits, tf_logits, "inference logits")
    assert np.std(tf_logits) > 1e-2      # a dead network (all logits 0) would match trivially
    model.train()

    # the trained weights, in float32, give the same single step in TF and tinybn
    trained = ours
    model32 = MODELS[kind](rng=np.random.default_rng(0), **({} if kind == "tutorial" else {"bn_decay": BN_DECAY}))
    from_tf_variables(model32, trained)
    tf32 = TFModel(kind, bn_decay=BN_DECAY).load(trained)
    check_one_step(kind, model32, tf32, *batch(rng), when="after 20 steps")
    model32.eval()
    parity.assert_parity(key, "forward", model32(images.astype(np.float32)).numpy(),
                         tf32(images.astype(np.float32), training=False).numpy(), "inference logits (float32)")


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip(kind):
    model, tf_model = build(kind, seed=5)
    exported = tf_model.export()        # tinybn -> TF variables -> numpy
    fresh = MODELS[kind](rng=np.random.default_rng(6))
    assert any(not np.array_equal(a, exported[tf_name(k)]) for k, a in fresh.state_dict().items())
    from_tf_variables(fresh, exported)
    state, fresh_state = model.state_dict(), fresh.state_dict()
    assert list(state) == list(fresh_state)
    for name, a in state.items():
        assert fresh_state[name].dtype == a.dtype
        np.testing.assert_array_equal(fresh_state[name], a, err_msg=name)
    images = np.random.default_rng(7).standard_normal((4, 24, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(fresh.eval()(images).numpy(), model.eval()(images).numpy())


def test_export_names():
    names = list(to_tf_variables(MODELS["tutorial"]()))
    assert names == ["conv1/weights", "conv1/biases", "conv2/weights", "conv2/biases",
                     "local3/weights", "local3/biases", "local4/weights", "local4/biases",
                     "softmax_linear/weights", "softmax_linear/biases"]
    assert "bn2/moving_variance" in to_tf_variables(MODELS["tutorial_bn"]())
    assert tf_name("net/bn1/moving_mean") == "bn1/moving_mean"
    assert tinybn_name("local3/weights") == "net/local3/kernel"
    assert tinybn_name("softmax_linear/biases") == "net/softmax_linear/bias"


def test_export_bad_input():
    model = MODELS["bn"]()
    variables = to_tf_variables(model)
    with pytest.raises(ValueError, match="is not under 'net/'"):
        tf_name("conv1/kernel")
    with pytest.raises(ValueError, match="no layer scope"):
        tf_name("net/kernel")
    with pytest.raises(ValueError, match="'conv1/kernel' is not a TF variable name"):
        from_tf_variables(model, {**variables, "conv1/kernel": variables["conv1/weights"]})
    del variables["bn3/gamma"]
    with pytest.raises(ValueError, match=r"missing keys \['net/bn3/gamma'\]"):
        from_tf_variables(model, variables)
    variables["bn3/gamma"] = np.ones(11, np.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        from_tf_variables(model, variables)
    with pytest.raises(ValueError, match=r"load: missing \['conv1/biases', 'conv2/biases'\]; unexpected \['bn1/gamma'"):
        TFModel("tutorial").load(to_tf_variables(MODELS["tutorial_bn"]()))


def test_tf_batch_norm_is_keras_3():
    """TFModel's batch norm is keras.layers.BatchNormalization's training and inference math."""
    rng = np.random.default_rng(8)
    tf_model = TFModel("bn", bn_decay=BN_DECAY)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in tf_model.variables.items()}
    state = {k: np.abs(a) + 0.5 if k.endswith("variance") else a for k, a in state.items()}
    tf_model.load(state)
    layer = keras.layers.BatchNormalization(momentum=BN_DECAY, epsilon=1e-3)
    layer.build((None, 6, 6, 10))
    layer.set_weights([state[f"bn3/{leaf}"] for leaf in ("gamma", "beta", "moving_mean", "moving_variance")])
    x = tf.constant(rng.standard_normal((8, 6, 6, 10)).astype(np.float32) * 3 + 1)
    for training in (True, False):
        np.testing.assert_array_equal(tf_model.batch_norm(x, "bn3", training).numpy(),
                                      layer(x, training=training).numpy())
        np.testing.assert_array_equal(tf_model.variables["bn3/moving_mean"].numpy(), layer.moving_mean.numpy())
        np.testing.assert_array_equal(tf_model.variables["bn3/moving_variance"].numpy(),
                                      layer.moving_variance.numpy())


def test_tf_float64_lrn_is_tf_nn_lrn():
    x = np.random.default_rng(9).standard_normal((2, 5, 5, 64)).astype(np.float32) * 10
    ours = lrn(tf.constant(x, tf.float64)).numpy()
    theirs = tf.nn.lrn(x, 4, 1.0, 0.001 / 9.0, 0.75).numpy()
    parity.assert_parity("local_response_normalization", "forward", ours, theirs, "(float64 formula)")
