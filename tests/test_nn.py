"""Layers and Module: gradients through layers, state_dict rules, train/eval, initializers."""
import numpy as np
import pytest

from tinybn import Tensor
from tinybn.gradcheck import check_gradients, numerical_gradient
from tinybn.nn import init
from tinybn.nn.layers import (LRN, AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU,
                              SeparableConv2D, Sequential, SpatiallySeparableConv2D)
from tinybn.nn.module import Module
from tinybn.ops.conv import conv2d
from tinybn.ops.conv import depthwise_conv2d
from tinybn.ops.separable import separable_kernel


def layer_gradcheck(layer, x):
    """Check the gradients of the input and of every parameter of `layer` (float64)."""
    check_gradients(lambda t: layer(t), x)
    g = np.random.default_rng(0).standard_normal(layer(Tensor(x)).shape)
    layer.zero_grad()
    layer(Tensor(x)).backward(g)
    for p in layer.parameters():
        numeric = numerical_gradient(lambda: float(np.sum(g * layer(Tensor(x)).data)), p.data)
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-5, atol=1e-7 * max(1, np.abs(numeric).max()))


def f64(rng, *shape):
    return rng.standard_normal(shape)


def test_conv_dense_separable_layers_gradients():
    rng = np.random.default_rng(1)
    layer_gradcheck(Conv2D(3, 4, 3, strides=2, rng=rng, dtype=np.float64,
                           bias_initializer=init.constant(0.1)), f64(rng, 2, 5, 6, 3))
    layer_gradcheck(Dense(5, 3, rng=rng, dtype=np.float64), f64(rng, 4, 5))
    layer_gradcheck(SpatiallySeparableConv2D(2, 3, 3, rng=rng, dtype=np.float64), f64(rng, 1, 5, 5, 2))


def test_separable_layer_equals_full_conv_with_product_kernel():
    rng = np.random.default_rng(2)
    layer = SpatiallySeparableConv2D(3, 4, 3, intermediate_channels=2, use_bias=False, rng=rng, dtype=np.float64)
    x = f64(rng, 2, 7, 8, 3)
    full = conv2d(x, separable_kernel(layer.kernel_kx1.data, layer.kernel_1xk.data), 1, "SAME")
    np.testing.assert_allclose(layer(x).data, full.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strides, padding, depth_multiplier, dilation_rate, x_shape, y_shape", [
    (1, "SAME", 1, 1, (2, 5, 6, 3), (2, 5, 6, 4)),
    (2, "SAME", 2, 1, (1, 7, 6, 3), (1, 4, 3, 4)),
    (1, "VALID", 2, 2, (1, 7, 8, 3), (1, 3, 4, 4)),
])
def test_depthwise_separable_layer_shapes_and_gradients(strides, padding, depth_multiplier, dilation_rate,
                                                        x_shape, y_shape):
    rng = np.random.default_rng(4)
    layer = SeparableConv2D(3, 4, 3, strides, padding, depth_multiplier=depth_multiplier,
                            dilation_rate=dilation_rate, rng=rng, dtype=np.float64,
                            bias_initializer=init.constant(0.1))
    assert [name for name, _ in layer.named_parameters()] == ["depthwise_kernel", "pointwise_kernel", "bias"]
    assert layer.depthwise_kernel.shape == (3, 3, 3, depth_multiplier)
    assert layer.pointwise_kernel.shape == (1, 1, 3 * depth_multiplier, 4)
    x = f64(rng, *x_shape)
    y = layer(x)
    assert y.shape == y_shape
    # depthwise, then the pointwise 1x1 conv as a contraction over the C*CM channels, then the bias
    dw = depthwise_conv2d(x, layer.depthwise_kernel.data, strides, padding, dilations=dilation_rate).data
    expected = np.einsum("nhwk,ko->nhwo", dw, layer.pointwise_kernel.data[0, 0]) + 0.1
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)
    layer_gradcheck(layer, x)


def test_sequential_names_state_dict_and_strict_loading():
    rng = np.random.default_rng(3)
    model = Sequential(("conv1", Conv2D(3, 4, 3, rng=rng)), ReLU(), MaxPool2D(2),
                       ("norm1", LRN(2)), AvgPool2D(2, 1, "SAME"), Flatten(), ("fc", Dense(64, 2, rng=rng)))
    state = model.state_dict()
    assert list(state) == ["conv1/kernel", "conv1/bias", "fc/kernel", "fc/bias"]
    assert model(np.ones((1, 8, 8, 3), np.float32)).shape == (1, 2)
    other = Sequential(("conv1", Conv2D(3, 4, 3, rng=np.random.default_rng(9))), ReLU(), MaxPool2D(2),
                       ("norm1", LRN(2)), AvgPool2D(2, 1, "SAME"), Flatten(), ("fc", Dense(64, 2)))
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    before = other.state_dict()
    bad = dict(state)
    bad["fc/kernel"] = np.zeros((3, 2), np.float32)
    del bad["conv1/bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['conv1/bias'\].*unexpected keys \['extra'\].*fc/kernel"):
        other.load_state_dict(bad)
    for k, v in other.state_dict().items():      # a failed load changes nothing
        np.testing.assert_array_equal(v, before[k])


def test_train_eval_reaches_every_child_and_dropout_obeys_it():
    model = Sequential(Dense(4, 4, rng=np.random.default_rng(0)), Sequential(Dropout(0.5, rng=np.random.default_rng(1))))
    x = np.ones((8, 4), np.float32)
    assert all(m.training for _, m in model.named_modules())
    assert np.any(model(x).data == 0)
    model.eval()
    assert not any(m.training for _, m in model.named_modules())
    np.testing.assert_array_equal(model(x).data, model.layers[0](x).data)


def test_layers_reject_wrong_channels_and_rank():
    conv = Conv2D(3, 4, 3)
    with pytest.raises(ValueError, match="Conv2D: input has 2 channels"):
        conv(np.ones((1, 5, 5, 2), np.float32))
    with pytest.raises(ValueError, match="Dense: input must be rank 2"):
        Dense(3, 2)(np.ones((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="already has an entry"):
        m = Module()
        m.add_parameter("w", np.ones(1, np.float32))
        m.add_buffer("w", np.ones(1))


@pytest.mark.parametrize("make, error, match", [
    (lambda: SeparableConv2D(3, 4, 3, depth_multiplier=0), ValueError,
     "SeparableConv2D: depth_multiplier must be a positive int, got 0"),
    (lambda: SeparableConv2D(3, 4, 0), ValueError, "SeparableConv2D: kernel_size"),
    (lambda: SeparableConv2D(3, 4, 3, dilation_rate=0), ValueError, "SeparableConv2D: dilation_rate"),
    (lambda: SeparableConv2D(3, 4, 3)(np.ones((1, 5, 5, 2), np.float32)), ValueError,
     "SeparableConv2D: input has 2 channels"),
])
def test_depthwise_separable_layer_refuses_bad_sizes(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_truncated_normal_and_variance_scaling_statistics():
    rng = np.random.default_rng(4)
    w = init.truncated_normal(0.05)((200, 500), rng)
    assert w.dtype == np.float32 and np.abs(w).max() <= 0.1
    # a normal truncated at 2 sigma keeps std 0.8796 sigma
    assert abs(w.std() - 0.05 * 0.87962566) < 0.0005
    v = init.variance_scaling(2.0, "fan_in", "truncated_normal")((3, 3, 64, 500), rng)
    assert abs(v.std() - np.sqrt(2.0 / (9 * 64))) < 0.002
    u = init.glorot_uniform()((300, 200), rng)
    limit = np.sqrt(6.0 / 500)
    assert np.abs(u).max() <= limit and abs(u.std() - limit / np.sqrt(3)) < 0.001
    np.testing.assert_array_equal(init.constant(0.1)((3,), rng), np.float32([0.1] * 3))
    with pytest.raises(ValueError, match="mode"):
        init.variance_scaling(1.0, "fan_sideways")
