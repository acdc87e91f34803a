"""tinybn models as ONNX graphs for inference, built with the onnx package (onnx.helper).

    onnx_model(model, input_shape, opset=17)   -> onnx.ModelProto
    save_onnx(model, path, input_shape)        -> writes the file (onnx.checker-checked)

Models: the sequential classifiers (CIFAR-10's tutorial, tutorial_bn, bn; MNIST's) and
ResNet-V2 (tinybn.models.resnet_v2, with global pooling, spatial squeeze and logits).
The graph has one input "images" (N, H, W, C) float32, N free, and one output "logits" (N, K).

Layout. tinybn computes in NHWC with HWIO filters; ONNX's Conv, pools, LRN and
BatchNormalization take NCHW with OIHW filters. The graph keeps tinybn's NHWC input: its
first node is Transpose(perm 0,3,1,2) to NCHW, filters are stored transposed (HWIO -> OIHW,
axes 3,2,0,1), and before a Flatten the activations go back to NHWC (Transpose 0,2,3,1) so
that the flattened features are in tinybn's (and TF's) order and the Dense kernels are
stored as they are. ResNet-V2 never flattens a spatial map: its pool leaves (N, C, 1, 1).

Padding. TF's SAME can pad more after than before (3x3/2 on 24 pads rows (0, 1)); each
Conv and pool gets the explicit pads tinybn's window_padding computes for its input size
(ONNX's "pads" = [top, left, bottom, right]), never auto_pad, so the graph is fixed to the
input's H, W. Max pool pads are ignored by ONNX's MaxPool, as TF's; AveragePool has
count_include_pad=0, as TF divides by the number of real pixels.

Batch norm is folded for inference where a conv (or dense) feeds it directly, as in
tutorial_bn, bn and ResNet's conv1/conv2 of each unit: with s = gamma / sqrt(var + eps),
    W' = W * s (per output channel),  b' = (b - mean) * s + beta         (computed in float64)
The others, which a conv does not feed (ResNet's pre-activation "preact" and "postnorm", BN
after MNIST's flatten), stay BatchNormalization nodes on the moving statistics.

LRN. TF: sqr_sum = sum of x**2 over channels [c - r, c + r] (clipped at the edges),
y = x / (bias + alpha * sqr_sum) ** beta. ONNX's LRN sums over a window of `size` channels
and divides alpha by size: y = x / (bias + alpha / size * sqr_sum) ** beta. So
    size = 2 * depth_radius + 1,  alpha_onnx = alpha_tf * size,  bias and beta the same
(the tutorial's depth_radius 4, alpha 0.001/9: size 9, alpha 0.001).
"""
import os

import numpy as np

from ..models.resnet_v2 import ResNetV2
from ..nn.batchnorm import BatchNorm
from ..nn.layers import LRN, AvgPool2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from ..ops.padding import pair, window_padding

TO_NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def lrn_attributes(depth_radius, bias, alpha, beta):
    """ONNX LRN's attributes for tf.nn.local_response_normalization's arguments (see the docstring)."""
    size = 2 * int(depth_radius) + 1
    return dict(size=size, alpha=float(alpha) * size, beta=float(beta), bias=float(bias))


def fold_batch_norm(kernel, bias, bn):
    """(kernel', bias') float32 of a conv (..., C_out) or dense (in, C_out) followed by `bn` in inference."""
    f64 = lambda t: np.asarray(t.numpy(), np.float64)    # noqa: E731
    c = kernel.shape[-1]
    gamma = f64(bn.gamma) if bn.scale else np.ones(c)
    beta = f64(bn.beta) if bn.center else np.zeros(c)
    s = gamma / np.sqrt(f64(bn.moving_variance) + bn.epsilon)
    b = np.zeros(c) if bias is None else np.asarray(bias, np.float64)
    folded_bias = (b - f64(bn.moving_mean)) * s + beta
    return (np.asarray(kernel, np.float64) * s).astype(np.float32), folded_bias.astype(np.float32)


class GraphBuilder:
    """Nodes and initializers of one graph; `x` the current tensor's name, `hw` its (H, W)."""

    def __init__(self, helper, numpy_helper):
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self.count = [], [], 0

    def constant(self, name, array):
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, name, **attributes):
        self.count += 1
        out = f"{name}:{self.count}"
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=f"{name}/{op}", **attributes))
        return out

    def conv(self, x, hw, name, layer, bn=None):
        """Conv (+ folded bn) of NCHW `x` of spatial size hw; (output, output hw)."""
        kernel = np.asarray(layer.kernel.numpy())
        bias = None if layer.bias is None else np.asarray(layer.bias.numpy())
        if bn is not None:
            kernel, bias = fold_batch_norm(kernel, bias, bn)
        strides, dilations = pair(layer.strides, "strides"), pair(layer.dilations, "dilations")
        pads, out_hw = window_padding(hw, kernel.shape[:2], strides, dilations, layer.padding, name)
        inputs = [x, self.constant(f"{name}/kernel", kernel.transpose(3, 2, 0, 1))]
        if bias is not None:
            inputs.append(self.constant(f"{name}/bias", bias))
        y = self.node("Conv", inputs, name, kernel_shape=list(kernel.shape[:2]), strides=list(strides),
                      dilations=list(dilations), pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]])
        return y, out_hw

    def pool(self, op, x, hw, name, ksize, strides, padding):
        ksize, strides = pair(ksize, "ksize"), pair(strides, "strides")
        pads, out_hw = window_padding(hw, ksize, strides, (1, 1), padding, name)
        extra = {"count_include_pad": 0} if op == "AveragePool" else {}
        return self.node(op, [x], name, kernel_shape=list(ksize), strides=list(strides),
                         pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]], **extra), out_hw

    def batch_norm(self, x, name, bn):
        c = bn.num_features
        gamma = bn.gamma.numpy() if bn.scale else np.ones(c, np.float32)
        beta = bn.beta.numpy() if bn.center else np.zeros(c, np.float32)
        inputs = [x] + [self.constant(f"{name}/{leaf}", np.asarray(v)) for leaf, v in
                        (("gamma", gamma), ("beta", beta), ("moving_mean", bn.moving_mean.numpy()),
                         ("moving_variance", bn.moving_variance.numpy()))]
        return self.node("BatchNormalization", inputs, name, epsilon=float(bn.epsilon))


def _sequential(g, model, x, hw):
    """The graph of a SequentialClassifier's layers from NCHW `x`; the output's name."""
    layers = list(model.net.named_children())
    spatial, i = True, 0
    while i < len(layers):
        name, layer = layers[i]
        follower = layers[i + 1][1] if i + 1 < len(layers) else None
        foldable = isinstance(follower, BatchNorm) and not (follower.renorm or follower.zero_debias_moving_mean)
        fold = follower if foldable else None
        if isinstance(layer, (Conv2D, Dense)) and layer.activation is not None:
            raise ValueError(f"onnx_model: layer {name!r} has an activation; only the plain layer is exported")
        if isinstance(layer, Conv2D):
            x, hw = g.conv(x, hw, name, layer, fold)
            i += fold is not None
        elif isinstance(layer, Dense):
            kernel = np.asarray(layer.kernel.numpy())
            bias = np.zeros(kernel.shape[1], np.float32) if layer.bias is None else np.asarray(layer.bias.numpy())
            if fold is not None:
                kernel, bias = fold_batch_norm(kernel, bias, fold)
                i += 1
            x = g.node("Gemm", [x, g.constant(f"{name}/kernel", kernel), g.constant(f"{name}/bias", bias)], name)
        elif isinstance(layer, BatchNorm):
            x = g.batch_norm(x, name, layer)
        elif isinstance(layer, (MaxPool2D, AvgPool2D)):
            op = "MaxPool" if isinstance(layer, MaxPool2D) else "AveragePool"
            x, hw = g.pool(op, x, hw, name, layer.ksize, layer.strides, layer.padding)
        elif isinstance(layer, LRN):
            x = g.node("LRN", [x], name, **lrn_attributes(layer.depth_radius, layer.bias, layer.alpha, layer.beta))
        elif isinstance(layer, ReLU):
            x = g.node("Relu", [x], name)
        elif isinstance(layer, Flatten):
            if spatial:       # back to NHWC: tinybn's feature order, which the Dense kernels expect
                x = g.node("Transpose", [x], f"{name}/to_nhwc", perm=list(TO_NHWC))
                spatial = False
            x = g.node("Flatten", [x], name, axis=1)
        elif not isinstance(layer, Dropout):      # Dropout: the identity in inference
            raise ValueError(f"onnx_model: layer {name!r} ({type(layer).__name__}) has no ONNX counterpart here")
        i += 1
    if spatial:
        raise ValueError("onnx_model: the model's output is still an image (no Flatten); not a classifier")
    return x


def _slim_conv(g, x, hw, name, conv):
    y, hw = g.conv(x, hw, name, conv, conv.batch_norm)
    return (y if conv.batch_norm is None else g.node("Relu", [y], name)), hw


def _resnet(g, model, x, hw):
    """The graph of a ResNetV2 with global pooling, logits and spatial squeeze."""
    if model.logits is None or not model.global_pool or not model.spatial_squeeze:
        raise ValueError("onnx_model: ResNetV2 is exported with num_classes, global_pool and spatial_squeeze")
    if model.conv1 is not None:
        x, hw = _slim_conv(g, x, hw, f"{model.scope}/conv1", model.conv1)
        x, hw = g.pool("MaxPool", x, hw, f"{model.scope}/pool1", 3, 2, "SAME")
    for _, units in model.blocks:
        for unit_name, unit in units:
            preact = g.node("Relu", [g.batch_norm(x, f"{unit_name}/preact", unit.preact)], f"{unit_name}/preact")
            if unit.shortcut is not None:
                shortcut, _ = _slim_conv(g, preact, hw, f"{unit_name}/shortcut", unit.shortcut)
            elif unit.stride > 1:
                shortcut, _ = g.pool("MaxPool", x, hw, f"{unit_name}/shortcut", 1, unit.stride, "SAME")
            else:
                shortcut = x
            r, r_hw = preact, hw
            for scope in ("conv1", "conv2", "conv3"):
                r, r_hw = _slim_conv(g, r, r_hw, f"{unit_name}/{scope}", getattr(unit, scope))
            x, hw = g.node("Add", [shortcut, r], unit_name), r_hw
    x = g.node("Relu", [g.batch_norm(x, f"{model.scope}/postnorm", model.postnorm)], f"{model.scope}/postnorm")
    x = g.node("GlobalAveragePool", [x], f"{model.scope}/global_pool")
    x, _ = _slim_conv(g, x, (1, 1), f"{model.scope}/logits", model.logits)
    return g.node("Flatten", [x], f"{model.scope}/spatial_squeeze", axis=1)


def onnx_model(model, input_shape, opset=17):
    """An onnx.ModelProto of `model` in inference on images (N, *input_shape) NHWC float32."""
    import onnx
    from onnx import helper, numpy_helper
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"onnx_model: input_shape must be (H, W, C), got {input_shape!r}")
    h, w, c = (int(v) for v in input_shape)
    g = GraphBuilder(helper, numpy_helper)
    x = g.node("Transpose", ["images"], "to_nchw", perm=list(TO_NCHW))
    if isinstance(model, ResNetV2):
        logits = _resnet(g, model, x, (h, w))
    elif hasattr(model, "net") and hasattr(model.net, "named_children"):
        logits = _sequential(g, model, x, (h, w))
    else:
        raise ValueError(f"onnx_model: expected a tinybn SequentialClassifier or ResNetV2, got {type(model).__name__}")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))
    images = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["N", h, w, c])
    outputs = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", None])
    graph = helper.make_graph(g.nodes, type(model).__name__, [images], [outputs], initializer=g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tinybn")
    onnx.checker.check_model(proto)
    return proto


def save_onnx(model, path, input_shape, opset=17):
    """Write onnx_model(model, input_shape) to `path`; an existing file is refused."""
    import onnx
    path = os.fspath(path)
    if os.path.lexists(path):
        raise ValueError(f"save_onnx: {path} exists; choose a new file name")
    proto = onnx_model(model, input_shape, opset)
    onnx.save(proto, path)
    return proto


__all__ = ["onnx_model", "save_onnx", "lrn_attributes", "fold_batch_norm"]
