"""conv2d_backprop_filter's numba twin by im2col + GEMM, its batch split across the cores
(numba_winograd's filter gradient chunks its batch by batch_chunks too).

Shapes as tinybn.ops.conv: x (N, H, W, C), dy (N, OH, OW, O), a tinybn.geometry.Window;
dW (KH, KW, C, O).

    dW = sum over batch chunks of cols^T @ dy      cols (n*OH*OW, KH*KW*C) = im2col(x[chunk])

as the reference (tinybn.ops.conv.conv2d_backprop_filter), but the chunks are summed in
numba_threads' lanes: consecutive chunks per lane, each lane summed on one core (the
serial im2col below, GEMMs on one BLAS thread), then the lanes added in order. Only the
order of the float additions differs from the reference's one running sum: a batch of
at most ONE_CHUNK_BYTES (1 MB) of x's windows is one chunk, the reference bit for bit; past that
the error against the float64 reference is the reference's own size (SPLIT_RTOL), and it
does not depend on the core count.

Where there are fewer output than input channels (O < C, stride 1: gathers_dy), the split
gathers dy's windows instead of x's (dy_windows_backprop_filter): with the adjoint window of
the input gradient (kernel flipped, pads (KH-1)*DH - pad, output H x W),

    dW[a, b] = sum over batch chunks of (x[chunk]^T @ im2col_adjoint(dy[chunk]))[:, KH-1-a, KW-1-b]

the same products, added in another order: CIFAR conv3 (5x5x64x10 at 6x6) gathers 250 values
a pixel instead of 1600, and its GEMM (C x rows) @ (rows x KH*KW*O) has 250 columns, not 10.
Against the float64 reference in float32 it measured 1.2e-7..5.7e-7 (the reference itself
1.2e-7..5.7e-7 on the same operands), within SPLIT_RTOL. Measured against the x-windows split
at conv3, batch 128, float32, alternating, median of 9 ratios, one of the 2 cores busy with
other jobs: 1.84x-1.98x (1.25-2.56), 15.1 -> 8.1 ms; chunks of 8, 16 or 32 images alike.

Policy (splits): where the reference makes many small-result GEMMs, a dW of at most
MAX_SPLIT_RESULT_BYTES and an image's windows of at most MAX_SPLIT_IMAGE_BYTES: the CIFAR
models' conv1 and conv3 (conv2 goes by Winograd). Where the batch holds more than
ONE_CHUNK_BYTES: chunks of FILTER_CHUNK_BYTES (256 kB) of windows, and at least one per
lane; conv1's chunk is then one image, whose windows (173 kB) and dy (147 kB) stay in the
core's L2 cache (512 kB here) for the GEMM. Measured at conv1, batch 128, float32, against
1 MB chunks (6 images), alternating, median of 11 ratios, 1.3 of the 2 cores busy with
other jobs, two runs: 256 kB 1.32x (1.30-1.48) and 1.34x (1.25-1.48), 512 kB 1.13x and
1.11x, 2 MB 0.97x and 1.00x (earlier, with 1 MB: 0.5, 1 and 2 MB about even, 1.42x-1.48x
the reference's speed in one run, 4 and 8 MB 1.11x and 1.25x); dy^T @ cols instead of
cols^T @ dy: 0.97x (0.83-1.26). The serial im2col copies each window
row of KW pixels as one run of KW*C values where it lies inside x (conv1's 3 channels:
runs of 15, not 3). Measured (numba backend, float32, batch 128, against the reference
on the numba im2col with BLAS's threads, alternating, median of 5-9 ratios, loads 3-7 on
the 2 cores):

    CIFAR conv1 5x5x3x64 24x24         1.09x-1.44x in six runs (last two: 1.18x (1.11-1.27),
                                       1.31x (1.10-1.79))
    CIFAR conv3 5x5x64x10 6x6          0.88x-1.15x in five runs (about even)
    kept on the reference (batch 8): ResNet's 1x1 256->64 at 56x56 (split: 0.83x-0.87x) and
    3x3x512x512 at 7x7 (0.76x), slower split in each run; 3x3x128x128 stride 2 at 56x56
    (0.78x-1.14x) and the 7x7/2 root (0.95x-1.91x), no steady gain: GEMMs long in every
    dimension, which BLAS's threads share well.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit

from tinybn import backend

from . import numba_setup  # noqa: F401  (before the first parallel call)
from . import numba_threads

# the split's error against the float64 reference (max|ours - ref| / max|ref|), 4x over the worst
# measured in tests/test_filter_gradient_numba.py: 4.8e-7 in float32 (the reference: 6.4e-7), 9e-16
SPLIT_RTOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 4e-15}
MAX_SPLIT_RESULT_BYTES = 1 << 20     # splits(): larger dW keep the reference (measured: above)
MAX_SPLIT_IMAGE_BYTES = 1 << 20      # splits(): an image's windows, at most
FILTER_CHUNK_BYTES = 256 << 10       # windows per chunk of the split filter gradient
ONE_CHUNK_BYTES = 1 << 20            # a batch of at most this many bytes of windows: one chunk


def _chunks(N, per_image):
    """The split's chunks: the whole batch where it holds at most ONE_CHUNK_BYTES of windows
    (one GEMM, the reference's for x's windows), else batch_chunks of FILTER_CHUNK_BYTES."""
    return [slice(0, N)] if N * per_image <= ONE_CHUNK_BYTES else batch_chunks(N, per_image, FILTER_CHUNK_BYTES)


def batch_chunks(N, per_image, per_chunk, lanes=numba_threads.LANES):
    """Slices of a batch of N images of per_image (bytes, tiles) each: one slice when the batch
    holds at most per_chunk, else about per_chunk each (at least one image) and at least one
    per lane."""
    if N * per_image <= per_chunk:
        return [slice(0, N)]
    step = max(1, min(per_chunk // max(per_image, 1), N // lanes))
    return [slice(i, min(i + step, N)) for i in range(0, N, step)]


def sum_over_batch(partial, chunks, lanes=numba_threads.LANES):
    """sum of partial(chunk) over chunks: lane k sums its consecutive share of them in order, on
    a worker of numba_threads.split; the lanes' sums are added in lane order. The same float
    additions on any number of cores. One chunk runs on the calling thread, BLAS on its threads."""
    if len(chunks) == 1:
        return partial(chunks[0])

    def lane_sum(k):
        total = None
        for chunk in chunks[k * len(chunks) // lanes:(k + 1) * len(chunks) // lanes]:
            part = partial(chunk)
            total = part if total is None else np.add(total, part, out=total)
        return total
    sums = [s for s in numba_threads.split(lane_sum, lanes) if s is not None]
    total = sums[0]
    for s in sums[1:]:
        total += s
    return total


def _windows_plain(x, cols, KH, KW, SH, SW, DH, DW, top, left):
    """cols[n, i, j, (a*KW + b)*C + c] = x[n, i*SH + a*DH - top, (j*SW + b*DW - left)*C + c] (0 outside x);
    x (n, H, W*C), cols (n, OH, OW, KH*KW*C). Serial: it runs on one core of a split."""
    N, H, WC = x.shape
    _, OH, OW, taps = cols.shape
    C = taps // (KH * KW)
    W, KWC = WC // C, KW * C
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                w0 = j * SW - left
                for a in range(KH):
                    h = i * SH + a * DH - top
                    start = a * KWC
                    if h < 0 or h >= H:
                        for k in range(KWC):
                            cols[n, i, j, start + k] = 0
                    elif DW == 1 and w0 >= 0 and w0 + KW <= W:        # the whole row inside x: one run
                        for k in range(KWC):
                            cols[n, i, j, start + k] = x[n, h, w0 * C + k]
                    else:
                        for b in range(KW):
                            w = w0 + b * DW
                            if 0 <= w < W:
                                for c in range(C):
                                    cols[n, i, j, start + b * C + c] = x[n, h, w * C + c]
                            else:
                                for c in range(C):
                                    cols[n, i, j, start + b * C + c] = 0


_windows_kernel = njit(cache=True, nogil=True)(_windows_plain)


def splits(window, w_shape, dtype):
    """The policy: whether the im2col filter gradient is split over the batch: where the
    reference makes many small-result GEMMs, i.e. a dW of at most MAX_SPLIT_RESULT_BYTES (each
    lane sums its own) over an image's windows of at most MAX_SPLIT_IMAGE_BYTES. Not for a pointwise conv (no windows to gather). The rest (ResNet's stride-2
    convs and root, its 512-channel 3x3s) have GEMMs that BLAS's threads share well."""
    KH, KW, C, O = w_shape
    itemsize = np.dtype(dtype).itemsize
    return (not window.is_pointwise and KH * KW * C * O * itemsize <= MAX_SPLIT_RESULT_BYTES
            and window.OH * window.OW * KH * KW * C * itemsize <= MAX_SPLIT_IMAGE_BYTES)


def gathers_dy(window, w_shape):
    """The policy: whether the split gathers dy's windows (dy_windows_backprop_filter) instead of
    x's: fewer output than input channels (O < C, so fewer values to gather: CIFAR conv3 gathers
    250 values a pixel instead of 1600), stride 1, and no more padding than the kernel spans
    (the adjoint window's pads are then >= 0)."""
    KH, KW, C, O = w_shape
    (top, bottom), (left, right) = window.pads
    span_h, span_w = (KH - 1) * window.DH, (KW - 1) * window.DW
    return (O < C and window.SH == window.SW == 1 and max(top, bottom) <= span_h
            and max(left, right) <= span_w)


def dy_windows_backprop_filter(x, dy, window, w_shape):
    """dW (KH, KW, C, O) of a stride-1 conv from dy's windows: with h = i + a*DH - top,
        dW[a, b, c, o] = sum over n, h, w of x[n, h, w, c] * dy[n, h - a*DH + top, w - b*DW + left, o]
    and the dy factor is im2col(dy) under the adjoint window (the input gradient's: kernel
    flipped, pads (KH-1)*DH - pad, output H x W) at tap (KH-1-a, KW-1-b). So
        G (C, KH*KW*O) = sum over batch chunks of x[chunk]^T @ im2col_adjoint(dy[chunk])
    summed in sum_over_batch's lanes, and dW is G with its taps flipped back. The same products
    as the reference, added in another order (within SPLIT_RTOL)."""
    KH, KW, C, O = w_shape
    N, H, W, _ = x.shape
    top, left, DH, DW = window.top, window.left, window.DH, window.DW
    top_adj, left_adj = (KH - 1) * DH - top, (KW - 1) * DW - left
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    OH, OW = dy.shape[1:3]

    def partial(chunk):
        part = dy[chunk]
        windows = np.empty((part.shape[0], H, W, KH * KW * O), dy.dtype)
        _windows_kernel(part.reshape(part.shape[0], OH, OW * O), windows, KH, KW, 1, 1, DH, DW, top_adj, left_adj)
        return x[chunk].reshape(-1, C).T @ windows.reshape(-1, KH * KW * O)

    per_image = H * W * KH * KW * O * x.dtype.itemsize
    G = sum_over_batch(partial, _chunks(N, per_image)).reshape(C, KH, KW, O)
    return np.ascontiguousarray(G[:, ::-1, ::-1].transpose(1, 2, 0, 3))


def im2col_backprop_filter(x, dy, window, w_shape):
    """dW (KH, KW, C, O): where splits() says so, sum of im2col(x[chunk])^T @ dy[chunk] in
    sum_over_batch's lanes, or of x's pixels against dy's windows where gathers_dy() says so;
    else the reference (im2col + GEMM on the numba im2col, BLAS's threads)."""
    if not splits(window, w_shape, dy.dtype):
        return backend.implementation("conv2d_backprop_filter", "numpy")(x, dy, window, w_shape)
    if gathers_dy(window, w_shape) and x.shape[0] > 0:
        return dy_windows_backprop_filter(x, dy, window, w_shape)
    KH, KW, C, O = w_shape
    N, H, W, _ = x.shape
    x, dy = np.ascontiguousarray(x), np.ascontiguousarray(dy)

    def partial(chunk):
        part = x[chunk]
        cols = np.empty((part.shape[0], window.OH, window.OW, KH * KW * C), x.dtype)
        _windows_kernel(part.reshape(part.shape[0], H, W * C), cols, *window[:6], window.top, window.left)
        return cols.reshape(-1, KH * KW * C).T @ dy[chunk].reshape(-1, O)

    per_image = window.OH * window.OW * KH * KW * C * x.dtype.itemsize
    return sum_over_batch(partial, _chunks(N, per_image)).reshape(w_shape)
