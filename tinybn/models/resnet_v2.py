"""ResNet-V2 (pre-activation ResNet) as TF-slim defines it: resnet_v2_50, _101, _152, _200.

Source: tensorflow/models research/slim/nets/resnet_v2.py and resnet_utils.py, under
resnet_utils.resnet_arg_scope() (He et al., Identity Mappings in Deep Residual Networks).
Input: images (N, H, W, C) NHWC, C = 3. Output: (net, end_points), as slim returns them.

The bottleneck unit (slim's `bottleneck`, scope 'bottleneck_v2'); x has C_in channels:
    preact   = relu(BN(x))                                           scope preact
    shortcut = subsample(x, stride) = max_pool 1x1/stride SAME of x,  if depth == C_in
               (of the unit INPUT x, not of preact)
             = conv 1x1/stride of preact + biases, no BN/relu,       otherwise (scope shortcut)
    residual = relu(BN(conv 1x1/1 of preact)), no biases,            conv1: depth_bottleneck
    residual = relu(BN(conv2d_same 3x3/stride of residual)), no biases   conv2: depth_bottleneck
    residual = conv 1x1/1 of residual + biases, no BN/relu,          conv3: depth
    output   = shortcut + residual

The network; shapes (N, H, W, C) for a 224 x 224 input:
    conv1        conv2d_same 7x7/2, 64 filters + biases, no BN/relu        (N, 112, 112, 64)
    pool1        max 3x3/2 SAME                                            (N, 56, 56, 64)
    block1       depth 256, bottleneck 64, stride 2 in its last unit       (N, 28, 28, 256)
    block2       depth 512, bottleneck 128, stride 2                       (N, 14, 14, 512)
    block3       depth 1024, bottleneck 256, stride 2                      (N, 7, 7, 1024)
    block4       depth 2048, bottleneck 512, stride 1                      (N, 7, 7, 2048)
    postnorm     relu(BN)
    global_pool  reduce_mean over H, W, keepdims                           (N, 1, 1, 2048)
    logits       conv 1x1, num_classes + biases, no BN/relu                (N, 1, 1, K)
    spatial_squeeze                                                        (N, K)
    predictions  softmax(net)
Units per block: 50: 3,4,6,3; 101: 3,4,23,3; 152: 3,8,36,3; 200: 3,24,36,3.

Slim conventions followed:
- conv2d_same(k, stride): a SAME conv at stride 1; at stride > 1 zero padding pad_beg =
  (k - 1) // 2 before and pad_end = k - 1 - pad_beg after on H and W, then VALID (slim's
  tf.pad + VALID, here conv2d's explicit padding: the same zeros, the same sums). On even
  sizes this is not SAME: 3x3/2 on 56 pads (1, 1) where SAME pads (0, 1).
- A block's stride is in its LAST unit (resnet_v2_block); that unit's shortcut is the
  1x1 max pool of its input.
- Batch norm: slim.batch_norm with resnet_arg_scope's decay 0.997, epsilon 1e-5, center and
  scale. On 4-D inputs slim runs TF1's fused kernel: y uses the population variance, the
  moving variance averages var * n/(n-1), n = N*H*W (moving_variance_rule="bessel";
  docs/tf-conventions.md#moving-variance), and TF1's nn.fused_batch_norm raises any epsilon below
  1.001e-5 (cuDNN's minimum) to 1.001e-5: slim's networks ran with 1.001e-5, as this one.
- Weights: slim.variance_scaling_initializer() (factor 2, FAN_IN, normal), in TF1
  truncated_normal(0, sqrt(1.3 * 2 / fan_in)) redrawn beyond 2 stddev; biases 0.
- Weight decay: slim.l2_regularizer(1e-4) on every conv kernel (not biases, not BN):
  regularization_loss() = sum of 1e-4 * l2_loss(w) = 1e-4 * sum(w**2) / 2.
- Names: slim_names(model) maps each state_dict name to slim's variable, e.g.
  block1/unit_1/bottleneck_v2/conv1/kernel -> resnet_v2_50/block1/unit_1/bottleneck_v2/conv1/weights,
  .../conv1/BatchNorm/moving_variance -> the same path; bias -> biases.
- end_points: block outputs ('resnet_v2_50/block1' ...), 'global_pool',
  'resnet_v2_50/logits', 'resnet_v2_50/spatial_squeeze', 'predictions'; with
  all_end_points=True also every conv and unit output, as slim collects them (off by
  default: they would stay alive as long as the dict).
model.train() / model.eval() are slim's is_training. Not implemented: output_stride
(atrous convolution); the network always runs at its nominal stride 32.

Floor: models (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root and models.
"""
import math
from collections import OrderedDict, namedtuple
from contextlib import nullcontext

import numpy as np

from ..nn import init
from ..nn.batchnorm import BatchNorm
from ..nn.layers import Conv2D, Sequential
from ..nn.module import Module
from ..ops.basic import add, reduce_mean, relu, reshape
from ..ops.losses import l2_loss, softmax, sparse_softmax_cross_entropy_with_logits
from ..ops.padding import pair, window_padding
from ..ops.pool import max_pool2d
from ..tensor import as_tensor

WEIGHT_DECAY, BATCH_NORM_DECAY, BATCH_NORM_EPSILON = 1e-4, 0.997, 1e-5
FUSED_MIN_EPSILON = 1.001e-5
UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
BASE_DEPTHS, BLOCK_STRIDES = (64, 128, 256, 512), (2, 2, 2, 1)
_TO_SLIM = {"kernel": "weights", "bias": "biases"}

# slim's resnet_utils.Block: scope ('block1'), unit_fn (here the unit's Module class, e.g.
# Bottleneck) and args, one (depth, depth_bottleneck, stride) per unit.
Block = namedtuple("Block", ["scope", "unit_fn", "args"])


def _no_stage(name):
    return nullcontext()


def variance_scaling_initializer(factor=2.0):
    """slim.variance_scaling_initializer(factor, mode='FAN_IN', uniform=False), TF1's rule:
    truncated_normal(0, sqrt(1.3 * factor / fan_in)), draws beyond 2 stddev redrawn."""
    def initializer(shape, rng, dtype=np.float32):
        fan_in, _ = init.compute_fans(shape)
        return init.truncated_normal(math.sqrt(1.3 * factor / fan_in))(shape, rng, dtype)
    return initializer


def conv2d_same_padding(kernel_size, stride, rate=1):
    """resnet_utils.conv2d_same's padding: "SAME" at stride 1, else [(beg, end)] * 2 for VALID."""
    if stride == 1:
        return "SAME"
    pad_total = kernel_size + (kernel_size - 1) * (rate - 1) - 1
    return [(pad_total // 2, pad_total - pad_total // 2)] * 2


class SlimConv2D(Conv2D):
    """slim.conv2d under resnet_arg_scope: with `bn` (BatchNorm keyword arguments) conv ->
    BN (scope 'BatchNorm') -> relu and no biases; without, conv + biases and nothing else."""

    def __init__(self, in_channels, num_outputs, kernel_size, stride=1, padding="SAME", bn=None,
                 rng=None, dtype=np.float32):
        super().__init__(in_channels, num_outputs, kernel_size, strides=stride, padding=padding,
                         use_bias=bn is None, kernel_initializer=variance_scaling_initializer(),
                         rng=rng, dtype=dtype)
        self.batch_norm = None if bn is None else self.add_module("BatchNorm", BatchNorm(num_outputs, **bn))

    def forward(self, x):
        y = super().forward(x)
        return y if self.batch_norm is None else relu(self.batch_norm(y))

    def output_size(self, in_hw):
        """(OH, OW) for an input of spatial size in_hw."""
        return window_padding(in_hw, self.kernel.shape[:2], pair(self.strides, "strides"), (1, 1), self.padding)[1]


class Bottleneck(Module):
    """slim's pre-activation bottleneck unit (see the module docstring), scope 'bottleneck_v2'."""
    scope = "bottleneck_v2"

    def __init__(self, depth_in, depth, depth_bottleneck, stride, bn, rng=None, dtype=np.float32):
        super().__init__()
        self.stride = stride
        self.preact = self.add_module("preact", BatchNorm(depth_in, **bn))
        self.shortcut = None if depth == depth_in else self.add_module(
            "shortcut", SlimConv2D(depth_in, depth, 1, stride, rng=rng, dtype=dtype))
        self.conv1 = self.add_module("conv1", SlimConv2D(depth_in, depth_bottleneck, 1, 1, bn=bn, rng=rng, dtype=dtype))
        self.conv2 = self.add_module("conv2", SlimConv2D(depth_bottleneck, depth_bottleneck, 3, stride,
                                                         conv2d_same_padding(3, stride), bn=bn, rng=rng, dtype=dtype))
        self.conv3 = self.add_module("conv3", SlimConv2D(depth_bottleneck, depth, 1, 1, rng=rng, dtype=dtype))

    def forward(self, x, collect=None):
        """collect(name, tensor), when given, receives each conv output under its scope name."""
        collect = collect or (lambda name, tensor: None)
        preact = relu(self.preact(x))
        if self.shortcut is None:
            shortcut = max_pool2d(x, 1, self.stride, "SAME") if self.stride > 1 else x
        else:
            shortcut = self.shortcut(preact)
            collect("shortcut", shortcut)
        residual = self.conv1(preact)
        del preact                       # under no_grad this frees it before conv2 allocates
        collect("conv1", residual)
        residual = self.conv2(residual)
        collect("conv2", residual)
        residual = self.conv3(residual)
        collect("conv3", residual)
        return add(shortcut, residual)

    def conv_layers(self, in_hw):
        """[(scope, conv, in_hw, out_hw)] of the unit's convs in forward order, and its output size."""
        layers = []
        if self.shortcut is not None:
            layers.append(("shortcut", self.shortcut, in_hw, self.shortcut.output_size(in_hw)))
        hw = in_hw
        for name in ("conv1", "conv2", "conv3"):
            conv = getattr(self, name)
            layers.append((name, conv, hw, conv.output_size(hw)))
            hw = layers[-1][3]
        return layers, hw


class ResNetV2(Module):
    """slim's resnet_v2(inputs, blocks, ...) generator as a Module; model(images) -> (net, end_points).

    blocks: a list of Block. num_classes: None (or 0) returns the features before the
    logits. global_pool, include_root_block, spatial_squeeze: as slim. scope: the name
    prefix of end_points and of the slim variable names. in_channels: C of the input.
    weight_decay, batch_norm_decay, batch_norm_epsilon: resnet_arg_scope's arguments.
    """

    def __init__(self, blocks, num_classes=None, global_pool=True, include_root_block=True,
                 spatial_squeeze=True, scope="resnet_v2", in_channels=3, rng=None, dtype=np.float32,
                 weight_decay=WEIGHT_DECAY, batch_norm_decay=BATCH_NORM_DECAY,
                 batch_norm_epsilon=BATCH_NORM_EPSILON):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        bn = dict(decay=batch_norm_decay, epsilon=max(batch_norm_epsilon, FUSED_MIN_EPSILON),
                  moving_variance_rule="bessel", dtype=dtype)
        self.scope, self.in_channels, self.weight_decay = scope, in_channels, weight_decay
        self.global_pool, self.spatial_squeeze = global_pool, spatial_squeeze
        self.conv1, depth = None, in_channels
        if include_root_block:
            self.conv1 = self.add_module("conv1", SlimConv2D(in_channels, 64, 7, 2, conv2d_same_padding(7, 2),
                                                             rng=rng, dtype=dtype))
            depth = 64
        self.blocks = []                 # [(end point name, [(end point name, unit)])]
        for block in blocks:
            units = []
            for i, (unit_depth, depth_bottleneck, stride) in enumerate(block.args):
                unit = block.unit_fn(depth, unit_depth, depth_bottleneck, stride, bn=bn, rng=rng, dtype=dtype)
                units.append((f"unit_{i + 1}", Sequential((block.unit_fn.scope, unit))))
                depth = unit_depth
            self.add_module(block.scope, Sequential(*units))
            prefix = f"{scope}/{block.scope}"
            self.blocks.append((prefix, [(f"{prefix}/{name}/{block.unit_fn.scope}", seq.layers[0])
                                         for name, seq in units]))
        self.postnorm = self.add_module("postnorm", BatchNorm(depth, **bn))
        self.logits = (self.add_module("logits", SlimConv2D(depth, num_classes, 1, rng=rng, dtype=dtype))
                       if num_classes else None)
        self.decayed_kernels = [m.kernel for _, m in self.named_modules() if isinstance(m, SlimConv2D)]

    def forward(self, images, all_end_points=False, stage=None):
        """stage(name), when given, is a context manager opened around each stage of the network
        (conv1, pool1, block1 ... block4, postnorm, logits): the profiler's layers."""
        images = as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"{self.scope}: images must be rank 4 (N, H, W, C), got shape {images.shape}")
        if images.shape[3] != self.in_channels:
            raise ValueError(f"{self.scope}: images have {images.shape[3]} channels (NHWC shape "
                             f"{images.shape}), the network was built for {self.in_channels}")
        stage = stage or _no_stage
        end_points = OrderedDict()
        net = images
        if self.conv1 is not None:
            with stage("conv1"):
                net = self.conv1(net)
            if all_end_points:
                end_points[f"{self.scope}/conv1"] = net
            with stage("pool1"):
                net = max_pool2d(net, 3, 2, "SAME")
        for block_name, units in self.blocks:
            with stage(block_name[len(self.scope) + 1:]):
                for unit_name, unit in units:
                    collect = (lambda name, t, u=unit_name: end_points.__setitem__(f"{u}/{name}", t)) \
                        if all_end_points else None
                    net = unit(net, collect)
                    if all_end_points:
                        end_points[unit_name] = net
            end_points[block_name] = net
        with stage("postnorm"):
            net = relu(self.postnorm(net))
            if self.global_pool:
                net = reduce_mean(net, [1, 2], keepdims=True)
                end_points["global_pool"] = net
        if self.logits is not None:
            with stage("logits"):
                net = self.logits(net)
                end_points[f"{self.scope}/logits"] = net
                if self.spatial_squeeze:
                    if net.shape[1:3] != (1, 1):
                        raise ValueError(f"{self.scope}: spatial_squeeze needs 1x1 logits, got shape {net.shape} "
                                         "(pass global_pool=True or spatial_squeeze=False)")
                    net = reshape(net, (net.shape[0], net.shape[3]))
                    end_points[f"{self.scope}/spatial_squeeze"] = net
                end_points["predictions"] = softmax(net)
        return net, end_points

    def regularization_loss(self):
        """sum of weight_decay * l2_loss(w) over every conv kernel (slim's REGULARIZATION_LOSSES)."""
        total = None
        for kernel in self.decayed_kernels:
            term = l2_loss(kernel) * self.weight_decay
            total = term if total is None else add(total, term)
        return total

    def loss(self, logits, labels):
        """mean sparse softmax cross-entropy + regularization_loss(): slim's total loss."""
        return add(reduce_mean(sparse_softmax_cross_entropy_with_logits(labels, logits)), self.regularization_loss())

    def conv_layers(self, height, width):
        """[(end point name, conv, (H, W) in, (OH, OW) out)] of every conv in forward order for an
        H x W input (the shapes a forward pass would give, computed without one)."""
        layers, hw = [], (height, width)
        if self.conv1 is not None:
            layers.append((f"{self.scope}/conv1", self.conv1, hw, self.conv1.output_size(hw)))
            hw = window_padding(layers[-1][3], (3, 3), (2, 2), (1, 1), "SAME")[1]
        for _, units in self.blocks:
            for unit_name, unit in units:
                convs, hw = unit.conv_layers(hw)
                layers += [(f"{unit_name}/{name}", conv, i, o) for name, conv, i, o in convs]
        if self.logits is not None:
            hw = (1, 1) if self.global_pool else hw
            layers.append((f"{self.scope}/logits", self.logits, hw, hw))
        return layers


def resnet_v2_block(scope, base_depth, num_units, stride):
    """slim's resnet_v2_block: num_units bottlenecks of depth 4*base_depth, the stride in the last."""
    return Block(scope, Bottleneck, [(base_depth * 4, base_depth, 1)] * (num_units - 1)
                 + [(base_depth * 4, base_depth, stride)])


def resnet_v2_blocks(depth):
    """The four blocks of resnet_v2_<depth>, depth one of 50, 101, 152, 200."""
    if depth not in UNITS:
        raise ValueError(f"resnet_v2: depth must be one of {sorted(UNITS)}, got {depth!r}")
    return [resnet_v2_block(f"block{i + 1}", base, n, stride)
            for i, (base, n, stride) in enumerate(zip(BASE_DEPTHS, UNITS[depth], BLOCK_STRIDES))]


def resnet_v2(depth, num_classes=None, global_pool=True, spatial_squeeze=True, rng=None, dtype=np.float32,
              **kwargs):
    """resnet_v2_<depth>; kwargs go to ResNetV2 (in_channels, weight_decay, batch_norm_*)."""
    return ResNetV2(resnet_v2_blocks(depth), num_classes, global_pool, True, spatial_squeeze,
                    scope=f"resnet_v2_{depth}", rng=rng, dtype=dtype, **kwargs)


def resnet_v2_50(num_classes=None, global_pool=True, spatial_squeeze=True, rng=None, dtype=np.float32, **kwargs):
    return resnet_v2(50, num_classes, global_pool, spatial_squeeze, rng, dtype, **kwargs)


def resnet_v2_101(num_classes=None, global_pool=True, spatial_squeeze=True, rng=None, dtype=np.float32, **kwargs):
    return resnet_v2(101, num_classes, global_pool, spatial_squeeze, rng, dtype, **kwargs)


def resnet_v2_152(num_classes=None, global_pool=True, spatial_squeeze=True, rng=None, dtype=np.float32, **kwargs):
    return resnet_v2(152, num_classes, global_pool, spatial_squeeze, rng, dtype, **kwargs)


def resnet_v2_200(num_classes=None, global_pool=True, spatial_squeeze=True, rng=None, dtype=np.float32, **kwargs):
    return resnet_v2(200, num_classes, global_pool, spatial_squeeze, rng, dtype, **kwargs)


# ---- slim variable names -------------------------------------------------------------------

def slim_names(model):
    """{state_dict name: slim variable name} of every parameter and buffer of `model`."""
    names = OrderedDict()
    for name, _ in list(model.named_parameters()) + list(model.named_buffers()):
        scope, _, leaf = name.rpartition("/")
        names[name] = f"{model.scope}/{scope}/{_TO_SLIM.get(leaf, leaf)}"
    return names


def to_slim_variables(model):
    """{slim variable name: numpy array copy} of every parameter and buffer."""
    state, names = model.state_dict(), slim_names(model)
    return OrderedDict((names[k], v) for k, v in state.items())


def from_slim_variables(model, variables):
    """Load {slim variable name: array}; a missing, unexpected or mis-shaped name is a
    ValueError naming it (from load_state_dict), and then nothing is changed."""
    to_tinybn = {v: k for k, v in slim_names(model).items()}
    unknown = [k for k in variables if k not in to_tinybn]
    if unknown:
        raise ValueError(f"from_slim_variables: {unknown[:5]} are not variables of {model.scope}")
    return model.load_state_dict(OrderedDict((to_tinybn[k], np.asarray(v)) for k, v in variables.items()))
