"""Cross-replica (synchronized) batch normalisation: fused_batch_norm over every replica's batch.

Floor: ops; imports the core (function, tensor) and backend. The replicas are reached
only through the `group` argument, so this module imports no communication library.

A replica group is any object with `.size` (the number of replicas, K) and
`.sum(array) -> array` (the elementwise sum of `array` over the replicas, a new array of
the same kind and dtype, on every replica): tinybn.distributed's Communicator is one.
Every replica calls the op at the same point of its step, with its own slice of the
global batch, and each call makes the same sequence of group.sum calls.

Shapes: x is (N, C) or (N, H, W, C) (channels last, any rank >= 2) on each replica,
reshaped to (M, C), M = this replica's rows (N or N*H*W); scale, offset, mean, variance
are (C,). n = the sum of M over the group (the global count, summed with the first
statistics, so replicas may hold different M; M = 0 on some is allowed).

Forward, per channel, with S(.) = group.sum of a float64 column sum over local rows:
    n, s1 = S(1), S(x)                      mu = s1 / n
    s2 = S((x - mu)^2)                      var = s2 / n    (population, two-pass)
    inv_std = 1 / sqrt(var + eps)           xhat = (x - mu) * inv_std
    y = (x - mu) * (inv_std * scale) + offset
  each global sum is rounded once to x's dtype, as fused_batch_norm rounds its sums.
  The variance returned is var * n/(n-1) (n = 1 divides by 1) when bessel_correction.
Backward, with dy this replica's upstream gradient:
    doffset = sum(dy)                 dscale = sum(dy * xhat)        (LOCAL rows only)
    Doffset = S(dy)                   Dscale = S(dy * xhat)          (the whole group)
    dx = scale * inv_std * (dy - Doffset/n - xhat * Dscale/n)
  plus, where a gradient reached the returned statistics (gmean, gvar; usually none:
  they feed the moving averages), dx += S(gmean)/n + (x - mu) * 2 * adjust * S(gvar)/n,
  adjust = n/(n-1) or 1. The backward makes one group.sum, of all its sums stacked.

Why dx uses the group's sums but dscale and doffset are local: the loss of the job is
the mean of the replicas' losses, L = (1/K) sum_r L_r. Each replica's y depends on every
replica's x through mu and var, so dL_q/dx_r is nonzero for q != r: the group sums in
dx collect those terms, and dx on replica r is d(sum_q L_q)/dx_r. scale and offset are
one shared variable; d(sum_q L_q)/dscale = sum_r (replica r's local dscale). The
gradient allreduce that follows backward (tinybn.distributed's buckets) sums every
parameter's gradient over the replicas and divides by K, which turns the local dscale,
doffset and all gradients upstream of x into those of L. Summing dscale here as well
would count it K times. This is PyTorch's arrangement (SyncBatchNorm's backward
allreduces sum(dy) and sum(dy * xmu) for the input gradient and returns local weight
and bias gradients; DistributedDataParallel averages them).

TF conventions followed: Keras BatchNormalization(synchronized=True) under a
tf.distribute strategy normalises with the cross-replica mean and (population)
variance, all-reducing the local sums and counts; the gradient of its all-reduce SUM is
an all-reduce SUM of the gradients, which is the Doffset/Dscale above. Keras forms the
variance in one pass, E[x^2] - E[x]^2 clamped at 0, which cancels when the mean is large
against the spread; here it is two-pass, as fused_batch_norm and tf.nn.moments do (one
more group.sum per layer). The returned variance is fused_batch_norm's (Bessel-corrected
when asked), so nn.BatchNorm's moving-variance rules apply unchanged, with the global n.

A group of size 1 computes exactly what fused_batch_norm(is_training=True) computes
with the numpy reference primitives: the same float64 sums, rounded once, and the same
elementwise float order, so the results are bitwise equal (the numba and CUDA twins of
fused_batch_norm sum in blocks: they agree to an ulp). With K > 1 the float64 sums are
added in a different order than one pass over the concatenated batch: the float64
results agree to rounding, the rounded float32 ones almost always bitwise.
"""
import numbers

from ..backend import array_module
from ..function import Function
from ..tensor import as_tensor


def _check_group(group):
    size = getattr(group, "size", None)
    if not callable(getattr(group, "sum", None)) or not isinstance(size, numbers.Integral) or isinstance(size, bool) \
            or size < 1:
        raise TypeError(f"sync_batch_norm: group must be a replica group, with an int .size >= 1 and "
                        f".sum(array) -> array (tinybn.distributed's Communicator), got {type(group).__name__}")


class SyncBatchNormTraining(Function):
    """Inputs x, scale, offset; outputs y, the global mean and the global variance."""

    materialize_grads = False   # the statistics outputs usually feed only the moving averages

    def __init__(self, epsilon, group, bessel_correction):
        self.epsilon, self.group, self.bessel = epsilon, group, bessel_correction

    def forward(self, x, scale, offset):
        xp = array_module(x)
        t = x.dtype.type
        self.shape = x.shape
        x2 = x.reshape(-1, x.shape[-1])
        local = xp.empty(x2.shape[1] + 1, xp.float64)
        local[0] = x2.shape[0]
        local[1:] = x2.sum(axis=0, dtype=xp.float64)
        total = self.group.sum(local)
        n = int(total[0])
        if n == 0:      # the same total on every replica: they all raise
            raise ValueError(f"sync_batch_norm: the replicas' batches hold no rows to take statistics over "
                             f"(shape {x.shape} here)")
        mean = (total[1:] / n).astype(x.dtype)
        centered = x2 - mean
        variance = (self.group.sum((centered * centered).sum(axis=0, dtype=xp.float64)) / n).astype(x.dtype)
        inv_std = t(1) / xp.sqrt(variance + t(self.epsilon))
        y = centered * (inv_std * scale) + offset
        self.n = n
        self.adjust = t(n / max(n - 1, 1) if self.bessel else 1.0)
        self.save_for_backward(x2, scale, mean, inv_std)
        return y.reshape(self.shape), mean, variance * self.adjust

    def backward(self, gy, gmean, gvar):
        # gy, gmean, gvar are None where no gradient reached that output (materialize_grads);
        # every replica runs the same graph, so they are None on all or on none
        x2, scale, mean, inv_std = self.saved
        xp = array_module(x2)
        t = x2.dtype.type
        gy = xp.zeros(x2.shape, x2.dtype) if gy is None else gy.reshape(x2.shape)
        xhat = (x2 - mean) * inv_std
        sums = [gy.sum(axis=0, dtype=xp.float64), (gy * xhat).sum(axis=0, dtype=xp.float64)]
        sums += [g.astype(xp.float64) for g in (gmean, gvar) if g is not None]
        local = xp.stack(sums)
        total = self.group.sum(local).astype(x2.dtype)
        doffset, dscale = local[0].astype(x2.dtype), local[1].astype(x2.dtype)
        one_over_n = t(1.0 / self.n)
        dx = (scale * inv_std) * (gy - total[0] * one_over_n - xhat * (total[1] * one_over_n))
        # d mean/dx = 1/n and d var_out/dx = adjust * 2(x - mu)/n on every replica's rows
        n, row = t(self.n), 2
        if gmean is not None:
            dx = dx + total[row] / n
            row += 1
        if gvar is not None:
            dx = dx + (x2 - mean) * (self.adjust * 2 * total[row] / n)
        return dx.reshape(self.shape), dscale, doffset


def sync_batch_norm(x, scale, offset, epsilon, group, bessel_correction=True):
    """Training-mode batch norm with the statistics of every replica's x together: (y, mean, variance).

    As fused_batch_norm(is_training=True) on the concatenation of the replicas' x:
    y normalised with the global population variance; the variance returned is
    var*n/(n-1) (global n) when bessel_correction, else the population variance.
    `group`: .size and .sum(array) -> array (see the module docstring); dscale and
    doffset in the backward are this replica's own (the gradient allreduce averages them).
    """
    x, scale, offset = as_tensor(x), as_tensor(scale), as_tensor(offset)
    _check_group(group)
    if x.ndim < 2 or x.shape[-1] == 0:
        raise ValueError(f"sync_batch_norm: x must have rank >= 2 ((N, C) or NHWC) and at least one channel, "
                         f"got shape {x.shape}")
    c = x.shape[-1]
    for arg, t in (("scale", scale), ("offset", offset)):
        if t.shape != (c,):
            raise ValueError(f"sync_batch_norm: {arg} must have shape ({c},) (the channels of x), got {t.shape}")
        if t.dtype != x.dtype:
            raise ValueError(f"sync_batch_norm: {arg} has dtype {t.dtype}, x has {x.dtype}")
    if x.dtype.kind != "f":
        raise ValueError(f"sync_batch_norm: x must be a floating type, got {x.dtype}")
    if epsilon < 0:
        raise ValueError(f"sync_batch_norm: epsilon must be >= 0, got {epsilon}")
    return SyncBatchNormTraining(epsilon, group, bessel_correction)(x, scale, offset)
