"""tinybn.ops: the reference ops, each named, ordered and defaulted like its tf.nn twin.

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
    padding.py     SAME / VALID / explicit window geometry shared by conv and pool

`__all__` lists the ops: differentiable functions of tensors, each with a tf.nn twin, each
swept against it by crosscheck/test_tf_sweep.py (a row of crosscheck/op_table.py; `lrn` is
local_response_normalization's alias). Also importable from here, but helpers on plain
arrays rather than ops (no gradient, no TF twin): sum_to (the broadcasting gradient's sum),
separable_kernel and factor_separable (spatially separable kernels), renorm_correction
(batch renorm's r and d constants).
"""
from .basic import (add, sub, mul, div, neg, pow, matmul, reshape, transpose, reduce_sum,  # noqa: F401
                    reduce_mean, reduce_max, get_item, concat, relu, bias_add, dropout, sum_to)
from .conv import conv2d, depthwise_conv2d  # noqa: F401
from .separable import (separable_conv2d, spatially_separable_conv2d, separable_kernel,  # noqa: F401
                        factor_separable)
from .pool import max_pool2d, avg_pool2d  # noqa: F401
from .lrn import local_response_normalization, lrn  # noqa: F401
from .losses import (softmax, log_softmax, softmax_cross_entropy_with_logits,  # noqa: F401
                     sparse_softmax_cross_entropy_with_logits, l2_loss)
from .batchnorm import moments, batch_normalization, renorm_correction  # noqa: F401
from .fused_batch_norm import fused_batch_norm  # noqa: F401

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "reshape", "transpose", "reduce_sum", "reduce_mean",
    "reduce_max", "get_item", "concat", "relu", "bias_add", "dropout",
    "conv2d", "depthwise_conv2d", "separable_conv2d", "spatially_separable_conv2d",
    "max_pool2d", "avg_pool2d",
    "local_response_normalization", "lrn",
    "softmax", "log_softmax", "softmax_cross_entropy_with_logits", "sparse_softmax_cross_entropy_with_logits",
    "l2_loss",
    "moments", "batch_normalization", "fused_batch_norm",
]
