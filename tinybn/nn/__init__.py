"""tinybn.nn: layers with explicit parameters, buffers and train()/eval() state."""
from .module import Module, Parameter  # noqa: F401
from .layers import (Conv2D, SeparableConv2D, Dense, MaxPool2D, AvgPool2D, LRN, ReLU,  # noqa: F401
                     Flatten, Dropout, Sequential)
from .batchnorm import BatchNorm  # noqa: F401
from . import init  # noqa: F401
