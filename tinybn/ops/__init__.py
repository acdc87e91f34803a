"""tinybn.ops: the reference ops, each named, ordered and defaulted like its tf.nn twin.

    basic      add sub mul div pow matmul reshape transpose reduce_* concat relu bias_add dropout
    conv       conv2d depthwise_conv2d separable_conv2d spatially_separable_conv2d
    pool       max_pool2d avg_pool2d
    batchnorm  moments batch_normalization fused_batch_norm
    lrn        local_response_normalization (lrn)
    losses     softmax log_softmax softmax_cross_entropy_with_logits
               sparse_softmax_cross_entropy_with_logits l2_loss
"""
from .basic import (add, sub, mul, div, neg, pow, matmul, reshape, transpose, reduce_sum,  # noqa: F401
                    reduce_mean, reduce_max, get_item, concat, relu, bias_add, dropout, sum_to)
