"""The fast CIFAR model (tinybn.models.cifar_fast) against the same network written in tf.nn.

TF's side is built here from tf.nn ops and the model's own weights, looked up by name:
tf.nn.conv2d (the frozen whitening kernel, VALID, + bias; every block conv SAME, no bias),
tf.nn.max_pool2d, tf.nn.moments + tf.nn.batch_normalization (batch statistics over N, H, W,
no scale, epsilon 1e-12), tf.nn.gelu (the exact form: TF's float32-rounded 1/sqrt(2), as
tinybn's), a matmul without bias, logits / 9 and Keras's categorical_crossentropy with
label_smoothing 0.2 on tf.one_hot labels, summed over the batch.

One training step in float64 (a narrow model, widths 8/16/16, batch 4): the logits, the loss,
the gradient of every parameter (tf.GradientTape; the whitening kernel is a buffer and gets
none) and the BN moving statistics after the step, whose closed form is
    moving = decay * moving + (1 - decay) * batch statistic,   variance * n / (n - 1) (Bessel),
with decay 0.6 and n = N*H*W, from TF's moments. Limits: parity.TOLERANCES["model fast"].
"""
import numpy as np
import pytest
import tensorflow as tf

import parity
from tinybn import Tensor
from tinybn.models.cifar_fast import HYPERPARAMETERS, fast
from tinybn.nn.batchnorm import BatchNorm

WIDTHS = (8, 16, 16)
EPS = HYPERPARAMETERS["batchnorm_epsilon"]
DECAY = HYPERPARAMETERS["batchnorm_decay"]


def tf_fast(weights, x, labels, statistics):
    """The fast network in tf.nn on `weights` (name -> tf.Variable or constant); appends each
    BN's batch (mean, variance) to `statistics`; returns (logits, summed loss)."""
    def norm(h, prefix):
        mean, var = tf.nn.moments(h, axes=[0, 1, 2])
        statistics.append((prefix, mean, var, int(np.prod(h.shape[:3]))))
        return tf.nn.batch_normalization(h, mean, var, weights[prefix + "/beta"], None, EPS)

    h = tf.nn.conv2d(x, weights["net/whiten/kernel"], 1, "VALID") + weights["net/whiten/bias"]
    h = tf.nn.gelu(h, approximate=False)
    for block in ("block1", "block2", "block3"):
        p = f"net/{block}/"
        h = tf.nn.conv2d(h, weights[p + "conv1/kernel"], 1, "SAME")
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.gelu(norm(h, p + "norm1"), approximate=False)
        h = tf.nn.conv2d(h, weights[p + "conv2/kernel"], 1, "SAME")
        h = tf.nn.gelu(norm(h, p + "norm2"), approximate=False)
    h = tf.nn.max_pool2d(h, 3, 3, "VALID")
    logits = tf.matmul(tf.reshape(h, [h.shape[0], -1]), weights["net/dense/kernel"]) * (1 / 9)
    onehot = tf.one_hot(labels, 10, dtype=logits.dtype)
    loss = tf.reduce_sum(tf.keras.losses.categorical_crossentropy(onehot, logits, from_logits=True,
                                                                  label_smoothing=0.2))
    return logits, loss


@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_equals_tf_nn_network_float64(seed):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((4, 32, 32, 3))
    labels = rng.integers(0, 10, 4)
    model = fast(rng=np.random.default_rng(seed), dtype=np.float64, whitening_images=images, widths=WIDTHS)
    model.whitening.bias.data[...] = rng.standard_normal(24) * 0.1      # zeros at init: give it a value
    params = dict(model.named_parameters())
    buffers = {n: b.data.copy() for n, b in model.named_buffers()}
    weights = {n: tf.Variable(p.data.copy()) for n, p in params.items()}
    weights["net/whiten/kernel"] = tf.constant(buffers["net/whiten/kernel"])

    statistics = []
    with tf.GradientTape() as tape:
        tf_logits, tf_loss = tf_fast(weights, tf.constant(images), tf.constant(labels), statistics)
    tf_grads = dict(zip(params, tape.gradient(tf_loss, [weights[n] for n in params])))

    logits = model(Tensor(images))
    loss = model.loss(logits, labels)
    loss.backward()

    parity.assert_parity("model fast", "forward", logits.data, tf_logits.numpy(), "logits",
                         elementwise=parity.ELEMENTWISE["float64"])
    parity.assert_parity("model fast", "forward", loss.data, tf_loss.numpy(), "loss")
    assert set(tf_grads) == set(params) and model.whitening.kernel.grad is None
    for name, p in params.items():
        assert p.grad is not None, name
        parity.assert_parity("model fast", "backward", p.grad, tf_grads[name].numpy(), name)

    norms = {n: m for n, m in model.named_modules() if isinstance(m, BatchNorm)}
    assert len(statistics) == len(norms) == 6
    for prefix, mean, var, n in statistics:
        bn = norms[prefix + "/"]
        want_mean = DECAY * buffers[prefix + "/moving_mean"] + (1 - DECAY) * mean.numpy()
        want_var = DECAY * buffers[prefix + "/moving_variance"] + (1 - DECAY) * var.numpy() * n / (n - 1)
        parity.assert_parity("model fast", "moving statistics", bn.moving_mean.data, want_mean, prefix)
        parity.assert_parity("model fast", "moving statistics", bn.moving_variance.data, want_var, prefix)
