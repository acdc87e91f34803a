// im2col and col2im for NHWC convolution (twins of tinybn/ops/conv.py's primitives).
//
// x (N, H, W, C); window KH x KW, strides SH, SW, dilations DH, DW, zero padding
// pt (top) and pl (left) (bottom/right padding is implied by OH, OW); output OH x OW.
//
//   im2col   cols[((n*OH + i)*OW + j), (a*KW + b)*C + c] = xpad[n, i*SH + a*DH, j*SW + b*DW, c]
//            with xpad[n, h, w, c] = x[n, h - pt, w - pl, c], or 0 outside x.
//   col2im   its adjoint: x[n, h, w, c] = sum of every cols entry that im2col read
//            from (n, h, w, c); padded positions receive nothing.
//
// Launch: a 1-D grid-stride loop over the outputs (N*OH*OW*KH*KW*C of cols,
// N*H*W*C of x); any grid size is correct. col2im is a gather (each thread owns
// one x element and reads the cols entries that map onto it), so it needs no
// atomics and adds in the reference's order, tap (a, b) row-major: the float
// results are bitwise those of the numpy reference.
#include "common.cuh"

template <typename T>
__global__ void im2col(const T* __restrict__ x, int N, int H, int W, int C, int KH, int KW, int SH, int SW,
                       int DH, int DW, int pt, int pl, int OH, int OW, T* __restrict__ cols) {
    const index_t total = (index_t)N * OH * OW * KH * KW * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int b = (int)(r % KW); r /= KW;
        const int a = (int)(r % KH); r /= KH;
        const int j = (int)(r % OW); r /= OW;
        const int i = (int)(r % OH);
        const index_t n = r / OH;
        const int h = i * SH + a * DH - pt;
        const int w = j * SW + b * DW - pl;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        cols[k] = inside ? x[((n * H + h) * W + w) * C + c] : T(0);
    }
}

template <typename T>
__global__ void col2im(const T* __restrict__ cols, int N, int H, int W, int C, int KH, int KW, int SH, int SW,
                       int DH, int DW, int pt, int pl, int OH, int OW, T* __restrict__ x) {
    const index_t total = (index_t)N * H * W * C;
    const index_t row_len = (index_t)KH * KW * C;
    GRID_STRIDE_LOOP(k, total) {
        index_t r = k;
        const int c = (int)(r % C); r /= C;
        const int wpad = (int)(r % W) + pl;     // position in the padded input
        r /= W;
        const int hpad = (int)(r % H) + pt;
        const index_t n = r / H;
        T sum = T(0);
        for (int a = 0; a < KH; ++a) {
            const int di = hpad - a * DH;        // = i*SH for the window row i that reads hpad at tap a
            if (di < 0) break;                   // later taps only go further up
            if (di % SH != 0 || di / SH >= OH) continue;
            const int i = di / SH;
            for (int b = 0; b < KW; ++b) {
                const int dj = wpad - b * DW;
                if (dj < 0) break;
                if (dj % SW != 0 || dj / SW >= OW) continue;
                const int j = dj / SW;
                sum += cols[((n * OH + i) * OW + j) * row_len + (a * KW + b) * C + c];
            }
        }
        x[k] = sum;
    }
}
