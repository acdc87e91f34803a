"""Fused batch normalisation with a closed-form backward (tf.compat.v1.nn.fused_batch_norm).

Floor: ops; imports the core (function, tensor), backend, numpy and ops/padding.py.

Shapes: x is (N, C) or (N, H, W, C) (any rank >= 2, channels last, i.e. NHWC);
scale, offset, mean, variance are (C,). The statistics reduce over every axis
but the last, so n = N (2-D) or n = N*H*W (4-D). The op reshapes x to (M, C),
M = n, and hands that to the hot primitives.

Training (is_training=True), per channel:
    mu = sum(x) / n                      var = sum((x - mu)^2) / n   (population, two-pass)
    inv_std = 1 / sqrt(var + eps)        xhat = (x - mu) * inv_std
    y = (x - mu) * (inv_std * scale) + offset        (TF's CPU kernel order)
  backward, with dy the upstream gradient:
    doffset = sum(dy)                    dscale = sum(dy * xhat)
    dx = scale * inv_std / n * (n*dy - doffset - xhat*dscale)
       = scale * inv_std * (dy - doffset/n - xhat * dscale/n)   (the form computed)
Inference (is_training=False), with the given mean and variance:
    a = rsqrt(variance + eps) * scale    y = (x - mean) * a + offset
    dx = dy * a,  doffset = sum(dy),  dscale = sum(dy * (x - mean)) * rsqrt(variance + eps),
    dmean = -doffset * a,  dvariance = -0.5 * scale * rsqrt^3 * sum(dy * (x - mean))

TF conventions followed (docs/tf-conventions.md#fused-batch-norm):
- y is always normalised with the population variance, and so is the gradient.
- The returned variance is TF's: Bessel-corrected, var * n/(n-1) (n = 1 divides by 1),
  when `bessel_correction=True` (the default, as the TF twin). Pass
  `bessel_correction=False` to get the population variance instead.
- exponential_avg_factor f != 1 (training only; mean and variance are then the running
  statistics): returns (1-f)*old_mean + f*mu and (1-f)*old_var + f*var*n/(n-1).
- In inference the returned mean and variance are the inputs themselves.
- Python default epsilon 0.001 (the raw op's is 1e-4).
Unlike TF, whose gradient ignores the two statistics outputs, the backward here
also carries gradients that reach x (and the old running stats) through them, so
the op is a true derivative of everything it returns. Where none reached them (the
usual case: they feed the moving averages only) backward gets None for them
(materialize_grads = False) and skips those terms, with no look at the values (a
host sync per layer on a GPU). Gradients of inputs that need none
(needs_input_grad: the moving statistics in inference) are not computed.

Sums over n accumulate in float64 (numpy reductions over leading axes are
sequential in float32, about sqrt(n) times worse than TF's tree reductions).
"""
from ..backend import array_module, dispatch, primitive
from ..function import Function
from ..tensor import as_tensor
from .padding import check_data_format


def _sum_rows(a):
    """Column sums of a (M, C) array, accumulated in float64, returned in a's dtype."""
    xp = array_module(a)
    return a.sum(axis=0, dtype=xp.float64).astype(a.dtype)


@primitive("batch_norm_train_forward")
def batch_norm_train_forward(x, scale, offset, epsilon):
    """x (M, C), scale (C,), offset (C,), epsilon float -> (y (M, C), mean (C,),
    variance (C,) population, inv_std (C,) = 1/sqrt(variance + epsilon)); one dtype throughout."""
    xp = array_module(x)
    m = x.shape[0]
    mean = (x.sum(axis=0, dtype=xp.float64) / m).astype(x.dtype)
    centered = x - mean
    variance = ((centered * centered).sum(axis=0, dtype=xp.float64) / m).astype(x.dtype)
    inv_std = x.dtype.type(1) / xp.sqrt(variance + x.dtype.type(epsilon))
    y = centered * (inv_std * scale) + offset
    return y, mean, variance, inv_std


@primitive("batch_norm_train_backward")
def batch_norm_train_backward(dy, x, scale, mean, inv_std):
    """dy, x (M, C); scale, mean, inv_std (C,) from the forward -> (dx (M, C), dscale (C,), doffset (C,))."""
    m = x.shape[0]
    xhat = (x - mean) * inv_std
    doffset = _sum_rows(dy)
    dscale = _sum_rows(dy * xhat)
    one_over_m = x.dtype.type(1.0 / m)
    dx = (scale * inv_std) * (dy - doffset * one_over_m - xhat * (dscale * one_over_m))
    return dx, dscale, doffset


@primitive("batch_norm_inference")
def batch_norm_inference(x, scale, offset, mean, variance, epsilon):
    """x (M, C); scale, offset, mean, variance (C,); epsilon float -> y (M, C)."""
    xp = array_module(x)
    a = x.dtype.type(1) / xp.sqrt(variance + x.dtype.type(epsilon)) * scale
    return (x - mean) * a + offset


class FusedBatchNormTraining(Function):
    """Inputs x, scale, offset (and the running mean, variance when avg_factor != 1)."""

    materialize_grads = False   # the statistics outputs usually feed only the moving averages

    def __init__(self, epsilon, avg_factor, bessel_correction):
        self.epsilon, self.avg_factor, self.bessel = epsilon, avg_factor, bessel_correction

    def forward(self, x, scale, offset, *running):
        self.shape = x.shape
        x2 = x.reshape(-1, x.shape[-1])
        y, mean, var, inv_std = dispatch("batch_norm_train_forward", x2, scale, offset, self.epsilon)
        n = x2.shape[0]
        self.adjust = x.dtype.type(n / max(n - 1, 1) if self.bessel else 1.0)
        self.save_for_backward(x2, scale, mean, inv_std)
        var_out = var * self.adjust
        if running:
            f = x.dtype.type(self.avg_factor)
            one_minus_f = x.dtype.type(1) - f
            old_mean, old_var = running
            mean = one_minus_f * old_mean + f * mean
            var_out = one_minus_f * old_var + f * var * self.adjust
        return y.reshape(self.shape), mean, var_out

    def backward(self, gy, gmean, gvar):
        # gy, gmean, gvar are None where no gradient reached that output (materialize_grads)
        x2, scale, mean, inv_std = self.saved
        if gy is None:
            gy = array_module(x2).zeros(self.shape, x2.dtype)
        dx, dscale, doffset = dispatch("batch_norm_train_backward", gy.reshape(x2.shape), x2, scale, mean, inv_std)
        # d mean_out/dx = f/n and d var_out/dx = f*adjust*2(x - mu)/n (d var/d mu = 0)
        f = x2.dtype.type(self.avg_factor)
        n = x2.dtype.type(x2.shape[0])
        if gmean is not None:
            dx = dx + f * gmean / n
        if gvar is not None:
            dx = dx + (x2 - mean) * (f * self.adjust * 2 * gvar / n)
        grads = (dx.reshape(self.shape), dscale, doffset)
        if len(self.inputs) == 5:
            one_minus_f = x2.dtype.type(1) - f
            need_old_mean, need_old_var = self.needs_input_grad[3:]
            grads += (one_minus_f * gmean if need_old_mean and gmean is not None else None,
                      one_minus_f * gvar if need_old_var and gvar is not None else None)
        return grads


class FusedBatchNormInference(Function):
    def __init__(self, epsilon):
        self.epsilon = epsilon

    def forward(self, x, scale, offset, mean, variance):
        x2 = x.reshape(-1, x.shape[-1])
        y = dispatch("batch_norm_inference", x2, scale, offset, mean, variance, self.epsilon)
        self.save_for_backward(x2, scale, mean, variance)
        self.shape = x.shape
        return y.reshape(x.shape), mean.copy(), variance.copy()

    def backward(self, gy, gmean, gvar):
        x2, scale, mean, variance = self.saved
        need_x, need_scale, need_offset, need_mean, need_var = self.needs_input_grad
        xp = array_module(x2)
        gy = gy.reshape(x2.shape)
        rs = x2.dtype.type(1) / xp.sqrt(variance + x2.dtype.type(self.epsilon))
        a = rs * scale
        # the layer's eval mode: mean and variance are moving statistics, no gradient asked
        doffset = _sum_rows(gy) if need_offset or need_mean else None
        dyxc = _sum_rows(gy * (x2 - mean)) if need_scale or need_var else None
        dscale = dyxc * rs if need_scale else None
        dmean = gmean - doffset * a if need_mean else None
        dvar = gvar + dyxc * scale * (x2.dtype.type(-0.5) * rs * rs * rs) if need_var else None
        dx = (gy * a).reshape(self.shape) if need_x else None
        return dx, dscale, doffset if need_offset else None, dmean, dvar


def fused_batch_norm(x, scale, offset, mean=None, variance=None, epsilon=0.001, data_format="NHWC",
                     is_training=True, name=None, exponential_avg_factor=1.0, bessel_correction=True):
    """tf.compat.v1.nn.fused_batch_norm for channels-last inputs of rank >= 2: (y, mean, variance).

    Training: batch statistics; the variance returned is var*n/(n-1) when
    bessel_correction (TF's), else the population variance used for y.
    Inference: y from the given mean/variance, which are returned unchanged.
    """
    x, scale, offset = as_tensor(x), as_tensor(scale), as_tensor(offset)
    check_data_format(data_format, "fused_batch_norm")
    if x.ndim < 2:
        raise ValueError(f"fused_batch_norm: x must have rank >= 2 ((N, C) or NHWC), got shape {x.shape}")
    c = x.shape[-1]
    args = {"scale": scale, "offset": offset}
    if mean is not None:
        args["mean"] = mean = as_tensor(mean)
    if variance is not None:
        args["variance"] = variance = as_tensor(variance)
    for arg, t in args.items():
        if t.shape != (c,):
            raise ValueError(f"fused_batch_norm: {arg} must have shape ({c},) (the channels of x), got {t.shape}")
        if t.dtype != x.dtype:
            raise ValueError(f"fused_batch_norm: {arg} has dtype {t.dtype}, x has {x.dtype}")
    if epsilon < 0:
        raise ValueError(f"fused_batch_norm: epsilon must be >= 0, got {epsilon}")
    if not is_training:
        if mean is None or variance is None:
            raise ValueError("fused_batch_norm: inference (is_training=False) needs mean and variance")
        return FusedBatchNormInference(epsilon)(x, scale, offset, mean, variance)
    if x.size == 0:
        raise ValueError(f"fused_batch_norm: x has no elements to take batch statistics over, shape {x.shape}")
    if not 0.0 <= exponential_avg_factor <= 1.0:
        raise ValueError(f"fused_batch_norm: exponential_avg_factor must be in [0, 1], got {exponential_avg_factor}")
    fn = FusedBatchNormTraining(epsilon, exponential_avg_factor, bessel_correction)
    if exponential_avg_factor != 1.0:
        if mean is None or variance is None:
            raise ValueError("fused_batch_norm: exponential_avg_factor != 1 needs the running mean and variance")
        return fn(x, scale, offset, mean, variance)
    return fn(x, scale, offset)
