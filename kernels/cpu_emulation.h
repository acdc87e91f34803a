// Runs tinybn's CUDA kernels on the CPU, for CI machines without a GPU.
//
//   g++ -std=c++20 -include kernels/cpu_emulation.h -I kernels wrapper.cpp -shared -fPIC
//
// The force-included header turns the CUDA dialect the kernels use into plain C++:
// __global__/__device__ vanish, threadIdx/blockIdx/blockDim/gridDim become globals,
// and tb_emulate_launch runs a launch as a serial loop over every block and every
// thread of the grid, setting those globals before each call of the kernel body.
// That is faithful for tinybn's kernels because their threads never talk to each
// other (no shared memory, no __syncthreads, no atomics: see common.cuh); each
// thread's grid-stride loop runs exactly as it would on the device. Running the
// threads in reverse order as well (`reverse`) exposes two threads writing one
// element, which would be a race on the GPU.
//
// Arguments arrive as CUDA's driver API passes them (cuLaunchKernel's
// kernelParams): an array of pointers, one to each argument's value.
// tb_signature names the kernel's parameter types so that the caller (ctypes,
// tinybn.kernels.cuda_build) can check every argument's type before the call.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define TINYBN_CPU_EMULATION 1

using std::max;
using std::min;

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}
inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}

// one launch of `kernel` over grid x block, in order or with every loop reversed
template <typename... Args>
void tb_emulate_launch(void (*kernel)(Args...), dim3 grid, dim3 block, void** args, bool reverse) {
    gridDim = grid;
    blockDim = block;
    const unsigned blocks = grid.x * grid.y * grid.z, threads = block.x * block.y * block.z;
    for (unsigned b = 0; b < blocks; ++b) {
        const unsigned bb = reverse ? blocks - 1 - b : b;
        blockIdx = {bb % grid.x, bb / grid.x % grid.y, bb / (grid.x * grid.y)};
        for (unsigned t = 0; t < threads; ++t) {
            const unsigned tt = reverse ? threads - 1 - t : t;
            threadIdx = {tt % block.x, tt / block.x % block.y, tt / (block.x * block.y)};
            [&]<std::size_t... I>(std::index_sequence<I...>) {
                kernel(*static_cast<Args*>(args[I])...);
            }(std::index_sequence_for<Args...>{});
        }
    }
}

// the C spelling of each parameter type a kernel may take; anything else fails to compile
template <typename T> struct tb_type_name;
#define TB_TYPE_NAME(type) \
    template <> struct tb_type_name<type> { static constexpr const char* value = #type; };
TB_TYPE_NAME(int)
TB_TYPE_NAME(long long)
TB_TYPE_NAME(float)
TB_TYPE_NAME(double)
TB_TYPE_NAME(const int*)
TB_TYPE_NAME(int*)
TB_TYPE_NAME(const float*)
TB_TYPE_NAME(float*)
TB_TYPE_NAME(const double*)
TB_TYPE_NAME(double*)
#undef TB_TYPE_NAME

// "const float*,int,...,float*": the kernel's parameter types, comma-separated
template <typename... Args>
const char* tb_signature(void (*)(Args...)) {
    static const std::string joined = [] {
        std::string s;
        ((s += tb_type_name<Args>::value, s += ","), ...);
        if (!s.empty()) s.pop_back();
        return s;
    }();
    return joined.c_str();
}
