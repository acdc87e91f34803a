"""resnet_v2_50 (tinybn.models.resnet_v2) against slim's network in TF (crosscheck/tf_resnet.py).

One network, 10 classes, batches of 2 random 64x64x3 images (end points 32, 16, 8, 4,
2, 2), the same weights on both sides (tinybn's, exported under slim's variable
names): biases, BN gamma/beta randomised so none is a trivial 0 or 1, and realistic
moving statistics (each BN's batch statistics of another batch, through a training
forward with decay 0), so inference mode is not a near-identity.

Compared: logits, every end point, the loss (mean xent + 1e-4 * l2_loss of every
conv kernel), every parameter gradient, and the moving statistics after a
training forward (decay 0.997, Bessel-corrected variance), in training and in
inference mode:
    float32 (TF's fused batch norm kernel, as slim ran it): the forward quantities and
        the moving statistics ("forward" in parity.TOLERANCES["resnet_v2"]);
    float64 (TF's BN from tf.nn.moments + tf.nn.batch_normalization: TF has no float64
        fused kernel): all of them, gradients included ("backward" for the gradients,
        "float64 forward" for the rest).

Why the gradients are compared in float64 only: BN centres every channel, so many
relu inputs lie near 0, and float32 forward errors grow to ~1e-5 (training) through
the 16 units. A relu input that close to 0 can fall on either side: measured against
float64, tinybn float32 and TF float32 each flip 2 (64x64) to 6 (128x128) of the
~10^5..10^6 relu inputs of a training forward, and one flip in a unit whose BN sees
n = 8..32 values moves a kernel gradient by up to 37% (block3/unit_6/conv2 at
128x128), in TF against float64 as much as in tinybn. Inference mode with realistic
moving statistics flips too (a 2.7e-2 gradient difference seen). float64 has none.

In training mode the loss does not depend on the biases of root conv1, the shortcuts
and every conv3: each reaches the loss only through training-mode BNs, which remove
any per-channel constant. Their exact gradient is 0; both frameworks give rounding
noise, checked to be that (<= ZERO_GRAD * the same conv's kernel gradient).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import parity
from tf_resnet import TFResNetV2, parameter_count, variable_shapes
from tinybn.models.resnet_v2 import resnet_v2_50, slim_names, to_slim_variables
from tinybn.nn.batchnorm import BatchNorm
from tinybn.tensor import no_grad

BATCH, SIZE, CLASSES = 2, 64, 10
ZERO_GRAD = 1e-13


def build(dtype):
    """resnet_v2_50 with randomised biases/gamma/beta and moving statistics from a batch."""
    model = resnet_v2_50(num_classes=CLASSES, rng=np.random.default_rng(0), dtype=dtype)
    rng = np.random.default_rng(1)
    state = model.state_dict()
    for name, a in state.items():
        leaf = name.rpartition("/")[2]
        if leaf in ("bias", "beta"):
            a += 0.1 * rng.standard_normal(a.shape)
        elif leaf == "gamma":
            a *= np.exp(0.2 * rng.standard_normal(a.shape))
    model.load_state_dict(state)
    norms = [m for _, m in model.named_modules() if isinstance(m, BatchNorm)]
    for bn in norms:
        bn.decay = 0.0
    with no_grad():
        model.train()(batch(rng, dtype)[0])
    for bn in norms:
        bn.decay = 0.997
    return model


def batch(rng, dtype):
    return rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(dtype), rng.integers(0, CLASSES, BATCH)


@pytest.fixture(scope="module")
def models():
    return {np.float32: build(np.float32), np.float64: build(np.float64)}


def run_both(model, dtype, training, seed):
    """tinybn's and TF's (logits, end points, loss, {slim name: gradient}) on one batch."""
    tf_model = TFResNetV2(50, CLASSES, dtype=tf.as_dtype(dtype)).load(to_slim_variables(model))
    images, labels = batch(np.random.default_rng(seed), dtype)
    model.train(training)
    model.zero_grad()
    logits, end_points = model(images)
    loss = model.loss(logits, labels)
    loss.backward()
    names = slim_names(model)
    ours = (logits.numpy(), {k: v.numpy() for k, v in end_points.items()}, loss.numpy(),
            {names[k]: p.grad for k, p in model.named_parameters()})
    t_logits, t_loss, t_end_points, t_grads = tf_model.gradients(images, labels, training=training)
    theirs = (t_logits.numpy(), {k: v.numpy() for k, v in t_end_points.items()}, t_loss.numpy(),
              {k: g.numpy() for k, g in t_grads.items()})
    return ours, theirs, tf_model


def check_forward(direction, ours, theirs, when):
    parity.assert_parity("resnet_v2", direction, ours[0], theirs[0], f"logits ({when})")
    parity.assert_parity("resnet_v2", direction, ours[2], theirs[2], f"loss ({when})")
    assert list(ours[1]) == list(theirs[1]) == [
        "resnet_v2_50/block1", "resnet_v2_50/block2", "resnet_v2_50/block3", "resnet_v2_50/block4",
        "global_pool", "resnet_v2_50/logits", "resnet_v2_50/spatial_squeeze", "predictions"]
    for name, value in ours[1].items():
        parity.assert_parity("resnet_v2", direction, value, theirs[1][name], f"{name} ({when})")
    assert np.std(theirs[0]) > 1e-2          # a dead network (constant logits) would match trivially


def check_gradients(ours, theirs, training, when):
    grads, tf_grads = ours[3], theirs[3]
    assert sorted(grads) == sorted(tf_grads)
    for name, g in grads.items():
        if training and name.endswith("/biases") and not name.endswith("/logits/biases"):
            scale = np.abs(tf_grads[name.replace("/biases", "/weights")]).max()
            for side, value in (("tinybn", g), ("tf", tf_grads[name])):
                assert np.abs(value).max() <= ZERO_GRAD * scale, f"{side} d loss / d {name} is not 0"
            continue
        parity.assert_parity("resnet_v2", "backward", g, tf_grads[name], f"d loss / d {name} ({when})")


def check_moving(direction, model, tf_model, when):
    ours, theirs = to_slim_variables(model), tf_model.export()
    moving = [k for k in ours if "/moving_" in k]
    assert len(moving) == 2 * (3 * 16 + 1)      # preact, conv1 and conv2 BN of 16 units, postnorm
    for name in moving:
        parity.assert_parity("resnet_v2", direction, ours[name], theirs[name], f"{name} ({when})")


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_forward_float32(models, training):
    model = models[np.float32]
    before = to_slim_variables(model)
    ours, theirs, tf_model = run_both(model, np.float32, training, seed=2)
    when = f"{'training' if training else 'inference'}, float32"
    check_forward("forward", ours, theirs, when)
    after = to_slim_variables(model)
    if training:
        check_moving("forward", model, tf_model, "after a training forward, float32")
        assert parity.relative_error(after["resnet_v2_50/postnorm/moving_mean"],
                                     before["resnet_v2_50/postnorm/moving_mean"]) > 1e-5
        assert 2.3 < float(ours[2]) < 6.0       # ln 10 plus ~0.7 of weight decay
    else:
        assert all(np.array_equal(before[k], after[k]) for k in before)  # eval() changes no statistic


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_forward_and_gradients_float64(models, training):
    model = models[np.float64]
    ours, theirs, tf_model = run_both(model, np.float64, training, seed=3)
    when = f"{'training' if training else 'inference'}, float64"
    check_forward("float64 forward", ours, theirs, when)
    check_gradients(ours, theirs, training, when)
    if training:
        check_moving("float64 forward", model, tf_model, "after a training forward, float64")


def test_variables_are_slims_and_counts_are_keras_resnet50v2():
    model = resnet_v2_50(num_classes=1000, rng=np.random.default_rng(5))
    ours = {name: array.shape for name, array in to_slim_variables(model).items()}
    assert ours == dict(variable_shapes(50, 1000))
    trainable = sum(p.size for p in model.parameters())
    moving = sum(b.size for _, b in model.named_buffers())
    assert (trainable, moving) == parameter_count(50, 1000) == (25_568_360, 45_440)
    # keras.applications.ResNet50V2 is the same architecture written independently (its
    # pool1 pads with zeros where slim's SAME pool ignores the padding, which changes no count)
    keras_model = keras.applications.ResNet50V2(weights=None, classes=1000)
    assert sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights) == trainable
    assert sum(int(np.prod(w.shape)) for w in keras_model.non_trainable_weights) == moving
