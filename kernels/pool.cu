// Max and average pooling, NHWC (twins of tinybn/ops/pool.py's primitives).
//
// x (N, H, W, C); window KH x KW, strides SH, SW; padding pt (top), pl (left);
// output (N, OH, OW, C). Window (i, j) covers padded rows i*SH + di, columns
// j*SW + dj (di < KH, dj < KW); tap t = di*KW + dj counts row-major.
//
//   max_pool_forward    y = max of the window's real pixels (padding takes no part);
//                       argmax = the tap of the FIRST maximum in tap order (TF's tie
//                       rule): a later tap wins only if strictly greater. The scan
//                       starts from the window's first real pixel as the reference
//                       does, so a window of -inf keeps that pixel (never a padded
//                       tap) and a NaN there stays. Every window holds a real pixel.
//   max_pool_backward   dx[p] = sum of dy over the windows whose argmax tap lands on p
//   avg_pool_forward    y = (sum of the window's real pixels) / count, count = number
//                       of real pixels in the window (TF's divisor, padding excluded),
//                       an (OH, OW) array the host computes (tinybn.geometry.real_counts,
//                       the one copy of that arithmetic, shared with the reference)
//   avg_pool_backward   dx[p] = sum over windows w containing p of dy[w] / count(w)
//
// Launch: 1-D grid-stride loops, one thread per output element (forward: per y
// element; backward: per x element, gathering from the windows that contain it,
// so there are no atomics). Sums run in tap order in T from 0, exactly as the
// reference's `+=` over taps, so all four match the numpy reference bitwise.
#include "common.cuh"

// the window index i in [0, out) with i*stride + d == p (the window that reads p at offset d), or -1
__device__ __forceinline__ int window_of(int p, int d, int stride, int out) {
    const int start = p - d;
    if (start < 0 || start % stride != 0 || start / stride >= out) return -1;
    return start / stride;
}

template <typename T>
__global__ void max_pool_forward(const T* __restrict__ x, int N, int H, int W, int C, int KH, int KW, int SH,
                                 int SW, int pt, int pl, int OH, int OW, T* __restrict__ y,
                                 int* __restrict__ argmax) {
    const index_t total = (index_t)N * OH * OW * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int j = (int)(r % OW); r /= OW;
        const int i = (int)(r % OH);
        const index_t n = r / OH;
        const int h0 = i * SH - pt, w0 = j * SW - pl;
        const int di0 = max(0, -h0), di1 = min(KH, H - h0);     // the window's real rows
        const int dj0 = max(0, -w0), dj1 = min(KW, W - w0);     // and columns
        T best = x[((n * H + h0 + di0) * W + w0 + dj0) * C + c];
        int best_tap = di0 * KW + dj0;
        for (int di = di0; di < di1; ++di) {
            for (int dj = dj0; dj < dj1; ++dj) {
                const T v = x[((n * H + h0 + di) * W + w0 + dj) * C + c];
                if (v > best) {
                    best = v;
                    best_tap = di * KW + dj;
                }
            }
        }
        y[k] = best;
        argmax[k] = best_tap;
    }
}

template <typename T>
__global__ void max_pool_backward(const T* __restrict__ dy, const int* __restrict__ argmax, int N, int H, int W,
                                  int C, int KH, int KW, int SH, int SW, int pt, int pl, int OH, int OW,
                                  T* __restrict__ dx) {
    const index_t total = (index_t)N * H * W * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int wpad = (int)(r % W) + pl;
        r /= W;
        const int hpad = (int)(r % H) + pt;
        const index_t n = r / H;
        T sum = T(0);
        for (int di = 0; di < KH; ++di) {
            const int i = window_of(hpad, di, SH, OH);
            if (i < 0) continue;
            for (int dj = 0; dj < KW; ++dj) {
                const int j = window_of(wpad, dj, SW, OW);
                if (j < 0) continue;
                const index_t o = ((n * OH + i) * OW + j) * C + c;
                if (argmax[o] == di * KW + dj) sum += dy[o];
            }
        }
        dx[k] = sum;
    }
}

template <typename T>
__global__ void avg_pool_forward(const T* __restrict__ x, const T* __restrict__ counts, int N, int H, int W,
                                 int C, int KH, int KW, int SH, int SW, int pt, int pl, int OH, int OW,
                                 T* __restrict__ y) {
    const index_t total = (index_t)N * OH * OW * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int j = (int)(r % OW); r /= OW;
        const int i = (int)(r % OH);
        const index_t n = r / OH;
        T sum = T(0);
        for (int di = 0; di < KH; ++di) {
            const int h = i * SH + di - pt;
            if (h < 0 || h >= H) continue;
            for (int dj = 0; dj < KW; ++dj) {
                const int w = j * SW + dj - pl;
                if (w >= 0 && w < W) sum += x[((n * H + h) * W + w) * C + c];
            }
        }
        y[k] = sum / counts[i * OW + j];
    }
}

template <typename T>
__global__ void avg_pool_backward(const T* __restrict__ dy, const T* __restrict__ counts, int N, int H,
                                  int W, int C, int KH, int KW, int SH, int SW, int pt, int pl, int OH, int OW,
                                  T* __restrict__ dx) {
    const index_t total = (index_t)N * H * W * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int wpad = (int)(r % W) + pl;
        r /= W;
        const int hpad = (int)(r % H) + pt;
        const index_t n = r / H;
        T sum = T(0);
        for (int di = 0; di < KH; ++di) {
            const int i = window_of(hpad, di, SH, OH);
            if (i < 0) continue;
            for (int dj = 0; dj < KW; ++dj) {
                const int j = window_of(wpad, dj, SW, OW);
                if (j < 0) continue;
                sum += dy[((n * OH + i) * OW + j) * C + c] / counts[i * OW + j];
            }
        }
        dx[k] = sum;
    }
}
