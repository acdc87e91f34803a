"""tinybn.nn: layers with explicit parameters, buffers and train()/eval() state."""
from .module import Module, Parameter  # noqa: F401
