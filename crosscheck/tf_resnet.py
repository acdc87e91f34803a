"""TF-slim's resnet_v2_50/101/152/200 written again in TensorFlow 2 with tf.nn ops, on slim's variable names.

The network of tensorflow/models research/slim/nets/resnet_v2.py under
resnet_utils.resnet_arg_scope(), built from a dict {slim variable name: array}
(tinybn.models.resnet_v2.to_slim_variables gives one), so the crosscheck and the
benchmarks (bench/bench_resnet.py, inside tf.function) can run it:

    conv2d_same(k, s)  s == 1: tf.nn.conv2d SAME; s > 1: tf.pad (pad_beg = (k-1)//2,
                       pad_end = k-1-pad_beg on H and W), then tf.nn.conv2d VALID
    slim.conv2d        tf.nn.conv2d SAME (+ tf.nn.bias_add when there is no batch norm)
    slim.batch_norm    tf.compat.v1.nn.fused_batch_norm, what TF1's fused layer ran on 4-D
                       inputs: training normalises with the batch statistics and updates
                       moving -= (moving - batch_stat) * (1 - decay) (assign_moving_average)
                       with the op's Bessel-corrected variance; inference uses the moving
                       statistics. epsilon 1.001e-5: TF1's nn.fused_batch_norm raised
                       resnet_arg_scope's 1e-5 to that (TF 2.21's no longer does).
                       TF has no float64 fused kernel: in float64 the same math is
                       tf.nn.moments + tf.nn.batch_normalization, variance * n/(n-1) for
                       the moving average (n = N*H*W), differentiated by the tape
    subsample          tf.nn.max_pool2d 1x1/stride SAME of the unit input
    pool1              tf.nn.max_pool2d 3x3/2 SAME
    global pool        tf.reduce_mean over [1, 2], keepdims
    loss               reduce_mean(sparse softmax xent) + add_n(1e-4 * l2_loss(w)) over every
                       conv kernel (slim.l2_regularizer's REGULARIZATION_LOSSES)

The variable list (variable_shapes) is written down here from slim's code, independently
of tinybn, so a tinybn export with a wrong name or shape fails in load().
"""
from collections import OrderedDict

import numpy as np
import tensorflow as tf

from tf_models import TFModel

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
BASE_DEPTHS, BLOCK_STRIDES = (64, 128, 256, 512), (2, 2, 2, 1)
BN_LEAVES = ("beta", "gamma", "moving_mean", "moving_variance")


def variable_shapes(depth, num_classes=None, in_channels=3):
    """OrderedDict {slim variable name: shape} of resnet_v2_<depth>, in slim's creation order."""
    scope, shapes = f"resnet_v2_{depth}", OrderedDict()

    def batch_norm(name, c):
        shapes.update((f"{name}/{leaf}", (c,)) for leaf in BN_LEAVES)

    def conv(name, k, cin, cout, normalized):
        shapes[f"{name}/weights"] = (k, k, cin, cout)
        if normalized:
            batch_norm(f"{name}/BatchNorm", cout)
        else:
            shapes[f"{name}/biases"] = (cout,)

    conv(f"{scope}/conv1", 7, in_channels, 64, False)
    depth_in = 64
    for b, (base, units) in enumerate(zip(BASE_DEPTHS, UNITS[depth])):
        for u in range(units):
            unit = f"{scope}/block{b + 1}/unit_{u + 1}/bottleneck_v2"
            batch_norm(f"{unit}/preact", depth_in)
            if depth_in != 4 * base:
                conv(f"{unit}/shortcut", 1, depth_in, 4 * base, False)
            conv(f"{unit}/conv1", 1, depth_in, base, True)
            conv(f"{unit}/conv2", 3, base, base, True)
            conv(f"{unit}/conv3", 1, base, 4 * base, False)
            depth_in = 4 * base
    batch_norm(f"{scope}/postnorm", depth_in)
    if num_classes:
        conv(f"{scope}/logits", 1, depth_in, num_classes, False)
    return shapes


class TFResNetV2(TFModel):
    """resnet_v2_<depth> on tf.Variables named as slim names them; model(images, training) ->
    (net, end_points) as slim returns them. load/export/trainable/train_step are TFModel's."""

    def __init__(self, depth, num_classes=None, bn_decay=0.997, bn_epsilon=1.001e-5, weight_decay=1e-4,
                 dtype=tf.float32):
        if depth not in UNITS:
            raise ValueError(f"TFResNetV2: depth must be one of {sorted(UNITS)}, got {depth!r}")
        self.kind = self.scope = f"resnet_v2_{depth}"
        self.depth, self.num_classes, self.weight_decay = depth, num_classes, weight_decay
        self.bn_decay, self.bn_epsilon = bn_decay, bn_epsilon
        self.variables = OrderedDict(
            (name, tf.Variable(tf.zeros(shape, dtype), trainable="moving_" not in name))
            for name, shape in variable_shapes(depth, num_classes).items())

    # --- slim's layers ---------------------------------------------------------------
    def batch_norm(self, x, name, training):
        v = self.variables
        gamma, beta = v[f"{name}/gamma"], v[f"{name}/beta"]
        moving_mean, moving_variance = v[f"{name}/moving_mean"], v[f"{name}/moving_variance"]
        if x.dtype != tf.float32:        # no float64 fused kernel: the same math from tf.nn ops
            return self._batch_norm_float64(x, gamma, beta, moving_mean, moving_variance, training)
        if not training:
            return tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, moving_mean, moving_variance,
                                                    epsilon=self.bn_epsilon, is_training=False)[0]
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.bn_epsilon,
                                                             is_training=True)
        self._update(moving_mean, moving_variance, mean, variance)
        return y

    def _update(self, moving_mean, moving_variance, mean, variance):
        one_minus_decay = tf.constant(1.0 - self.bn_decay, moving_mean.dtype)
        moving_mean.assign_sub((moving_mean - mean) * one_minus_decay)
        moving_variance.assign_sub((moving_variance - variance) * one_minus_decay)

    def _batch_norm_float64(self, x, gamma, beta, moving_mean, moving_variance, training):
        if not training:
            return tf.nn.batch_normalization(x, moving_mean, moving_variance, beta, gamma, self.bn_epsilon)
        mean, variance = tf.nn.moments(x, [0, 1, 2])
        n = x.shape[0] * x.shape[1] * x.shape[2]
        self._update(moving_mean, moving_variance, mean, variance * (n / max(n - 1, 1)))
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.bn_epsilon)

    def conv(self, x, name, stride=1, training=False, same=False):
        """slim.conv2d (SAME), or resnet_utils.conv2d_same when `same`; BN + relu when the scope has
        a BatchNorm, else + biases."""
        w = self.variables[f"{name}/weights"]
        if same and stride > 1:
            pad_total = w.shape[0] - 1
            beg = pad_total // 2
            x = tf.pad(x, [[0, 0], [beg, pad_total - beg], [beg, pad_total - beg], [0, 0]])
            y = tf.nn.conv2d(x, w, strides=stride, padding="VALID")
        else:
            y = tf.nn.conv2d(x, w, strides=stride, padding="SAME")
        if f"{name}/biases" in self.variables:
            return tf.nn.bias_add(y, self.variables[f"{name}/biases"])
        return tf.nn.relu(self.batch_norm(y, f"{name}/BatchNorm", training))

    def bottleneck(self, x, scope, depth, stride, training):
        preact = tf.nn.relu(self.batch_norm(x, f"{scope}/preact", training))
        if depth == x.shape[-1]:
            shortcut = x if stride == 1 else tf.nn.max_pool2d(x, 1, stride, "SAME")
        else:
            shortcut = self.conv(preact, f"{scope}/shortcut", stride)
        residual = self.conv(preact, f"{scope}/conv1", 1, training)
        residual = self.conv(residual, f"{scope}/conv2", stride, training, same=True)
        residual = self.conv(residual, f"{scope}/conv3")
        return shortcut + residual

    def __call__(self, images, training=True):
        sc, end_points = self.scope, OrderedDict()
        net = self.conv(tf.convert_to_tensor(images), f"{sc}/conv1", 2, same=True)
        net = tf.nn.max_pool2d(net, 3, 2, "SAME")
        for b, (base, units, stride) in enumerate(zip(BASE_DEPTHS, UNITS[self.depth], BLOCK_STRIDES)):
            for u in range(units):
                net = self.bottleneck(net, f"{sc}/block{b + 1}/unit_{u + 1}/bottleneck_v2", 4 * base,
                                      stride if u == units - 1 else 1, training)
            end_points[f"{sc}/block{b + 1}"] = net
        net = tf.nn.relu(self.batch_norm(net, f"{sc}/postnorm", training))
        net = tf.reduce_mean(net, [1, 2], keepdims=True)
        end_points["global_pool"] = net
        if self.num_classes:
            net = self.conv(net, f"{sc}/logits")
            end_points[f"{sc}/logits"] = net
            net = tf.squeeze(net, [1, 2])
            end_points[f"{sc}/spatial_squeeze"] = net
            end_points["predictions"] = tf.nn.softmax(net)
        return net, end_points

    # --- loss and gradients -------------------------------------------------------------
    def regularization_loss(self):
        return tf.add_n([tf.multiply(tf.constant(self.weight_decay, v.dtype), tf.nn.l2_loss(v))
                         for name, v in self.variables.items() if name.endswith("/weights")])

    def loss(self, logits, labels):
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int64), logits=logits)
        return tf.add_n([tf.reduce_mean(xent), self.regularization_loss()])

    def gradients(self, images, labels, training=True):
        """(logits, loss, end_points, {name: gradient}) of one forward; training updates the moving stats."""
        names, variables = zip(*self.trainable())
        with tf.GradientTape() as tape:
            logits, end_points = self(images, training=training)
            loss = self.loss(logits, labels)
        grads = tape.gradient(loss, list(variables))
        return logits, loss, end_points, OrderedDict(zip(names, grads))

    def train_step(self, optimizer, images, labels, global_step=None):
        _, loss, _, grads = self.gradients(images, labels)
        optimizer.apply_gradients([(g, self.variables[n]) for n, g in grads.items()], global_step=global_step)
        return loss


def parameter_count(depth, num_classes=None):
    """(trainable, non-trainable) element counts of resnet_v2_<depth>."""
    sizes = [(int(np.prod(s)), "moving_" in n) for n, s in variable_shapes(depth, num_classes).items()]
    return sum(n for n, moving in sizes if not moving), sum(n for n, moving in sizes if moving)
