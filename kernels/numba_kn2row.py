"""kn2row convolution: the numba backend's conv2d_forward for stride-1 convs with fewer output
than input channels, where Winograd does not apply.

Shapes as tinybn.ops.conv: x (N, H, W, C), w (KH, KW, C, O), a tinybn.geometry.Window;
y (N, OH, OW, O).

    taps[n, h, w, a, b, o] = sum_c x[n, h, w, c] * w[a, b, c, o]                 one GEMM
    y[n, i, j, o]          = sum over taps (a, b), in row-major order, with
                             h = i + a*DH - top, w = j + b*DW - left inside x, of taps[n, h, w, a, b, o]

(Vasudevan, Anderson and Gregg 2017, "accumulating kn2row"). The GEMM is
(N*H*W, C) @ (C, KH*KW*O) straight on x, with no window buffer; the shift-and-add that
follows reads KH*KW*O values per output pixel where im2col writes KH*KW*C. Its multiplies
number N*H*W*KH*KW*C*O against im2col's N*OH*OW*KH*KW*C*O: the same under SAME padding,
a few more for VALID's smaller output. With O <= C the taps buffer is no larger than
im2col's windows, and the GEMM's wide output (KH*KW*O columns) suits BLAS better than
im2col's narrow one (O = 10 columns ran at about a third of the GEMM rate of 64 here).
Strided convs would compute SH*SW times the products they use, so they stay on im2col.

Exactness: max|ours - ref| / max|ref| (crosscheck/parity.py's measure), ref the im2col
reference in float64, inputs standard normal, "SAME" padding, batch 8:

    conv                                  float32    float64
    CIFAR conv3 5x5x64x10, 6x6            1.6e-7     5.2e-16
    ResNet 3x3x512x512, 7x7               3.6e-7     5.5e-16
    ResNet 3x3x256x256, 7x7               3.5e-7     4.5e-16
    im2col + GEMM in float32, the same:   3.2e-7 .. 4.5e-7

Each output sums KH*KW dot products of length C (BLAS's) in float32, sequentially: shorter
chains than im2col's one dot product of length KH*KW*C, hence no worse. KN2ROW_RTOL, the
tolerance of tests/test_conv_forward_numba.py and of the numba kernel tests, is 1e-5 in
float32 and 1e-12 in float64: over 25x the worst value measured, room for longer sums
(C in the thousands).

Policy (kn2row_picks): stride 1, any dilation, not pointwise (a 1x1 conv is already one
GEMM on the pixels), O <= C, float32 or float64, a non-empty batch. The GEMM runs on
batch chunks of about CHUNK_BYTES of taps (whole batches for the models here).
numba_conv.conv2d_forward tries Winograd first. Measured on this 2-core machine, float32,
im2col + GEMM (2 MB chunks) and kn2row alternating, median of 7-9 ratios (min..max; at load 5-7 the range of
the medians of 2-3 runs), at two loads (other jobs' load average, which swings from 2 to 7 here within minutes):

    conv (batch)                      load 5-7                   load ~4
    CIFAR conv3 5x5x64x10 6x6 (128)   1.81x-2.27x (1.52-6.34)    1.79x (1.26-2.15)
    ResNet 3x3x512x512 7x7 (8)        6.89x-8.17x (1.51-9.56)    1.26x (0.96-4.49)
    ResNet 3x3x256x256 7x7 (8)        6.96x-7.40x (4.98-8.26)
    5x5x64x32 6x6 (128)               1.30x-1.33x (1.08-1.53)

On busy cores OpenBLAS's two threads lose most on short GEMMs of few rows (im2col's chunks
of 2 images at 7x7: 98 rows of 4608 windows); kn2row's GEMM has N*H*W rows.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import numpy as np
from numba import njit, prange

from . import numba_setup  # noqa: F401  (before the first parallel call)

KN2ROW_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# Taps per GEMM: the batch in chunks of about this many bytes of taps. Whole batches measured
# faster than 4 MB chunks (the GEMM's rows are few when the images are small); this bounds the
# buffer for large batches (ResNet's 7x7x512 at batch 128: 116 MB of taps otherwise).
CHUNK_BYTES = 32 << 20


def _tap_sum_plain(taps, y, KH, KW, DH, DW, top, left):
    """y[n, i, j, o] = sum over taps (a, b) in row-major order, inside x, of taps[n, h, w, a, b, o];
    one output row at a time, each tap (a, b) added to the run of output columns it reaches."""
    N, H, W = taps.shape[:3]
    _, OH, OW, O = y.shape
    pixels = taps.reshape(N, H, W, KH * KW * O)
    for row in prange(N * OH):
        n, i = row // OH, row % OH
        out = y[n, i]
        for j in range(OW):
            for o in range(O):
                out[j, o] = 0
        for a in range(KH):
            h = i + a * DH - top
            if h < 0 or h >= H:
                continue
            source = pixels[n, h]
            for b in range(KW):
                tap = (a * KW + b) * O
                for j in range(max(0, left - b * DW), min(OW, W + left - b * DW)):
                    products = source[j + b * DW - left]
                    for o in range(O):
                        out[j, o] += products[tap + o]


_tap_sum_kernel = njit(parallel=True, cache=True)(_tap_sum_plain)


def kn2row_picks(x_shape, w_shape, window, dtype):
    """The numba backend's policy: whether conv2d_forward of these operands goes by kn2row."""
    KH, KW, C, O = w_shape
    return (window.SH == window.SW == 1 and not window.is_pointwise and O <= C
            and np.dtype(dtype) in KN2ROW_RTOL and x_shape[0] > 0)


def kn2row_conv2d(x, w, window):
    """conv2d_forward (stride 1) by kn2row: y (N, OH, OW, O), x's dtype."""
    N, H, W, C = x.shape
    KH, KW, _, O = w.shape
    x = np.ascontiguousarray(x)
    w_taps = np.ascontiguousarray(w.transpose(2, 0, 1, 3).reshape(C, KH * KW * O))   # (C, (a, b, o))
    y = np.empty((N, window.OH, window.OW, O), x.dtype)
    step = max(1, CHUNK_BYTES // (H * W * KH * KW * O * x.dtype.itemsize))
    for start in range(0, N, step):
        part = slice(start, start + step)
        taps = (x[part].reshape(-1, C) @ w_taps).reshape(-1, H, W, KH, KW, O)
        _tap_sum_kernel(taps, y[part], KH, KW, window.DH, window.DW, window.top, window.left)
    return y
