"""Batch normalisation ops: moments, batch_normalization, the renorm correction.

Shapes: x is any rank, usually (N, C) or NHWC (N, H, W, C); per-channel
statistics reduce over every axis but the last (axes=[0] or [0, 1, 2]), n is
the number of elements reduced per output.

    moments              mean = sum(x)/n,  var = sum((x - mean)^2)/n   (population, two-pass)
                         dx = dmean/n + 2 (x - mean) dvar/n
    batch_normalization  inv = rsqrt(variance + eps); if scale: inv *= scale
                         y = x * inv + (offset - mean * inv)     (+ (-mean * inv) without offset)
    renorm_correction    r = clip(sqrt(var_B + eps) / rs, rmin, rmax)
                         d = clip((mean_B - renorm_mean) / rs, -dmax, dmax),
                         rs = max(renorm_stddev, sqrt(eps))      (constants: no gradient)
    fused_batch_norm     in fused_batch_norm.py (closed-form backward), re-exported here

TF conventions followed (TF-SEMANTICS.md section 5):
- tf.nn.moments: var = reduce_mean(squared_difference(x, stop_gradient(mean))), the
  population variance; `shift` is ignored. Never E[x^2] - E[x]^2. Stopping the gradient
  of mean inside var changes nothing, since d var / d mean = 0.
- tf.nn.batch_normalization: the exact float32 op order above (bitwise equal to TF);
  its gradient w.r.t. all five inputs is TF's graph gradient of that expression,
  RsqrtGrad included (d rsqrt(v) = -0.5 rsqrt(v)^3). No default epsilon, as TF.
- Batch renormalisation (Keras 3 / tf_keras): y = ((x - mean_B)/stddev * r + d)*gamma + beta,
  composed as batch_normalization(x, mean_B, var_B, d*gamma + beta, r*gamma, eps) with
  r, d constants, so the gradient flows through the batch statistics only. r and d use
  the renorm statistics from before this step's update.
Sums accumulate in float64 and are rounded once to the input dtype.
"""
from ..backend import array_module
from ..function import Function
from ..tensor import as_tensor
from .fused_batch_norm import fused_batch_norm  # noqa: F401  (the op family lives together)


def _sum_to(g, shape):
    """Sum g over the axes broadcasting added or stretched to get `shape`, in float64."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    xp = array_module(g)
    return g.sum(axis=axes, keepdims=True, dtype=xp.float64).astype(g.dtype).reshape(shape)


def _normalize_axes(axes, ndim):
    if isinstance(axes, int) and not isinstance(axes, bool):
        axes = [axes]
    try:
        axes = [int(a) for a in axes]
    except TypeError:
        raise ValueError(f"moments: axes must be an int or a list of ints, got {axes!r}")
    if any(not -ndim <= a < ndim for a in axes):
        raise ValueError(f"moments: axes {axes} out of range for x of rank {ndim}")
    axes = tuple(sorted(a % ndim for a in axes))
    if len(set(axes)) != len(axes):
        raise ValueError(f"moments: axes {axes} repeat an axis")
    return axes


class Moments(Function):
    def __init__(self, axes, keepdims):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        xp = array_module(x)
        n = 1
        for a in self.axes:
            n *= x.shape[a]
        self.n = n
        mean = (x.sum(axis=self.axes, keepdims=True, dtype=xp.float64) / n).astype(x.dtype)
        centered = x - mean
        var = ((centered * centered).sum(axis=self.axes, keepdims=True, dtype=xp.float64) / n).astype(x.dtype)
        self.save_for_backward(centered)
        if not self.keepdims:
            mean, var = mean.squeeze(self.axes), var.squeeze(self.axes)
        return mean, var

    def backward(self, gmean, gvar):
        (centered,) = self.saved
        if not self.keepdims:
            xp = array_module(centered)
            gmean, gvar = xp.expand_dims(gmean, self.axes), xp.expand_dims(gvar, self.axes)
        n = centered.dtype.type(self.n)
        # TF's order: reduce_mean's grad g/n, then SquaredDifference's 2*g*(x - mean).
        return gmean / n + (2 * (gvar / n)) * centered


def moments(x, axes, shift=None, keepdims=False, name=None):
    """tf.nn.moments: (mean, variance) over `axes`, population variance; `shift` is ignored."""
    x = as_tensor(x)
    return Moments(_normalize_axes(axes, x.ndim), bool(keepdims))(x)


class BatchNormalization(Function):
    """Inputs x, mean, variance, then offset and/or scale when given (flags say which)."""

    def __init__(self, variance_epsilon, has_offset, has_scale):
        self.eps, self.has_offset, self.has_scale = variance_epsilon, has_offset, has_scale

    def forward(self, x, mean, variance, *rest):
        xp = array_module(x)
        offset = rest[0] if self.has_offset else None
        scale = rest[-1] if self.has_scale else None
        rs = x.dtype.type(1) / xp.sqrt(variance + x.dtype.type(self.eps))
        inv = rs * scale if scale is not None else rs
        mean_inv = mean * inv
        shift = offset - mean_inv if offset is not None else -mean_inv
        self.save_for_backward(x, mean, rs, inv, scale)
        self.shapes = (x.shape, mean.shape, variance.shape, None if offset is None else offset.shape,
                       None if scale is None else scale.shape, shift.shape, mean_inv.shape)
        return x * inv + shift

    def backward(self, gy):
        x, mean, rs, inv, scale = self.saved
        x_shape, mean_shape, var_shape, offset_shape, scale_shape, shift_shape, mean_inv_shape = self.shapes
        dx = _sum_to(gy * inv, x_shape)
        dinv = _sum_to(gy * x, inv.shape)
        dshift = _sum_to(gy, shift_shape)
        dmean_inv = -_sum_to(dshift, mean_inv_shape)
        dmean = _sum_to(dmean_inv * inv, mean_shape)
        dinv = dinv + _sum_to(dmean_inv * mean, inv.shape)
        grads = [dx, dmean]
        if scale is not None:
            drs = _sum_to(dinv * scale, rs.shape)
            dscale = _sum_to(dinv * rs, scale_shape)
        else:
            drs = dinv
        grads.append(_sum_to(drs * (rs * rs * rs) * x.dtype.type(-0.5), var_shape))   # RsqrtGrad
        if offset_shape is not None:
            grads.append(_sum_to(dshift, offset_shape))
        if scale is not None:
            grads.append(dscale)
        return tuple(grads)


def batch_normalization(x, mean, variance, offset, scale, variance_epsilon, name=None):
    """tf.nn.batch_normalization: x*inv + (offset - mean*inv), inv = rsqrt(variance + eps)*scale.

    mean, variance, offset, scale broadcast against x (e.g. (C,) or keepdims (1, 1, 1, C));
    offset and scale may be None.
    """
    x = as_tensor(x)
    args = {"mean": mean, "variance": variance, "offset": offset, "scale": scale}
    tensors = {k: as_tensor(v) for k, v in args.items() if v is not None}
    for arg in ("mean", "variance"):
        if arg not in tensors:
            raise ValueError(f"batch_normalization: {arg} is required, got None")
    for arg, t in tensors.items():
        if len(t.shape) > x.ndim or any(s not in (1, xs) for s, xs in zip(t.shape[::-1], x.shape[::-1])):
            raise ValueError(f"batch_normalization: {arg} of shape {t.shape} does not broadcast to x of shape {x.shape}")
        if t.dtype != x.dtype:
            raise ValueError(f"batch_normalization: {arg} has dtype {t.dtype}, x has {x.dtype}")
    if variance_epsilon < 0:
        raise ValueError(f"batch_normalization: variance_epsilon must be >= 0, got {variance_epsilon}")
    fn = BatchNormalization(variance_epsilon, offset is not None, scale is not None)
    return fn(x, *tensors.values())


def renorm_correction(mean, variance, renorm_mean, renorm_stddev, epsilon, renorm_clipping=None):
    """Batch renorm's (r, d) as plain arrays (constants), in Keras 3's float op order.

    mean, variance: this batch's statistics; renorm_mean, renorm_stddev: the renorm
    moving statistics before this step's update. renorm_clipping: {'rmin', 'rmax', 'dmax'},
    a missing key is no clip.
    """
    xp = array_module(mean)
    dtype = mean.dtype.type
    clipping = renorm_clipping or {}
    stddev = xp.sqrt(variance + dtype(epsilon))
    rs = xp.maximum(renorm_stddev, xp.sqrt(dtype(epsilon)))
    r = stddev / rs
    d = (mean - renorm_mean) / rs
    if clipping.get("rmin") is not None:
        r = xp.maximum(r, dtype(clipping["rmin"]))
    if clipping.get("rmax") is not None:
        r = xp.minimum(r, dtype(clipping["rmax"]))
    if clipping.get("dmax") is not None:
        d = xp.clip(d, dtype(-clipping["dmax"]), dtype(clipping["dmax"]))
    return r, d
