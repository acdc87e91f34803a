"""2-D convolution and depthwise convolution as im2col + GEMM (NHWC input, HWIO filters).

Shapes: input x (N, H, W, C); filters (KH, KW, C, O); strides (SH, SW);
dilations (DH, DW); output y (N, OH, OW, O). P = N*OH*OW output pixels.

    conv2d             y[n,i,j,o] = sum_{a,b,c} xpad[n, i*SH + a*DH, j*SW + b*DW, c] * w[a,b,c,o]
                       (cross-correlation, the kernel is not flipped, as tf.nn.conv2d)
    depthwise_conv2d   filter (KH, KW, C, CM), output channel c*CM + q (channel-major, as TF):
                       y[n,i,j,c*CM+q] = sum_{a,b} xpad[n, i*SH + a*DH, j*SW + b*DW, c] * f[a,b,c,q]

How: im2col gathers every receptive field into one row of `cols` (P, KH*KW*C),
column order (a, b, c) so that `w.reshape(KH*KW*C, O)` lines up with it; the
conv is then one GEMM (run on the batch chunks the backend's policy gives: a few
images at a time on the CPU, to bound the buffers; the whole batch on the GPU).
A pointwise 1x1 conv (stride 1, no padding) skips im2col: its rows are the pixels.
The forward and the filter gradient are the primitives conv2d_forward and
conv2d_backprop_filter: the references that a backend's faster algorithm (Winograd on
the numba backend) must equal within its documented error.
The backward is two GEMMs:
    dW    = cols^T @ dy                       (KH*KW*C, O)
    dcols = dy @ W^T, dx = col2im(dcols)      col2im is im2col's adjoint: it
                                              scatter-adds each row back onto the
                                              window it came from and crops the
                                              padding (padded positions get no gradient)
With strides 1 the same dx is itself a convolution, which is cheaper: the
(P, KH*KW*C) dcols buffer and the scatter-add go away.
    dx[n,h,w,c] = sum_{a,b,o} dy[n, h + pt - a*DH, w + pl - b*DW, o] * w[a,b,c,o]
                = conv2d(dy, w[::-1, ::-1].transpose(0, 1, 3, 2), strides 1, dilations (DH, DW),
                         pads ((KH-1)*DH - pt, (KH-1)*DH - pb), ((KW-1)*DW - pl, (KW-1)*DW - pr))
(the kernel flipped in both spatial axes, its C and O swapped; "full" padding
less the forward's). Explicit padding wider than the dilated kernel makes those
pads negative; such convs, and strided ones, use col2im.
Depthwise does the same per channel: a batched GEMM over C of (P, KH*KW) @ (KH*KW, CM).

TF conventions: padding "SAME" (out = ceil(in/s), the odd padding pixel at
bottom/right), "VALID", or explicit [(top, bottom), (left, right)] (TF's 4-entry NHWC
list too), computed by padding.window_padding; strides and dilations an int, a pair
or TF's length-4 [1, h, w, 1].
depthwise_conv2d refuses dilations > 1 with strides > 1, as TF's wrapper warns.
Arguments are checked by tinybn.ops.padding before any array work: strides,
dilations and pads must be ints (TF truncates 1.5 and 1.7 silently), filters have no
zero-sized dimension (TF returns an empty output for O = 0; an empty sum is no
convolution, so here it is an error). An empty batch (N = 0) gives (0, OH, OW, O).

Floor: ops (tests/test_layering.py): imports from tinybn only core, backend and ops.
"""
from ..backend import array_module, dispatch, primitive
from ..function import Function
from ..geometry import Window
from .padding import check_data_format, check_filter_dims, check_rank, pair, window_geometry


# ---- hot primitives: plain arrays and a geometry.Window (kernels implement the same signatures) ----

def _window(start, step, count):
    """The slice of a padded axis that a kernel tap at `start` reads for `count` outputs."""
    return slice(start, start + (count - 1) * step + 1, step)


@primitive("im2col")
def im2col(x, window):
    """Receptive fields of x (N, H, W, C) as rows: cols (N*OH*OW, KH*KW*C), columns ordered (a, b, c).

    window: the conv's geometry.Window (pads of zeros around x, and the output size
    they give). Row n*OH*OW + i*OW + j holds xpad[n, i*SH + a*DH, j*SW + b*DW, c] at
    column (a*KW + b)*C + c.
    """
    xp = array_module(x)
    N, H, W, C = x.shape
    KH, KW, SH, SW, DH, DW, ((pt, pb), (pl, pr)), OH, OW = window
    if pt or pb or pl or pr:
        xpad = xp.zeros((N, H + pt + pb, W + pl + pr, C), x.dtype)
        xpad[:, pt:pt + H, pl:pl + W, :] = x
    else:
        xpad = x
    cols = xp.empty((N, OH, OW, KH, KW, C), x.dtype)
    # one strided slice per kernel tap: KH*KW array copies, no loop over pixels
    for a in range(KH):
        for b in range(KW):
            cols[:, :, :, a, b, :] = xpad[:, _window(a * DH, SH, OH), _window(b * DW, SW, OW), :]
    return cols.reshape(N * OH * OW, KH * KW * C)


@primitive("col2im")
def col2im(cols, x_shape, window):
    """The adjoint of im2col: scatter-add rows of cols (N*OH*OW, KH*KW*C) back to an x_shape array.

    Overlapping windows add up; values that land in the padding are dropped.
    <im2col(x), cols> == <x, col2im(cols)> for every x and cols.
    """
    xp = array_module(cols)
    N, H, W, C = x_shape
    KH, KW, SH, SW, DH, DW, ((pt, pb), (pl, pr)), OH, OW = window
    xpad = xp.zeros((N, H + pt + pb, W + pl + pr, C), cols.dtype)
    cols = cols.reshape(N, OH, OW, KH, KW, C)
    # within one tap the strided slice hits each position at most once, so += is a true scatter-add
    for a in range(KH):
        for b in range(KW):
            xpad[:, _window(a * DH, SH, OH), _window(b * DW, SW, OW), :] += cols[:, :, :, a, b, :]
    return xp.ascontiguousarray(xpad[:, pt:pt + H, pl:pl + W, :])


# The numpy backend's chunking policy: im2col + GEMM on a few images at a time, so the
# window buffers stay about this size, in cache for the GEMM that reads them, instead of
# the whole batch's (118 MB for the CIFAR models' conv2 at batch 128); backward gathers
# the windows again rather than keeping them. Each backend registers its own policy with
# its kernels (kernels/numba_conv.py: the same 2 MB, measured there; the GPU: whole batches).
CHUNK_BYTES = 2 << 20


@primitive("conv_batch_chunks")
def conv_batch_chunks(x, cols_per_image):
    """Slices of x's batch axis whose im2col buffers hold about CHUNK_BYTES each (at least
    one image); cols_per_image = OH*OW*KH*KW window taps of x.shape[3] channels per image."""
    per_image = cols_per_image * x.shape[3] * x.dtype.itemsize
    step = max(1, CHUNK_BYTES // max(per_image, 1))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


# ---- ops ---------------------------------------------------------------------------------

def _windows(x, window):
    """im2col(x), except that a pointwise (1x1) window reads each pixel once: x itself, no copy."""
    if window.is_pointwise:
        return x.reshape(-1, x.shape[3])
    return dispatch("im2col", x, window)


def _scatter(cols, x_shape, window):
    """col2im(cols), except that a pointwise (1x1) window's rows are the pixels themselves."""
    if window.is_pointwise:
        return cols.reshape(x_shape)
    return dispatch("col2im", cols, x_shape, window)


def _chunks(x, window):
    """The current backend's batch chunks for an im2col of x under `window`."""
    return dispatch("conv_batch_chunks", x, window.OH * window.OW * window.KH * window.KW)


@primitive("conv2d_forward")
def conv2d_forward(x, w, window):
    """conv2d's forward on arrays: y (N, OH, OW, O) = im2col(x) @ w, a chunk of the batch at a time.

    The definition of the convolution (the input gradient of a stride-1 conv is one too):
    a backend's twin may compute it by an algorithm of fewer multiplies for the
    geometries its policy picks (kernels/numba_winograd.py), within that algorithm's
    documented error, and calls this for the rest.
    """
    KH, KW, C, O = w.shape
    xp = array_module(x)
    w2 = w.reshape(KH * KW * C, O)
    y = xp.empty((x.shape[0], window.OH, window.OW, O), x.dtype)
    for part in _chunks(x, window):
        xp.matmul(_windows(x[part], window), w2, out=y[part].reshape(-1, O))   # the GEMM writes into y
    return y


@primitive("conv2d_backprop_filter")
def conv2d_backprop_filter(x, dy, window, w_shape):
    """conv2d's filter gradient on arrays: dW (KH, KW, C, O) = sum over batch chunks of
    im2col(x)^T @ dy (the windows gathered again, not kept). The definition a backend's
    faster twin must equal within its documented error, as conv2d_forward."""
    KH, KW, C, O = w_shape
    gw = array_module(dy).zeros((KH * KW * C, O), dy.dtype)
    for part in _chunks(x, window):
        gw += _windows(x[part], window).T @ dy[part].reshape(-1, O)
    return gw.reshape(w_shape)


def _adjoint_kernel(w):
    """w (KH, KW, C, O) flipped in both spatial axes with C and O swapped: (KH, KW, O, C)."""
    return array_module(w).ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


CONV_DIMS = ("kernel height KH", "kernel width KW", "input channels C", "output channels O")
DEPTHWISE_DIMS = ("kernel height KH", "kernel width KW", "input channels C", "channel multiplier CM")


def _check_operands(op, x, w, name, dims):
    """Rank 4 input (NHWC) and filter, no zero-sized filter dimension, matching channels and dtypes."""
    check_rank(x, 4, op, "input", "NHWC")
    check_rank(w, 4, op, name, "HWIO" if dims is CONV_DIMS else "HWCM")
    check_filter_dims(op, name, w.shape, dims)
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"{op}: channel mismatch: input has {x.shape[3]} channels (NHWC {x.shape}) "
                         f"but {name} expects {w.shape[2]} (HWIO {w.shape})")
    if x.dtype != w.dtype:
        raise ValueError(f"{op}: input dtype {x.dtype} and {name} dtype {w.dtype} differ")


class _Window(Function):
    """Shared set-up: stride/dilation validation now, padding geometry once shapes are known."""
    op = None

    def __init__(self, strides, padding, dilations):
        self.padding = padding
        self.strides = pair(strides, "strides", self.op)
        self.dilations = pair(1 if dilations is None else dilations, "dilations", self.op)

    def _geometry(self, x, KH, KW):
        self.x_shape = x.shape
        self.geometry = window_geometry(x.shape[1:3], (KH, KW), self.strides, self.dilations, self.padding,
                                        self.op)
        return self.geometry.OH, self.geometry.OW

    def _wants(self, i):
        """Whether input i needs a gradient (skips dx of a first layer fed with images)."""
        return self.inputs[i].requires_grad


class Conv2D(_Window):
    op = "conv2d"

    def __init__(self, strides, padding, dilations=1):
        super().__init__(strides, padding, dilations)

    def forward(self, x, w):
        _check_operands("conv2d", x, w, "filters", CONV_DIMS)
        KH, KW, C, O = w.shape
        self._geometry(x, KH, KW)
        self.save_for_backward(x, w)
        return dispatch("conv2d_forward", x, w, self.geometry)

    def backward(self, gy):
        x, w = self.saved
        gx = self._input_gradient(gy, w) if self._wants(0) else None
        gw = dispatch("conv2d_backprop_filter", x, gy, self.geometry, w.shape) if self._wants(1) else None
        return gx, gw

    def _input_gradient(self, gy, w):
        """dx: a convolution of dy when the strides are 1, else col2im(dy @ W^T) a chunk at a time."""
        adjoint = self._adjoint_geometry()
        if adjoint is not None:
            return dispatch("conv2d_forward", gy, _adjoint_kernel(w), adjoint)
        O = w.shape[3]
        w2t = w.reshape(-1, O).T
        gx = array_module(gy).empty(self.x_shape, gy.dtype)
        for part in _chunks(gx, self.geometry):
            gx[part] = _scatter(gy[part].reshape(-1, O) @ w2t, gx[part].shape, self.geometry)
        return gx

    def _adjoint_geometry(self):
        """The geometry of dx as a convolution of dy (strides 1 only), or None when col2im must do it."""
        KH, KW, SH, SW, DH, DW, ((pt, pb), (pl, pr)), OH, OW = self.geometry
        pads = (((KH - 1) * DH - pt, (KH - 1) * DH - pb), ((KW - 1) * DW - pl, (KW - 1) * DW - pr))
        if SH != 1 or SW != 1 or min(pads[0] + pads[1]) < 0:
            return None
        return Window(KH, KW, 1, 1, DH, DW, pads, *self.x_shape[1:3])


class DepthwiseConv2D(_Window):
    op = "depthwise_conv2d"

    def __init__(self, strides, padding, dilations=None):
        super().__init__(strides, padding, dilations)
        if max(self.dilations) > 1 and max(self.strides) > 1:
            raise ValueError(f"depthwise_conv2d: when dilations are greater than 1 all strides must be 1, "
                             f"got strides {strides!r} and dilations {dilations!r}")

    def forward(self, x, f):
        _check_operands("depthwise_conv2d", x, f, "filter", DEPTHWISE_DIMS)
        KH, KW, C, CM = f.shape
        OH, OW = self._geometry(x, KH, KW)
        # (P, KH*KW*C) -> (C, P, KH*KW): one GEMM per channel, batched over C
        cols = _windows(x, self.geometry).reshape(-1, KH * KW, C).transpose(2, 0, 1)
        fc = f.reshape(KH * KW, C, CM).transpose(1, 0, 2)                 # (C, KH*KW, CM)
        self.save_for_backward(cols, f)
        y = cols @ fc                                                     # (C, P, CM)
        return y.transpose(1, 0, 2).reshape(x.shape[0], OH, OW, C * CM)   # channel-major c*CM + q

    def backward(self, gy):
        cols, f = self.saved
        KH, KW, C, CM = f.shape
        gy = gy.reshape(-1, C, CM).transpose(1, 0, 2)                      # (C, P, CM)
        gx = gf = None
        if self._wants(0):
            fc = f.reshape(KH * KW, C, CM).transpose(1, 0, 2)
            gcols = (gy @ fc.transpose(0, 2, 1)).transpose(1, 2, 0)       # (P, KH*KW, C)
            gx = _scatter(gcols.reshape(-1, KH * KW * C), self.x_shape, self.geometry)
        if self._wants(1):
            gf = (cols.transpose(0, 2, 1) @ gy).transpose(1, 0, 2).reshape(f.shape)
        return gx, gf


def conv2d(input, filters, strides, padding, data_format="NHWC", dilations=None):
    """tf.nn.conv2d: input (N, H, W, C), filters (KH, KW, C, O) -> (N, OH, OW, O). Tensors or arrays."""
    check_data_format(data_format, "conv2d")
    return Conv2D(strides, padding, dilations)(input, filters)


def depthwise_conv2d(input, filter, strides, padding, data_format=None, dilations=None):
    """tf.nn.depthwise_conv2d: filter (KH, KW, C, CM) -> (N, OH, OW, C*CM), channel c*CM + q."""
    check_data_format(data_format, "depthwise_conv2d")
    return DepthwiseConv2D(strides, padding, dilations)(input, filter)
