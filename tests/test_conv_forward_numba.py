"""The numba backend's conv2d_forward (kernels/numba_conv.py) against the float64 im2col reference.

The twin picks one of four ways by its policy: Winograd (numba_winograd.winograd_tile), kn2row
(numba_kn2row.kn2row_picks: stride 1, O <= C), im2col + GEMM split in lanes across the cores
(numba_conv.splits_forward: narrow windows) or the im2col + GEMM reference. On the CIFAR
and ResNet geometries (small batches) and awkward ones (odd sizes, VALID, explicit pads,
strides 2, dilations, N = 1, C = 1), in float32 and float64, each result is within its way's
documented tolerance of the float64 reference (max|ours - ref| / max|ref|, the crosscheck
measure), and the im2col way is the reference's result bit for bit where its chunks are the
reference's (else within IM2COL_RTOL). Then the policy and the chunks, conv2d's
gradients under the numba backend by float64 finite differences (forward and input gradient
by kn2row), and the plain (non-jitted) kernel.
"""
import numba
import numpy as np
import pytest

import tinybn.backend as backend
from tinybn.geometry import window
from tinybn.gradcheck import check_gradients
from tinybn.kernels import numba_conv, numba_filter_gradient, numba_kn2row, numba_threads, numba_winograd
from tinybn.ops.conv import conv2d
from tinybn.ops.padding import window_geometry

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)

DTYPES = (np.float32, np.float64)


def relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def reference(x, w, geometry):
    """The definition: im2col + GEMM under the numpy backend."""
    with backend.backend("numpy"):
        return backend.implementation("conv2d_forward", "numpy")(x, w, geometry)


def batches(x, chunks):
    """The images each chunk holds: (start, stop) within the batch."""
    return [(part.start, min(part.stop, x.shape[0])) for part in chunks]


def way(x_shape, w_shape, geometry, dtype):
    if numba_winograd.winograd_tile(x_shape, w_shape, geometry, np.dtype(dtype)) is not None:
        return "winograd"
    if numba_kn2row.kn2row_picks(x_shape, w_shape, geometry, dtype):
        return "kn2row"
    return "split" if numba_conv.splits_forward(w_shape, geometry, dtype) and not geometry.is_pointwise else "im2col"


CASES = {   # name: (x shape, w shape, strides, dilations, padding)
    "cifar conv1 5x5x3x64": ((2, 24, 24, 3), (5, 5, 3, 64), 1, 1, "SAME"),
    "cifar conv3 5x5x64x10": ((3, 6, 6, 64), (5, 5, 64, 10), 1, 1, "SAME"),
    "cifar conv3 input gradient 5x5x10x64": ((3, 6, 6, 10), (5, 5, 10, 64), 1, 1, "SAME"),
    "cifar conv2 5x5x64x64 (Winograd)": ((6, 12, 12, 64), (5, 5, 64, 64), 1, 1, "SAME"),     # 54 tiles
    "resnet root 7x7/2": ((1, 37, 38, 3), (7, 7, 3, 64), 2, 1, "SAME"),
    "resnet 3x3/2 128": ((1, 14, 14, 128), (3, 3, 128, 128), 2, 1, "SAME"),
    "resnet 3x3x512 at 7x7": ((1, 7, 7, 512), (3, 3, 512, 512), 1, 1, "SAME"),
    "resnet 1x1 256->64": ((2, 7, 7, 256), (1, 1, 256, 64), 1, 1, "SAME"),
    "odd sizes, VALID": ((2, 9, 11, 6), (3, 4, 6, 5), 1, 1, "VALID"),
    "explicit pads": ((2, 5, 7, 4), (3, 3, 4, 2), 1, 1, ((2, 0), (1, 3))),
    "explicit pads, strides 2": ((2, 8, 7, 4), (3, 2, 4, 3), 2, 1, ((1, 2), (0, 1))),
    "dilation 2": ((2, 9, 8, 5), (3, 3, 5, 4), 1, 2, "SAME"),
    "dilations (2, 3), VALID": ((1, 11, 12, 4), (2, 3, 4, 4), 1, (2, 3), "VALID"),
    "N = 1, C = 1": ((1, 6, 5, 1), (3, 3, 1, 1), 1, 1, "SAME"),
    "C = 1, O > C": ((2, 6, 5, 1), (3, 3, 1, 4), 1, 1, "SAME"),
    "kernel wider than the input": ((2, 3, 2, 6), (5, 5, 6, 2), 1, 1, "SAME"),
    "1 x KW, strides (1, 2)": ((2, 5, 9, 6), (1, 3, 6, 2), (1, 2), 1, "SAME"),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_the_reference_within_its_way_s_tolerance(case, dtype):
    x_shape, w_shape, strides, dilations, padding = CASES[case]
    strides, dilations = np.broadcast_to(strides, 2).tolist(), np.broadcast_to(dilations, 2).tolist()
    geometry = window_geometry(x_shape[1:3], w_shape[:2], strides, dilations, padding)
    rng = np.random.default_rng(len(case))
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    with backend.backend("numba"):
        ours = numba_conv.conv2d_forward(x.astype(dtype), w.astype(dtype), geometry)
    assert ours.dtype == dtype and ours.shape == (x_shape[0], geometry.OH, geometry.OW, w_shape[3])
    picked = way(x_shape, w_shape, geometry, dtype)
    same_chunks = batches(x, numba_conv.forward_chunks(x, geometry)) == batches(
        x, numba_conv.conv_batch_chunks(x, geometry.OH * geometry.OW * geometry.KH * geometry.KW))
    if picked == "im2col" and same_chunks:
        np.testing.assert_array_equal(ours, reference(x.astype(dtype), w.astype(dtype), geometry))
    else:
        rtol = {"winograd": numba_winograd.WINOGRAD_RTOL, "kn2row": numba_kn2row.KN2ROW_RTOL,
                "im2col": numba_conv.IM2COL_RTOL, "split": numba_conv.IM2COL_RTOL}[picked][np.dtype(dtype)]
        assert relative_error(ours, reference(x, w, geometry)) <= rtol, picked


@pytest.mark.parametrize("x_shape, w_shape, strides, dilations, dtype, picked", [
    ((128, 6, 6, 64), (5, 5, 64, 10), 1, 1, np.float32, True),      # CIFAR conv3
    ((128, 6, 6, 10), (5, 5, 10, 64), 1, 1, np.float32, False),     # its input gradient: O > C
    ((128, 24, 24, 3), (5, 5, 3, 64), 1, 1, np.float32, False),     # CIFAR conv1
    ((8, 7, 7, 512), (3, 3, 512, 512), 1, 1, np.float64, True),     # ResNet's 7x7 3x3 convs
    ((8, 7, 7, 512), (3, 3, 512, 512), 1, 2, np.float32, True),     # dilated
    ((8, 56, 56, 128), (3, 3, 128, 128), 2, 1, np.float32, False),  # strided: SH*SW times the products
    ((8, 56, 56, 256), (1, 1, 256, 64), 1, 1, np.float32, False),   # pointwise: already one GEMM
    ((8, 7, 7, 512), (3, 3, 512, 512), 1, 1, np.float16, False),    # the kernels' dtypes only
    ((0, 7, 7, 512), (3, 3, 512, 512), 1, 1, np.float32, False),    # an empty batch
])
def test_policy(x_shape, w_shape, strides, dilations, dtype, picked):
    geometry = window_geometry(x_shape[1:3], w_shape[:2], (strides,) * 2, (dilations,) * 2, "SAME")
    assert numba_kn2row.kn2row_picks(x_shape, w_shape, geometry, np.dtype(dtype)) is picked


@pytest.mark.parametrize("x_shape, w_shape, strides, images", [
    ((128, 24, 24, 3), (5, 5, 3, 64), 1, 12),      # CIFAR conv1: 2 MB of windows, 6912 rows
    ((8, 28, 28, 256), (3, 3, 256, 256), 2, 3),    # ResNet 3x3/2 at 28 -> 14: 1 image of 196 rows is too few
    ((8, 14, 14, 512), (3, 3, 512, 512), 2, 11),   # 14 -> 7: 49 rows an image
    ((8, 224, 224, 3), (7, 7, 3, 64), 2, 1),       # the root: 12544 rows an image
])
def test_forward_chunks_hold_the_bytes_or_the_rows(x_shape, w_shape, strides, images):
    geometry = window_geometry(x_shape[1:3], w_shape[:2], (strides,) * 2, (1, 1), "SAME")
    x = np.empty((x_shape[0], 1, 1, x_shape[3]), np.float32)     # only the batch, channels and dtype count
    chunks = numba_conv.forward_chunks(x, geometry)
    assert chunks[0] == slice(0, images) and chunks[-1].stop >= x_shape[0] > chunks[-1].start
    assert images * geometry.OH * geometry.OW >= min(numba_conv.MIN_GEMM_ROWS, x_shape[0] * geometry.OH * geometry.OW)


def test_forward_on_rows_chunks_is_the_reference_within_im2col_rtol(monkeypatch):
    """One image a chunk by CHUNK_BYTES, 3 by MIN_GEMM_ROWS: the reference's sums, BLAS's rounding."""
    monkeypatch.setattr(numba_conv, "CHUNK_BYTES", 1)
    monkeypatch.setattr(numba_conv, "MIN_GEMM_ROWS", 40)
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((5, 9, 8, 6)), rng.standard_normal((3, 3, 6, 7))
    geometry = window_geometry((9, 8), (3, 3), (2, 2), (1, 1), "SAME")          # 5 x 4 = 20 rows an image
    assert len(numba_conv.forward_chunks(x, geometry)) == 3
    for dtype in DTYPES:
        with backend.backend("numba"):
            ours = numba_conv.conv2d_forward(x.astype(dtype), w.astype(dtype), geometry)
        assert ours.dtype == dtype
        assert relative_error(ours, reference(x, w, geometry)) <= numba_conv.IM2COL_RTOL[np.dtype(dtype)]


@pytest.mark.parametrize("x_shape, w_shape, strides, split", [
    ((128, 24, 24, 3), (5, 5, 3, 64), 1, True),       # CIFAR conv1: 75 values a window, 173 kB an image
    ((128, 6, 6, 10), (5, 5, 10, 64), 1, True),       # CIFAR conv3's input gradient: 250 values
    ((8, 224, 224, 3), (7, 7, 3, 64), 2, False),      # ResNet's root: 7.4 MB of windows an image
    ((8, 14, 14, 512), (3, 3, 512, 512), 2, False),   # 4608 values a window
    ((8, 56, 56, 256), (1, 1, 256, 64), 1, False),    # pointwise: no windows
])
def test_split_policy(x_shape, w_shape, strides, split):
    geometry = window_geometry(x_shape[1:3], w_shape[:2], (strides,) * 2, (1, 1), "SAME")
    assert numba_conv.splits_forward(w_shape, geometry, np.float32) is split


@pytest.mark.parametrize("jit", [True, False], ids=["jitted", "plain"])
@pytest.mark.parametrize("case", ["cifar conv1 5x5x3x64", "cifar conv3 input gradient 5x5x10x64", "explicit pads, strides 2",
                                  "dilations (2, 3), VALID"])
def test_split_forward_in_small_chunks_and_on_one_worker(monkeypatch, case, jit):
    """Chunks of one image (every batch of 2+ splits), jitted and plain: within IM2COL_RTOL of the
    float64 reference, and the same bits on one worker (the calling thread) as on all."""
    if not jit:
        monkeypatch.setattr(numba_filter_gradient, "_windows_kernel", numba_filter_gradient._windows_plain)
    monkeypatch.setattr(numba_conv, "SPLIT_CHUNK_BYTES", 1)
    x_shape, w_shape, strides, dilations, padding = CASES[case]
    strides, dilations = np.broadcast_to(strides, 2).tolist(), np.broadcast_to(dilations, 2).tolist()
    geometry = window_geometry(x_shape[1:3], w_shape[:2], strides, dilations, padding)
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5,) + x_shape[1:]), rng.standard_normal(w_shape)
    for dtype in DTYPES:
        many = numba_conv.split_conv2d(x.astype(dtype), w.astype(dtype), geometry)
        assert many.dtype == dtype
        assert relative_error(many, reference(x, w, geometry)) <= numba_conv.IM2COL_RTOL[np.dtype(dtype)]
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert numba_threads.workers() == 1
        one = numba_conv.split_conv2d(x.astype(dtype), w.astype(dtype), geometry)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(many, one)


@pytest.fixture
def kn2row_calls(monkeypatch):
    """The (C, O) of every conv that goes by kn2row, in a list."""
    calls = []
    conv = numba_kn2row.kn2row_conv2d
    monkeypatch.setattr(numba_kn2row, "kn2row_conv2d", lambda x, w, g: (calls.append(w.shape[2:]), conv(x, w, g))[1])
    return calls


@pytest.mark.parametrize("w_shape, dilations, padding", [
    ((3, 3, 4, 2), 1, "SAME"),               # forward by kn2row (O < C), dx by im2col
    ((3, 2, 2, 5), 1, ((1, 0), (0, 1))),     # dx (a stride-1 conv of dy, C and O swapped) by kn2row
    ((2, 3, 3, 3), 2, "VALID"),              # both, dilated
])
def test_op_gradients_under_numba_by_finite_differences(kn2row_calls, w_shape, dilations, padding):
    rng = np.random.default_rng(sum(w_shape))
    x, w = rng.standard_normal((2, 6, 7, w_shape[2])), rng.standard_normal(w_shape)
    with backend.backend("numba"):
        check_gradients(lambda x, w: conv2d(x, w, 1, padding, dilations=dilations), x, w)
    C, O = w_shape[2:]
    expected = ({(C, O)} if O <= C else set()) | ({(O, C)} if C <= O else set())
    assert set(kn2row_calls) == expected


def test_plain_kernel_equals_the_jitted(monkeypatch):
    """The Python function the JIT compiles (what NUMBA_DISABLE_JIT=1 runs) gives the same values."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 5, 6, 4)), rng.standard_normal((3, 2, 4, 3))
    geometry = window((5, 6), (3, 2), (1, 1), (2, 1), ((2, 1), (0, 1)))
    jitted = numba_kn2row.kn2row_conv2d(x, w, geometry)
    monkeypatch.setattr(numba_kn2row, "_tap_sum_kernel", numba_kn2row._tap_sum_plain)
    np.testing.assert_array_equal(numba_kn2row.kn2row_conv2d(x, w, geometry), jitted)


def test_batch_chunks_give_the_whole_batch_s_result(monkeypatch):
    """A CHUNK_BYTES smaller than one image's taps: one image per GEMM, the same values."""
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((3, 6, 6, 8)), rng.standard_normal((5, 5, 8, 2))
    geometry = window_geometry((6, 6), (5, 5), (1, 1), (1, 1), "SAME")
    whole = numba_kn2row.kn2row_conv2d(x, w, geometry)
    monkeypatch.setattr(numba_kn2row, "CHUNK_BYTES", 1)
    np.testing.assert_allclose(numba_kn2row.kn2row_conv2d(x, w, geometry), whole, rtol=1e-14, atol=1e-14)
