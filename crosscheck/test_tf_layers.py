"""tinybn.nn layers against the Keras layers of the same name, with the same weights.

SeparableConv2D: Keras's depthwise-then-pointwise layer (keras.layers.SeparableConv2D),
its output and the gradients of the input, depthwise_kernel, pointwise_kernel and bias.
"""
import numpy as np
import pytest
import tensorflow as tf

import parity
import tinybn
from tinybn.nn.layers import SeparableConv2D
from tinybn.ops.basic import relu


@pytest.mark.parametrize("x_shape, kernel_size, strides, padding, depth_multiplier, dilation_rate, "
                         "use_bias, activation", [
                             ((2, 7, 8, 3), 3, 1, "SAME", 1, 1, True, None),
                             ((2, 7, 6, 3), (3, 2), 2, "SAME", 2, 1, True, "relu"),
                             ((1, 9, 8, 2), 3, 1, "VALID", 3, 2, False, None),
                             ((3, 9, 8, 4), 5, 2, "VALID", 1, 1, True, None),
                         ])
def test_separable_conv2d_layer_vs_keras(rng, x_shape, kernel_size, strides, padding, depth_multiplier,
                                         dilation_rate, use_bias, activation):
    filters, c = 5, x_shape[-1]
    layer = SeparableConv2D(c, filters, kernel_size, strides, padding, depth_multiplier=depth_multiplier,
                            dilation_rate=dilation_rate, use_bias=use_bias,
                            activation=relu if activation else None, rng=rng)
    if use_bias:
        layer.bias.data = rng.standard_normal(filters).astype(np.float32)
    keras = tf.keras.layers.SeparableConv2D(filters, kernel_size, strides, padding.lower(),
                                            depth_multiplier=depth_multiplier, dilation_rate=dilation_rate,
                                            use_bias=use_bias, activation=activation)
    keras.build((None,) + x_shape[1:])
    names = [name for name, _ in layer.named_parameters()]
    assert [w.name for w in keras.weights] == ["depthwise_kernel", "pointwise_kernel", "bias"][:len(names)]
    named = dict(layer.named_parameters())
    for w in keras.weights:
        assert tuple(w.shape) == named[w.name].shape
        w.assign(named[w.name].data)

    x = rng.standard_normal(x_shape).astype(np.float32)
    x_tf = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_tf)
        y_tf = keras(x_tf)
    dy = rng.standard_normal(y_tf.shape).astype(np.float32)
    grads_tf = tape.gradient(y_tf, [x_tf] + list(keras.weights), output_gradients=tf.constant(dy))

    x_tb = tinybn.Tensor(x, requires_grad=True)
    y = layer(x_tb)
    y.backward(dy)
    what = f"({x_shape}, k={kernel_size}, s={strides}, {padding}, cm={depth_multiplier}, d={dilation_rate})"
    parity.assert_parity("SeparableConv2D vs Keras", "forward", y.numpy(), y_tf.numpy(), what)
    ours = [x_tb.grad] + [named[w.name].grad for w in keras.weights]
    for name, g, g_tf in zip(["input"] + [w.name for w in keras.weights], ours, grads_tf):
        parity.assert_parity("SeparableConv2D vs Keras", "backward", g, g_tf.numpy(), f"{what} d{name}")
