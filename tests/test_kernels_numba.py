"""numba kernels (tinybn/kernels/numba_*.py) against the numpy reference primitives.

Every registered numba twin is run on the arguments its reference gets, over
hypothesis-generated and hand-picked awkward shapes, in float32 and float64. The
window primitives (im2col, col2im, pooling) must be bit-identical, including the
max-pool first-maximum tie rule (inputs full of ties); BN, LRN and softmax
cross-entropy must agree to a few ulps of their dtype. Then the ops end to end
under `backend("numba")`, the plain (non-jitted) kernel functions, and
NUMBA_DISABLE_JIT=1 in a subprocess.
"""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.kernels import (numba_conv, numba_elementwise, numba_filter_gradient, numba_kn2row, numba_loss,
                            numba_lrn, numba_norm, numba_pool, numba_winograd, numba_winograd_forward)
from tinybn.ops.conv import conv2d, depthwise_conv2d
from tinybn.ops.fused_batch_norm import fused_batch_norm
from tinybn.ops.losses import softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy_with_logits
from tinybn.ops.lrn import local_response_normalization
from tinybn.geometry import window
from tinybn.ops.padding import window_geometry
from tinybn.ops.pool import avg_pool2d, max_pool2d

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)

MODULES = (numba_conv, numba_pool, numba_norm, numba_lrn, numba_loss, numba_winograd, numba_elementwise,
           numba_kn2row, numba_filter_gradient, numba_winograd_forward)
WINDOW = ("im2col", "col2im", "max_pool_forward", "max_pool_values", "max_pool_backward", "avg_pool_forward",
          "avg_pool_backward")
OTHER = ("lrn_forward", "lrn_backward", "batch_norm_train_forward", "batch_norm_train_backward",
         "batch_norm_inference", "softmax_cross_entropy")
CONV = ("conv2d_forward", "conv2d_backprop_filter")   # Winograd by the policy, else the reference
EXACT = set(WINDOW)
DTYPES = (np.float32, np.float64)
ULPS = 8       # BN/LRN/xent: float64 block sums vs sequential ones, BLAS band sums, libm vs numpy exp


def ulps(name, dtype, args):
    """In float64 both sides sum in float64, so the two summation orders differ by
    ~sqrt(n) eps over a reduction of length n (M rows for BN, K classes for xent);
    in float32 the float64 sums round away (measured: BN bit-identical, xent <= 3 eps)."""
    if dtype == np.float64 and name.startswith("batch_norm"):
        return ULPS * np.sqrt(args[0].shape[0])
    if dtype == np.float64 and name == "softmax_cross_entropy":
        return ULPS * np.sqrt(args[1].shape[1])
    return ULPS


def test_every_hot_primitive_has_a_numba_kernel():
    assert sorted(name for name, impls in backend._registry.items() if "numba" in impls) == sorted(
        WINDOW + OTHER + CONV + ("conv_batch_chunks", "bias_add", "bias_add_grad", "relu", "relu_grad", "gelu", "gelu_grad"))


def test_numba_conv_chunks_are_the_cpu_chunks():
    """numba keeps the CPU's 2 MB chunks: conv2 of the CIFAR models at batch 128 (12x12 outputs,
    5x5 windows of 64 channels) holds 144 * 1600 * 4 = 922 kB of float32 windows per image,
    so 2 images a chunk, 64 chunks."""
    x = np.empty((128, 12, 12, 64), np.float32)
    chunks = backend.implementation("conv_batch_chunks", "numba")(x, 12 * 12 * 25)
    assert chunks == [slice(i, i + 2) for i in range(0, 128, 2)]
    assert chunks == backend.implementation("conv_batch_chunks", "numpy")(x, 12 * 12 * 25)


# ---- argument builders: one per primitive, shared by every test below ------------

def _geometry(shape, ksize, strides, dilations, padding):
    return window_geometry(shape[1:3], ksize, strides, dilations, padding)


def _ties(rng, shape, dtype):
    """Small integers: most pooling windows hold several equal maxima."""
    return rng.integers(-2, 3, shape).astype(dtype)


def window_args(name, rng, dtype, shape, ksize, strides, dilations, padding):
    win = _geometry(shape, ksize, strides, dilations, padding)
    oh, ow = win.OH, win.OW
    normal = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    n, _, _, c = shape
    if name == "im2col":
        return (normal(*shape), win)
    if name == "col2im":
        return (normal(n * oh * ow, ksize[0] * ksize[1] * c), shape, win)
    if name in ("max_pool_forward", "max_pool_values", "avg_pool_forward"):
        return (_ties(rng, shape, dtype), win)
    if name == "max_pool_backward":
        _, argmax = backend.implementation("max_pool_forward", "numpy")(_ties(rng, shape, dtype), win)
        return (normal(n, oh, ow, c), argmax, shape, win)
    return (normal(n, oh, ow, c), shape, win)           # avg_pool_backward


def other_args(name, rng, dtype, size, channels, radius, beta):
    normal = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    if name.startswith("lrn"):
        x = normal(1 + size % 2, 1 + size % 3, 1 + size % 4, channels) * dtype(3)
        if name == "lrn_forward":
            return (x, radius, 1.0 + size % 3, 0.5 / (size % 4 + 1), beta)
        y, norm = backend.implementation("lrn_forward", "numpy")(x, radius, 2.0, 0.3, beta)
        return (normal(*x.shape), x, y, norm, radius, 0.3, beta)
    if name.startswith("batch_norm"):
        x = normal(size, channels) * dtype(2) + dtype(5)      # an offset mean: centering matters
        scale, offset = normal(channels), normal(channels)
        if name == "batch_norm_train_forward":
            return (x, scale, offset, 1e-3)
        _, mean, variance, inv_std = backend.implementation("batch_norm_train_forward", "numpy")(x, scale, offset, 1e-3)
        if name == "batch_norm_train_backward":
            return (normal(size, channels), x, scale, mean, inv_std)
        return (x, scale, offset, mean, variance + dtype(0.5), 1e-3)
    logits = normal(size, channels) * dtype(4)
    logits[0] += dtype(1e4)                              # the max shift must keep this row finite
    labels = rng.random((size, channels)).astype(dtype)  # soft labels, rows not summing to 1
    return (labels, logits)


def assert_same(name, ours, ref, dtype, tolerance_ulps=ULPS):
    ours = ours if isinstance(ours, tuple) else (ours,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        if name in EXACT:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            eps = np.finfo(dtype).eps
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            np.testing.assert_allclose(a, b, rtol=tolerance_ulps * eps, atol=tolerance_ulps * eps * scale,
                                       err_msg=name)


def check(name, dtype, args):
    ours = backend.implementation(name, "numba")(*args)
    assert_same(name, ours, backend.implementation(name, "numpy")(*args), dtype, ulps(name, dtype, args))


# ---- kernel vs reference ---------------------------------------------------------

@st.composite
def window_geometries(draw, pool):
    """(shape, ksize, strides, dilations, padding): even/odd/1-wide kernels, stride > kernel,
    dilation 2 (conv only), SAME/VALID/explicit padding (below the window size for pools)."""
    ksize = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilations = (1, 1) if pool else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    reach = [(k - 1) * d + 1 for k, d in zip(ksize, dilations)]
    kind = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if kind == "explicit":
        padding = tuple((draw(st.integers(0, k - 1 if pool else 3)), draw(st.integers(0, k - 1 if pool else 3)))
                        for k in ksize)
        least = [max(1, r - sum(p)) for r, p in zip(reach, padding)]
    else:
        padding = kind
        least = reach if kind == "VALID" else [1, 1]
    shape = (draw(st.integers(1, 3)), draw(st.integers(least[0], least[0] + 6)),
             draw(st.integers(least[1], least[1] + 6)), draw(st.integers(1, 5)))
    return shape, ksize, strides, dilations, padding


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", WINDOW)
@settings(max_examples=25)
@given(data=st.data())
def test_window_kernel_equals_reference(name, dtype, data):
    geometry = data.draw(window_geometries(pool=name not in ("im2col", "col2im")))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    check(name, dtype, window_args(name, rng, dtype, *geometry))


AWKWARD = [   # (shape, ksize, strides, dilations (conv only), padding)
    ((2, 6, 7, 3), (4, 4), (1, 1), (1, 1), "SAME"),          # even kernel: SAME pads (1, 2)
    ((2, 5, 7, 2), (2, 2), (1, 1), (1, 1), "SAME"),
    ((1, 7, 7, 2), (2, 2), (3, 3), (1, 1), "VALID"),         # stride > kernel, batch 1
    ((2, 5, 6, 3), (3, 1), (1, 2), (1, 1), "SAME"),          # 3x1
    ((2, 5, 6, 3), (1, 3), (2, 1), (1, 1), "SAME"),          # 1x3
    ((1, 9, 8, 2), (3, 3), (1, 1), (2, 2), "SAME"),          # dilation 2
    ((2, 5, 5, 3), (3, 2), (2, 1), (2, 1), ((1, 0), (1, 1))),  # explicit padding
    ((2, 4, 4, 5), (1, 1), (1, 1), (1, 1), "VALID"),         # pointwise: the no-copy path
    ((2, 24, 24, 3), (5, 5), (1, 1), (1, 1), "SAME"),        # the CIFAR tutorial's conv1
    ((2, 24, 24, 8), (3, 3), (2, 2), (1, 1), "SAME"),        # its pools: pads (0, 1)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", WINDOW)
@pytest.mark.parametrize("case", range(len(AWKWARD)))
def test_window_kernel_awkward_geometries(name, dtype, case):
    shape, ksize, strides, dilations, padding = AWKWARD[case]
    if name not in ("im2col", "col2im"):
        dilations = (1, 1)
    check(name, dtype, window_args(name, np.random.default_rng(case), dtype, shape, ksize, strides, dilations, padding))


def conv_args(name, rng, dtype, shape, ksize, strides, dilations, padding, out_channels):
    win = _geometry(shape, ksize, strides, dilations, padding)
    x = rng.standard_normal(shape).astype(dtype)
    if name == "conv2d_forward":
        return (x, rng.standard_normal((*ksize, shape[3], out_channels)).astype(dtype), win)
    dy = rng.standard_normal((shape[0], win.OH, win.OW, out_channels)).astype(dtype)
    return (x, dy, win, (*ksize, shape[3], out_channels))


def check_conv(name, dtype, args):
    """The numba twin against the reference run under the numpy backend (im2col on numpy):
    bit-identical where the policy keeps im2col, within WINOGRAD_RTOL where it picks Winograd,
    within KN2ROW_RTOL where it picks kn2row (the forward of stride-1 convs with O <= C)."""
    ours = backend.implementation(name, "numba")(*args)
    with backend.backend("numpy"):
        ref = backend.implementation(name, "numpy")(*args)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    x_shape, w_shape = args[0].shape, args[1].shape if name == "conv2d_forward" else args[3]
    direction = "forward" if name == "conv2d_forward" else "filter"
    by_winograd = numba_winograd.winograd_tile(x_shape, w_shape, args[2], np.dtype(dtype), direction) is not None
    if not by_winograd and direction == "forward" and numba_kn2row.kn2row_picks(x_shape, w_shape, args[2], dtype):
        assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) <= numba_kn2row.KN2ROW_RTOL[np.dtype(dtype)], name
    elif not by_winograd:
        np.testing.assert_array_equal(ours, ref, err_msg=name)
    else:
        err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
        assert 0 < err <= numba_winograd.WINOGRAD_RTOL[np.dtype(dtype)], (name, err)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", CONV)
@pytest.mark.parametrize("case", range(len(AWKWARD)))
def test_conv_twins_on_awkward_geometries_are_the_reference(name, dtype, case):
    """Few channels: the policy keeps im2col, and the result is the reference's bit for bit."""
    check_conv(name, dtype, conv_args(name, np.random.default_rng(case), dtype, *AWKWARD[case], 3))


WINOGRAD_CASES = [   # (shape, ksize, strides, dilations, padding, O): the policy picks Winograd
    ((2, 12, 12, 16), (5, 5), (1, 1), (1, 1), "SAME", 16),      # the CIFAR conv2 geometry, narrower
    ((1, 9, 11, 16), (3, 3), (1, 1), (1, 1), "SAME", 20),       # odd sizes, tiles cut off, N = 1
    ((2, 10, 11, 17), (3, 3), (1, 1), (1, 1), "VALID", 16),
    ((1, 9, 9, 16), (5, 5), (1, 1), (1, 1), ((0, 3), (4, 1)), 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", CONV)
@pytest.mark.parametrize("case", range(len(WINOGRAD_CASES)))
def test_conv_twins_by_winograd_within_its_tolerance(name, dtype, case, monkeypatch):
    monkeypatch.setattr(numba_winograd, "MIN_BATCH_TILES", 0)      # the forward of these few tiles too
    check_conv(name, dtype, conv_args(name, np.random.default_rng(case), dtype, *WINOGRAD_CASES[case]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", OTHER)
@settings(max_examples=25)
@given(size=st.integers(1, 300), channels=st.integers(1, 70), radius=st.integers(0, 8),
       beta=st.sampled_from([0.5, 0.75, 1.0, 0.3]), seed=st.integers(0, 2**32 - 1))
def test_kernel_equals_reference(name, dtype, size, channels, radius, beta, seed):
    check(name, dtype, other_args(name, np.random.default_rng(seed), dtype, size, channels, radius, beta))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["lrn_forward", "lrn_backward"])
@pytest.mark.parametrize("radius", [4, 5, 10**6])
def test_lrn_window_wider_than_the_channels(name, dtype, radius):
    """A radius >= C - 1 sums every channel (the kernels clip it to C - 1, so their zero
    padding stays C + 2 (C - 1) long even for a radius of a million)."""
    check(name, dtype, other_args(name, np.random.default_rng(radius), dtype, 7, 5, radius, 0.75))


# bias_add's twins (numba_elementwise), called directly: shapes
# below and above the size where they switch from numpy's expression to the kernels
BIAS_SHAPES = [(3, 5), (2, 3, 4, 7), (128, 12, 12, 64), (70000, 3)]


def bias_args(name, rng, dtype, shape):
    x = rng.standard_normal(shape).astype(dtype) * dtype(3) + dtype(1)
    x.flat[::7] = dtype(-0.0)                                   # signed zeros go through
    if name == "bias_add_grad":
        return (x,)
    x.flat[::11] = dtype(np.nan)                                # and NaN (not in the sums: every one NaN)
    return (x, rng.standard_normal(shape[-1]).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["bias_add", "bias_add_grad"])
@pytest.mark.parametrize("shape", BIAS_SHAPES, ids=str)
def test_bias_add_kernels_equal_reference(name, dtype, shape):
    """bias_add bit for bit (the same addition); bias_add_grad's float64 block sums within
    ULPS (float32) or ULPS * sqrt(M) (float64) of the reference's row-order sums."""
    args = bias_args(name, np.random.default_rng(len(shape)), dtype, shape)
    ours, ref = getattr(numba_elementwise, name)(*args), backend.implementation(name, "numpy")(*args)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if name == "bias_add":
        assert np.array_equal(ours.view(f"u{ours.itemsize}"), ref.view(f"u{ref.itemsize}"))
    else:
        rows = int(np.prod(shape[:-1]))
        tolerance = ULPS * np.finfo(dtype).eps * (np.sqrt(rows) if dtype == np.float64 else 1)
        np.testing.assert_allclose(ours, ref, rtol=tolerance, atol=0)


def test_bias_add_plain_python_kernels_equal_reference(monkeypatch):
    """The jitted functions run as Python, on a size that takes the kernel path."""
    _plain_kernels(monkeypatch)
    for name in ("bias_add", "bias_add_grad"):
        args = bias_args(name, np.random.default_rng(5), np.float32, (numba_elementwise._PARALLEL_MIN, 1))
        np.testing.assert_array_equal(getattr(numba_elementwise, name)(*args),
                                      backend.implementation(name, "numpy")(*args))


@pytest.mark.parametrize("name", WINDOW + OTHER)
def test_non_contiguous_inputs(name):
    """Views (a channel slice of a wider array) give the same answer as their copies."""
    rng = np.random.default_rng(3)
    if name in WINDOW:
        args = window_args(name, rng, np.float32, (2, 7, 6, 3), (3, 3), (2, 2), (1, 1), "SAME")
    else:
        args = other_args(name, rng, np.float32, 12, 9, 2, 0.75)
    strided = tuple(np.repeat(a, 2, axis=-1)[..., ::2] if isinstance(a, np.ndarray) and a.ndim > 1
                    and a.dtype.kind == "f" else a for a in args)
    assert not strided[0].flags.c_contiguous
    assert_same(name, backend.implementation(name, "numba")(*strided),
                backend.implementation(name, "numpy")(*args), np.float32)


def test_max_pool_tie_rule_and_a_window_of_minus_inf_beside_padding():
    """Ties go to the first maximum in row-major order; a window of nothing but -inf and
    padding takes its first real pixel (never a padded tap), as the reference does."""
    x = np.full((1, 4, 4, 1), -np.inf, np.float32)
    x[0, 2:, 2:, 0] = 7.0
    args = (x, window((4, 4), (3, 3), (2, 2), (1, 1), ((1, 0), (1, 0))))
    y, argmax = backend.implementation("max_pool_forward", "numba")(*args)
    y_ref, argmax_ref = backend.implementation("max_pool_forward", "numpy")(*args)
    np.testing.assert_array_equal(argmax, argmax_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert argmax[0, 0, 0, 0] == 4 and y[0, 0, 0, 0] == -np.inf     # rows -1..1, cols -1..1: pixel (0, 0)
    assert argmax[0, 0, 1, 0] == 3                                  # rows -1..1, cols 1..3: pixel (0, 1)
    assert argmax[0, 1, 1, 0] == 4 and y[0, 1, 1, 0] == 7          # rows 1..3, cols 1..3: first 7 at (2, 2)


LEADING_PADS = [   # pool geometries that pad the top or the left: (shape, ksize, strides, padding)
    ((2, 6, 7, 3), (4, 4), (1, 1), "SAME"),                  # pads (1, 2)
    ((2, 5, 6, 3), (3, 1), (1, 2), "SAME"),
    ((2, 5, 6, 3), (1, 3), (2, 1), "SAME"),
    ((2, 5, 5, 3), (3, 2), (2, 1), ((1, 0), (1, 1))),
    ((2, 24, 24, 3), (5, 5), (1, 1), "SAME"),
    ((1, 7, 6, 2), (3, 3), (2, 2), ((2, 0), (0, 2))),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", range(len(LEADING_PADS)))
def test_max_pool_of_mostly_minus_inf_equals_reference(case, dtype):
    """Windows whose real pixels are all -inf beside the padding: forward, argmax, the values
    alone and backward equal the reference's, and every window's dy reaches a pixel (none is lost in padding)."""
    shape, ksize, strides, padding = LEADING_PADS[case]
    rng = np.random.default_rng(case)
    x = np.where(rng.random(shape) < 0.8, -np.inf, _ties(rng, shape, dtype)).astype(dtype)
    win = _geometry(shape, ksize, strides, (1, 1), padding)
    check("max_pool_forward", dtype, (x, win))
    check("max_pool_values", dtype, (x, win))
    _, argmax = backend.implementation("max_pool_forward", "numpy")(x, win)
    dy = np.ones((shape[0], win.OH, win.OW, shape[3]), dtype)
    check("max_pool_backward", dtype, (dy, argmax, shape, win))
    dx = backend.implementation("max_pool_backward", "numba")(dy, argmax, shape, win)
    assert dx.sum() == dy.size


# ---- the ops end to end under backend("numba") ------------------------------------

def _forward_backward(op, arrays, grad_seed):
    tensors = [Tensor(a.copy(), requires_grad=a.dtype.kind == "f") for a in arrays]
    out = op(*tensors)
    out = out[0] if isinstance(out, tuple) else out
    out.backward(np.random.default_rng(grad_seed).standard_normal(out.shape).astype(out.dtype))
    return [out.data] + [t.grad for t in tensors if t.requires_grad]


def _op_cases(dtype, rng):
    normal = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    x = normal(3, 10, 9, 4)
    return {
        "conv2d": (lambda a, w: conv2d(a, w, (2, 1), "SAME"), [x, normal(4, 3, 4, 5)]),
        "conv2d_dilated": (lambda a, w: conv2d(a, w, 1, [(1, 2), (0, 1)], dilations=2), [x, normal(3, 2, 4, 2)]),
        "conv2d_winograd": (lambda a, w: conv2d(a, w, 1, "SAME"), [normal(2, 7, 6, 16), normal(3, 3, 16, 16)]),
        "depthwise_conv2d": (lambda a, f: depthwise_conv2d(a, f, (1, 1), "VALID"), [x, normal(3, 3, 4, 2)]),
        "max_pool2d": (lambda a: max_pool2d(a, 3, 2, "SAME"), [_ties(rng, x.shape, dtype)]),
        "avg_pool2d": (lambda a: avg_pool2d(a, (2, 3), (2, 1), "SAME"), [x]),
        "lrn": (lambda a: local_response_normalization(a, 2, 1.0, 0.1, 0.75), [x]),
        "fused_batch_norm": (lambda a, s, o: fused_batch_norm(a, s, o),
                             [x * dtype(3) + dtype(1), normal(4), normal(4)]),
        "fused_batch_norm_inference": (
            lambda a, s, o, m, v: fused_batch_norm(a, s, o, m, v, is_training=False),
            [x, normal(4), normal(4), normal(4), np.abs(normal(4)) + dtype(0.5)]),
        "sparse_xent": (sparse_softmax_cross_entropy_with_logits, [rng.integers(0, 7, (5, 3)), normal(5, 3, 7)]),
        "xent": (softmax_cross_entropy_with_logits, [rng.random((6, 5)).astype(dtype), normal(6, 5)]),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", list(_op_cases(np.float32, np.random.default_rng(0))))
def test_ops_forward_backward_under_numba_backend(op, dtype, monkeypatch):
    monkeypatch.setattr(numba_winograd, "MIN_BATCH_TILES", 0)      # conv2d_winograd's 8 tiles
    fn, arrays = _op_cases(dtype, np.random.default_rng(11))[op]
    with backend.backend("numpy"):
        reference = _forward_backward(fn, arrays, 5)
    with backend.backend("numba"):
        assert backend.current_backend() == "numba"
        ours = _forward_backward(fn, arrays, 5)
    assert backend.current_backend() == _previous
    eps = np.finfo(dtype).eps
    tolerance = ULPS * eps
    if dtype == np.float64 and op.startswith("fused_batch_norm"):     # see ulps(): M rows summed in float64
        tolerance *= np.sqrt(arrays[0].size // arrays[0].shape[-1])
    if op == "conv2d_winograd":                                       # forward, dx and dW by Winograd
        tolerance = numba_winograd.WINOGRAD_RTOL[np.dtype(dtype)]
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * float(np.max(np.abs(b))), err_msg=op)


# ---- without the JIT -------------------------------------------------------------

def _plain_kernels(monkeypatch):
    """Point every `_x_kernel` (and jitted helper `_x`) at its plain function `_x_plain`."""
    for module in MODULES:
        for attr in dir(module):
            if attr.endswith("_plain"):
                base = attr[:-len("_plain")]
                target = base + "_kernel" if hasattr(module, base + "_kernel") else base
                monkeypatch.setattr(module, target, getattr(module, attr))


@pytest.mark.parametrize("name", WINDOW + OTHER)
def test_plain_python_kernels_equal_reference(name, monkeypatch):
    """The functions the JIT compiles, run as Python (what NUMBA_DISABLE_JIT=1 runs)."""
    _plain_kernels(monkeypatch)
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        if name in WINDOW:
            args = window_args(name, rng, dtype, (2, 5, 4, 2), (3, 2), (2, 1), (1, 1), "SAME")
        else:
            args = other_args(name, rng, dtype, 5, 6, 2, 0.75 if dtype == np.float32 else 0.3)
        check(name, dtype, args)


def test_kernels_are_plain_functions_bound_by_njit():
    for module in MODULES:
        for attr in dir(module):
            if attr.endswith("_kernel"):
                kernel = getattr(module, attr)      # the plain function itself under NUMBA_DISABLE_JIT=1
                assert getattr(kernel, "py_func", kernel) is getattr(module, attr[:-len("_kernel")] + "_plain")


def test_numba_disable_jit_runs_the_python_kernels():
    script = """
import numpy as np
import tinybn.backend as b
from tinybn.geometry import window
from tinybn.kernels import numba_pool
b.use_backend("numba")
assert numba_pool._max_pool_forward_kernel is numba_pool._max_pool_forward_plain
x = np.random.default_rng(0).integers(-2, 3, (2, 5, 5, 3)).astype(np.float32)
args = (x, window((5, 5), (3, 3), (2, 2), (1, 1), ((0, 1), (0, 1))))
y, a = b.implementation("max_pool_forward")(*args)
y_ref, a_ref = b.implementation("max_pool_forward", "numpy")(*args)
assert np.array_equal(y, y_ref) and np.array_equal(a, a_ref)
print("plain ok")
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "plain ok" in result.stdout


def test_use_backend_numba_loads_this_module():
    numba_cpu = importlib.import_module("tinybn.kernels.numba_cpu")
    assert numba_cpu.numba_conv is numba_conv
    assert numba_cpu.TWINS["im2col"] is numba_conv.im2col
    for name in WINDOW + OTHER:       # registered behind the dtype check
        assert backend.implementation(name, "numba").__wrapped__ is numba_cpu.TWINS[name]


@pytest.mark.parametrize("name", ["batch_norm_train_forward", "batch_norm_train_backward", "softmax_cross_entropy"])
def test_results_do_not_depend_on_the_thread_count(name):
    """Reductions split into a fixed number of blocks, not one per thread."""
    import numba
    args = other_args(name, np.random.default_rng(5), np.float32, 300, 7, 2, 0.75)
    kernel = backend.implementation(name, "numba")
    many = kernel(*args)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = kernel(*args)
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(many, one):
        np.testing.assert_array_equal(a, b)


def test_tinybn_backend_env_selects_numba_at_import():
    """TINYBN_BACKEND=numba, read by the first current_backend() call, loads the kernels and
    selects them (tests/test_backend_dispatch.py: not at `import tinybn`)."""
    script = "import tinybn.backend as b; assert b.current_backend() == 'numba'; print(b.implementation('im2col').__module__)"
    env = dict(os.environ, TINYBN_BACKEND="numba")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "numba_conv" in result.stdout
