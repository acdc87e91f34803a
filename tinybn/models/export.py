"""Weights in and out of the TensorFlow CIFAR-10 tutorial's variable names.

tinybn names a model's state as Module.state_dict() does ("net/conv1/kernel",
Keras's "kernel"/"bias"); the tutorial (tensorflow/models tutorials/image/cifar10/
cifar10.py) names its variables by layer scope with "weights"/"biases":

    tinybn state_dict             TF variable
    net/conv1/kernel              conv1/weights            (HWIO, as tf.nn.conv2d)
    net/conv1/bias                conv1/biases
    net/local3/kernel             local3/weights           (in, out), as tf.matmul(x, w)
    net/softmax_linear/bias       softmax_linear/biases
    net/bn1/gamma                 bn1/gamma                (beta, moving_mean, moving_variance alike)

Layouts already agree (NHWC activations, HWIO filters, the flatten before local3 in
NHWC order), so export and import are renames: arrays are copied, never transposed.

The weights' moving averages carry TF's suffix on both sides, so they map by the same
rename of the weight's name: net/conv1/kernel/ExponentialMovingAverage (a training
checkpoint's "ema" state) is conv1/weights/ExponentialMovingAverage, the name
tf.train.ExponentialMovingAverage.apply() gives the shadow. tinybn.export writes and reads
the TF checkpoint files themselves.
"""
from collections import OrderedDict

import numpy as np

_PREFIX = "net/"
_TO_TF = {"kernel": "weights", "bias": "biases"}
_FROM_TF = {v: k for k, v in _TO_TF.items()}


def tf_name(name):
    """The TF variable name of a tinybn state_dict name ("net/conv1/kernel" -> "conv1/weights")."""
    if not name.startswith(_PREFIX):
        raise ValueError(f"tf_name: name {name!r} is not under {_PREFIX!r} (a CifarModel state_dict name)")
    scope, _, leaf = name[len(_PREFIX):].rpartition("/")
    if not scope:
        raise ValueError(f"tf_name: name {name!r} has no layer scope")
    return f"{scope}/{_TO_TF.get(leaf, leaf)}"


def tinybn_name(name):
    """The tinybn state_dict name of a TF variable name ("conv1/weights" -> "net/conv1/kernel")."""
    scope, _, leaf = name.rpartition("/")
    if not scope or leaf in _TO_TF:
        raise ValueError(f"tinybn_name: {name!r} is not a TF variable name of the form "
                         f"'<layer>/<weights|biases|gamma|beta|moving_mean|moving_variance>'")
    return f"{_PREFIX}{scope}/{_FROM_TF.get(leaf, leaf)}"


def to_tf_variables(model):
    """{TF variable name: numpy array copy} of every parameter and buffer of `model`."""
    return OrderedDict((tf_name(k), v) for k, v in model.state_dict().items())


def from_tf_variables(model, variables):
    """Load {TF variable name: array} into `model`; a missing, unexpected or mis-shaped
    name is a ValueError (from load_state_dict) and then nothing is changed."""
    state = OrderedDict()
    for name, value in variables.items():
        key = tinybn_name(name)
        if key in state:
            raise ValueError(f"from_tf_variables: {name!r} maps to {key!r} twice")
        state[key] = np.asarray(value)
    return model.load_state_dict(state)
