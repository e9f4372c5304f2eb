// Runs feature_diff.cu on the CPU, so machines without a GPU (CI, this project's dev boxes) still check the kernels'
// indexing, reductions and radix select against the reference. Each launch runs its blocks one after another
// with one host thread per CUDA thread; __syncthreads is a barrier, warp shuffles exchange through a slot per
// thread between two barriers (every kernel calls them with the whole block), __shared__ arrays become statics
// (blocks never overlap). It proves logic, not speed, coalescing or the absence of data races on a real GPU.
//
// Built by edgekd/fused/host_emulation.py:  g++ -std=c++20 -O2 -shared -fPIC -pthread host_emulation.cpp

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>
#include <math.h>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;
static std::vector<unsigned char> dynamic_shared;
static std::vector<uint64_t> shuffle_slots;

#define EDGEKD_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(threads)

static inline void* edgekd_host_dynamic_shared() { return dynamic_shared.data(); }
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

static inline float edgekd_host_half_to_float(unsigned short bits) {  // IEEE binary16 -> binary32
    const unsigned exponent = (bits >> 10) & 0x1Fu, mantissa = bits & 0x3FFu;
    float value;
    if (exponent == 0) value = std::ldexp((float)mantissa, -24);
    else if (exponent == 31) value = mantissa ? NAN : INFINITY;
    else value = std::ldexp((float)(mantissa | 0x400u), (int)exponent - 25);
    return (bits & 0x8000u) ? -value : value;
}

template <typename T> static inline T __ldg(const T* p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

template <typename To, typename From> static inline To bit_cast_value(From from) {
    To to;
    std::memcpy(&to, &from, sizeof(To));
    return to;
}
static inline int __float_as_int(float f) { return bit_cast_value<int>(f); }
static inline unsigned __float_as_uint(float f) { return bit_cast_value<unsigned>(f); }
static inline float __int_as_float(int i) { return bit_cast_value<float>(i); }
static inline float __uint_as_float(unsigned u) { return bit_cast_value<float>(u); }

static inline int atomicMax(int* address, int value) {
    int seen = __atomic_load_n(address, __ATOMIC_SEQ_CST);
    while (seen < value && !__atomic_compare_exchange_n(address, &seen, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return seen;
}
static inline unsigned atomicAdd(unsigned* address, unsigned value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

template <typename T> static inline T __shfl_xor_sync(unsigned, T value, int lane_mask) {
    const unsigned me = linear_thread();
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    shuffle_slots[me] = bits;
    __syncthreads();
    const uint64_t other = shuffle_slots[me ^ (unsigned)lane_mask];
    __syncthreads();
    T out;
    std::memcpy(&out, &other, sizeof(T));
    return out;
}

#include "feature_diff.cu"

#define ARG(i, type) (*reinterpret_cast<type*>(params[i]))

static std::function<void()> kernel_call(const char* name, void** params) {
    const std::string kernel(name);
    if (kernel == "edgekd_cosine_distance_f32")
        return [=] { edgekd_cosine_distance_f32(ARG(0, const float*), ARG(1, const float*), ARG(2, float*), ARG(3, int),
                                                ARG(4, int), ARG(5, long long), ARG(6, float)); };
    if (kernel == "edgekd_cosine_distance_f16")
        return [=] { edgekd_cosine_distance_f16(ARG(0, const unsigned short*), ARG(1, const unsigned short*),
                                                ARG(2, float*), ARG(3, int), ARG(4, int), ARG(5, long long), ARG(6, float)); };
    if (kernel == "edgekd_combine_blur_rows")
        return [=] { edgekd_combine_blur_rows(ARG(0, ScaleMaps), ARG(1, float*), ARG(2, int), ARG(3, int), ARG(4, int),
                                              ARG(5, float), ARG(6, int)); };
    if (kernel == "edgekd_blur_cols_score")
        return [=] { edgekd_blur_cols_score(ARG(0, const float*), ARG(1, float*), ARG(2, unsigned char*), ARG(3, int*),
                                            ARG(4, int), ARG(5, int), ARG(6, int), ARG(7, float), ARG(8, int), ARG(9, float)); };
    if (kernel == "edgekd_upsample_score")
        return [=] { edgekd_upsample_score(ARG(0, const float*), ARG(1, int), ARG(2, int), ARG(3, float*),
                                           ARG(4, unsigned char*), ARG(5, int*), ARG(6, int), ARG(7, int), ARG(8, float)); };
    if (kernel == "edgekd_init_scores") return [=] { edgekd_init_scores(ARG(0, int*), ARG(1, int)); };
    if (kernel == "edgekd_finish_max_scores")
        return [=] { edgekd_finish_max_scores(ARG(0, const int*), ARG(1, float*), ARG(2, int)); };
    if (kernel == "edgekd_topk_mean")
        return [=] { edgekd_topk_mean(ARG(0, const float*), ARG(1, float*), ARG(2, int), ARG(3, int)); };
    return nullptr;
}

// cuLaunchKernel's shape: grid, block, dynamic shared bytes, void** kernel parameters. Returns 0, or 1 for an
// unknown kernel name.
extern "C" int edgekd_emulate(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, unsigned long long shared_bytes, void** params) {
    const std::function<void()> body = kernel_call(name, params);
    if (!body) return 1;
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    const unsigned threads = bx * by * bz;
    dynamic_shared.assign(shared_bytes + 16, 0);
    shuffle_slots.assign(threads, 0);
    std::barrier<> barrier(threads);
    block_barrier = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx = {t % bx, (t / bx) % by, t / (bx * by)};
            for (unsigned z = 0; z < gz; ++z)
                for (unsigned y = 0; y < gy; ++y)
                    for (unsigned x = 0; x < gx; ++x) {
                        blockIdx = {x, y, z};
                        body();
                        barrier.arrive_and_wait();  // the next block reuses the shared arrays
                    }
        });
    }
    for (std::thread& thread : pool) thread.join();
    block_barrier = nullptr;
    return 0;
}
