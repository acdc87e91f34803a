"""Local response normalization across channels, as tf.nn.local_response_normalization.

Floor: ops; imports the core (function), backend, numpy and ops/padding.py.

Shapes: input (N, H, W, C); the window runs over C only, at every (n, h, w). With r the
depth_radius and the window clipped at the channel edges (no wrap-around, no
renormalisation by the window's length; a radius >= C just sums every channel):

    sqr_sum[..., k] = sum_{j : |j - k| <= r, 0 <= j < C} x[..., j]^2
    N[..., k]       = bias + alpha * sqr_sum[..., k]     alpha multiplies the RAW sum
    y[..., k]       = x[..., k] * N[..., k]^(-beta)

TF's alpha is NOT divided by the window size 2r+1 (Caffe and PyTorch do divide); the
CIFAR-10 tutorial's alpha=0.001/9 is that tutorial's own choice. Op defaults:
depth_radius=5, bias=1, alpha=1, beta=0.5 (docs/tf-conventions.md#lrn).

Backward, derived by hand. y_j depends on x_k directly when j = k and through N_j
whenever |j - k| <= r, with dN_j/dx_k = 2 alpha x_k:

    dy_j/dx_k = [j = k] N_j^(-beta) - beta x_j N_j^(-beta-1) * 2 alpha x_k [|j - k| <= r]

    dx_k = sum_j dy_j dy_j/dx_k
         = dy_k N_k^(-beta) - 2 alpha beta x_k sum_{|j-k| <= r} dy_j x_j N_j^(-beta-1)
         = dy_k N_k^(-beta) - 2 alpha beta x_k sum_{|j-k| <= r} dy_j y_j / N_j

The last form is TF's CPU kernel (LaunchLRNGrad, which is given the forward output y).
The window sum is symmetric in (j, k), so forward and backward use the same one.

The windowed channel sum is `v @ band` with band[j, k] = [|j - k| <= r], a (C, C)
0/1 matrix, as TF's CPU kernel does: every output is a plain sum of at most 2r+1
terms (the zeros add exactly), so it is as accurate as a direct loop. A running
cumulative sum would subtract two large prefix sums and lose relative accuracy
when the window holds small values next to large ones.
"""
import numbers

from ..backend import array_module, dispatch, primitive
from ..function import Function
from .padding import check_rank


def _window_sum(v, depth_radius):
    """sum over |j - k| <= depth_radius of v[..., j], for every channel k."""
    xp = array_module(v)
    channels = v.shape[-1]
    index = xp.arange(channels)
    band = (xp.abs(index[:, None] - index[None, :]) <= depth_radius).astype(v.dtype)
    return (v.reshape(-1, channels) @ band).reshape(v.shape)


# ---- hot primitives: plain arrays ----------------------------------------------

@primitive("lrn_forward")
def lrn_forward(x, depth_radius, bias, alpha, beta):
    """(y, norm), both (N, H, W, C): norm = bias + alpha * windowed sum of x^2, y = x * norm^-beta."""
    t = x.dtype.type
    norm = t(bias) + t(alpha) * _window_sum(x * x, depth_radius)
    return x * norm ** t(-beta), norm


@primitive("lrn_backward")
def lrn_backward(dy, x, y, norm, depth_radius, alpha, beta):
    """dx (N, H, W, C) = dy * norm^-beta - 2 alpha beta x * windowed sum of (dy * y / norm)."""
    t = dy.dtype.type
    return dy * norm ** t(-beta) - t(2 * alpha * beta) * x * _window_sum(dy * y / norm, depth_radius)


# ---- op ------------------------------------------------------------------------

class LocalResponseNormalization(Function):
    def __init__(self, depth_radius, bias, alpha, beta):
        if isinstance(depth_radius, bool) or not isinstance(depth_radius, numbers.Integral) or depth_radius < 0:
            raise ValueError(f"local_response_normalization: depth_radius must be an int >= 0, got {depth_radius!r}")
        self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), float(bias), float(alpha), float(beta)

    def forward(self, x):
        check_rank(x, 4, "local_response_normalization")
        if x.dtype.kind != "f":
            raise ValueError(f"local_response_normalization: input must be floating point, got {x.dtype}")
        y, norm = dispatch("lrn_forward", x, self.depth_radius, self.bias, self.alpha, self.beta)
        self.save_for_backward(x, y, norm)
        return y

    def backward(self, dy):
        x, y, norm = self.saved
        return dispatch("lrn_backward", dy, x, y, norm, self.depth_radius, self.alpha, self.beta)


def local_response_normalization(input, depth_radius=5, bias=1, alpha=1, beta=0.5):  # noqa: A002
    """tf.nn.local_response_normalization: x / (bias + alpha * sum of x^2 over nearby channels)^beta."""
    return LocalResponseNormalization(depth_radius, bias, alpha, beta)(input)


lrn = local_response_normalization
