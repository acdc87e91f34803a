"""The three CIFAR-10 models of tinybn.models.cifar10, written again in TensorFlow 2.

Eager TF with tf.Variables named as the tutorial names them ("conv1/weights",
"bn1/moving_mean"; see tinybn.models.export), built only from tf.nn ops:

    tutorial      conv1 -> relu -> max 3x3/2 SAME -> lrn -> conv2 -> relu -> lrn -> max 3x3/2 SAME
                  -> reshape -> local3 relu -> local4 relu -> softmax_linear
                  (tensorflow/models tutorials/image/cifar10/cifar10.py, inference())
    tutorial_bn   the same with batch norm between each conv (no biases) and its relu
    bn            conv1 -> bn1 -> relu -> max 2x2/2 SAME -> conv2 -> bn2 -> relu -> max 2x2/2 SAME
                  -> conv3 -> bn3 -> relu -> avg 6x6 VALID -> reshape

Batch norm is Keras 3's BatchNormalization written out (its TF backend calls exactly
these ops): tf.nn.moments (population variance) and tf.nn.batch_normalization in
training, with moving = moving * decay + batch * (1 - decay) assigned before the
normalisation; the moving statistics in inference. The loss is the tutorial's
total_loss: reduce_mean(sparse xent) + 0.004 * l2_loss of local3 and local4 weights.

Models are float32 (TF's kernels) or float64. TF registers tf.nn.lrn for half,
bfloat16 and float32 only, so in float64 the LRN is its op-doc formula written with
tf ops (window clipped at the channel edges, alpha times the raw sum of squares;
docs/tf-conventions.md#lrn) and differentiated by the tape.

The variable list of each model is written down here, independently of tinybn, so
an export with a wrong name or shape fails in TFModel.load.
"""
from collections import OrderedDict

import numpy as np
import tensorflow as tf

LRN_ARGS = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
WEIGHT_DECAY = {"local3/weights": 0.004, "local4/weights": 0.004}
BN_LEAVES = ("gamma", "beta", "moving_mean", "moving_variance")
MOVING = ("moving_mean", "moving_variance")


def _bn_vars(name, c):
    return [(f"{name}/{leaf}", (c,)) for leaf in BN_LEAVES]


def _tutorial_shapes(batch_norm):
    conv1 = [("conv1/weights", (5, 5, 3, 64))] + (_bn_vars("bn1", 64) if batch_norm else [("conv1/biases", (64,))])
    conv2 = [("conv2/weights", (5, 5, 64, 64))] + (_bn_vars("bn2", 64) if batch_norm else [("conv2/biases", (64,))])
    dense = [("local3/weights", (2304, 384)), ("local3/biases", (384,)),
             ("local4/weights", (384, 192)), ("local4/biases", (192,)),
             ("softmax_linear/weights", (192, 10)), ("softmax_linear/biases", (10,))]
    return conv1 + conv2 + dense


SHAPES = {
    "tutorial": _tutorial_shapes(False),
    "tutorial_bn": _tutorial_shapes(True),
    "bn": ([("conv1/weights", (5, 5, 3, 64))] + _bn_vars("bn1", 64) + [("conv2/weights", (5, 5, 64, 64))]
           + _bn_vars("bn2", 64) + [("conv3/weights", (5, 5, 64, 10))] + _bn_vars("bn3", 10)),
}


def lrn(x):
    """tf.nn.lrn(x, 4, 1.0, 0.001/9, 0.75); in float64 from its formula, as TF has no kernel."""
    if x.dtype != tf.float64:
        return tf.nn.lrn(x, **LRN_ARGS)
    r, depth = LRN_ARGS["depth_radius"], x.shape[-1]
    squares = tf.pad(tf.square(x), [[0, 0], [0, 0], [0, 0], [r, r]])     # zeros: clipped window
    sqr_sum = tf.add_n([squares[..., k:k + depth] for k in range(2 * r + 1)])
    return x * tf.pow(LRN_ARGS["bias"] + LRN_ARGS["alpha"] * sqr_sum, -LRN_ARGS["beta"])


class TFModel:
    """One of the three networks on tf.Variables: model(images, training) -> logits."""

    def __init__(self, kind, bn_decay=0.999, bn_epsilon=1e-3, dtype=tf.float32):
        if kind not in SHAPES:
            raise ValueError(f"TFModel: kind must be one of {sorted(SHAPES)}, got {kind!r}")
        self.kind, self.bn_decay, self.bn_epsilon = kind, bn_decay, bn_epsilon
        self.variables = OrderedDict(
            (name, tf.Variable(tf.zeros(shape, dtype), trainable=name.rpartition("/")[2] not in MOVING))
            for name, shape in SHAPES[kind])

    # --- weights -------------------------------------------------------------
    def load(self, arrays):
        """Assign {name: array}; the names and shapes must be exactly this model's."""
        missing = [k for k in self.variables if k not in arrays]
        unexpected = [k for k in arrays if k not in self.variables]
        wrong = [k for k, v in self.variables.items() if k in arrays and tuple(np.shape(arrays[k])) != tuple(v.shape)]
        problems = [f"{what} {names}" for what, names in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
        if problems:
            raise ValueError(f"TFModel({self.kind!r}).load: " + "; ".join(problems))
        for name, v in self.variables.items():
            v.assign(np.asarray(arrays[name], dtype=v.dtype.as_numpy_dtype))
        return self

    def export(self):
        return OrderedDict((name, v.numpy()) for name, v in self.variables.items())

    def trainable(self):
        """[(name, variable)] of the trainable variables, in declaration order."""
        return [(name, v) for name, v in self.variables.items() if v.trainable]

    # --- the network ----------------------------------------------------------
    def batch_norm(self, x, name, training):
        v = self.variables
        gamma, beta = v[f"{name}/gamma"], v[f"{name}/beta"]
        moving_mean, moving_variance = v[f"{name}/moving_mean"], v[f"{name}/moving_variance"]
        if training:
            mean, variance = tf.nn.moments(x, [0, 1, 2])
            decay = self.bn_decay
            moving_mean.assign(moving_mean * decay + mean * (1.0 - decay))
            moving_variance.assign(moving_variance * decay + variance * (1.0 - decay))
        else:
            mean, variance = moving_mean, moving_variance
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.bn_epsilon)

    def _conv(self, x, name, bn_name, training):
        y = tf.nn.conv2d(x, self.variables[f"{name}/weights"], strides=[1, 1, 1, 1], padding="SAME")
        if bn_name:
            y = self.batch_norm(y, bn_name, training)
        else:
            y = tf.nn.bias_add(y, self.variables[f"{name}/biases"])
        return tf.nn.relu(y)

    def _dense(self, x, name):
        return tf.matmul(x, self.variables[f"{name}/weights"]) + self.variables[f"{name}/biases"]

    def __call__(self, images, training=True):
        images = tf.convert_to_tensor(images)
        if self.kind == "bn":
            x = self._conv(images, "conv1", "bn1", training)
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
            x = self._conv(x, "conv2", "bn2", training)
            x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
            x = self._conv(x, "conv3", "bn3", training)
            x = tf.nn.avg_pool2d(x, ksize=6, strides=6, padding="VALID")
            return tf.reshape(x, [images.shape[0], -1])
        bn = self.kind == "tutorial_bn"
        x = self._conv(images, "conv1", "bn1" if bn else None, training)
        x = tf.nn.max_pool2d(x, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME")
        x = lrn(x)
        x = self._conv(x, "conv2", "bn2" if bn else None, training)
        x = lrn(x)
        x = tf.nn.max_pool2d(x, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME")
        x = tf.reshape(x, [images.shape[0], -1])
        x = tf.nn.relu(self._dense(x, "local3"))
        x = tf.nn.relu(self._dense(x, "local4"))
        return self._dense(x, "softmax_linear")

    def loss(self, logits, labels):
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
        terms = [tf.reduce_mean(xent)]
        if self.kind != "bn":
            terms += [tf.multiply(tf.nn.l2_loss(self.variables[n]), wd) for n, wd in WEIGHT_DECAY.items()]
        return tf.add_n(terms)

    # --- training --------------------------------------------------------------
    def gradients(self, images, labels):
        """(logits, loss, {name: gradient}) of one training-mode forward (moving stats updated)."""
        names, variables = zip(*self.trainable())
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = self.loss(logits, labels)
        grads = tape.gradient(loss, list(variables))
        return logits, loss, OrderedDict(zip(names, grads))

    def train_step(self, optimizer, images, labels, global_step=None):
        """One step: gradients, then a TF1 optimizer's apply_gradients (incrementing global_step)."""
        _, loss, grads = self.gradients(images, labels)
        optimizer.apply_gradients([(g, self.variables[n]) for n, g in grads.items()], global_step=global_step)
        return loss
