"""The arithmetic of a 2-D window op, written once for the ops and every backend's kernels.

Imports nothing: tinybn.ops.padding (argument checks, TF's SAME rule), the ops (conv,
pooling), the numba kernels and the CUDA launches all take their sizes from here.

Per spatial axis with input size n, kernel k, stride s, dilation d, pads (before, after):

    k_eff = (k - 1) * d + 1                          the dilated kernel's extent
    out   = (n + before + after - k_eff) // s + 1    windows that fit in the padded axis
    SAME: out = ceil(n / s), total = max(0, (out - 1) * s + k_eff - n),
          before = total // 2, after = total - before   (the odd pixel goes to bottom/right)
    real pixels of window i = min(i*s - before + k, n) - max(i*s - before, 0)
                              (the divisor of average pooling, padding excluded)

`Window` carries one op's geometry to the primitives and kernels as a single value.
"""
from typing import NamedTuple


class Window(NamedTuple):
    """A 2-D window op's geometry: kernel KH x KW, strides SH, SW, dilations DH, DW,
    pads ((top, bottom), (left, right)), output OH x OW. Pooling has dilations 1."""
    KH: int
    KW: int
    SH: int
    SW: int
    DH: int
    DW: int
    pads: tuple
    OH: int
    OW: int

    @property
    def top(self):
        return self.pads[0][0]

    @property
    def left(self):
        return self.pads[1][0]

    @property
    def is_pointwise(self):
        """A 1x1 window of stride 1 without padding: each output pixel reads one input pixel."""
        (pt, pb), (pl, pr) = self.pads
        return self.KH == self.KW == self.SH == self.SW == 1 and not (pt or pb or pl or pr)


def effective_size(kernel, dilation):
    """The extent of a dilated kernel along one axis."""
    return (kernel - 1) * dilation + 1


def output_size(n, kernel, stride, dilation, before, after):
    """How many windows fit along an axis of n pixels padded by (before, after)."""
    return (n + before + after - effective_size(kernel, dilation)) // stride + 1


def same_pads(n, kernel, stride, dilation):
    """TF's SAME padding (before, after) of one axis: out = ceil(n / s), the odd pixel after."""
    out = -(-n // stride)
    total = max(0, (out - 1) * stride + effective_size(kernel, dilation) - n)
    return total // 2, total - total // 2


def window(in_hw, kernel, strides, dilations, pads):
    """The Window of an op over an (H, W) input, its output size computed; all Python ints
    (the numba kernels compile one specialisation per argument type)."""
    (pt, pb), (pl, pr) = pads
    pads = ((int(pt), int(pb)), (int(pl), int(pr)))
    out = [output_size(int(n), int(k), int(s), int(d), *p) for n, k, s, d, p in zip(in_hw, kernel, strides,
                                                                                     dilations, pads)]
    return Window(*(int(v) for v in (*kernel, *strides, *dilations)), pads, *out)


def real_counts(xp, in_hw, w, dtype):
    """(OH, OW) array (of array module xp, in dtype): the number of real, non-padded input
    pixels in each window, the product of the two axes' 1-D counts."""
    counts = []
    for n, k, s, before, out in zip(in_hw, (w.KH, w.KW), (w.SH, w.SW), (w.top, w.left), (w.OH, w.OW)):
        start = xp.arange(out) * s - before
        counts.append(xp.minimum(start + k, n) - xp.maximum(start, 0))
    return xp.ascontiguousarray((counts[0][:, None] * counts[1][None, :]).astype(dtype))
