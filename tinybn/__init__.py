"""tinybn: a readable deep learning engine in numpy, proven equal to TensorFlow op by op."""
from .tensor import Tensor, as_tensor, no_grad, grad_enabled  # noqa: F401
from .backend import use_backend, current_backend  # noqa: F401
from . import ops, nn, optim  # noqa: F401

__version__ = "0.1.0"
