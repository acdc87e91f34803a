"""Batch normalisation ops: moments, batch_normalization, the renorm correction.

Floor: ops; imports the core (function, tensor), backend, numpy and ops/basic.py's
sum_to, the one sum of a broadcast operand's gradient.

Shapes: x is any rank, usually (N, C) or NHWC (N, H, W, C); per-channel
statistics reduce over every axis but the last (axes=[0] or [0, 1, 2]), n is
the number of elements reduced per output. The parameters of batch_normalization
(mean, variance, offset, scale) each broadcast against x, e.g. (C,) or (1, 1, 1, C);
P is their common broadcast shape and S_a(t) sums t over the axes broadcasting
added or stretched to reach a's shape (sum_to).

    moments              mean = sum(x)/n,  var = sum((x - mean)^2)/n   (population, two-pass)
                         dx = dmean/n + 2 (x - mean) dvar/n
    batch_normalization  rs = rsqrt(variance + eps),  inv = rs * scale  (inv = rs without scale)
                         y = x * inv + (offset - mean * inv)            (- mean * inv without offset)
      backward, dy of x's shape:
                         G = S_P(dy)                      D = S_P(dy * x) - G * mean   (= dL/d inv)
                         dx        = dy * inv             doffset = S_offset(G)
                         dmean     = S_mean(-G * inv)     dscale  = S_scale(D * rs)
                         dvariance = -1/2 rs^3 * S_variance(D * scale)       (D without scale)
    renorm_correction    r = clip(sqrt(var_B + eps) / rs, rmin, rmax)
                         d = clip((mean_B - renorm_mean) / rs, -dmax, dmax),
                         rs = max(renorm_stddev, sqrt(eps))      (constants: no gradient)
    fused_batch_norm     in fused_batch_norm.py (closed-form backward), re-exported here

Conventions (those of tf.nn's ops of the same names):
- moments returns the population variance, computed in two passes as the mean of
  (x - mean)^2, never as E[x^2] - E[x]^2 (which cancels catastrophically when the mean
  is large against the spread); a `shift` argument is accepted and ignored. The mean
  inside the variance carries no gradient, which changes nothing since d var / d mean = 0.
- batch_normalization is computed in exactly the float order written above, so float32
  results are bitwise those of the TF op. Its gradient is the derivative of that
  expression with respect to all five inputs, with D formed as S(dy * x) - G * mean,
  in that order, rather than the algebraically equal S(dy * (x - mean)), so that the
  float32 gradients round as TF's do. There is no default epsilon.
- Batch renormalisation (as Keras 3 computes it): y = ((x - mean_B)/stddev * r + d)*gamma + beta,
  composed as batch_normalization(x, mean_B, var_B, d*gamma + beta, r*gamma, eps) with
  r, d constants, so the gradient flows through the batch statistics only. r and d use
  the renorm statistics from before this step's update.
Sums accumulate in float64 and are rounded once to the input dtype.
"""
import numpy as np

from ..backend import array_module
from ..function import Function
from ..tensor import as_tensor
from .basic import sum_to
from .fused_batch_norm import fused_batch_norm  # noqa: F401  (the op family lives together)


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
        self.names = ("x", "mean", "variance") + ("offset",) * self.has_offset + ("scale",) * self.has_scale
        self.shapes = tuple(t.shape for t in (x, mean, variance, *rest))
        return x * inv + shift

    def backward(self, dy):
        x, mean, rs, inv, scale = self.saved
        shape = dict(zip(self.names, self.shapes))
        need = dict(zip(self.names, self.needs_input_grad))
        p = np.broadcast_shapes(*self.shapes[1:])   # P, the parameters' common shape (shift's)
        g = sum_to(dy, p)                           # G, the gradient of shift
        d_inv = sum_to(dy * x, p) - g * mean        # D, the gradient of inv
        grads = {}
        if need["x"]:
            grads["x"] = dy * inv
        if need["mean"]:
            grads["mean"] = sum_to(-g * inv, shape["mean"])
        if need["variance"]:
            d_rs = sum_to(d_inv if scale is None else d_inv * scale, shape["variance"])
            grads["variance"] = d_rs * (rs * rs * rs) * x.dtype.type(-0.5)    # d rsqrt(v) = -rsqrt(v)^3 / 2
        if need.get("offset"):
            grads["offset"] = sum_to(g, shape["offset"])
        if need.get("scale"):
            grads["scale"] = sum_to(d_inv * rs, shape["scale"])
        return tuple(grads.get(name) for name in self.names)


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
