"""Max and average pooling over 2-D windows, NHWC, as tf.nn.max_pool2d / tf.nn.avg_pool2d.

Shapes: input (N, H, W, C), window KH x KW, strides SH, SW, output (N, OH, OW, C).
Padding and OH, OW follow conv's rule (tinybn.ops.padding.window_padding): VALID,
SAME (the odd pixel of padding goes bottom/right, so 3x3/2 SAME on 24 pads (0, 1)),
or explicit [(top, bottom), (left, right)], each pad smaller than the window (as TF).

With xpad the padded input and W(i, j) = {(i*SH + di, j*SW + dj) : di < KH, dj < KW}:

    max:  y[n,i,j,c] = max over W(i, j) of xpad[n, ., ., c]     padding = -inf (ignored)
    avg:  y[n,i,j,c] = sum over W(i, j) of xpad[n, ., ., c] / count(i, j)
          count(i, j) = number of REAL (non-padded) pixels in W(i, j)
          (TF's count_include_pad=False; PyTorch's default divides by KH*KW)

Gradients (tensorflow/core/kernels/maxpooling_op.cc, SpatialMaxPoolWithArgMaxHelper):
    max:  each window sends its whole dy to ONE pixel, the first maximum of the
          window's REAL pixels in row-major (di, then dj) order; a pixel that is the
          argmax of several overlapping windows (3x3 stride 2) receives the sum of
          their dy. Padding is never chosen: a window whose real pixels are all -inf
          sends dy to its first real pixel (TF's scan visits only real pixels and
          takes the first one it meets), where an argmax over the -inf-padded window
          would pick a padded tap and the gradient would be lost.
    avg:  dx[W(i, j)] += dy[i, j] / count(i, j).

The hot primitives loop over the KH*KW window offsets and do array math over all of
(N, OH, OW, C) at once: the strided view xpad[:, di::SH, dj::SW, :] (cut to OH x OW)
is the (di, dj) element of every window. For one fixed offset distinct outputs see
distinct inputs, so `+=` into that view is an exact scatter (no np.add.at needed).

Where TF differs, on inputs that are not finite: a window whose real pixels are all -inf
has maximum -inf here, while TF's forward returns the dtype's lowest finite value
(-3.4e38 in float32: its running maximum starts there), with the same gradient. Inputs
are assumed NaN-free: TF's forward skips NaN but its gradient picks a NaN that is the
first real pixel of a window; here such a window gives NaN, with the same gradient.

Floor: ops (tests/test_layering.py): imports from tinybn only core, backend and ops.
"""
from ..backend import array_module, dispatch, primitive
from ..function import Function
from ..geometry import real_counts
from .padding import check_data_format, check_rank, pair, window_geometry


def _window(xpad, di, dj, window):
    """The (di, dj) element of every window: an (N, OH, OW, C) strided view of xpad."""
    sh, sw, oh, ow = window.SH, window.SW, window.OH, window.OW
    return xpad[:, di:di + sh * (oh - 1) + 1:sh, dj:dj + sw * (ow - 1) + 1:sw, :]


def _pad(xp, x, pads, value):
    (pt, pb), (pl, pr) = pads
    return xp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def _crop(xp_grad, in_shape, pads):
    (pt, _), (pl, _) = pads
    return xp_grad[:, pt:pt + in_shape[1], pl:pl + in_shape[2], :]


# ---- hot primitives: plain arrays and a geometry.Window ----------------------------
# window: KH, KW, SH, SW (dilations 1), pads ((top, bottom), (left, right)), OH, OW.

@primitive("max_pool_forward")
def max_pool_forward(x, window):
    """(y, argmax): y (N, OH, OW, C) the window maxima; argmax (N, OH, OW, C) int32, the
    window offset di*KW + dj of the FIRST maximum of each window in row-major order,
    among its real pixels (every window holds one: each pad is smaller than the window)."""
    return _max_pool(x, window, with_argmax=True)


@primitive("max_pool_values")
def max_pool_values(x, window):
    """max_pool_forward's y alone, for a forward that nobody differentiates (no argmax kept)."""
    return _max_pool(x, window, with_argmax=False)[0]


def _max_pool(x, window, with_argmax):
    xp = array_module(x)
    KH, KW, sh, sw, _, _, pads, OH, OW = window
    (pt, _), (pl, _) = pads
    xpad = _pad(xp, x, pads, -xp.inf)
    y = _window(xpad, 0, 0, window).copy()
    argmax = xp.zeros(y.shape, dtype=xp.int32) if with_argmax else None
    # Each window starts from its first real pixel, as TF's scan does, so that a window of
    # -inf values beside the padding sends its gradient there, not to a padded tap. Only
    # the windows of the top rows and left columns start in the padding: i*SH < top or
    # j*SW < left. Their first real pixel is at offset (max(top - i*SH, 0), max(left - j*SW, 0)).
    first_h = xp.maximum(pt - xp.arange(OH) * sh, 0)
    first_w = xp.maximum(pl - xp.arange(OW) * sw, 0)
    rows, cols = xp.arange(OH) * sh + first_h, xp.arange(OW) * sw + first_w
    first_tap = (first_h[:, None] * KW + first_w[None, :]).astype(xp.int32)[:, :, None]
    top, left = min(-(-pt // sh), OH), min(-(-pl // sw), OW)
    for i, j in ((slice(0, top), slice(None)), (slice(None), slice(0, left))):
        y[:, i, j] = xpad[:, rows[i, None], cols[None, j]]
        if with_argmax:
            argmax[:, i, j] = first_tap[i, j]
    for di in range(KH):
        for dj in range(KW):
            candidate = _window(xpad, di, dj, window)
            # strictly greater: a tie keeps the earlier offset, TF's "first maximum";
            # padding (-inf) never wins
            better = candidate > y
            xp.copyto(y, candidate, where=better)
            if with_argmax:
                xp.copyto(argmax, di * KW + dj, where=better)
    return y, argmax


@primitive("max_pool_backward")
def max_pool_backward(dy, argmax, in_shape, window):
    """dx of in_shape (N, H, W, C): each dy[n,i,j,c] added at its window's argmax offset."""
    xp = array_module(dy)
    (pt, pb), (pl, pr) = window.pads
    n, h, w, c = in_shape
    dxpad = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for di in range(window.KH):
        for dj in range(window.KW):
            _window(dxpad, di, dj, window)[...] += xp.where(argmax == di * window.KW + dj, dy, zero)
    return _crop(dxpad, in_shape, window.pads)


@primitive("avg_pool_forward")
def avg_pool_forward(x, window):
    """y (N, OH, OW, C): window sums divided by the number of real pixels in each window."""
    xp = array_module(x)
    xpad = _pad(xp, x, window.pads, 0)
    total = xp.zeros((x.shape[0], window.OH, window.OW, x.shape[3]), dtype=x.dtype)
    for di in range(window.KH):
        for dj in range(window.KW):
            total += _window(xpad, di, dj, window)
    return total / real_counts(xp, x.shape[1:3], window, x.dtype)[:, :, None]


@primitive("avg_pool_backward")
def avg_pool_backward(dy, in_shape, window):
    """dx of in_shape (N, H, W, C): dy / count spread evenly over each window."""
    xp = array_module(dy)
    (pt, pb), (pl, pr) = window.pads
    n, h, w, c = in_shape
    share = dy / real_counts(xp, (h, w), window, dy.dtype)[:, :, None]
    dxpad = xp.zeros((n, h + pt + pb, w + pl + pr, c), dtype=dy.dtype)
    for di in range(window.KH):
        for dj in range(window.KW):
            _window(dxpad, di, dj, window)[...] += share
    return _crop(dxpad, in_shape, window.pads)


# ---- ops -----------------------------------------------------------------------

class _Pool2D(Function):
    op = None

    def __init__(self, ksize, strides, padding):
        self.ksize = pair(ksize, "ksize", self.op)
        self.strides = pair(strides, "strides", self.op)
        self.padding = padding

    def geometry(self, x):
        check_rank(x, 4, self.op, "input", "NHWC")
        if x.dtype.kind != "f":
            raise ValueError(f"{self.op}: input must be floating point, got {x.dtype}")
        window = window_geometry(x.shape[1:3], self.ksize, self.strides, (1, 1), self.padding, self.op)
        for (before, after), k, dim in zip(window.pads, self.ksize, "HW"):
            # a window made only of padding has no maximum and no real pixel to average
            if max(before, after) >= k:
                raise ValueError(f"{self.op}: padding {(before, after)} along {dim} must be smaller "
                                 f"than the window size ksize={k}")
        self.in_shape, self.window = x.shape, window
        return window


class MaxPool2D(_Pool2D):
    op = "max_pool2d"

    def forward(self, x):
        window = self.geometry(x)
        needs = getattr(self, "needs_input_grad", None) or (True,)
        if not needs[0]:     # under no_grad, or x needs no gradient: the maxima without their argmax
            return dispatch("max_pool_values", x, window)
        y, argmax = dispatch("max_pool_forward", x, window)
        self.save_for_backward(argmax)
        return y

    def backward(self, dy):
        (argmax,) = self.saved
        return dispatch("max_pool_backward", dy, argmax, self.in_shape, self.window)


class AvgPool2D(_Pool2D):
    op = "avg_pool2d"

    def forward(self, x):
        return dispatch("avg_pool_forward", x, self.geometry(x))

    def backward(self, dy):
        return dispatch("avg_pool_backward", dy, self.in_shape, self.window)


def max_pool2d(input, ksize, strides, padding, data_format="NHWC"):  # noqa: A002  (tf.nn's name)
    """tf.nn.max_pool2d: window maxima; the gradient goes to each window's first maximum.

    ksize, strides: int, (h, w) or [1, h, w, 1]. padding: "SAME", "VALID" or
    [(top, bottom), (left, right)] (TF's 4-entry NHWC list too).
    """
    check_data_format(data_format, "max_pool2d")
    return MaxPool2D(ksize, strides, padding)(input)


def avg_pool2d(input, ksize, strides, padding, data_format="NHWC"):  # noqa: A002
    """tf.nn.avg_pool2d: window means over the real (non-padded) pixels only.

    Arguments as max_pool2d. Explicit padding is an extension (TF's avg_pool2d takes
    only "SAME"/"VALID"); it keeps the real-count divisor.
    """
    check_data_format(data_format, "avg_pool2d")
    return AvgPool2D(ksize, strides, padding)(input)
