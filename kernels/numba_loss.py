"""numba twin of the softmax cross-entropy primitive.

Shapes as tinybn.ops.losses: labels, logits (N, K) of one float dtype; per row

    s = logits - max(logits),  loss = sum_k labels[k] * (log(sum_j exp(s[j])) - s[k])
    backprop = exp(s) / sum_j exp(s[j]) - labels

One pass per row for the max, one for exp and its sum, one for loss and backprop.
The two sums over K accumulate in float64 (numpy sums them pairwise in float32),
exp and log are libm's rather than numpy's SIMD ones: equal to float32 rounding.
Serial, not parallel: the loss sees batch x classes values (128 x 10 for CIFAR),
and waking the worker threads cost more than the work (50 us vs 20 us serial,
numpy 50 us).

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit


def _softmax_cross_entropy_plain(labels, logits, loss, backprop):
    N, K = logits.shape
    t = logits.dtype.type
    for r in range(N):
        top = logits[r, 0]
        for k in range(1, K):
            top = max(top, logits[r, k])
        total = 0.0
        for k in range(K):
            e = np.exp(logits[r, k] - top)
            backprop[r, k] = e              # exp(s) parked in the output row
            total += e
        sum_exp = t(total)
        log_sum_exp = np.log(sum_exp)
        row_loss = 0.0
        for k in range(K):
            row_loss += labels[r, k] * (log_sum_exp - (logits[r, k] - top))
            backprop[r, k] = backprop[r, k] / sum_exp - labels[r, k]
        loss[r] = row_loss


_softmax_cross_entropy_kernel = njit(cache=True)(_softmax_cross_entropy_plain)


def softmax_cross_entropy(labels, logits):
    """As tinybn.ops.losses.softmax_cross_entropy: (loss (N,), backprop (N, K))."""
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels, dtype=logits.dtype)
    loss = np.empty(logits.shape[0], logits.dtype)
    backprop = np.empty_like(logits)
    _softmax_cross_entropy_kernel(labels, logits, loss, backprop)
    return loss, backprop
