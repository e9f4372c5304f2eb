// edgekd::MultiScaleFeatureDiff — CUDA kernels. The one source for every GPU path: NVRTC compiles it at run time
// for the TensorRT Python plugin and the torch CUDA backend, nvcc compiles it into the C++ plugin library
// (engines/plugin/) and into cubins for sm_87 (Jetson Orin), sm_89 and sm_90 in CI.
//
// Meaning (edgekd/scoring.py is the reference, this file must agree with it):
//   per scale s:  d_s = 1 - <t,s> / max(|t| |s|, eps)            dot and norms accumulated in FP32
//   resize:       bilinear, align_corners=False (PyTorch's source-index rule, negative source clamped to 0), to
//                 the scoring grid = output size / map_stride
//   combine:      add | mul | max | weighted sum over scales
//   blur:         separable Gaussian on the grid, sigma_grid = sqrt(sigma^2 - s^2/6) / s for map_stride s > 1 (the
//                 final upsample smooths the rest), sigma for s = 1; radius max(1, ceil(4 sigma_grid)), reflect
//                 padding (clamp when the grid is not larger than the radius), skipped when sigma_grid == 0
//                 (the host computes sigma_grid and the radius: scoring.grid_sigma)
//   upsample:     the blurred grid, bilinear as above, to the output size (map_stride 1: the grid is the output)
//   score:        max, or mean of the top-k pixels, of the output map
//   mask:         map > threshold as uint8
//
// Launch order (see edgekd/fused/cuda_kernels.py and engines/plugin/): cosine_distance once per scale,
// combine_blur_rows and blur_cols_score on the grid, then (map_stride > 1) upsample_score to the output size;
// blur_cols_score or upsample_score write the map, mask and max score; topk_mean for score mode top-k.
// No CUDA headers are needed, so NVRTC compiles it without an include path. engines/kernels/host_emulation.cpp
// compiles this same file for the CPU (blocks in turn, one host thread per CUDA thread) so CI checks the kernels'
// logic without a GPU; EDGEKD_HOST_EMULATION marks the two places where the host build differs.

#define EDGEKD_MAX_SCALES 8

enum CombineMode { COMBINE_ADD = 0, COMBINE_MUL = 1, COMBINE_MAX = 2, COMBINE_WEIGHTED = 3 };

struct ScaleMaps {  // stage-1 outputs, read by stage 2; passed by value
    const float* maps[EDGEKD_MAX_SCALES];
    int height[EDGEKD_MAX_SCALES];
    int width[EDGEKD_MAX_SCALES];
    float weight[EDGEKD_MAX_SCALES];
    int count;
    int combine;
};

__device__ __forceinline__ float half_bits_to_float(unsigned short bits) {
#ifdef EDGEKD_HOST_EMULATION
    return edgekd_host_half_to_float(bits);
#else
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
#endif
}

#ifdef EDGEKD_HOST_EMULATION
#define DYNAMIC_SHARED(type, name) type* name = (type*)edgekd_host_dynamic_shared()
#else
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

__device__ __forceinline__ float load_as_float(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_as_float(const unsigned short* p) { return half_bits_to_float(__ldg(p)); }

// ---- stage 1: one pass over T and S per scale ------------------------------------------------------------------
// Block (32, 8): the 32 lanes of a warp take 32 neighbouring pixels (coalesced reads of one channel plane), the 8
// warps split the channels; partial sums meet in shared memory.
#define COS_PIXELS 32
#define COS_SPLIT 8

template <typename T>
__device__ void cosine_distance(const T* __restrict__ teacher, const T* __restrict__ student, float* __restrict__ out,
                                int channels, int plane, long long pixels, float eps) {
    __shared__ float partial[3][COS_SPLIT][COS_PIXELS];
    const long long q = (long long)blockIdx.x * COS_PIXELS + threadIdx.x;  // pixel index over batch * plane
    float dot = 0.f, tt = 0.f, ss = 0.f;
    if (q < pixels) {
        const long long image = q / plane;
        const long long base = image * channels * (long long)plane + (q - image * plane);
        for (int c = threadIdx.y; c < channels; c += COS_SPLIT) {
            const float t = load_as_float(teacher + base + (long long)c * plane);
            const float s = load_as_float(student + base + (long long)c * plane);
            dot = fmaf(t, s, dot);
            tt = fmaf(t, t, tt);
            ss = fmaf(s, s, ss);
        }
    }
    partial[0][threadIdx.y][threadIdx.x] = dot;
    partial[1][threadIdx.y][threadIdx.x] = tt;
    partial[2][threadIdx.y][threadIdx.x] = ss;
    __syncthreads();
    if (threadIdx.y == 0 && q < pixels) {
        for (int k = 1; k < COS_SPLIT; ++k) {
            dot += partial[0][k][threadIdx.x];
            tt += partial[1][k][threadIdx.x];
            ss += partial[2][k][threadIdx.x];
        }
        out[q] = 1.0f - dot / fmaxf(sqrtf(tt) * sqrtf(ss), eps);
    }
}

extern "C" __global__ void __launch_bounds__(COS_PIXELS * COS_SPLIT)
edgekd_cosine_distance_f32(const float* teacher, const float* student, float* out, int channels, int plane,
                           long long pixels, float eps) {
    cosine_distance<float>(teacher, student, out, channels, plane, pixels, eps);
}

extern "C" __global__ void __launch_bounds__(COS_PIXELS * COS_SPLIT)
edgekd_cosine_distance_f16(const unsigned short* teacher, const unsigned short* student, float* out, int channels,
                           int plane, long long pixels, float eps) {
    cosine_distance<unsigned short>(teacher, student, out, channels, plane, pixels, eps);
}

// ---- stage 2 helpers ---------------------------------------------------------------------------------------------
__device__ __forceinline__ int reflect_index(int i, int n, int reflect) {
    if (!reflect) return min(max(i, 0), n - 1);
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
}

// PyTorch's bilinear source coordinate for align_corners=False.
__device__ __forceinline__ void source_index(int dst, int in_size, int out_size, int* i0, int* i1, float* frac) {
    const float scale = (float)in_size / (float)out_size;
    float src = scale * (dst + 0.5f) - 0.5f;
    src = fmaxf(src, 0.f);
    const int lo = min((int)src, in_size - 1);
    *i0 = lo;
    *i1 = min(lo + 1, in_size - 1);
    *frac = src - (float)lo;
}

__device__ float combined_value(const ScaleMaps& scales, int image, int y, int x, int out_h, int out_w) {
    float acc = scales.combine == COMBINE_MUL ? 1.f : (scales.combine == COMBINE_MAX ? -3.402823466e38f : 0.f);
    for (int s = 0; s < scales.count; ++s) {
        const int h = scales.height[s], w = scales.width[s];
        int y0, y1, x0, x1;
        float fy, fx;
        source_index(y, h, out_h, &y0, &y1, &fy);
        source_index(x, w, out_w, &x0, &x1, &fx);
        const float* m = scales.maps[s] + (long long)image * h * w;
        const float top = (1.f - fx) * __ldg(m + y0 * w + x0) + fx * __ldg(m + y0 * w + x1);
        const float bottom = (1.f - fx) * __ldg(m + y1 * w + x0) + fx * __ldg(m + y1 * w + x1);
        const float v = (1.f - fy) * top + fy * bottom;
        switch (scales.combine) {
            case COMBINE_MUL: acc *= v; break;
            case COMBINE_MAX: acc = fmaxf(acc, v); break;
            case COMBINE_WEIGHTED: acc = fmaf(scales.weight[s], v, acc); break;
            default: acc += v;
        }
    }
    return acc;
}

// Normalised Gaussian taps into shared memory (radius 0 = identity, used when the blur is off).
__device__ void gaussian_taps(float* taps, int radius, float sigma) {
    const int n = 2 * radius + 1;
    for (int i = threadIdx.x + threadIdx.y * blockDim.x; i < n; i += blockDim.x * blockDim.y) {
        const float x = (float)(i - radius) / (radius > 0 ? sigma : 1.f);
        taps[i] = radius > 0 ? expf(-0.5f * x * x) : 1.f;
    }
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < n; ++i) total += taps[i];
    __syncthreads();
    for (int i = threadIdx.x + threadIdx.y * blockDim.x; i < n; i += blockDim.x * blockDim.y) taps[i] /= total;
    __syncthreads();
}

// ---- stage 2a: resize + combine on the grid into a shared row tile with halo, horizontal blur ------------------------------
// Grid (ceil(grid W / ROW_TILE), grid H, B), block ROW_TILE threads; dynamic shared memory (2 * (ROW_TILE + 2 radius) + 1) floats.
#define ROW_TILE 256

extern "C" __global__ void __launch_bounds__(ROW_TILE)
edgekd_combine_blur_rows(ScaleMaps scales, float* rows, int out_h, int out_w, int radius, float sigma, int reflect) {
    DYNAMIC_SHARED(float, shared);
    float* taps = shared;                   // 2 * radius + 1
    float* line = shared + 2 * radius + 1;  // ROW_TILE + 2 * radius
    gaussian_taps(taps, radius, sigma);
    const int image = blockIdx.z, y = blockIdx.y, x_start = blockIdx.x * ROW_TILE;
    const int span = ROW_TILE + 2 * radius;
    for (int i = threadIdx.x; i < span; i += ROW_TILE) {
        const int x = x_start - radius + i;
        if (x < out_w + radius) line[i] = combined_value(scales, image, y, reflect_index(x, out_w, reflect), out_h, out_w);
    }
    __syncthreads();
    const int x = x_start + threadIdx.x;
    if (x < out_w) {
        float acc = 0.f;
        for (int k = 0; k <= 2 * radius; ++k) acc = fmaf(taps[k], line[threadIdx.x + k], acc);
        rows[((long long)image * out_h + y) * out_w + x] = acc;
    }
}

// ---- stage 2b: vertical blur from a shared column tile; map + mask + per-image max when the grid is the output -------------------------------
// Grid (ceil(W / 32), ceil(H / 32), B), block (32, 8); dynamic shared memory (2 radius + 1) + 32 (32 + 2 radius) floats.
#define COL_TILE 32
#define COL_ROWS 8

__device__ __forceinline__ int ordered_int(float f) {  // monotonic float -> int, so atomicMax orders floats
    const int i = __float_as_int(f);
    return i >= 0 ? i : i ^ 0x7FFFFFFF;
}

__device__ __forceinline__ float ordered_float(int i) { return __int_as_float(i >= 0 ? i : i ^ 0x7FFFFFFF); }

extern "C" __global__ void __launch_bounds__(COL_TILE * COL_ROWS)
edgekd_blur_cols_score(const float* rows, float* amap, unsigned char* mask, int* score_bits, int out_h, int out_w,
                       int radius, float sigma, int reflect, float threshold) {
    DYNAMIC_SHARED(float, shared);
    float* taps = shared;
    float* tile = shared + 2 * radius + 1;  // (COL_TILE + 2 radius) rows x COL_TILE columns
    gaussian_taps(taps, radius, sigma);
    const int image = blockIdx.z, x = blockIdx.x * COL_TILE + threadIdx.x, y_start = blockIdx.y * COL_TILE;
    const int span = COL_TILE + 2 * radius;
    const float* plane = rows + (long long)image * out_h * out_w;
    for (int r = threadIdx.y; r < span; r += COL_ROWS) {
        const int y = y_start - radius + r;
        tile[r * COL_TILE + threadIdx.x] = (x < out_w && y < out_h + radius)
            ? __ldg(plane + (long long)reflect_index(y, out_h, reflect) * out_w + x) : 0.f;
    }
    __syncthreads();
    float local_max = -3.402823466e38f;
    for (int r = threadIdx.y; r < COL_TILE; r += COL_ROWS) {
        const int y = y_start + r;
        if (x >= out_w || y >= out_h) continue;
        float acc = 0.f;
        for (int k = 0; k <= 2 * radius; ++k) acc = fmaf(taps[k], tile[(r + k) * COL_TILE + threadIdx.x], acc);
        const long long at = ((long long)image * out_h + y) * out_w + x;
        amap[at] = acc;
        if (mask) mask[at] = acc > threshold ? 1 : 0;
        local_max = fmaxf(local_max, acc);
    }
    for (int offset = 16; offset > 0; offset >>= 1)
        local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, offset));
    if (threadIdx.x == 0 && score_bits) atomicMax(score_bits + image, ordered_int(local_max));
}

extern "C" __global__ void edgekd_init_scores(int* score_bits, int batch) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < batch) score_bits[i] = ordered_int(-3.402823466e38f);
}

extern "C" __global__ void edgekd_finish_max_scores(const int* score_bits, float* scores, int batch) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < batch) scores[i] = ordered_float(score_bits[i]);
}

// ---- stage 2c (map_stride > 1): the blurred grid upsampled to the output size, map + mask + per-image max ----------
// Grid (ceil(W / 32), ceil(H / 8), B), block (32, 8): one thread per output pixel; each warp is one row of 32.
#define UP_TILE 32
#define UP_ROWS 8

extern "C" __global__ void __launch_bounds__(UP_TILE * UP_ROWS)
edgekd_upsample_score(const float* grid_map, int grid_h, int grid_w, float* amap, unsigned char* mask, int* score_bits,
                      int out_h, int out_w, float threshold) {
    const int image = blockIdx.z, x = blockIdx.x * UP_TILE + threadIdx.x, y = blockIdx.y * UP_ROWS + threadIdx.y;
    float value = -3.402823466e38f;
    if (x < out_w && y < out_h) {
        int y0, y1, x0, x1;
        float fy, fx;
        source_index(y, grid_h, out_h, &y0, &y1, &fy);
        source_index(x, grid_w, out_w, &x0, &x1, &fx);
        const float* m = grid_map + (long long)image * grid_h * grid_w;
        const float top = (1.f - fx) * __ldg(m + y0 * grid_w + x0) + fx * __ldg(m + y0 * grid_w + x1);
        const float bottom = (1.f - fx) * __ldg(m + y1 * grid_w + x0) + fx * __ldg(m + y1 * grid_w + x1);
        value = (1.f - fy) * top + fy * bottom;
        const long long at = ((long long)image * out_h + y) * out_w + x;
        amap[at] = value;
        if (mask) mask[at] = value > threshold ? 1 : 0;
    }
    for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    if (threadIdx.x == 0 && score_bits) atomicMax(score_bits + image, ordered_int(value));
}

// ---- stage 2d: top-k mean per image -------------------------------------------------------------------------------
// One block of TOPK_THREADS per image: radix select (4 passes of 8 bits over order-preserving keys) finds the k-th
// largest value v; the score is (sum of values > v + (k - count of values > v) * v) / k, which is the top-k mean
// whatever the ties.
#define TOPK_THREADS 1024

__device__ __forceinline__ unsigned int sort_key(float f) {  // larger float -> larger unsigned key
    const unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
edgekd_topk_mean(const float* amap, float* scores, int plane, int k) {
    __shared__ unsigned int histogram[256];
    __shared__ unsigned int prefix, prefix_mask, remaining;
    __shared__ float sums[TOPK_THREADS / 32];
    __shared__ unsigned int counts[TOPK_THREADS / 32];
    const float* values = amap + (long long)blockIdx.x * plane;
    if (threadIdx.x == 0) { prefix = 0u; prefix_mask = 0u; remaining = (unsigned int)k; }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += TOPK_THREADS) histogram[i] = 0u;
        __syncthreads();
        for (int i = threadIdx.x; i < plane; i += TOPK_THREADS) {
            const unsigned int key = sort_key(values[i]);
            if ((key & prefix_mask) == prefix) atomicAdd(&histogram[(key >> shift) & 0xFFu], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {  // walk the digits from the top until the k-th largest falls in one
            unsigned int seen = 0u;
            int digit = 255;
            for (; digit > 0; --digit) {
                if (seen + histogram[digit] >= remaining) break;
                seen += histogram[digit];
            }
            remaining -= seen;
            prefix |= (unsigned int)digit << shift;
            prefix_mask |= 0xFFu << shift;
        }
        __syncthreads();
    }
    const unsigned int kth_key = prefix;
    float sum = 0.f;
    unsigned int above = 0u;
    for (int i = threadIdx.x; i < plane; i += TOPK_THREADS) {
        const float v = values[i];
        if (sort_key(v) > kth_key) { sum += v; ++above; }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        above += __shfl_xor_sync(0xffffffffu, above, offset);
    }
    if ((threadIdx.x & 31) == 0) { sums[threadIdx.x >> 5] = sum; counts[threadIdx.x >> 5] = above; }
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.f;
        unsigned int count = 0u;
        for (int w = 0; w < TOPK_THREADS / 32; ++w) { total += sums[w]; count += counts[w]; }
        const unsigned int u = kth_key & 0x80000000u ? (kth_key & 0x7FFFFFFFu) : ~kth_key;
        const float kth = __uint_as_float(u);
        scores[blockIdx.x] = (total + (float)((unsigned int)k - count) * kth) / (float)k;
    }
}
