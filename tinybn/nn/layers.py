"""Layers: each holds its parameters and calls one op of tinybn.ops.

Floor: nn (core < backend < ops < nn < optim < models < data < training < tasks < cli).
This module imports numpy, tinybn.ops and tinybn.nn (init, module) only.

    Conv2D(in_channels, filters, kernel_size, strides=1, padding="SAME")   kernel HWIO, bias (filters,)
    SeparableConv2D(in_channels, filters, kernel_size, strides=1, padding="SAME",
                    depth_multiplier=1, dilation_rate=1)                  Keras's layer: depthwise then
                        pointwise (tinybn.ops.separable_conv2d); depthwise_kernel [KH,KW,C,CM],
                        pointwise_kernel [1,1,C*CM,O], bias (O,)
    SpatiallySeparableConv2D(in_channels, filters, kernel_size=3, ...)    the KxK conv cut into
                        a Kx1 conv (kernel_kx1 [K,1,C,M]) then a 1xK conv (kernel_1xk [1,K,M,O])
    Dense(in_features, units)                                             kernel (in, units), bias
    MaxPool2D / AvgPool2D(ksize=2, strides=None, padding="VALID")        strides default to ksize
    LRN(depth_radius=5, bias=1, alpha=1, beta=0.5), ReLU(), Flatten(), Dropout(rate)
    GELU(approximate=False)                                               tinybn.ops.activations.gelu
    Sequential(layer, ... or (name, layer), ...)

Parameter names follow Keras ("kernel", "bias", "depthwise_kernel", ...); a layer given
`rng` (a numpy Generator) draws its initial weights from it, so a model built twice from
the same seed is identical.
"""
import numbers

import numpy as np

from ..ops.activations import gelu
from ..ops.basic import bias_add, dropout, matmul, relu, reshape
from ..ops.conv import conv2d
from ..ops.separable import separable_conv2d, spatially_separable_conv2d
from ..ops.lrn import local_response_normalization
from ..ops.pool import avg_pool2d, max_pool2d
from ..ops.padding import pair
from . import init as initializers
from .module import Module


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


def _positive_ints(layer, **sizes):
    """TypeError / ValueError naming the first size argument that is not a positive int."""
    for name, value in sizes.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{layer}: {name} must be a positive int, got {value!r}")
        if value < 1:
            raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")


def _check_channels(layer, x, expected, axis_name):
    if x.ndim < 2 or x.shape[-1] != expected:
        raise ValueError(f"{type(layer).__name__}: input has {x.shape[-1] if x.ndim else None} {axis_name} "
                         f"(shape {x.shape}), the layer was built for {expected}")


def _optional_bias(layer, use_bias, size, initializer, rng, dtype):
    """The layer's "bias" parameter (zeros unless `initializer` says otherwise), or None."""
    if not use_bias:
        return None
    return layer.add_parameter("bias", (initializer or initializers.zeros())((size,), rng, dtype))


def _bias_and_activation(layer, y):
    if layer.bias is not None:
        y = bias_add(y, layer.bias)
    return layer.activation(y) if layer.activation else y


class Conv2D(Module):
    def __init__(self, in_channels, filters, kernel_size, strides=1, padding="SAME", dilations=1,
                 use_bias=True, activation=None, kernel_initializer=None, bias_initializer=None,
                 rng=None, dtype=np.float32):
        super().__init__()
        _positive_ints("Conv2D", in_channels=in_channels, filters=filters)
        kh, kw = pair(kernel_size, "kernel_size", "Conv2D")
        pair(strides, "strides", "Conv2D")          # refused now, not at the first forward
        pair(dilations, "dilations", "Conv2D")
        rng = _rng(rng)
        kinit = kernel_initializer or initializers.glorot_uniform()
        self.kernel = self.add_parameter("kernel", kinit((kh, kw, in_channels, filters), rng, dtype))
        self.bias = _optional_bias(self, use_bias, filters, bias_initializer, rng, dtype)
        self.in_channels, self.strides, self.padding, self.dilations = in_channels, strides, padding, dilations
        self.activation = activation

    def forward(self, x):
        _check_channels(self, x, self.in_channels, "channels")
        y = conv2d(x, self.kernel, self.strides, self.padding, dilations=self.dilations)
        return _bias_and_activation(self, y)

    def extra_repr(self):
        return f"kernel={self.kernel.shape}, strides={self.strides}, padding={self.padding!r}"


class SeparableConv2D(Module):
    """Keras's SeparableConv2D: a depthwise KHxKW conv (depth_multiplier CM per input channel),
    then a 1x1 conv to `filters` channels, then the bias and activation.

    strides, padding and dilation_rate apply to the depthwise step only, as in
    tf.nn.separable_conv2d; KH*KW*C*CM + C*CM*O multiplies per output pixel instead of
    KH*KW*C*O. Both kernels default to glorot_uniform, as in Keras.
    """

    def __init__(self, in_channels, filters, kernel_size, strides=1, padding="SAME", depth_multiplier=1,
                 dilation_rate=1, use_bias=True, activation=None, depthwise_initializer=None,
                 pointwise_initializer=None, bias_initializer=None, rng=None, dtype=np.float32):
        super().__init__()
        _positive_ints("SeparableConv2D", in_channels=in_channels, filters=filters,
                       depth_multiplier=depth_multiplier)
        kh, kw = pair(kernel_size, "kernel_size", "SeparableConv2D")
        pair(strides, "strides", "SeparableConv2D")          # refused now, not at the first forward
        pair(dilation_rate, "dilation_rate", "SeparableConv2D")
        rng = _rng(rng)
        dinit = depthwise_initializer or initializers.glorot_uniform()
        pinit = pointwise_initializer or initializers.glorot_uniform()
        c, cm = in_channels, depth_multiplier
        self.depthwise_kernel = self.add_parameter("depthwise_kernel", dinit((kh, kw, c, cm), rng, dtype))
        self.pointwise_kernel = self.add_parameter("pointwise_kernel", pinit((1, 1, c * cm, filters), rng, dtype))
        self.bias = _optional_bias(self, use_bias, filters, bias_initializer, rng, dtype)
        self.in_channels, self.strides, self.padding = in_channels, strides, padding
        self.dilation_rate, self.activation = dilation_rate, activation

    def forward(self, x):
        _check_channels(self, x, self.in_channels, "channels")
        y = separable_conv2d(x, self.depthwise_kernel, self.pointwise_kernel, self.strides, self.padding,
                             dilations=self.dilation_rate)
        return _bias_and_activation(self, y)

    def extra_repr(self):
        return (f"depthwise_kernel={self.depthwise_kernel.shape}, pointwise_kernel={self.pointwise_kernel.shape}, "
                f"strides={self.strides}, padding={self.padding!r}")


class SpatiallySeparableConv2D(Module):
    """KxK convolution as Kx1 then 1xK: K*(C*M + M*O) multiplies per pixel instead of K*K*C*O.

    intermediate_channels M defaults to the output channels. Without anything
    between the two convs this is exactly a KxK conv with a kernel of rank <= M
    per (c, o) pair (tinybn.ops.separable.separable_kernel builds it). Not Keras's
    SeparableConv2D, which is depthwise separable (the class above).
    """

    def __init__(self, in_channels, filters, kernel_size=3, intermediate_channels=None, strides=1,
                 padding="SAME", use_bias=True, activation=None, kernel_initializer=None,
                 bias_initializer=None, rng=None, dtype=np.float32):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"SpatiallySeparableConv2D: kernel_size must be a positive int, got {kernel_size!r}")
        _positive_ints("SpatiallySeparableConv2D", in_channels=in_channels, filters=filters)
        if intermediate_channels is not None:
            _positive_ints("SpatiallySeparableConv2D", intermediate_channels=intermediate_channels)
        pair(strides, "strides", "SpatiallySeparableConv2D")
        k, m = kernel_size, intermediate_channels or filters
        rng = _rng(rng)
        kinit = kernel_initializer or initializers.glorot_uniform()
        self.kernel_kx1 = self.add_parameter("kernel_kx1", kinit((k, 1, in_channels, m), rng, dtype))
        self.kernel_1xk = self.add_parameter("kernel_1xk", kinit((1, k, m, filters), rng, dtype))
        self.bias = _optional_bias(self, use_bias, filters, bias_initializer, rng, dtype)
        self.in_channels, self.strides, self.padding, self.activation = in_channels, strides, padding, activation

    def forward(self, x):
        _check_channels(self, x, self.in_channels, "channels")
        y = spatially_separable_conv2d(x, self.kernel_kx1, self.kernel_1xk, self.strides, self.padding)
        return _bias_and_activation(self, y)


class Dense(Module):
    def __init__(self, in_features, units, use_bias=True, activation=None, kernel_initializer=None,
                 bias_initializer=None, rng=None, dtype=np.float32):
        super().__init__()
        _positive_ints("Dense", in_features=in_features, units=units)
        rng = _rng(rng)
        kinit = kernel_initializer or initializers.glorot_uniform()
        self.kernel = self.add_parameter("kernel", kinit((in_features, units), rng, dtype))
        self.bias = _optional_bias(self, use_bias, units, bias_initializer, rng, dtype)
        self.in_features, self.activation = in_features, activation

    def forward(self, x):
        if x.ndim != 2:
            raise ValueError(f"Dense: input must be rank 2 (N, features), got shape {x.shape}")
        _check_channels(self, x, self.in_features, "features")
        y = matmul(x, self.kernel)
        return _bias_and_activation(self, y)

    def extra_repr(self):
        return f"kernel={self.kernel.shape}"


class _Pool(Module):
    def __init__(self, ksize=2, strides=None, padding="VALID"):
        super().__init__()
        self.ksize, self.strides, self.padding = ksize, strides if strides is not None else ksize, padding
        pair(self.ksize, "ksize", type(self).__name__)      # refused now, not at the first forward
        pair(self.strides, "strides", type(self).__name__)

    def extra_repr(self):
        return f"ksize={self.ksize}, strides={self.strides}, padding={self.padding!r}"


class MaxPool2D(_Pool):
    def forward(self, x):
        return max_pool2d(x, self.ksize, self.strides, self.padding)


class AvgPool2D(_Pool):
    def forward(self, x):
        return avg_pool2d(x, self.ksize, self.strides, self.padding)


class LRN(Module):
    def __init__(self, depth_radius=5, bias=1.0, alpha=1.0, beta=0.5):
        super().__init__()
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def forward(self, x):
        return local_response_normalization(x, self.depth_radius, self.bias, self.alpha, self.beta)


class ReLU(Module):
    def forward(self, x):
        return relu(x)


class GELU(Module):
    """Keras's GELU activation (tf.nn.gelu): x * Phi(x); approximate=True, the tanh form."""

    def __init__(self, approximate=False):
        super().__init__()
        self.approximate = bool(approximate)

    def forward(self, x):
        return gelu(x, self.approximate)

    def extra_repr(self):
        return "approximate=True" if self.approximate else ""


class Flatten(Module):
    """(N, ...) -> (N, product of the rest), NHWC order; N = 0 too (where -1 is ambiguous)."""

    def forward(self, x):
        return reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))


class Dropout(Module):
    """Drops with probability `rate` in training mode; the identity after eval()."""

    def __init__(self, rate, rng=None):
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate}")
        self.rate, self.rng = rate, _rng(rng)

    def forward(self, x):
        if not self.training or self.rate == 0:
            return x
        return dropout(x, self.rate, rng=self.rng)


class Sequential(Module):
    """Layers applied in order; each given as a Module (named by its index) or (name, Module)."""

    def __init__(self, *layers):
        super().__init__()
        self.layers = []
        for i, layer in enumerate(layers):
            name, module = layer if isinstance(layer, tuple) else (str(i), layer)
            self.layers.append(self.add_module(name, module))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
