"""The window matrix of the sweep (op_table.py): samples and TF twins of conv2d, depthwise_conv2d,
separable_conv2d, spatially_separable_conv2d, max_pool2d and avg_pool2d.

Every op runs the whole matrix its TF twin accepts, on tiny images (N <= 2, C, O <= 2):

    padding    SAME, VALID, explicit [[0, 0], [top, bottom], [left, right], [0, 0]]
    strides    1..3, (SH, SW) every pair; equal only for depthwise and separable (TF's
               depthwise kernel refuses unequal strides on CPU)
    kernels    KH, KW in 1..5, every pair (square and not)
    dilations  1..2 in both axes and one axis at a time; TF's depthwise wrapper refuses
               dilations > 1 with strides > 1 (tinybn does too), conv2d takes both
and one empty batch (N = 0) per op but depthwise and separable (TF's depthwise filter
gradient leaves its output uninitialised for an empty batch: 6.9e-310 and such come back).
Pools have no dilations; avg_pool2d's TF twin takes no explicit padding (tinybn's
extension, tested in tests/), and explicit pool pads stay below the window (a window of
padding only has no maximum: TF and tinybn refuse it).
Explicit pads vary with the case (0..2 on each side) so every side is padded somewhere.
Every third case feeds the input as a transposed (non-contiguous) view, every fifth the
filters; the input has 1 or 2 channels, the output 1 or 2.

Dilated conv2d gradients: this CPU's TF refuses Conv2DBackpropInput with dilations > 1
(its oneDNN kernels do not take over here), as test_tf_conv.py explains. The twin then
takes the forward from TF's own dilated conv2d and the gradients from tf.nn.conv2d with
the kernel zero-stuffed to its dilated size (the same cross-correlation, differentiated by
TF): y = stop_gradient(dilated) + (stuffed - stop_gradient(stuffed)) has the value of the
first (stuffed - stuffed is exactly 0) and the gradient of the second.
"""
import numpy as np
import tensorflow as tf

PADDINGS = ("SAME", "VALID", "explicit")
KERNELS = [(kh, kw) for kh in range(1, 6) for kw in range(1, 6)]
ALL_STRIDES = [(sh, sw) for sh in range(1, 4) for sw in range(1, 4)]
EQUAL_STRIDES = [(1, 1), (2, 2), (3, 3)]
DILATIONS = [(1, 1), (2, 2), (1, 2), (2, 1)]


class Case:
    """One point of the matrix: geometry plus the image size that fits it."""

    def __init__(self, index, padding, k, s, d=(1, 1), pool=False):
        self.index, self.k, self.s, self.d = index, k, s, d
        keff = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
        if padding == "explicit":
            pads = [((index + i) % 3, (index // 3 + 2 * i + 1) % 3) for i in range(2)]
            if pool:   # TF's rule for pools: each pad smaller than the window
                pads = [(min(a, kk - 1), min(b, kk - 1)) for (a, b), kk in zip(pads, k)]
            self.padding = [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]
        else:
            pads = [(0, 0), (0, 0)]
            self.padding = padding
        # the smallest image with a non-empty output, plus room for a few strides
        need = [1 if padding == "SAME" else max(1, e - sum(p)) for e, p in zip(keff, pads)]
        self.hw = tuple(n + ss - 1 + (index + i) % 2 for i, (n, ss) in enumerate(zip(need, s)))
        self.n, self.c = 1 + index % 2, 1 + index // 2 % 2
        self.view = index % 3 == 2
        self.kernel_view = index % 5 == 3

    def __str__(self):
        pad = self.padding if isinstance(self.padding, str) else "pads" + "".join(
            f"{a}{b}" for a, b in self.padding[1:3])
        return f"{pad} k{self.k[0]}x{self.k[1]} s{self.s[0]}{self.s[1]} d{self.d[0]}{self.d[1]} " \
               f"x{(self.n,) + self.hw + (self.c,)}{' view' if self.view else ''}"


def cases(strides, dilations, paddings=PADDINGS, pool=False, stride_with_dilation=True):
    index = 0
    for padding in paddings:
        for s in strides:
            for d in dilations:
                if not stride_with_dilation and max(s) > 1 and max(d) > 1:
                    continue
                for k in KERNELS:
                    yield Case(index, padding, k, s, d, pool)
                    index += 1


def image(rng, dtype, n, hw, c, view):
    """(N, H, W, C) standard normal; as a transposed view of a (C, W, H, N) array when asked."""
    if view:
        return rng.standard_normal((c, hw[1], hw[0], n)).astype(dtype).transpose(3, 2, 1, 0)
    return rng.standard_normal((n,) + hw + (c,)).astype(dtype)


def kernel(rng, shape, dtype, view):
    """Standard normal filters; as a transposed view of the reversed shape when asked."""
    if view:
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    return rng.standard_normal(shape).astype(dtype)


def dilated_kernel(w, dh, dw):
    """w (KH, KW, C, O) with dh-1 zero rows and dw-1 zero columns between taps (a TF expression)."""
    KH, KW, C, O = w.shape
    z = tf.pad(tf.reshape(w, (KH, 1, KW, 1, C, O)), [[0, 0], [0, dh - 1], [0, 0], [0, dw - 1], [0, 0], [0, 0]])
    return tf.reshape(z, (KH * dh, KW * dw, C, O))[:(KH - 1) * dh + 1, :(KW - 1) * dw + 1]


def tf_conv2d(x, w, strides, padding, dilations):
    y = tf.nn.conv2d(x, w, strides, padding, dilations=dilations)
    if tuple(dilations) == (1, 1):
        return y
    stuffed = tf.nn.conv2d(x, dilated_kernel(w, *dilations), strides, padding)
    return tf.stop_gradient(y) + (stuffed - tf.stop_gradient(stuffed))


def tf_spatially_separable(x, a, b, strides, padding, dilations):
    """TF has no such op: the KHx1 conv (rows' padding, SH), then the 1xKW conv (columns', SW)."""
    (sh, sw), (dh, dw) = strides, dilations
    if isinstance(padding, str):
        rows = cols = padding
    else:
        rows, cols = [[0, 0], padding[1], [0, 0], [0, 0]], [[0, 0], [0, 0], padding[2], [0, 0]]
    y = tf_conv2d(x, a, [1, sh, 1, 1], rows, [dh, 1])
    return tf_conv2d(y, b, [1, 1, sw, 1], cols, [1, dw])


def _empty_batch(index):
    cs = Case(index, "SAME", (3, 2), (2, 1))
    cs.n, cs.view = 0, False
    return cs


def conv2d_samples(sample, dtype, rng):
    for cs in list(cases(ALL_STRIDES, DILATIONS)) + [_empty_batch(0)]:
        x = image(rng, dtype, cs.n, cs.hw, cs.c, cs.view)
        w = kernel(rng, cs.k + (cs.c, 1 + cs.index % 2), dtype, cs.kernel_view)
        yield sample(str(cs), [x, w], dict(strides=[1, *cs.s, 1], padding=cs.padding, dilations=list(cs.d)))


def depthwise_samples(sample, dtype, rng):
    for cs in cases(EQUAL_STRIDES, DILATIONS, stride_with_dilation=False):
        x = image(rng, dtype, cs.n, cs.hw, cs.c, cs.view)
        f = kernel(rng, cs.k + (cs.c, 1 + cs.index % 2), dtype, cs.kernel_view)
        s = [1, cs.s[0], cs.s[0], 1]
        yield sample(str(cs), [x, f], dict(strides=s, padding=cs.padding, dilations=list(cs.d)))


def separable_samples(sample, dtype, rng):
    for cs in cases(EQUAL_STRIDES, DILATIONS, stride_with_dilation=False):
        x = image(rng, dtype, cs.n, cs.hw, cs.c, cs.view)
        cm = 1 + cs.index % 2
        f = kernel(rng, cs.k + (cs.c, cm), dtype, cs.kernel_view)
        p = kernel(rng, (1, 1, cs.c * cm, 2), dtype, cs.kernel_view)
        s = [1, cs.s[0], cs.s[0], 1]
        yield sample(str(cs), [x, f, p], dict(strides=s, padding=cs.padding, dilations=list(cs.d)))


def spatially_separable_samples(sample, dtype, rng):
    for cs in list(cases(ALL_STRIDES, DILATIONS[:2])) + [_empty_batch(1)]:
        x = image(rng, dtype, cs.n, cs.hw, cs.c, cs.view)
        m = 1 + cs.index % 2
        a = kernel(rng, (cs.k[0], 1, cs.c, m), dtype, cs.kernel_view)
        b = kernel(rng, (1, cs.k[1], m, 2), dtype, cs.kernel_view)
        yield sample(str(cs), [x, a, b], dict(strides=cs.s, padding=cs.padding, dilations=cs.d))


def _pool_samples(sample, dtype, rng, paddings):
    for cs in list(cases(ALL_STRIDES, [(1, 1)], paddings, pool=True)) + [_empty_batch(2)]:
        x = image(rng, dtype, cs.n, cs.hw, cs.c, cs.view)
        if cs.index % 4 == 1:      # small integers: windows with several maxima (TF: the first one)
            x = np.round(x)
        yield sample(str(cs), [x], dict(ksize=list(cs.k), strides=list(cs.s), padding=cs.padding))


def max_pool_samples(sample, dtype, rng):
    yield from _pool_samples(sample, dtype, rng, PADDINGS)
    # windows whose real pixels are all -inf, beside the padding: TF sends dy to the first real one
    for ksize, strides, padding in [([3, 3], [1, 1], "SAME"), ([2, 3], [2, 1], [[0, 0], [1, 1], [1, 0], [0, 0]])]:
        x = image(rng, dtype, 2, (4, 5), 2, False)
        x[:, :2, :3] = -np.inf
        yield sample(f"-inf corner k{ksize} s{strides} {padding}", [x],
                     dict(ksize=ksize, strides=strides, padding=padding))


def avg_pool_samples(sample, dtype, rng):
    return _pool_samples(sample, dtype, rng, ("SAME", "VALID"))


WINDOW_COVERS = "SAME/VALID/explicit x strides {s} x kernels 1..5 x 1..5 x dilations {d}; {n}transposed views"
