"""tinybn.ops: the reference ops, each named, ordered and defaulted like its tf.nn twin.

Floor: ops; imports the core (tensor, function), backend and numpy; kernels only
through backend.dispatch.

    file           ops
    basic.py       add sub mul div neg pow matmul reshape transpose reduce_sum reduce_mean
                   reduce_max get_item concat relu bias_add dropout
    conv.py        conv2d depthwise_conv2d (im2col / col2im primitives)
    separable.py   separable_conv2d spatially_separable_conv2d separable_kernel factor_separable
    pool.py        max_pool2d avg_pool2d
    batchnorm.py   moments batch_normalization (and batch renormalization)
    fused_batch_norm.py  fused_batch_norm (closed-form backward; training and inference)
    lrn.py         local_response_normalization (alias lrn)
    losses.py      softmax log_softmax softmax_cross_entropy_with_logits
                   sparse_softmax_cross_entropy_with_logits l2_loss
                   sparse_softmax_cross_entropy_with_label_smoothing
    activations.py gelu (exact and tanh forms; erfc, a helper)
    padding.py     SAME / VALID / explicit window geometry shared by conv and pool

`__all__` lists the ops: differentiable functions of tensors, each with a tf.nn twin, each
swept against it by crosscheck/test_tf_sweep.py (a row of crosscheck/op_table.py; `lrn` is
local_response_normalization's alias). Also importable from here, but helpers on plain
arrays rather than ops (no gradient, no TF twin): sum_to (the broadcasting gradient's sum),
separable_kernel and factor_separable (spatially separable kernels), renorm_correction
(batch renorm's r and d constants).

Importing tinybn.ops gives Tensor its operators (+ - * / @ ** unary -, [], reshape,
transpose, .T, sum, mean, max), each one of the ops in basic.py: the core defines
Tensor without them, so it never imports a floor above it (DeZero's setup_variable).
"""
from ..backend import array_module as _array_module
from ..tensor import Tensor as _Tensor
from .basic import (add, sub, mul, div, neg, pow, matmul, reshape, transpose, reduce_sum,  # noqa: F401
                    reduce_mean, reduce_max, get_item, concat, relu, bias_add, dropout, sum_to)
from .conv import conv2d, depthwise_conv2d  # noqa: F401
from .separable import (separable_conv2d, spatially_separable_conv2d, separable_kernel,  # noqa: F401
                        factor_separable)
from .pool import max_pool2d, avg_pool2d  # noqa: F401
from .lrn import local_response_normalization, lrn  # noqa: F401
from .losses import (softmax, log_softmax, softmax_cross_entropy_with_logits,  # noqa: F401
                     sparse_softmax_cross_entropy_with_logits, l2_loss,
                     sparse_softmax_cross_entropy_with_label_smoothing)
from .activations import gelu  # noqa: F401
from .batchnorm import moments, batch_normalization, renorm_correction  # noqa: F401
from .fused_batch_norm import fused_batch_norm  # noqa: F401

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "reshape", "transpose", "reduce_sum", "reduce_mean",
    "reduce_max", "get_item", "concat", "relu", "bias_add", "dropout",
    "conv2d", "depthwise_conv2d", "separable_conv2d", "spatially_separable_conv2d",
    "max_pool2d", "avg_pool2d",
    "local_response_normalization", "lrn",
    "softmax", "log_softmax", "softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits",
    "l2_loss", "sparse_softmax_cross_entropy_with_label_smoothing", "gelu",
    "moments", "batch_normalization", "fused_batch_norm",
]


# ---- the Tensor operators: set on Tensor here, once, as DeZero's setup_variable -------

def _like(other, tensor):
    """A Python scalar takes the tensor's dtype, so `x * 2.0` stays float32 (or float64)."""
    if isinstance(other, (int, float)) and not isinstance(other, bool):
        return _Tensor(_array_module(tensor.data).asarray(other, dtype=tensor.dtype))
    return other


def _reshape(self, *shape):
    return reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)


def _transpose(self, *axes):
    return transpose(self, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))


def _install_tensor_operators(cls=_Tensor):
    """Give Tensor its operators, each one of the ops above; tinybn.ops calls this once."""
    cls.__add__ = lambda self, other: add(self, _like(other, self))
    cls.__radd__ = lambda self, other: add(_like(other, self), self)
    cls.__sub__ = lambda self, other: sub(self, _like(other, self))
    cls.__rsub__ = lambda self, other: sub(_like(other, self), self)
    cls.__mul__ = lambda self, other: mul(self, _like(other, self))
    cls.__rmul__ = lambda self, other: mul(_like(other, self), self)
    cls.__truediv__ = lambda self, other: div(self, _like(other, self))
    cls.__rtruediv__ = lambda self, other: div(_like(other, self), self)
    cls.__matmul__ = lambda self, other: matmul(self, other)
    cls.__rmatmul__ = lambda self, other: matmul(other, self)
    cls.__pow__ = lambda self, exponent: pow(self, exponent)
    cls.__neg__ = lambda self: neg(self)
    cls.__getitem__ = lambda self, index: get_item(self, index)
    cls.reshape = _reshape
    cls.transpose = _transpose
    cls.T = property(lambda self: transpose(self))
    cls.sum = lambda self, axis=None, keepdims=False: reduce_sum(self, axis, keepdims)
    cls.mean = lambda self, axis=None, keepdims=False: reduce_mean(self, axis, keepdims)
    cls.max = lambda self, axis=None, keepdims=False: reduce_max(self, axis, keepdims)


_install_tensor_operators()
