// Shared by every tinybn CUDA source: index type, grid-stride loop, float/double math.
//
// The same text compiles three ways:
//   NVRTC (CuPy RawModule at run time)   device code only, no standard headers
//   nvcc  (CI compile check, sm_80/sm_90)
//   g++   (CI emulation: kernels/cpu_emulation.h is force-included first and
//          defines __global__, threadIdx, ... so each kernel runs as a serial loop)
// so it uses only what all three provide: no std headers, no shared memory, no
// __syncthreads, no atomics. Every kernel is a grid-stride loop in which each
// thread owns whole outputs; reductions are per-thread loops that accumulate in
// double (see batchnorm.cu), never a float running sum.
//
// Argument convention (checked by the emulation): a `const T*` is read only; a
// non-const pointer is an output that the kernel writes completely.
#ifndef TINYBN_COMMON_CUH
#define TINYBN_COMMON_CUH

typedef long long index_t;    // flat indices: N*OH*OW*KH*KW*C passes 2^31 at large batches

// for (index_t i = first; i < n; i += stride): each thread takes every stride-th element
#define GRID_STRIDE_LOOP(i, n)                                                          \
    for (index_t i = (index_t)blockIdx.x * blockDim.x + threadIdx.x; i < (index_t)(n); \
         i += (index_t)gridDim.x * blockDim.x)

// Overloads so that templated kernels call the float function for float (expf,
// not exp promoted to double) and the double one for double.
__device__ __forceinline__ float tb_exp(float x) { return expf(x); }
__device__ __forceinline__ double tb_exp(double x) { return exp(x); }
__device__ __forceinline__ float tb_log(float x) { return logf(x); }
__device__ __forceinline__ double tb_log(double x) { return log(x); }
__device__ __forceinline__ float tb_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double tb_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float tb_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double tb_pow(double x, double y) { return pow(x, y); }

#endif  // TINYBN_COMMON_CUH
