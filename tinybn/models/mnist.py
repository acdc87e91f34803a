"""The two MNIST models of the "batch norm in inference" question.

Input: images (N, 28, 28, 1) float32 in [0, 1] (tinybn.data.mnist.scale_images).
Output: logits (N, 10). Loss: mean(sparse_softmax_cross_entropy) + `regularization_loss()`.

cnn_bn  (the seed's CNN: TF's "Deep MNIST" network with BN before the dense layer)
    conv1    5x5x1x32 SAME, weights ~ truncated_normal(0.1), biases 0.1, relu   (N, 28, 28, 32)
    pool1    max 2x2 stride 2 SAME                                             (N, 14, 14, 32)
    conv2    5x5x32x64 SAME, truncated_normal(0.1), biases 0.1, relu           (N, 14, 14, 64)
    pool2    max 2x2 stride 2 SAME                                             (N, 7, 7, 64)
    flatten  NHWC order                                                        (N, 3136)
    bn       BatchNorm(3136)                                                   (N, 3136)
    fc1      3136x1024, truncated_normal(0.1), biases 0.1, relu                (N, 1024)
    fc2      1024x10, truncated_normal(0.1), biases 0.1                        (N, 10) logits
    no weight decay; trained with Adam(1e-3), batch 128 (tinybn.tasks.mnist).

fc_bn  (the fully-connected network of the Udacity notMNIST/MNIST assignment, with BN)
    flatten                                                                    (N, 784)
    bn_input   BatchNorm(784) on the pixels                                    (N, 784)
    hidden     784x1024, weights ~ truncated_normal(1.0) (the assignment's
               tf.truncated_normal default), biases 0                          (N, 1024)
    bn_hidden  BatchNorm(1024): dense -> BN -> relu                            (N, 1024)
    relu
    logits     1024x10, truncated_normal(1.0), biases 0                        (N, 10)
    loss = mean xent + 0.001 * (l2_loss of hidden/kernel, hidden/bias, logits/kernel and
    logits/bias), every weight and bias as the assignment regularizes them; BN's gamma and
    beta are not. hidden/bias reaches BN, which subtracts the batch mean, so in training
    its cross-entropy gradient is 0 (to rounding) and only the L2 term moves it (towards 0).
    Trained with plain SGD, lr 0.5, batch 128.

Batch norm in both: tinybn.nn.batchnorm.BatchNorm with gamma and beta, epsilon 1e-3,
moving_variance_rule "population" (Keras 3; the batch's population variance feeds the
moving variance) and decay 0.99 (Keras's momentum) rather than TF1 contrib's 0.999: the
moving statistics start at mean 0 and variance 1, and after k steps they still hold
decay**k of those values, 0.999**2000 = 13% but 0.99**2000 = 2e-9. A run of a few thousand
steps with 0.999 evaluates in inference mode with statistics that are mostly the
initial ones. Training mode normalises with the batch's statistics; eval() normalises
with the moving ones and never changes them.

Floor: models (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root and models.
"""
import numpy as np

from ..nn import init
from ..nn.batchnorm import BatchNorm
from ..nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .classifier import SequentialClassifier

NUM_CLASSES = 10
IMAGE_SIZE = 28
BN_DECAY, BN_EPSILON = 0.99, 1e-3
L2_BETA = 0.001


class MnistModel(SequentialClassifier):
    """An MNIST network: named layers plus (parameter, coefficient) L2 terms, as the CIFAR-10 models."""


def cnn_bn(rng=None, dtype=np.float32, bn_decay=BN_DECAY, bn_epsilon=BN_EPSILON):
    rng = rng or np.random.default_rng()
    w, b = init.truncated_normal(0.1), init.constant(0.1)

    def conv(cin, cout):
        return Conv2D(cin, cout, 5, padding="SAME", kernel_initializer=w, bias_initializer=b, rng=rng, dtype=dtype)

    layers = [("conv1", conv(1, 32)), ("relu1", ReLU()), ("pool1", MaxPool2D(2, 2, "SAME")),
              ("conv2", conv(32, 64)), ("relu2", ReLU()), ("pool2", MaxPool2D(2, 2, "SAME")),
              ("flatten", Flatten()),
              ("bn", BatchNorm(7 * 7 * 64, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("fc1", Dense(7 * 7 * 64, 1024, kernel_initializer=w, bias_initializer=b, rng=rng, dtype=dtype)),
              ("relu3", ReLU()),
              ("fc2", Dense(1024, NUM_CLASSES, kernel_initializer=w, bias_initializer=b, rng=rng, dtype=dtype))]
    return MnistModel(layers)


def fc_bn(rng=None, dtype=np.float32, bn_decay=BN_DECAY, bn_epsilon=BN_EPSILON, l2_beta=L2_BETA):
    rng = rng or np.random.default_rng()
    w = init.truncated_normal(1.0)
    hidden = Dense(IMAGE_SIZE * IMAGE_SIZE, 1024, kernel_initializer=w, rng=rng, dtype=dtype)
    logits = Dense(1024, NUM_CLASSES, kernel_initializer=w, rng=rng, dtype=dtype)
    layers = [("flatten", Flatten()),
              ("bn_input", BatchNorm(IMAGE_SIZE * IMAGE_SIZE, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("hidden", hidden),
              ("bn_hidden", BatchNorm(1024, decay=bn_decay, epsilon=bn_epsilon, dtype=dtype)),
              ("relu", ReLU()),
              ("logits", logits)]
    decay = [(p, l2_beta) for layer in (hidden, logits) for p in (layer.kernel, layer.bias)]
    return MnistModel(layers, weight_decay=decay)


MODELS = {"cnn_bn": cnn_bn, "fc-bn": fc_bn}
