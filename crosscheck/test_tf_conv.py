"""conv2d, depthwise_conv2d, separable_conv2d and spatially separable conv against TensorFlow,
forward and every gradient, float32, over generated shapes (SAME / VALID / explicit padding,
strides, dilations, odd, even and non-square kernels).

Dilated conv2d gradients: TF's own Conv2DBackpropInput refuses dilation > 1 on CPUs where the
oneDNN kernels do not take over ("Current CPU implementations do not yet support dilation rates
larger than 1"; seen on an AVX2 AMD EPYC even with oneDNN opts on). There the TF gradient is
taken through tf.nn.conv2d with the kernel zero-stuffed to its dilated size: the same
cross-correlation, differentiated by TF (the forward is still checked against TF's dilated op).
"""
import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops.conv import conv2d, depthwise_conv2d
from tinybn.ops.separable import separable_conv2d, spatially_separable_conv2d


@st.composite
def case(draw, depthwise=False, dilate=True):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh = draw(st.integers(1, 3))
    sw = sh if depthwise else draw(st.integers(1, 3))   # TF's depthwise kernel needs equal strides
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilate else (1, 1)
    if depthwise and max(dh, dw) > 1:
        sh = sw = 1
    mode = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    pads = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2)] if mode == "explicit" else None
    sizes = []
    for k, d, p in ((kh, dh, 0), (kw, dw, 1)):
        need = 1 if mode == "SAME" else max(1, (k - 1) * d + 1 - (sum(pads[p]) if pads else 0))
        sizes.append(need + draw(st.integers(0, 6)))    # never a zero-size output
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(n=n, hw=tuple(sizes), c=c, o=o, k=(kh, kw), s=(sh, sw), d=(dh, dw), mode=mode, pads=pads, seed=seed)


def tb_padding(cs):
    return cs["pads"] if cs["pads"] else cs["mode"]


def tf_padding(cs):
    return [[0, 0], list(cs["pads"][0]), list(cs["pads"][1]), [0, 0]] if cs["pads"] else cs["mode"]


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def tf_dilated_kernel(w, dh, dw):
    """w (KH, KW, C, O) with dh-1 zero rows and dw-1 zero columns between taps."""
    KH, KW, C, O = w.shape
    z = tf.pad(tf.reshape(w, (KH, 1, KW, 1, C, O)), [[0, 0], [0, dh - 1], [0, 0], [0, dw - 1], [0, 0], [0, 0]])
    return tf.reshape(z, (KH * dh, KW * dw, C, O))[:(KH - 1) * dh + 1, :(KW - 1) * dw + 1]


def compare(op, ours, theirs, what):
    (y, grads), (ty, tgrads) = ours, theirs
    parity.assert_parity(op, "forward", y, ty, what)
    for i, (g, tg) in enumerate(zip(grads, tgrads)):
        parity.assert_parity(op, "backward", g, tg, f"{what} gradient of input {i}")


@given(case())
@settings(max_examples=30)
def test_conv2d_vs_tf(cs):
    rng = np.random.default_rng(cs["seed"])
    (kh, kw), (sh, sw), (dh, dw) = cs["k"], cs["s"], cs["d"]
    x, w = randn(rng, cs["n"], *cs["hw"], cs["c"]), randn(rng, kh, kw, cs["c"], cs["o"])
    ours = tb_forward_backward(lambda x, w: conv2d(x, w, cs["s"], tb_padding(cs), dilations=cs["d"]), [x, w])
    dy = randn(rng, *ours[0].shape)
    ours = tb_forward_backward(lambda x, w: conv2d(x, w, cs["s"], tb_padding(cs), dilations=cs["d"]), [x, w], dy)
    ty, _ = tf_forward_backward(lambda x, w: tf.nn.conv2d(x, w, [1, sh, sw, 1], tf_padding(cs),
                                                          dilations=[1, dh, dw, 1]), [x, w])
    _, tgrads = tf_forward_backward(lambda x, w: tf.nn.conv2d(x, tf_dilated_kernel(w, dh, dw), [1, sh, sw, 1],
                                                              tf_padding(cs)), [x, w], dy)
    if (dh, dw) == (1, 1):   # TF's own conv gradient ops
        _, tgrads = tf_forward_backward(lambda x, w: tf.nn.conv2d(x, w, [1, sh, sw, 1], tf_padding(cs)), [x, w], dy)
    compare("conv2d", ours, (ty, tgrads), str(cs))


def test_conv2d_vs_tf_cifar_sized():
    """The CIFAR tutorial's conv2: 5x5, 64 -> 64 channels, SAME, a long filter-gradient reduction."""
    rng = np.random.default_rng(0)
    x, w = np.maximum(randn(rng, 16, 12, 12, 64), 0), randn(rng, 5, 5, 64, 64) * 0.05
    dy = randn(rng, 16, 12, 12, 64)
    ours = tb_forward_backward(lambda x, w: conv2d(x, w, [1, 1, 1, 1], "SAME"), [x, w], dy)
    theirs = tf_forward_backward(lambda x, w: tf.nn.conv2d(x, w, [1, 1, 1, 1], "SAME"), [x, w], dy)
    compare("conv2d", ours, theirs, "cifar conv2")


@given(case(depthwise=True))
def test_depthwise_conv2d_vs_tf(cs):
    rng = np.random.default_rng(cs["seed"])
    (kh, kw), (s, _), d = cs["k"], cs["s"], list(cs["d"])
    x, f = randn(rng, cs["n"], *cs["hw"], cs["c"]), randn(rng, kh, kw, cs["c"], cs["o"])
    y, _ = tb_forward_backward(lambda x, f: depthwise_conv2d(x, f, s, tb_padding(cs), dilations=d), [x, f])
    dy = randn(rng, *y.shape)
    ours = tb_forward_backward(lambda x, f: depthwise_conv2d(x, f, s, tb_padding(cs), dilations=d), [x, f], dy)
    theirs = tf_forward_backward(lambda x, f: tf.nn.depthwise_conv2d(x, f, [1, s, s, 1], tf_padding(cs),
                                                                     dilations=d), [x, f], dy)
    compare("depthwise_conv2d", ours, theirs, str(cs))


@given(case(depthwise=True), st.integers(1, 5))
def test_separable_conv2d_vs_tf(cs, out_channels):
    rng = np.random.default_rng(cs["seed"])
    (kh, kw), (s, _), d = cs["k"], cs["s"], list(cs["d"])
    x, f = randn(rng, cs["n"], *cs["hw"], cs["c"]), randn(rng, kh, kw, cs["c"], cs["o"])
    p = randn(rng, 1, 1, cs["c"] * cs["o"], out_channels)
    y, _ = tb_forward_backward(lambda x, f, p: separable_conv2d(x, f, p, s, tb_padding(cs), dilations=d), [x, f, p])
    dy = randn(rng, *y.shape)
    ours = tb_forward_backward(lambda x, f, p: separable_conv2d(x, f, p, s, tb_padding(cs), dilations=d),
                               [x, f, p], dy)
    theirs = tf_forward_backward(lambda x, f, p: tf.nn.separable_conv2d(x, f, p, [1, s, s, 1], tf_padding(cs),
                                                                        dilations=d), [x, f, p], dy)
    compare("separable_conv2d", ours, theirs, str(cs))


@given(case(dilate=False), st.integers(1, 4))
def test_spatially_separable_vs_tf(cs, m):
    """Against TF's two conv2d calls (KHx1 padding rows, 1xKW padding columns) and against one
    tf.nn.conv2d with the kernel K = einsum(A, B) built inside TF, so dA and dB come from TF too."""
    rng = np.random.default_rng(cs["seed"])
    (kh, kw), (sh, sw) = cs["k"], cs["s"]
    x = randn(rng, cs["n"], *cs["hw"], cs["c"])
    a, b = randn(rng, kh, 1, cs["c"], m), randn(rng, 1, kw, m, cs["o"])
    fn = lambda x, a, b: spatially_separable_conv2d(x, a, b, cs["s"], tb_padding(cs))  # noqa: E731
    y, _ = tb_forward_backward(fn, [x, a, b])
    dy = randn(rng, *y.shape)
    ours = tb_forward_backward(fn, [x, a, b], dy)
    if cs["pads"]:
        (pt, pb), (pl, pr) = cs["pads"]
        rows, cols = [[0, 0], [pt, pb], [0, 0], [0, 0]], [[0, 0], [0, 0], [pl, pr], [0, 0]]
    else:
        rows = cols = cs["mode"]
    two = tf_forward_backward(lambda x, a, b: tf.nn.conv2d(tf.nn.conv2d(x, a, [1, sh, 1, 1], rows), b,
                                                           [1, 1, sw, 1], cols), [x, a, b], dy)
    compare("spatially_separable_conv2d", ours, two, f"two convs {cs}")
    one = tf_forward_backward(lambda x, a, b: tf.nn.conv2d(x, tf.einsum("icm,jmo->ijco", a[:, 0], b[0]),
                                                           [1, sh, sw, 1], tf_padding(cs)), [x, a, b], dy)
    compare("spatially_separable_conv2d", ours, one, f"one conv {cs}")
