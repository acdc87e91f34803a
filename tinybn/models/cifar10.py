"""The CIFAR-10 models: TF's tutorial CNN, the same with batch norm, and the seed's BN network.

Input: preprocessed images (N, 24, 24, 3) float32. Output: logits (N, 10).

tutorial  (tensorflow/models tutorials/image/cifar10/cifar10.py, inference())
    conv1   5x5x3x64 SAME, weights ~ truncated_normal(0.05), biases 0.0, relu   (N, 24, 24, 64)
    pool1   max 3x3 stride 2 SAME                                               (N, 12, 12, 64)
    norm1   lrn(depth_radius=4, bias=1.0, alpha=0.001/9, beta=0.75)
    conv2   5x5x64x64 SAME, truncated_normal(0.05), biases 0.1, relu           (N, 12, 12, 64)
    norm2   lrn as norm1
    pool2   max 3x3 stride 2 SAME                                               (N, 6, 6, 64)
    local3  flatten (NHWC order) -> 2304x384, truncated_normal(0.04), biases 0.1, relu,
            weight decay 0.004 * l2_loss(weights)
    local4  384x192, truncated_normal(0.04), biases 0.1, relu, weight decay 0.004
    softmax_linear 192x10, truncated_normal(1/192), biases 0.0, no decay (logits)

tutorial_bn  the tutorial with BatchNorm between each conv and its relu (the conv
    bias is dropped: BN's offset replaces it), LRN kept.

bn  the seed's batch-normalized network
    conv 5x5x3x64 SAME -> BatchNorm -> relu -> max 2x2/2        (N, 12, 12, 64)
    conv 5x5x64x64 SAME -> BatchNorm -> relu -> max 2x2/2       (N, 6, 6, 64)
    conv 5x5x64x10 SAME -> BatchNorm -> relu                    (N, 6, 6, 10)
    avg pool 6x6 VALID -> flatten                               (N, 10) logits
    trained with Adam on exponential_decay(0.04, step, 1000, 0.9).
    The seed has "conv 5x5x10 relu" with a bias and no BN there. As written it does
    not train at this learning rate: the relu in front of the logits dies within
    ~15 Adam steps (all conv3 outputs < 0, logits 0, loss pinned at ln 10, no
    gradient ever again; measured on the real data). BN before that relu keeps
    about half of the units alive whatever the weights do, so it is added, as
    for the two convs before it.

The loss of each is mean(sparse_softmax_cross_entropy) + `regularization_loss()`.

An empty batch (N = 0) gives (0, 10) logits in inference mode (eval()), and in training
mode for the tutorial. The BN models in training mode refuse it with a ValueError and
leave their moving statistics as they were: zero examples have no batch mean or
variance (TF returns NaN for both and averages the NaN into the moving statistics).
The MNIST models (tinybn.models.mnist) behave the same.

Floor: models (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root and models.
"""
import numpy as np

from ..nn import init
from ..nn.batchnorm import BatchNorm
from ..nn.layers import LRN, AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .classifier import SequentialClassifier

NUM_CLASSES = 10
IMAGE_SIZE = 24


class CifarModel(SequentialClassifier):
    """A CIFAR-10 network: named layers plus the weight decay terms of the loss."""


def _tutorial(batch_norm, rng, dtype, bn_decay, bn_epsilon):
    def conv(name, cin, bias):
        return (name, Conv2D(cin, 64, 5, padding="SAME", use_bias=not batch_norm,
                             kernel_initializer=init.truncated_normal(5e-2),
                             bias_initializer=init.constant(bias), rng=rng, dtype=dtype))

    def bn(name):
        return [(name, BatchNorm(64, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype))] if batch_norm else []

    def local(name, n_in, n_out, stddev, bias):
        return (name, Dense(n_in, n_out, kernel_initializer=init.truncated_normal(stddev),
                            bias_initializer=init.constant(bias), rng=rng, dtype=dtype))

    layers = [conv("conv1", 3, 0.0), *bn("bn1"), ("relu1", ReLU()),
              ("pool1", MaxPool2D(3, 2, "SAME")),
              ("norm1", LRN(4, 1.0, 0.001 / 9.0, 0.75)),
              conv("conv2", 64, 0.1), *bn("bn2"), ("relu2", ReLU()),
              ("norm2", LRN(4, 1.0, 0.001 / 9.0, 0.75)),
              ("pool2", MaxPool2D(3, 2, "SAME")),
              ("flatten", Flatten()),
              local("local3", 6 * 6 * 64, 384, 0.04, 0.1), ("relu3", ReLU()),
              local("local4", 384, 192, 0.04, 0.1), ("relu4", ReLU()),
              local("softmax_linear", 192, NUM_CLASSES, 1 / 192.0, 0.0)]
    model = CifarModel(layers)
    named = dict(model.net.named_children())
    model.weight_decay = [(named["local3"].kernel, 0.004), (named["local4"].kernel, 0.004)]
    return model


def tutorial(rng=None, dtype=np.float32):
    return _tutorial(False, rng or np.random.default_rng(), dtype, 0.999, 1e-3)


def tutorial_bn(rng=None, dtype=np.float32, bn_decay=0.999, bn_epsilon=1e-3):
    return _tutorial(True, rng or np.random.default_rng(), dtype, bn_decay, bn_epsilon)


def bn(rng=None, dtype=np.float32, bn_decay=0.999, bn_epsilon=1e-3):
    rng = rng or np.random.default_rng()

    def conv(cin, cout, bias):
        return Conv2D(cin, cout, 5, padding="SAME", use_bias=bias,
                      kernel_initializer=init.truncated_normal(5e-2), rng=rng, dtype=dtype)

    layers = [("conv1", conv(3, 64, False)), ("bn1", BatchNorm(64, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("relu1", ReLU()), ("pool1", MaxPool2D(2, 2, "SAME")),
              ("conv2", conv(64, 64, False)), ("bn2", BatchNorm(64, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("relu2", ReLU()), ("pool2", MaxPool2D(2, 2, "SAME")),
              ("conv3", conv(64, NUM_CLASSES, False)),
              ("bn3", BatchNorm(NUM_CLASSES, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("relu3", ReLU()),
              ("pool3", AvgPool2D(6, 6, "VALID")), ("flatten", Flatten())]
    return CifarModel(layers)


MODELS = {"tutorial": tutorial, "tutorial_bn": tutorial_bn, "bn": bn}
