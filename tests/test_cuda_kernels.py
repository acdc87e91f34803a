"""tinybn's CUDA kernels without a GPU: nvcc compiles every source for sm_80 and sm_90, and the
kernels run on the CPU (g++ with kernels/cpu_emulation.h, through ctypes) against the numpy
reference primitives over generated shapes.

The emulated runs go through kernels.cuda_primitives.CudaPrimitives, the very wrappers the
"cupy" backend uses, so the launch geometry and argument lists are checked with the kernels.
Each comparison runs twice: with the GPU's geometry (256 threads, up to 1024 blocks), and with
7 threads x at most 3 blocks run in reverse order (every grid-stride loop wraps many times;
an element written by two threads would differ).

Exact equality where the reference's arithmetic is reproduced operation by operation (im2col,
col2im, the four pooling kernels); elsewhere the kernels sum in double and round once, the
reference sums float64 pairwise or float32 in BLAS order: a few ulps apart at most.
nvcc: found on PATH, $CUDA_HOME, $CUDA_PATH or /usr/local/cuda*/bin; if it is missing the
compile test fails unless TINYBN_ALLOW_NO_NVCC=1.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tinybn.kernels import cuda_build
from tinybn.kernels.cuda_build import EmulatedDevice
from tinybn.kernels.cuda_primitives import KERNELS, CudaPrimitives, name_expressions
from tinybn.ops.conv import col2im, im2col
from tinybn.ops.fused_batch_norm import batch_norm_inference, batch_norm_train_backward, batch_norm_train_forward
from tinybn.ops.losses import softmax_cross_entropy
from tinybn.ops.lrn import lrn_backward, lrn_forward
from tinybn.geometry import window
from tinybn.ops.padding import window_geometry
from tinybn.ops.pool import avg_pool_backward, avg_pool_forward, max_pool_backward, max_pool_forward

DTYPES = [np.float32, np.float64]


# ---- nvcc: every source compiles for the real targets ------------------------------

@pytest.mark.parametrize("source", sorted(KERNELS))
def test_nvcc_compiles_for_sm80_and_sm90(source, tmp_path):
    nvcc = cuda_build.find_nvcc()
    if nvcc is None:
        message = "nvcc not found (PATH, $CUDA_HOME, $CUDA_PATH, /usr/local/cuda*/bin): install the CUDA toolkit"
        if os.environ.get("TINYBN_ALLOW_NO_NVCC") == "1":
            pytest.skip(message + " (TINYBN_ALLOW_NO_NVCC=1)")
        pytest.fail(message + ", or set TINYBN_ALLOW_NO_NVCC=1 to skip this check")
    with ThreadPoolExecutor(2) as executor:
        cubins = dict(zip((80, 90), executor.map(lambda arch: cuda_build.nvcc_compile(source, arch, tmp_path, nvcc),
                                              (80, 90))))
    for arch, cubin in cubins.items():
        missing = [e for e in name_expressions(source) if cuda_build.mangled_prefix(e).encode() not in cubin]
        assert not missing, f"sm_{arch} cubin of {source} lacks {missing}"


def test_every_kernel_is_listed():
    """The name_expressions CuPy asks for (and the compile test forces) are all the kernels there are."""
    sources = {f for f in os.listdir(cuda_build.KERNEL_DIR) if f.endswith(".cu")}
    assert sources == set(KERNELS)
    for source in sources:
        with open(os.path.join(cuda_build.KERNEL_DIR, source), encoding="utf-8") as f:
            defined = re.findall(r"__global__\s+void\s+(\w+)", f.read())
        assert sorted(defined) == sorted(KERNELS[source]), source


def test_mangled_prefix():
    assert cuda_build.mangled_prefix("im2col<float>") == "6im2colIfE"
    assert cuda_build.mangled_prefix("bn_finish<double>") == "9bn_finishIdE"


# ---- the emulation ---------------------------------------------------------------

@pytest.fixture(scope="session", params=["gpu-geometry", "tiny-reversed"])
def kernels(request, emulation_dir):
    if request.param == "gpu-geometry":
        return CudaPrimitives(np, EmulatedDevice(emulation_dir))
    return CudaPrimitives(np, EmulatedDevice(emulation_dir, reverse=True), threads=7, max_blocks=3,
                          bn_rows_per_thread=5)


def test_emulation_checks_argument_types(emulation_dir):
    launch = EmulatedDevice(emulation_dir)
    labels = logits = np.zeros((2, 3), np.float32)
    loss, backprop = np.empty(2, np.float32), np.empty((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"argument 2 \(int\): pass int32, got int64"):
        launch("softmax_xent<float>", 1, 32, (labels, logits, np.int64(2), np.int32(3), loss, backprop))
    with pytest.raises(TypeError, match=r"argument 1 \(const float\*\): pass a C-contiguous float32 array"):
        launch("softmax_xent<float>", 1, 32, (labels, logits.astype(np.float64), np.int32(2), np.int32(3), loss,
                                              backprop))
    with pytest.raises(TypeError, match="takes 6 arguments"):
        launch("softmax_xent<float>", 1, 32, (labels, logits))


def test_emulation_catches_out_of_bounds_writes_and_unwritten_outputs(emulation_dir):
    launch = EmulatedDevice(emulation_dir)
    labels = logits = np.zeros((2, 3), np.float32)
    with pytest.raises(AssertionError, match="wrote outside argument 4"):
        launch("softmax_xent<float>", 1, 32, (labels, logits, np.int32(2), np.int32(3), np.empty(1, np.float32),
                                              np.empty((2, 3), np.float32)))
    loss, backprop = np.zeros(2, np.float32), np.zeros((2, 3), np.float32)
    launch("softmax_xent<float>", 1, 32, (labels, logits, np.int32(1), np.int32(3), loss, backprop))
    assert np.isnan(loss[1]) and np.isnan(backprop[1]).all()     # row 1 never written: poisoned, not 0
    assert loss[0] == np.float32(0) and np.allclose(backprop[0], 1 / 3)


def assert_close(ours, ref, ulps=4, scale=None):
    """|ours - ref| <= ulps * eps * (|ref| + scale): a few roundings apart, scaled to the data
    (scale: max|ref| by default; for a sum whose terms cancel, the sum of the terms' sizes)."""
    ref = np.asarray(ref)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    eps = np.finfo(ref.dtype).eps
    scale = np.abs(ref).max(initial=0.0) if scale is None else scale
    excess = np.abs(ours - ref) - ulps * eps * (np.abs(ref) + scale)
    assert np.all(excess <= 0), f"{np.count_nonzero(excess > 0)} entries off by more than {ulps} ulps of the data"


# ---- im2col / col2im ---------------------------------------------------------------

@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dilations = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        padding = [(draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2)]
    shape = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 4))
    return shape, (kh, kw), strides, dilations, padding, draw(st.sampled_from(DTYPES))


AWKWARD_CONV = [  # SAME even kernels, stride > kernel, batch 1, 3x1 / 1x3, dilation 2, 1x1 fast path
    ((1, 8, 8, 3), (2, 2), (1, 1), (1, 1), "SAME", np.float32),
    ((2, 7, 6, 2), (4, 2), (2, 3), (1, 1), "SAME", np.float64),
    ((1, 9, 9, 2), (2, 2), (3, 3), (1, 1), "VALID", np.float32),
    ((1, 6, 5, 3), (3, 1), (1, 1), (1, 1), "SAME", np.float32),
    ((2, 5, 6, 1), (1, 3), (2, 1), (1, 1), "SAME", np.float64),
    ((1, 9, 8, 2), (3, 3), (1, 1), (2, 2), "SAME", np.float32),
    ((2, 4, 4, 3), (1, 1), (1, 1), (1, 1), "VALID", np.float32),
    ((1, 24, 24, 3), (5, 5), (1, 1), (1, 1), "SAME", np.float32),   # CIFAR conv1, batch 1
]


def conv_geometry(shape, ksize, strides, dilations, padding):
    """im2col's geometry.Window, or None where the window does not fit."""
    try:
        return window_geometry(shape[1:3], ksize, strides, dilations, padding)
    except ValueError:
        return None


def check_conv(kernels, shape, ksize, strides, dilations, padding, dtype, seed=0):
    geometry = conv_geometry(shape, ksize, strides, dilations, padding)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    ref_cols = im2col(x, geometry)
    np.testing.assert_array_equal(kernels.im2col(x, geometry), ref_cols, strict=True)
    cols = rng.standard_normal(ref_cols.shape).astype(dtype)
    np.testing.assert_array_equal(kernels.col2im(cols, shape, geometry), col2im(cols, shape, geometry),
                                  strict=True)


@given(case=conv_cases())
@settings(max_examples=30)
def test_im2col_col2im_equal_reference(kernels, case):
    assume(conv_geometry(*case[:5]) is not None)
    check_conv(kernels, *case)


@pytest.mark.parametrize("case", AWKWARD_CONV)
def test_im2col_col2im_awkward_shapes(kernels, case):
    check_conv(kernels, *case)


def test_im2col_of_a_non_contiguous_view(kernels):
    x = np.random.default_rng(1).standard_normal((3, 5, 4, 2)).astype(np.float32).transpose(0, 2, 1, 3)
    geometry = window_geometry((4, 5), (3, 2), (1, 2), (1, 1), "SAME")
    np.testing.assert_array_equal(kernels.im2col(x, geometry), im2col(x, geometry))


# ---- pooling -------------------------------------------------------------------------

@st.composite
def pool_cases(draw):
    ksize = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        padding = [(draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in ksize]
    shape = draw(st.integers(1, 3)), draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(1, 3))
    return shape, ksize, strides, padding, draw(st.sampled_from(DTYPES))


AWKWARD_POOL = [  # the CIFAR pools (3x3/2 SAME, 2x2/2 SAME, 6x6 VALID), stride > window, 3x1 / 1x3
    ((2, 24, 24, 3), (3, 3), (2, 2), "SAME", np.float32),
    ((1, 12, 12, 2), (2, 2), (2, 2), "SAME", np.float64),
    ((2, 6, 6, 4), (6, 6), (6, 6), "VALID", np.float32),
    ((1, 9, 7, 2), (2, 2), (4, 3), "SAME", np.float32),
    ((2, 5, 6, 1), (3, 1), (1, 2), "SAME", np.float64),
    ((1, 6, 5, 2), (1, 3), (2, 1), [(0, 0), (2, 1)], np.float32),
]


def pool_pads(shape, ksize, strides, padding):
    """The geometry.Window, or None where the op refuses it (larger than the padded input,
    or a pad as large as the window)."""
    try:
        win = window_geometry(shape[1:3], ksize, strides, (1, 1), padding)
    except ValueError:
        return None
    return win if all(max(win.pads[d]) < ksize[d] for d in range(2)) else None


def check_pool(kernels, shape, ksize, strides, padding, dtype, seed=0):
    win = pool_pads(shape, ksize, strides, padding)
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, shape).astype(dtype)        # few values: many ties for the first-maximum rule
    y, argmax = max_pool_forward(x, win)
    y_k, argmax_k = kernels.max_pool_forward(x, win)
    np.testing.assert_array_equal(y_k, y, strict=True)
    np.testing.assert_array_equal(argmax_k, argmax, strict=True)
    np.testing.assert_array_equal(kernels.max_pool_values(x, win), y, strict=True)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(kernels.max_pool_backward(dy, argmax, shape, win),
                                  max_pool_backward(dy, argmax, shape, win), strict=True)
    x = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_array_equal(kernels.avg_pool_forward(x, win), avg_pool_forward(x, win), strict=True)
    np.testing.assert_array_equal(kernels.avg_pool_backward(dy, shape, win), avg_pool_backward(dy, shape, win),
                                  strict=True)


@given(case=pool_cases())
@settings(max_examples=30)
def test_pooling_equals_reference(kernels, case):
    assume(pool_pads(*case[:4]) is not None)
    check_pool(kernels, *case)


@pytest.mark.parametrize("case", AWKWARD_POOL)
def test_pooling_awkward_shapes(kernels, case):
    check_pool(kernels, *case)


def test_max_pool_tie_takes_the_first_maximum_and_keeps_a_leading_nan(kernels):
    x = np.array([[[[1.0], [3.0]], [[3.0], [2.0]]], [[[np.nan], [5.0]], [[1.0], [2.0]]]], np.float32)
    y, argmax = kernels.max_pool_forward(x, window((2, 2), (2, 2), (2, 2), (1, 1), ((0, 0), (0, 0))))
    np.testing.assert_array_equal(argmax.ravel(), [1, 0])          # 3 at tap 1 beats the 3 at tap 2
    assert y[0, 0, 0, 0] == 3 and np.isnan(y[1, 0, 0, 0])          # as the reference's scan from tap 0


LEADING_PADS = [   # pool geometries that pad the top or the left, where a padded tap comes first
    ((2, 5, 6, 1), (3, 1), (1, 2), "SAME", np.float64),
    ((1, 6, 5, 2), (1, 3), (2, 1), [(0, 0), (2, 1)], np.float32),
    ((2, 6, 7, 3), (4, 4), (1, 1), "SAME", np.float32),
    ((2, 24, 24, 3), (5, 5), (1, 1), "SAME", np.float64),
    ((1, 7, 6, 2), (3, 3), (2, 2), [(2, 0), (0, 2)], np.float32),
]


@pytest.mark.parametrize("case", LEADING_PADS)
def test_max_pool_of_mostly_minus_inf_equals_reference(kernels, case):
    """Windows whose real pixels are all -inf beside the padding: forward, argmax and backward
    equal the reference's, and every window's dy reaches a pixel (none is lost in padding)."""
    shape, ksize, strides, padding, dtype = case
    win = pool_pads(shape, ksize, strides, padding)
    rng = np.random.default_rng(1)
    x = np.where(rng.random(shape) < 0.8, -np.inf, rng.integers(-2, 3, shape)).astype(dtype)
    y, argmax = max_pool_forward(x, win)
    y_k, argmax_k = kernels.max_pool_forward(x, win)
    np.testing.assert_array_equal(y_k, y, strict=True)
    np.testing.assert_array_equal(argmax_k, argmax, strict=True)
    dy = np.ones(y.shape, dtype)
    dx = kernels.max_pool_backward(dy, argmax, shape, win)
    np.testing.assert_array_equal(dx, max_pool_backward(dy, argmax, shape, win), strict=True)
    assert dx.sum() == dy.size


def test_max_pool_window_of_minus_inf_takes_its_first_real_pixel(kernels):
    """4x4 of -inf with 7s at rows 2..3, cols 2..3, 3x3/2, pads ((1, 0), (1, 0)): window (0, 0)
    reads rows -1..1, cols -1..1, so its first real pixel is (0, 0) at tap 4, never a padded tap."""
    x = np.full((1, 4, 4, 1), -np.inf, np.float32)
    x[0, 2:, 2:, 0] = 7.0
    win = window((4, 4), (3, 3), (2, 2), (1, 1), ((1, 0), (1, 0)))
    y, argmax = kernels.max_pool_forward(x, win)
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[4, 3], [1, 4]])
    np.testing.assert_array_equal(y[0, :, :, 0], [[-np.inf, -np.inf], [-np.inf, 7]])
    dx = kernels.max_pool_backward(np.ones_like(y), argmax, x.shape, win)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])


# ---- fused batch norm -------------------------------------------------------------

@given(m=st.integers(1, 300), c=st.integers(1, 5), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
@example(m=193, c=1, dtype=np.float64, seed=11).via("make fuzz")
@example(m=34, c=1, dtype=np.float64, seed=30).via("make fuzz")
@settings(max_examples=25)
def test_batch_norm_equals_reference(kernels, m, c, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((m, c)) * 3 + 2).astype(dtype)
    scale, offset = rng.standard_normal((2, c)).astype(dtype)
    for ours, ref in zip(kernels.batch_norm_train_forward(x, scale, offset, 1e-3),
                         batch_norm_train_forward(x, scale, offset, 1e-3)):
        assert_close(ours, ref)
    _, mean, _, inv_std = batch_norm_train_forward(x, scale, offset, 1e-3)
    dy = rng.standard_normal((m, c)).astype(dtype)
    dx, dscale, doffset = kernels.batch_norm_train_backward(dy, x, scale, mean, inv_std)
    dx_ref, dscale_ref, doffset_ref = batch_norm_train_backward(dy, x, scale, mean, inv_std)
    assert_close(dx, dx_ref, ulps=8)
    # dscale and doffset are sums over the m rows that may cancel to far below their terms
    # (make fuzz: m=193 and m=34 with c=1); rounding is relative to the terms, not to the sum
    xhat = (x - mean) * inv_std
    assert_close(dscale, dscale_ref, ulps=8, scale=np.abs(dy * xhat).sum(axis=0))
    assert_close(doffset, doffset_ref, ulps=8, scale=np.abs(dy).sum(axis=0))
    variance = rng.uniform(0.1, 2, c).astype(dtype)
    assert_close(kernels.batch_norm_inference(x, scale, offset, mean, variance, 1e-3),
                 batch_norm_inference(x, scale, offset, mean, variance, 1e-3))


def test_batch_norm_sums_a_cifar_batch_accurately(kernels):
    """73728 rows (128 x 24 x 24) of float32 with a large mean: the mean is the exact result
    rounded once to float32 (a float32 running sum here is 3 ulps off), the variance within 1 ulp."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((128 * 24 * 24, 3)) + 1000).astype(np.float32)
    _, mean, variance, _ = kernels.batch_norm_train_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), 0.0)
    exact_mean = x.astype(np.float64).mean(axis=0)
    np.testing.assert_array_equal(mean, exact_mean.astype(np.float32))
    exact_var = ((x - mean).astype(np.float64) ** 2).mean(axis=0)
    np.testing.assert_allclose(variance, exact_var, rtol=np.finfo(np.float32).eps)


# ---- LRN ----------------------------------------------------------------------------

@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 12)),
       radius=st.integers(0, 7), bias=st.floats(0.5, 2), alpha=st.floats(1e-4, 1), beta=st.floats(0.1, 1),
       dtype=st.sampled_from(DTYPES))
@settings(max_examples=25)
@example(shape=(2, 3, 3, 64), radius=4, bias=1.0, alpha=0.001 / 9, beta=0.75, dtype=np.float32)  # CIFAR norm1
def test_lrn_equals_reference(kernels, shape, radius, bias, alpha, beta, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y, norm = lrn_forward(x, radius, bias, alpha, beta)
    for ours, ref in zip(kernels.lrn_forward(x, radius, bias, alpha, beta), (y, norm)):
        assert_close(ours, ref)
    dy = rng.standard_normal(shape).astype(dtype)
    assert_close(kernels.lrn_backward(dy, x, y, norm, radius, alpha, beta),
                 lrn_backward(dy, x, y, norm, radius, alpha, beta), ulps=8)


# ---- softmax cross-entropy -----------------------------------------------------------

@given(n=st.integers(1, 6), k=st.integers(1, 12), scale=st.sampled_from([1.0, 30.0, 1e4]),
       normalized=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 99))
@settings(max_examples=25)
def test_softmax_cross_entropy_equals_reference(kernels, n, k, scale, normalized, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, k)) * scale).astype(dtype)
    labels = rng.uniform(0, 1, (n, k))
    if normalized:
        labels /= labels.sum(axis=1, keepdims=True)
    labels = labels.astype(dtype)
    loss, backprop = kernels.softmax_cross_entropy(labels, logits)
    ref_loss, ref_backprop = softmax_cross_entropy(labels, logits)
    assert_close(loss, ref_loss, ulps=8)
    assert_close(backprop, ref_backprop)


def test_softmax_cross_entropy_of_huge_logits(kernels):
    logits = np.array([[1e4, 0.0, -1e4]], np.float32)
    loss, backprop = kernels.softmax_cross_entropy(np.array([[0.0, 1.0, 0.0]], np.float32), logits)
    assert loss[0] == np.float32(1e4)
    np.testing.assert_array_equal(backprop, [[1.0, -1.0, 0.0]])
