"""The two MNIST models (tinybn.models.mnist) against the same networks in TF, float32, batch 8.

TF side: eager tf.nn ops on tf.Variables holding tinybn's weights (state_dict names),
batch norm as Keras 3 runs it (tf.nn.moments, population variance; moving = moving *
decay + batch * (1 - decay) assigned; tf.nn.batch_normalization), the loss as the
seed's code writes it: reduce_mean(sparse xent), plus for fc-bn
0.001 * (l2_loss(w1) + l2_loss(b1) + l2_loss(w2) + l2_loss(b2)).

Compared for one training-mode step: logits, loss, the gradient of every parameter,
the moving statistics after the step; then inference-mode logits (moving statistics).
Biases, gamma, beta and the moving statistics are randomised first, so no comparison
is of a trivial 0 or 1.

Two gradients are compared differently, for reasons of the math, not of tinybn:
- cnn_bn's conv1/conv2 gradients (upstream of the max pools) in float64 only: in
  float32 two values of a 2x2 window within rounding of each other (~1e-7) send that
  window's gradient to different pixels in TF and tinybn, 1e-2 of max|dW| (seen with
  seed 2; crosscheck/test_tf_models.py measured the same on CIFAR). Everything
  downstream of the pools is compared in float32 as well.
- fc-bn's bn_input/beta and hidden/bias get no cross-entropy gradient in exact
  arithmetic: each shifts every row of the batch by the same vector on its way into
  bn_hidden, which subtracts the batch mean. Their gradients are 0 and 0.001 * bias
  (the L2 term) plus rounding noise of ~1e-9 on each side, so each side is checked
  against that closed form to 1e-5 of the largest gradient instead of to the other.
"""
import numpy as np
import pytest
import tensorflow as tf

import parity
from tinybn.models.mnist import BN_DECAY, BN_EPSILON, L2_BETA, MODELS
from tinybn.tensor import Tensor

BATCH = 8


def build(name, seed, dtype):
    model = MODELS[name](rng=np.random.default_rng(seed), dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    state = model.state_dict()
    for key, a in state.items():
        leaf = key.rpartition("/")[2]
        if leaf in ("bias", "beta", "moving_mean"):
            a += 0.1 * rng.standard_normal(a.shape).astype(a.dtype)
        elif leaf == "gamma":
            a *= np.exp(0.2 * rng.standard_normal(a.shape)).astype(a.dtype)
        elif leaf == "moving_variance":
            a[...] = rng.uniform(0.5, 1.5, a.shape)
    model.load_state_dict(state)
    variables = {k: tf.Variable(v, trainable=not k.rpartition("/")[2].startswith("moving"), name=k.replace("/", "_"))
                 for k, v in state.items()}
    return model, variables


def tf_bn(v, x, prefix, training):
    mean, var = v[prefix + "moving_mean"], v[prefix + "moving_variance"]
    if training:
        mean, var = tf.nn.moments(x, list(range(len(x.shape) - 1)))
        v[prefix + "moving_mean"].assign(v[prefix + "moving_mean"] * BN_DECAY + mean * (1.0 - BN_DECAY))
        v[prefix + "moving_variance"].assign(v[prefix + "moving_variance"] * BN_DECAY + var * (1.0 - BN_DECAY))
    return tf.nn.batch_normalization(x, mean, var, v[prefix + "beta"], v[prefix + "gamma"], BN_EPSILON)


def tf_cnn_bn(v, x, training):
    for conv in ("conv1", "conv2"):
        x = tf.nn.conv2d(x, v[f"net/{conv}/kernel"], strides=1, padding="SAME") + v[f"net/{conv}/bias"]
        x = tf.nn.max_pool2d(tf.nn.relu(x), ksize=2, strides=2, padding="SAME")
    x = tf_bn(v, tf.reshape(x, [x.shape[0], -1]), "net/bn/", training)
    x = tf.nn.relu(tf.matmul(x, v["net/fc1/kernel"]) + v["net/fc1/bias"])
    return tf.matmul(x, v["net/fc2/kernel"]) + v["net/fc2/bias"]


def tf_fc_bn(v, x, training):
    x = tf_bn(v, tf.reshape(x, [x.shape[0], -1]), "net/bn_input/", training)
    x = tf.matmul(x, v["net/hidden/kernel"]) + v["net/hidden/bias"]
    x = tf.nn.relu(tf_bn(v, x, "net/bn_hidden/", training))
    return tf.matmul(x, v["net/logits/kernel"]) + v["net/logits/bias"]


def tf_loss(name, v, logits, labels):
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    if name == "fc-bn":
        loss += L2_BETA * tf.add_n([tf.nn.l2_loss(v[f"net/{layer}/{p}"])
                                    for layer in ("hidden", "logits") for p in ("kernel", "bias")])
    return loss


TF_MODELS = {"cnn_bn": tf_cnn_bn, "fc-bn": tf_fc_bn}


CASES = [("cnn_bn", np.float32), ("cnn_bn", np.float64), ("fc-bn", np.float32)]


def shift_only(name, k, v):
    """The closed-form gradient of a parameter that only shifts bn_hidden's input, else None."""
    if name == "fc-bn" and k == "net/bn_input/beta":
        return np.zeros(v[k].shape)
    if name == "fc-bn" and k == "net/hidden/bias":
        return L2_BETA * v[k].numpy().astype(np.float64)
    return None


def before_pools(name, k, dtype):
    return name == "cnn_bn" and dtype == np.float32 and k.startswith(("net/conv1/", "net/conv2/"))


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name, dtype", CASES)
def test_training_step_and_inference_match_tf(name, dtype, seed):
    key = f"model {name}"
    model, v = build(name, seed, dtype)
    rng = np.random.default_rng(seed + 10)
    images = rng.random((BATCH, 28, 28, 1)).astype(dtype)
    labels = rng.integers(0, 10, BATCH).astype(np.int32)

    logits = model(Tensor(images))
    loss = model.loss(logits, labels)
    model.zero_grad()
    loss.backward()
    trainable = [k for k, var in v.items() if var.trainable]
    with tf.GradientTape() as tape:
        tf_logits = TF_MODELS[name](v, tf.constant(images), training=True)
        tf_l = tf_loss(name, v, tf_logits, tf.constant(labels))
    tf_grads = dict(zip(trainable, tape.gradient(tf_l, [v[k] for k in trainable])))

    parity.assert_parity(key, "forward", logits.numpy(), tf_logits.numpy(), "training logits")
    parity.assert_parity(key, "forward", loss.numpy(), tf_l.numpy(), "loss")
    params = dict(model.named_parameters())
    assert sorted(params) == sorted(trainable)
    scale = max(np.abs(g.numpy()).max() for g in tf_grads.values())
    for k in trainable:
        ours, theirs = params[k].grad, tf_grads[k].numpy()
        expected = shift_only(name, k, v)
        if expected is not None:
            assert max(np.abs(ours - expected).max(), np.abs(theirs - expected).max()) < 1e-5 * scale, k
        elif not before_pools(name, k, dtype):
            parity.assert_parity(key, "backward", ours, theirs, f"d loss / d {k} ({np.dtype(dtype)})")
    for k, b in model.named_buffers():
        parity.assert_parity(key, "moving statistics", b.numpy(), v[k].numpy(), k)

    model.eval()
    ours = model(Tensor(images)).numpy()
    theirs = TF_MODELS[name](v, tf.constant(images), training=False).numpy()
    parity.assert_parity(key, "forward", ours, theirs, "inference logits")
    assert np.std(theirs) > 1e-2 and parity.relative_error(ours, tf_logits.numpy()) > 1e-3   # not batch stats
