"""conv2d_backprop_filter's numba twin (kernels/numba_winograd.py's conv2d_backprop_filter, by
Winograd or im2col, its batch split across the cores by kernels/numba_filter_gradient.py and
kernels/numba_threads.py) against the float64 im2col reference.

The split changes only the order of the float additions (chunk sums in lanes, then the
lanes): against the float64 reference the twin's error must be within SPLIT_RTOL (im2col,
about the reference's own float32 error) or WINOGRAD_RTOL, on the CIFAR models' and
ResNet's geometries at small batches and on awkward ones (odd sizes, VALID, explicit pads,
strides, dilations, N = 1), with chunks made small so that every case splits. A batch of
one chunk is the reference bit for bit; the result does not depend on the worker count;
the op's gradient under the numba backend equals float64 finite differences; the serial
kernels equal the reference im2col and the tile transform's closed form, jitted and plain.
"""
import os

import numba
import numpy as np
import pytest

import tinybn.backend as backend
from tinybn.gradcheck import check_gradients
from tinybn.kernels import numba_filter_gradient as fg, numba_threads
from tinybn.kernels import numba_winograd as wg, numba_winograd_forward as wf
from tinybn.ops.conv import conv2d
from tinybn.ops.padding import window_geometry

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)

DTYPES = (np.float32, np.float64)
SPLIT_RTOL = fg.SPLIT_RTOL     # measured on CASES: <= 4.8e-7 in float32 (the reference: 6.4e-7), 9e-16

CASES = {   # name: (x shape, (KH, KW, O), strides, dilations, padding)
    "cifar conv1": ((6, 24, 24, 3), (5, 5, 64), 1, 1, "SAME"),
    "cifar conv2": ((6, 12, 12, 64), (5, 5, 64), 1, 1, "SAME"),
    "cifar conv3": ((6, 6, 6, 64), (5, 5, 10), 1, 1, "SAME"),
    "resnet 3x3 56": ((2, 56, 56, 64), (3, 3, 64), 1, 1, "SAME"),
    "resnet 1x1 256->64": ((2, 56, 56, 256), (1, 1, 64), 1, 1, "VALID"),
    "resnet 3x3 512 7x7": ((2, 7, 7, 512), (3, 3, 512), 1, 1, "SAME"),
    "resnet 3x3 stride 2": ((3, 28, 28, 32), (3, 3, 32), 2, 1, "SAME"),
    "resnet 1x1 stride 2": ((3, 28, 28, 32), (1, 1, 64), 2, 1, "SAME"),
    "resnet root 7x7/2": ((2, 32, 32, 3), (7, 7, 16), 2, 1, "SAME"),
    "odd sizes": ((5, 9, 11, 3), (3, 3, 4), 1, 1, "SAME"),
    "valid": ((4, 10, 7, 2), (3, 2, 5), 1, 1, "VALID"),
    "explicit pads": ((3, 8, 9, 4), (3, 3, 3), 1, 1, ((0, 2), (3, 1))),
    "winograd explicit": ((3, 9, 9, 16), (5, 5, 16), 1, 1, ((0, 3), (4, 1))),
    "winograd odd valid": ((3, 13, 11, 17), (3, 3, 16), 1, 1, "VALID"),
    "dilated": ((4, 11, 10, 3), (3, 3, 2), 1, 2, "SAME"),
    "strided dilated valid": ((3, 12, 13, 2), (2, 3, 3), (2, 3), 1, "VALID"),
    "N = 1": ((1, 9, 9, 5), (3, 3, 4), 1, 1, "SAME"),
    "dy windows dilated": ((4, 11, 10, 6), (3, 3, 2), 1, 2, "SAME"),     # O < C: dy's windows gathered
    "dy windows valid": ((3, 9, 8, 5), (3, 2, 3), 1, 1, "VALID"),
    "dy windows explicit pads": ((3, 8, 9, 4), (3, 3, 3), 1, 1, ((0, 2), (2, 1))),
    "dy windows N = 1": ((1, 6, 6, 12), (5, 5, 4), 1, 1, "SAME"),
}


def relative_error(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def operands(case, dtype, seed=0):
    x_shape, (KH, KW, O), strides, dilations, padding = CASES[case]
    pair = lambda v: (v, v) if isinstance(v, int) else v
    geometry = window_geometry(x_shape[1:3], (KH, KW), pair(strides), pair(dilations), padding)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    dy = rng.standard_normal((x_shape[0], geometry.OH, geometry.OW, O))
    return x.astype(dtype), dy.astype(dtype), geometry, (KH, KW, x_shape[3], O)


def reference(x, dy, geometry, w_shape):
    return backend.implementation("conv2d_backprop_filter", "numpy")(
        x.astype(np.float64), dy.astype(np.float64), geometry, w_shape)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of one image (im2col) or one tile (Winograd): every batch of 2+ images splits."""
    monkeypatch.setattr(fg, "FILTER_CHUNK_BYTES", 1)
    monkeypatch.setattr(fg, "ONE_CHUNK_BYTES", 0)
    monkeypatch.setattr(wg, "FILTER_CHUNK_TILES", 1)


@pytest.fixture
def few_tiles(monkeypatch):
    """Winograd however few tiles the batch has (MIN_BATCH_TILES 0): the "winograd" cases have 27."""
    monkeypatch.setattr(wg, "MIN_BATCH_TILES", 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", list(CASES))
def test_twin_equals_the_float64_reference(small_chunks, few_tiles, case, dtype):
    x, dy, geometry, w_shape = operands(case, dtype)
    ours = wg.conv2d_backprop_filter(x, dy, geometry, w_shape)
    assert ours.shape == w_shape and ours.dtype == dtype
    by_winograd = wg.winograd_tile(x.shape, w_shape, geometry, np.dtype(dtype), "filter") is not None
    assert by_winograd == case.startswith(("cifar conv2", "resnet 3x3 56", "winograd"))
    tolerance = (wg.WINOGRAD_RTOL if by_winograd else SPLIT_RTOL)[np.dtype(dtype)]
    assert relative_error(ours, reference(x, dy, geometry, w_shape)) <= tolerance


@pytest.mark.parametrize("case", ["cifar conv1", "cifar conv2", "cifar conv3", "resnet 1x1 256->64", "dilated"])
def test_result_does_not_depend_on_the_worker_count(small_chunks, case):
    """The lanes are fixed by the batch, not by the cores: 1 worker (the calling thread) and
    numba's thread count of workers give the same bits."""
    x, dy, geometry, w_shape = operands(case, np.float32, seed=1)
    many = wg.conv2d_backprop_filter(x, dy, geometry, w_shape)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert numba_threads.workers() == 1
        one = wg.conv2d_backprop_filter(x, dy, geometry, w_shape)
    finally:
        numba.set_num_threads(previous)
    np.testing.assert_array_equal(many, one)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", ["odd sizes", "explicit pads", "strided dilated valid", "cifar conv1"])
def test_one_chunk_is_the_reference_bit_for_bit(case, dtype):
    """A batch of at most ONE_CHUNK_BYTES of x's windows is one GEMM, as in the reference (whose
    chunks are larger): the same float operations."""
    x, dy, geometry, (KH, KW, C, O) = operands(case, dtype)
    assert not fg.gathers_dy(geometry, (KH, KW, C, O))
    per_image = geometry.OH * geometry.OW * KH * KW * C * x.itemsize
    n = min(x.shape[0], fg.ONE_CHUNK_BYTES // per_image)
    assert n >= 1 and fg._chunks(n, per_image) == [slice(0, n)]
    ours = wg.conv2d_backprop_filter(x[:n], dy[:n], geometry, (KH, KW, C, O))
    with backend.backend("numba"):
        ref = backend.implementation("conv2d_backprop_filter", "numpy")(x[:n], dy[:n], geometry, (KH, KW, C, O))
    np.testing.assert_array_equal(ours, ref)


def test_empty_batch_gives_zeros():
    x, dy, geometry, w_shape = operands("odd sizes", np.float32)
    ours = wg.conv2d_backprop_filter(x[:0], dy[:0], geometry, w_shape)
    assert ours.shape == w_shape and ours.dtype == np.float32 and not ours.any()


@pytest.mark.parametrize("strides, dilations, padding, r", [
    (1, 1, "SAME", 5), (1, 1, ((0, 2), (1, 0)), 3), (2, 1, "SAME", 3), (1, 2, "VALID", 3), ((2, 1), 1, "VALID", 2)])
def test_op_gradient_under_numba_by_finite_differences(monkeypatch, strides, dilations, padding, r):
    """conv2d's dW (by Winograd or im2col, split into chunks of one image on the workers)
    equals float64 central differences."""
    monkeypatch.setattr(fg, "FILTER_CHUNK_BYTES", 1)
    monkeypatch.setattr(fg, "ONE_CHUNK_BYTES", 0)
    monkeypatch.setattr(wg, "FILTER_CHUNK_TILES", 1)
    monkeypatch.setattr(wg, "MIN_CHANNELS", 1)
    monkeypatch.setattr(wg, "MIN_TILES", 0)
    monkeypatch.setattr(wg, "MIN_BATCH_TILES", 0)
    rng = np.random.default_rng(r)
    x, w = rng.standard_normal((3, 7, 8, 2)), rng.standard_normal((r, r, 2, 3))
    with backend.backend("numba"):
        check_gradients(lambda x, w: conv2d(x, w, strides, padding, dilations=dilations), x, w)


def test_batch_chunks_cover_the_batch_with_one_per_lane_at_least():
    for N, per_image, per_chunk in [(128, 172_800, 1 << 20), (8, 7_000_000, 1 << 20), (5, 40, 144), (6, 100, 50), (7, 1, 6)]:
        chunks = fg.batch_chunks(N, per_image, per_chunk)
        assert [i for c in chunks for i in range(c.start, c.stop)] == list(range(N))
        assert len(chunks) >= min(N, numba_threads.LANES)
        assert all(c.stop - c.start <= max(1, per_chunk // per_image) for c in chunks)
    assert fg.batch_chunks(4, 100, 400) == [slice(0, 4)]


def test_split_returns_the_lanes_in_order_with_blas_on_one_thread_and_restores_it():
    controls = numba_threads.openblas_threads()
    if controls is None or numba_threads.workers() < 2:
        pytest.skip("no OpenBLAS thread control or a single core: split() runs the lanes in turn")
    get, _ = controls
    before = get()
    seen = numba_threads.split(lambda k: (k, get()), lanes=5)
    assert [k for k, _ in seen] == list(range(5)) and {threads for _, threads in seen} == {1}
    assert get() == before


def test_split_hands_a_lane_error_to_the_caller():
    def lane(k):
        if k == 2:
            raise ValueError("lane 2")
        return k
    with pytest.raises(ValueError, match="lane 2"):
        numba_threads.split(lane)
    assert numba_threads.split(lambda k: k) == list(range(numba_threads.LANES))


def test_split_works_in_a_forked_child():
    """A child forked after the workers started has none of them: it starts its own."""
    assert numba_threads.split(lambda k: k) == list(range(numba_threads.LANES))    # the parent's pool
    pid = os.fork()
    if pid == 0:                                             # the child: exit code 0 if split returns
        os._exit(0 if numba_threads.split(lambda k: -k) == [-k for k in range(numba_threads.LANES)] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("jit", [True, False], ids=["jitted", "plain"])
@pytest.mark.parametrize("case", ["cifar conv1", "explicit pads", "dilated", "strided dilated valid", "N = 1"])
def test_serial_windows_are_the_reference_im2col(case, jit):
    x, _, geometry, (KH, KW, C, _) = operands(case, np.float32)
    kernel = fg._windows_kernel if jit else fg._windows_plain
    cols = np.empty((x.shape[0], geometry.OH, geometry.OW, KH * KW * C), x.dtype)
    kernel(x.reshape(x.shape[0], x.shape[1], -1), cols, *geometry[:6], geometry.top, geometry.left)
    np.testing.assert_array_equal(cols.reshape(-1, KH * KW * C),
                                  backend.implementation("im2col", "numpy")(x, geometry))


def tile_transform_closed_form(data, T, stride, top, left, TH, TW):
    """out[p*alpha + q, (n*TH + th)*TW + tw, c] = sum_{i,j} T[p, i] T[q, j] data[n, th*stride + i - top,
    tw*stride + j - left, c], data 0 outside: the tiles cut from a zero-padded copy, then einsum."""
    N, H, W, C = data.shape
    alpha, s = T.shape
    padded = np.zeros((N, (TH - 1) * stride + s, (TW - 1) * stride + s, C))
    rows, cols = min(H, padded.shape[1] - top), min(W, padded.shape[2] - left)
    padded[:, top:top + rows, left:left + cols] = data[:, :rows, :cols]
    tiles = np.stack([np.stack([padded[:, th * stride:th * stride + s, tw * stride:tw * stride + s]
                                for tw in range(TW)], 1) for th in range(TH)], 1)    # (N, TH, TW, s, s, C)
    return np.einsum("pi,qj,nhwijc->pqnhwc", T, T, tiles).reshape(alpha * alpha, N * TH * TW, C)


@pytest.mark.parametrize("jit", [True, False], ids=["jitted", "plain"])
@pytest.mark.parametrize("case", ["cifar conv2", "winograd explicit", "winograd odd valid"])
def test_tile_transform_of_a_lanes_rows_is_the_closed_form(case, jit):
    """numba_winograd_forward's serial tile transform, which the filter gradient's lanes share with
    the forward, against its closed form: for x (B^T on alpha x alpha tiles, the window's pads) and
    dy (A on m x m tiles), all rows p at once (the forward) and a slice of them (a lane's)."""
    x, dy, geometry, (r, _, C, O) = operands(case, np.float64)
    m = wg.WINOGRAD_TILES[r]
    AT, _, BT = wg.transforms(m, r)
    alpha, TH, TW = m + r - 1, -(-geometry.OH // m), -(-geometry.OW // m)
    kernel = wf._tile_transform_kernel if jit else wf._tile_transform_plain
    for data, T, top, left in [(x, BT, geometry.top, geometry.left), (dy, AT.T.copy(), 0, 0)]:
        expected = tile_transform_closed_form(data, T, m, top, left, TH, TW).reshape(alpha, alpha, -1, data.shape[3])
        for rows in (slice(0, alpha), slice(2, 5)):
            out = np.empty((rows.stop - rows.start, alpha, x.shape[0] * TH * TW, data.shape[3]))
            kernel(data, T[rows].copy(), T, m, top, left, out.reshape(-1, *out.shape[2:]), TH, TW)
            np.testing.assert_allclose(out, expected[rows], rtol=1e-13, atol=1e-13 * np.abs(expected).max())


def test_im2col_split_policy():
    """Split: windows to gather, a dW of at most MAX_SPLIT_RESULT_BYTES and an image's windows
    of at most MAX_SPLIT_IMAGE_BYTES; else the reference."""
    same = lambda hw, k, s=1: window_geometry(hw, k, (s, s), (1, 1), "SAME")
    assert fg.splits(same((24, 24), (5, 5)), (5, 5, 3, 64), np.float32)               # CIFAR conv1
    assert fg.splits(same((6, 6), (5, 5)), (5, 5, 64, 10), np.float32)                # CIFAR conv3
    assert not fg.splits(same((56, 56), (3, 3), 2), (3, 3, 128, 128), np.float32)     # 3.6 MB of windows
    assert not fg.splits(same((56, 56), (1, 1)), (1, 1, 256, 64), np.float32)         # pointwise
    assert not fg.splits(same((7, 7), (3, 3)), (3, 3, 512, 512), np.float32)          # dW of 9.4 MB


def test_dy_windows_policy():
    """dy's windows where there are fewer output than input channels, stride 1 and no more
    padding than the kernel spans; else x's."""
    same = lambda hw, k, s=1, d=1: window_geometry(hw, k, (s, s), (d, d), "SAME")
    assert fg.gathers_dy(same((6, 6), (5, 5)), (5, 5, 64, 10))                           # CIFAR conv3
    assert not fg.gathers_dy(same((24, 24), (5, 5)), (5, 5, 3, 64))                      # CIFAR conv1: O > C
    assert not fg.gathers_dy(same((12, 12), (5, 5)), (5, 5, 64, 64))                     # O = C
    assert not fg.gathers_dy(same((12, 12), (3, 3), s=2), (3, 3, 64, 10))                # stride 2
    assert fg.gathers_dy(same((12, 12), (3, 3), d=2), (3, 3, 64, 10))                    # dilated
    too_much = window_geometry((8, 9), (3, 3), (1, 1), (1, 1), ((0, 2), (3, 1)))         # left pad 3 > 2
    assert not fg.gathers_dy(too_much, (3, 3, 4, 3))


@pytest.mark.parametrize("jit", [True, False], ids=["jitted", "plain"])
@pytest.mark.parametrize("case", ["cifar conv3", "dy windows dilated", "dy windows valid", "dy windows explicit pads"])
def test_dy_windows_filter_gradient_in_float64(small_chunks, case, jit, monkeypatch):
    """x's pixels against dy's windows under the adjoint window: the reference's products in
    another order, so in float64 within rounding of the float64 reference, jitted and plain."""
    if not jit:
        monkeypatch.setattr(fg, "_windows_kernel", fg._windows_plain)
    x, dy, geometry, w_shape = operands(case, np.float64, seed=2)
    assert fg.gathers_dy(geometry, w_shape)
    ours = fg.dy_windows_backprop_filter(x, dy, geometry, w_shape)
    assert ours.shape == w_shape and ours.flags.c_contiguous
    assert relative_error(ours, reference(x, dy, geometry, w_shape)) <= 1e-14


def test_overlapping_one_blas_thread_blocks_put_back_the_first_count():
    controls = numba_threads.openblas_threads()
    if controls is None:
        pytest.skip("no OpenBLAS thread control: one_blas_thread does nothing")
    get, _ = controls
    before = get()
    outer, inner = numba_threads.one_blas_thread(), numba_threads.one_blas_thread()
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)          # out of order, as two threads' blocks may end
    assert get() == 1
    inner.__exit__(None, None, None)
    assert get() == before
