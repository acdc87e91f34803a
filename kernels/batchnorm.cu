// Fused batch norm, training and inference (twins of tinybn/ops/fused_batch_norm.py).
//
// x, dy, y, dx (M, C) row-major, M = N*H*W; scale, offset, mean, variance, inv_std (C,).
//
//   training forward    mean = sum(x)/M, variance = sum((x - mean)^2)/M   (two passes)
//                       inv_std = 1/sqrt(variance + eps)
//                       y = (x - mean) * (inv_std*scale) + offset
//   training backward   xhat = (x - mean) * inv_std
//                       doffset = sum(dy), dscale = sum(dy * xhat)
//                       dx = (scale*inv_std) * (dy - doffset/M - xhat * (dscale/M))
//   inference           y = (x - mean) * (1/sqrt(variance + eps) * scale) + offset
//
// Column sums over M (73728 rows for a CIFAR batch of 128 at 24x24) in two stages,
// both accumulating in double, so the result is the exact sum rounded once to T
// (a float running sum would be ~1000x worse than numpy's pairwise sum):
//   stage 1  bn_partial_*: thread (p, c) of P*C sums rows p, p+P, p+2P, ... of column c
//            into partial[p*C + c]; adjacent threads read adjacent channels
//            (coalesced loads). P ~ M/256, chosen by the caller.
//   stage 2  bn_finish: thread c sums partial[., c] in double, divides, rounds to T.
// The elementwise kernels are grid-stride loops over M*C (or C).
#include "common.cuh"

template <typename T>
__global__ void bn_partial_sum(const T* __restrict__ x, int M, int C, int P, double* __restrict__ partial) {
    GRID_STRIDE_LOOP(t, (index_t)P * C) {
        const int c = (int)(t % C);
        double acc = 0.0;
        for (index_t row = t / C; row < M; row += P) acc += (double)x[row * C + c];
        partial[t] = acc;
    }
}

// sum of squared deviations (x - mean)^2, each square formed in T as the reference does
template <typename T>
__global__ void bn_partial_sqdev(const T* __restrict__ x, const T* __restrict__ mean, int M, int C, int P,
                                 double* __restrict__ partial) {
    GRID_STRIDE_LOOP(t, (index_t)P * C) {
        const int c = (int)(t % C);
        const T mu = mean[c];
        double acc = 0.0;
        for (index_t row = t / C; row < M; row += P) {
            const T d = x[row * C + c] - mu;
            acc += (double)(d * d);
        }
        partial[t] = acc;
    }
}

// partial sums of dy and of dy * xhat, for doffset and dscale
template <typename T>
__global__ void bn_partial_grad(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ mean,
                                const T* __restrict__ inv_std, int M, int C, int P,
                                double* __restrict__ partial_dy, double* __restrict__ partial_dy_xhat) {
    GRID_STRIDE_LOOP(t, (index_t)P * C) {
        const int c = (int)(t % C);
        const T mu = mean[c], s = inv_std[c];
        double acc_dy = 0.0, acc_dy_xhat = 0.0;
        for (index_t row = t / C; row < M; row += P) {
            const T g = dy[row * C + c];
            const T xhat = (x[row * C + c] - mu) * s;
            acc_dy += (double)g;
            acc_dy_xhat += (double)(g * xhat);
        }
        partial_dy[t] = acc_dy;
        partial_dy_xhat[t] = acc_dy_xhat;
    }
}

// out[c] = (sum over p of partial[p*C + c]) / divisor, rounded once to T
template <typename T>
__global__ void bn_finish(const double* __restrict__ partial, int P, int C, double divisor, T* __restrict__ out) {
    GRID_STRIDE_LOOP(c, C) {
        double acc = 0.0;
        for (int p = 0; p < P; ++p) acc += partial[(index_t)p * C + c];
        out[c] = (T)(acc / divisor);
    }
}

template <typename T>
__global__ void bn_inv_std(const T* __restrict__ variance, int C, T epsilon, T* __restrict__ inv_std) {
    GRID_STRIDE_LOOP(c, C) inv_std[c] = T(1) / tb_sqrt(variance[c] + epsilon);
}

template <typename T>
__global__ void bn_train_forward_apply(const T* __restrict__ x, const T* __restrict__ mean,
                                       const T* __restrict__ inv_std, const T* __restrict__ scale,
                                       const T* __restrict__ offset, int M, int C, T* __restrict__ y) {
    GRID_STRIDE_LOOP(k, (index_t)M * C) {
        const int c = (int)(k % C);
        y[k] = (x[k] - mean[c]) * (inv_std[c] * scale[c]) + offset[c];
    }
}

template <typename T>
__global__ void bn_train_backward_apply(const T* __restrict__ dy, const T* __restrict__ x,
                                        const T* __restrict__ scale, const T* __restrict__ mean,
                                        const T* __restrict__ inv_std, const T* __restrict__ doffset,
                                        const T* __restrict__ dscale, int M, int C, T one_over_m,
                                        T* __restrict__ dx) {
    GRID_STRIDE_LOOP(k, (index_t)M * C) {
        const int c = (int)(k % C);
        const T xhat = (x[k] - mean[c]) * inv_std[c];
        dx[k] = (scale[c] * inv_std[c]) * (dy[k] - doffset[c] * one_over_m - xhat * (dscale[c] * one_over_m));
    }
}

template <typename T>
__global__ void bn_inference(const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ offset,
                             const T* __restrict__ mean, const T* __restrict__ variance, int M, int C, T epsilon,
                             T* __restrict__ y) {
    GRID_STRIDE_LOOP(k, (index_t)M * C) {
        const int c = (int)(k % C);
        const T a = T(1) / tb_sqrt(variance[c] + epsilon) * scale[c];
        y[k] = (x[k] - mean[c]) * a + offset[c];
    }
}
