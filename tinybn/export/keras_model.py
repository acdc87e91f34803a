"""tinybn's sequential classifiers (the CIFAR-10 and MNIST models) as Keras 3 models.

    keras_model(model, input_shape)        -> keras.Model, tinybn's weights copied in
    save_keras(model, path, input_shape)   -> writes a ".keras" file

Layer for layer, in the tinybn model's order and under its names:

    Conv2D      keras.layers.Conv2D(padding "same"/"valid"), kernel HWIO and bias as they are
    Dense       keras.layers.Dense, kernel (in, out)
    BatchNorm   keras.layers.BatchNormalization(epsilon, center, scale); gamma, beta and the
                moving statistics. model(x, training=False) or predict() normalises with
                the moving statistics, as tinybn after eval()
    MaxPool2D   keras.layers.MaxPooling2D;  AvgPool2D  keras.layers.AveragePooling2D
    LRN         LocalResponseNormalization below: tf.nn.local_response_normalization with
                the same depth_radius, bias, alpha, beta
    ReLU, Flatten, Dropout   their Keras layers (Flatten is channels-last: NHWC order, as tinybn)

Keras has no LRN layer, so the file names one of tinybn's, "tinybn>LocalResponseNormalization".
To load the file, call tinybn.export.register() first (it defines and registers the class),
or pass custom_objects={"LocalResponseNormalization": lrn_layer_class()} to keras.saving.load_model.
A Lambda layer would store Python bytecode and need safe_mode=False to load.

Explicit (list) padding has no Keras Conv2D equivalent and is refused with a ValueError.
TensorFlow and Keras are imported inside the functions.
"""
import os

import numpy as np

from ..nn.batchnorm import BatchNorm
from ..nn.layers import LRN, AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

_LRN_CLASS = []


def lrn_layer_class():
    """The Keras layer of tf.nn.local_response_normalization, registered as
    "tinybn>LocalResponseNormalization" (built on first use, so that Keras loads lazily)."""
    if _LRN_CLASS:
        return _LRN_CLASS[0]
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="tinybn")
    class LocalResponseNormalization(keras.layers.Layer):
        def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5, **kwargs):
            super().__init__(**kwargs)
            self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), bias, alpha, beta

        def call(self, x):
            return tf.nn.local_response_normalization(x, self.depth_radius, self.bias, self.alpha, self.beta)

        def get_config(self):
            return dict(super().get_config(), depth_radius=self.depth_radius, bias=self.bias,
                        alpha=self.alpha, beta=self.beta)

    _LRN_CLASS.append(LocalResponseNormalization)
    return LocalResponseNormalization


register = lrn_layer_class


def _padding(layer, name):
    if not isinstance(layer.padding, str) or layer.padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"keras_model: layer {name!r} has padding {layer.padding!r}; Keras takes only "
                         "'SAME' or 'VALID'")
    return layer.padding.lower()


def _array(t):
    return np.asarray(t.numpy())


def _keras_layer(keras, name, layer):
    """(Keras layer, [weights in Keras's order]) of the tinybn layer `layer`."""
    if isinstance(layer, Conv2D):
        if layer.activation is not None:
            raise ValueError(f"keras_model: layer {name!r} has an activation; only the plain layer is exported")
        kernel = _array(layer.kernel)
        k = keras.layers.Conv2D(kernel.shape[3], kernel.shape[:2], strides=layer.strides, padding=_padding(layer, name),
                                dilation_rate=layer.dilations, use_bias=layer.bias is not None, name=name)
        return k, [kernel] + ([_array(layer.bias)] if layer.bias is not None else [])
    if isinstance(layer, Dense):
        if layer.activation is not None:
            raise ValueError(f"keras_model: layer {name!r} has an activation; only the plain layer is exported")
        kernel = _array(layer.kernel)
        return (keras.layers.Dense(kernel.shape[1], use_bias=layer.bias is not None, name=name),
                [kernel] + ([_array(layer.bias)] if layer.bias is not None else []))
    if isinstance(layer, BatchNorm):
        if layer.renorm or layer.zero_debias_moving_mean:
            raise ValueError(f"keras_model: layer {name!r} uses renorm or a zero-debiased mean, not exported")
        weights = ([_array(layer.gamma)] if layer.scale else []) + ([_array(layer.beta)] if layer.center else [])
        k = keras.layers.BatchNormalization(epsilon=layer.epsilon, momentum=layer.decay, center=layer.center,
                                            scale=layer.scale, name=name)
        return k, weights + [_array(layer.moving_mean), _array(layer.moving_variance)]
    if isinstance(layer, (MaxPool2D, AvgPool2D)):
        pool = keras.layers.MaxPooling2D if isinstance(layer, MaxPool2D) else keras.layers.AveragePooling2D
        return pool(layer.ksize, layer.strides, padding=_padding(layer, name), name=name), []
    if isinstance(layer, LRN):
        return lrn_layer_class()(layer.depth_radius, layer.bias, layer.alpha, layer.beta, name=name), []
    if isinstance(layer, ReLU):
        return keras.layers.ReLU(name=name), []
    if isinstance(layer, Flatten):
        return keras.layers.Flatten(name=name), []
    if isinstance(layer, Dropout):
        return keras.layers.Dropout(layer.rate, name=name), []
    raise ValueError(f"keras_model: layer {name!r} ({type(layer).__name__}) has no Keras counterpart here")


def keras_model(model, input_shape):
    """A keras.Model of the SequentialClassifier `model` on inputs (N, *input_shape) float32,
    e.g. input_shape (24, 24, 3) for CIFAR-10, (28, 28, 1) for MNIST."""
    import keras
    if not hasattr(model, "net") or not hasattr(model.net, "named_children"):
        raise ValueError(f"keras_model: expected a tinybn SequentialClassifier (CIFAR-10 or MNIST model), "
                         f"got {type(model).__name__}")
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="images")
    x, built = inputs, []
    for name, layer in model.net.named_children():
        k, weights = _keras_layer(keras, name, layer)
        x = k(x)
        built.append((k, weights))
    for k, weights in built:
        if weights:
            k.set_weights(weights)
    return keras.Model(inputs, x, name=type(model).__name__)


def save_keras(model, path, input_shape):
    """Write keras_model(model, input_shape) to `path` (".keras"); an existing file is refused."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"save_keras: the file name must end in .keras (Keras 3's format), got {path!r}")
    if os.path.lexists(path):
        raise ValueError(f"save_keras: {path} exists; choose a new file name")
    k = keras_model(model, input_shape)
    k.save(path)
    return k
