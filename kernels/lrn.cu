// Local response normalization across channels (twins of tinybn/ops/lrn.py).
//
// x, y, norm, dy, dx (M, C) row-major, M = N*H*W; r = depth_radius; the window of
// channel k is j in [k - r, k + r] clipped to [0, C) (TF: no wrap, no division by 2r+1).
//
//   lrn_forward    norm[k] = bias + alpha * sum_{|j-k|<=r} x[j]^2,   y[k] = x[k] * norm[k]^-beta
//   lrn_backward   dx[k] = dy[k] * norm[k]^-beta - 2*alpha*beta * x[k] * sum_{|j-k|<=r} dy[j]*y[j]/norm[j]
//
// Launch: a grid-stride loop over M*C, one thread per output element; each reads
// its 2r+1 neighbours in the same row. The window sums accumulate in double
// (each term formed in T as the reference forms it) and are rounded once to T.
#include "common.cuh"

template <typename T>
__global__ void lrn_forward(const T* __restrict__ x, int M, int C, int depth_radius, T bias, T alpha,
                            T neg_beta, T* __restrict__ y, T* __restrict__ norm) {
    GRID_STRIDE_LOOP(k, (index_t)M * C) {
        const int c = (int)(k % C);
        const index_t row = k - c;
        const int lo = max(c - depth_radius, 0), hi = min(c + depth_radius, C - 1);
        double acc = 0.0;
        for (int j = lo; j <= hi; ++j) {
            const T v = x[row + j];
            acc += (double)(v * v);
        }
        const T n = bias + alpha * (T)acc;
        norm[k] = n;
        y[k] = x[k] * tb_pow(n, neg_beta);
    }
}

template <typename T>
__global__ void lrn_backward(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ y,
                             const T* __restrict__ norm, int M, int C, int depth_radius, T neg_beta,
                             T two_alpha_beta, T* __restrict__ dx) {
    GRID_STRIDE_LOOP(k, (index_t)M * C) {
        const int c = (int)(k % C);
        const index_t row = k - c;
        const int lo = max(c - depth_radius, 0), hi = min(c + depth_radius, C - 1);
        double acc = 0.0;
        for (int j = lo; j <= hi; ++j) acc += (double)(dy[row + j] * y[row + j] / norm[row + j]);
        dx[k] = dy[k] * tb_pow(norm[k], neg_beta) - two_alpha_beta * x[k] * (T)acc;
    }
}
