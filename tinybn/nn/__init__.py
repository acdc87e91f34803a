"""tinybn.nn: layers with explicit parameters, buffers and train()/eval() state.

Floor: nn (core < backend < ops < nn < optim < models < data < training < tasks < cli).
It may import tinybn's core (tensor, function), backend and ops, and numpy; nothing above.
"""
from .module import Module, Parameter  # noqa: F401
from .layers import (Conv2D, SeparableConv2D, SpatiallySeparableConv2D, Dense, MaxPool2D,  # noqa: F401
                     AvgPool2D, LRN, ReLU, GELU, Flatten, Dropout, Sequential)
from .batchnorm import BatchNorm  # noqa: F401
from . import init  # noqa: F401
