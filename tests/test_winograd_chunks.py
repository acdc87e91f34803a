"""The chunks of numba_winograd_forward's fused forward: the partition of the tile rows and
the conv at chunk boundaries against the float64 im2col reference.

A chunk is a run of whole tile rows (n, th) of the batch; each holds chunk_tiles // TW rows
(by default the tiles of FORWARD_CHUNK_BYTES; at least one row, at most a lane's share of
them). The conv is checked at chunk sizes that cut the batch between images, inside an image,
at one row a chunk and at one chunk a lane, with N = 1, C = 1 and odd sizes, to WINOGRAD_RTOL of
the dtype (max|ours - ref| / max|ref|, the crosscheck measure).
"""
import numpy as np
import pytest

import tinybn.backend as backend
from tinybn.kernels import numba_threads
from tinybn.kernels import numba_winograd as wg, numba_winograd_forward as wf
from tinybn.ops.padding import window_geometry

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)


@pytest.mark.parametrize("rows, TW, chunk_tiles", [(1, 1, 128), (7, 3, 1), (9, 3, 12), (40, 4, 128),
                                                   (1024 * 8, 8, 128), (5, 14, 128)])
def test_chunks_cover_every_tile_row_once(rows, TW, chunk_tiles):
    starts, per = wf.chunk_rows(rows, TW, chunk_tiles)
    covered = np.concatenate([np.arange(start, min(start + per, rows)) for start in starts])
    np.testing.assert_array_equal(covered, np.arange(rows))
    assert 1 <= per <= max(1, min(chunk_tiles // TW, -(-rows // numba_threads.LANES)))


@pytest.mark.parametrize("dtype", (np.float32, np.float64), ids=lambda d: d.__name__)
@pytest.mark.parametrize("x_shape, r, O, padding, chunk_tiles", [
    ((3, 12, 12, 16), 5, 8, "SAME", 12),          # 27 tiles, 4 a chunk: a chunk spans two images
    ((3, 12, 12, 16), 5, 8, "SAME", 1),           # one tile row a chunk
    ((3, 12, 12, 16), 5, 8, "SAME", 1000),        # one chunk per lane
    ((1, 13, 11, 1), 3, 3, "SAME", 6),            # N = 1, C = 1, odd sizes: 4 x 3 tiles, cut off
    ((2, 9, 10, 3), 3, 5, "VALID", 5),            # 7 x 8 outputs: 2 x 2 tiles, the last cut off
    ((5, 7, 7, 4), 3, 4, ((2, 0), (0, 2)), 2),    # uneven explicit padding, 2 x 2 tiles an image
    ((2, 3, 3, 2), 3, 2, "SAME", 128),            # a 3 x 3 output: one tile an image
])
def test_fused_conv_equals_im2col_across_chunk_boundaries(x_shape, r, O, padding, chunk_tiles, dtype):
    rng = np.random.default_rng(sum(x_shape) + chunk_tiles)
    x, w = rng.standard_normal(x_shape), rng.standard_normal((r, r, x_shape[3], O))
    geometry = window_geometry(x_shape[1:3], (r, r), (1, 1), (1, 1), padding)
    AT, G, BT = wg.transforms(4, r)
    y = wf.fused_conv2d(x.astype(dtype), wf.filter_transform(w.astype(dtype), G), AT, BT, geometry, chunk_tiles)
    ref = backend.implementation("conv2d_forward", "numpy")(x, w, geometry)
    assert y.dtype == dtype and y.shape == ref.shape
    assert np.max(np.abs(y - ref)) / np.max(np.abs(ref)) <= wg.WINOGRAD_RTOL[np.dtype(dtype)]
