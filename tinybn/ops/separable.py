"""Separable convolutions, built from conv2d and depthwise_conv2d (tinybn.ops.conv).

Shapes: input x (N, H, W, C); output (N, OH, OW, O).

    separable_conv2d(x, depthwise (KH, KW, C, CM), pointwise (1, 1, C*CM, O), strides, padding)
        = conv2d(depthwise_conv2d(x, depthwise, strides, padding, dilations), pointwise, 1, "VALID")
        as tf.nn.separable_conv2d: strides, padding and dilations apply to the depthwise step
        only; pointwise input channel c*CM + q is depthwise output channel (c, q).

    spatially_separable_conv2d(x, A (KH, 1, C, M), B (1, KW, M, O), strides (SH, SW), padding)
        = conv2d(conv2d(x, A, strides=(SH, 1)), B, strides=(1, SW))
        TF has no op for this; it is two tf.nn.conv2d calls.
        It equals ONE conv2d with the rank-M kernel
            K[i, j, c, o] = sum_m A[i, 0, c, m] * B[0, j, m, o]        (separable_kernel(A, B))
        because the KHx1 conv pads only H and the 1xKW conv pads only W, by exactly the
        (top, bottom) and (left, right) of the KHxKW window (SAME, VALID or explicit), and a
        sum over taps (i, j) factors into a sum over i, then over j.
        Multiplies per output pixel at stride 1: KH*C*M + KW*M*O instead of KH*KW*C*O
        (3x3, C = O = M = 64: 24576 instead of 36864).

    factor_separable(K (KH, KW, C, O)) -> (A, B, error)
        the best rank-1 approximation (SVD) of every (c, o) slice K[:, :, c, o] ~ s u v^T,
        written as A (KH, 1, C, C*O) and B (1, KW, C*O, O) with one intermediate channel
        m = c*O + o per pair: A[:, 0, c, m] = sqrt(s) u, B[0, :, m, o] = sqrt(s) v, zero
        elsewhere. Then spatially_separable_conv2d(x, A, B) == conv2d(x, K_rank1) exactly, and
        error = ||K - K_rank1||_F / ||K||_F (0, up to rounding, when every slice has rank 1).
        With M = C*O this representation costs more multiplies than K itself; it shows
        which kernels separate, a model would learn A and B with a small M instead.

Gradients follow from the two ops' backward passes (autograd), nothing new to derive.

Floor: ops (tests/test_layering.py): imports from tinybn only core, backend and ops.
"""
from ..backend import array_module
from ..tensor import Tensor, as_tensor
from .conv import CONV_DIMS, DEPTHWISE_DIMS, conv2d, depthwise_conv2d
from .padding import check_filter_dims, pair, window_padding


def _array(x):
    return x.data if isinstance(x, Tensor) else x


def _shape_check(op, name, shape, expected, ok=lambda shape: True):
    if len(shape) != 4 or not ok(shape):
        raise ValueError(f"{op}: {name} must have shape {expected}, got {tuple(shape)}")


def separable_conv2d(input, depthwise_filter, pointwise_filter, strides, padding, data_format=None,
                     dilations=None):
    """tf.nn.separable_conv2d: depthwise (with strides, padding, dilations), then a 1x1 stride-1 VALID conv."""
    x, dw, pw = as_tensor(input), as_tensor(depthwise_filter), as_tensor(pointwise_filter)
    _shape_check("separable_conv2d", "depthwise_filter", dw.shape, "(KH, KW, C, CM)")
    _shape_check("separable_conv2d", "pointwise_filter", pw.shape, "(1, 1, C*CM, O)",
                 lambda s: s[:2] == (1, 1) and s[2] == dw.shape[2] * dw.shape[3])
    check_filter_dims("separable_conv2d", "depthwise_filter", dw.shape, DEPTHWISE_DIMS)
    check_filter_dims("separable_conv2d", "pointwise_filter", pw.shape, CONV_DIMS)
    # the depthwise step takes strides, dilations and padding: refuse bad ones under this op's name
    window = (pair(strides, "strides", "separable_conv2d"),
              pair(1 if dilations is None else dilations, "dilations", "separable_conv2d"))
    if x.ndim == 4:
        window_padding(x.shape[1:3], dw.shape[:2], *window, padding, "separable_conv2d")
    y = depthwise_conv2d(x, dw, strides, padding, data_format, dilations)
    return conv2d(y, pw, 1, "VALID")


def spatially_separable_conv2d(input, filters_kx1, filters_1xk, strides, padding, dilations=None):
    """A (KH, 1, C, M) then B (1, KW, M, O): equal to conv2d(x, separable_kernel(A, B), strides, padding)."""
    op = "spatially_separable_conv2d"
    x, a, b = as_tensor(input), as_tensor(filters_kx1), as_tensor(filters_1xk)
    _shape_check(op, "filters_kx1", a.shape, "(KH, 1, C, M)", lambda s: s[1] == 1)
    _shape_check(op, "filters_1xk", b.shape, "(1, KW, M, O)", lambda s: s[0] == 1)
    check_filter_dims(op, "filters_kx1", a.shape, ("kernel height KH", "width", "input channels C",
                                                   "intermediate channels M"))
    check_filter_dims(op, "filters_1xk", b.shape, ("height", "kernel width KW", "intermediate channels M",
                                                   "output channels O"))
    if a.shape[3] != b.shape[2]:
        raise ValueError(f"spatially_separable_conv2d: filters_kx1 has {a.shape[3]} output channels "
                         f"but filters_1xk expects {b.shape[2]} input channels")
    if x.ndim != 4:
        raise ValueError(f"spatially_separable_conv2d: input must be rank 4 (NHWC), got shape {x.shape}")
    if x.shape[3] != a.shape[2]:
        raise ValueError(f"spatially_separable_conv2d: channel mismatch: input has {x.shape[3]} channels "
                         f"but filters_kx1 expects {a.shape[2]}")
    sh, sw = pair(strides, "strides", op)
    dh, dw = pair(1 if dilations is None else dilations, "dilations", op)
    # the padding of the whole KHxKW window, split: rows for the KHx1 conv, columns for the 1xKW one
    ((pt, pb), (pl, pr)), _ = window_padding(x.shape[1:3], (a.shape[0], b.shape[1]), (sh, sw), (dh, dw), padding,
                                             op)
    y = conv2d(x, a, (sh, 1), [(pt, pb), (0, 0)], dilations=(dh, 1))
    return conv2d(y, b, (1, sw), [(0, 0), (pl, pr)], dilations=(1, dw))


def separable_kernel(filters_kx1, filters_1xk):
    """K[i, j, c, o] = sum_m A[i, 0, c, m] * B[0, j, m, o]: the one conv2d kernel the pair equals (arrays)."""
    a, b = _array(filters_kx1), _array(filters_1xk)
    return array_module(a).einsum("icm,jmo->ijco", a[:, 0], b[0])


def factor_separable(kernel):
    """Rank-1 factors of every (c, o) slice of kernel (KH, KW, C, O) -> (A, B, relative error); arrays."""
    k = _array(kernel)
    if k.ndim != 4:
        raise ValueError(f"factor_separable: kernel must be rank 4 (KH, KW, C, O), got shape {k.shape}")
    xp = array_module(k)
    KH, KW, C, O = k.shape
    u, s, vt = xp.linalg.svd(k.transpose(2, 3, 0, 1))     # batched over (c, o)
    root = xp.sqrt(s[..., 0])[..., None]
    col, row = u[..., :, 0] * root, vt[..., 0, :] * root  # (C, O, KH), (C, O, KW)
    ci, oi = xp.arange(C), xp.arange(O)
    a = xp.zeros((KH, C, C, O), k.dtype)                   # (i, c, m = (c', o)): nonzero only for c' == c
    a[:, ci, ci, :] = col.transpose(2, 0, 1)
    b = xp.zeros((KW, C, O, O), k.dtype)                   # (j, m = (c, o'), o): nonzero only for o' == o
    b[:, :, oi, oi] = row.transpose(2, 0, 1)
    A, B = a.reshape(KH, 1, C, C * O), b.reshape(1, KW, C * O, O)
    norm = float(xp.linalg.norm(k))
    error = float(xp.linalg.norm(k - separable_kernel(A, B))) / norm if norm else 0.0
    return A, B, error
