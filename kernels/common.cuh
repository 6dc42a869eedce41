// Shared pieces of candle-norm's kernels: f32 conversion, 16-byte vector load/store,
// warp and block reductions in a fixed order (so results are bitwise reproducible),
// Chan's merge of (count, mean, M2) moments, and the reduction of per-block dγ/dβ
// partials into the final parameter gradients.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace cn {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Elements of T in one 16-byte access.
template <typename T> __host__ __device__ constexpr int pack_of() { return 16 / sizeof(T); }

// Loads V consecutive elements (V = pack_of<T>() for a 16-byte access, or 1) as f32.
template <typename T, int V> __device__ __forceinline__ void load(const T* p, float* out) {
    if constexpr (V == 1) {
        out[0] = to_f32(p[0]);
    } else {
        static_assert(V * sizeof(T) == 16, "a vector access is 16 bytes");
        uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < V; i++) out[i] = to_f32(e[i]);
    }
}

// Stores V f32 values as V consecutive elements of T, rounding each once.
template <typename T, int V> __device__ __forceinline__ void store(T* p, const float* in) {
    if constexpr (V == 1) {
        p[0] = from_f32<T>(in[0]);
    } else {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int i = 0; i < V; i++) e[i] = from_f32<T>(in[i]);
        *reinterpret_cast<uint4*>(p) = raw;
    }
}

// An optional affine parameter: p[j], or `dflt` when the pointer is null.
template <typename T> __device__ __forceinline__ float param_or(const T* p, int j, float dflt) {
    return p ? to_f32(p[j]) : dflt;
}

// V consecutive affine parameters from p + j (one vector load; j a multiple of V when
// V > 1), or `dflt` when the pointer is null. Per-element loads of half-precision
// parameters cost LayerNorm about a third of its bandwidth.
template <typename T, int V>
__device__ __forceinline__ void params_or(const T* p, int j, float dflt, float (&out)[V]) {
    if (p) {
        load<T, V>(p + j, out);
    } else {
#pragma unroll
        for (int i = 0; i < V; i++) out[i] = dflt;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a team: one warp (WARP) or the whole block. `smem` holds 32 floats. Every
// thread gets the result; the order of additions is fixed.
template <bool WARP> __device__ __forceinline__ float team_sum(float v, float* smem) {
    v = warp_sum(v);
    if constexpr (WARP) {
        return v;
    } else {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();  // smem may still be read from the previous call
        if (lane == 0) smem[warp] = v;
        __syncthreads();
        v = lane < (int)(blockDim.x >> 5) ? smem[lane] : 0.f;
        return warp_sum(v);
    }
}

// (count, mean, M2) of a set of values, merged pairwise with Chan et al.'s formula.
struct Moments {
    float n, mean, m2;
};

__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    const float n = a.n + b.n;
    if (n == 0.f) return a;
    const float delta = b.mean - a.mean, fb = b.n / n;
    return {n, a.mean + delta * fb, a.m2 + b.m2 + delta * delta * a.n * fb};
}

__device__ __forceinline__ Moments shfl_xor(Moments m, int o) {
    return {__shfl_xor_sync(0xffffffffu, m.n, o), __shfl_xor_sync(0xffffffffu, m.mean, o),
            __shfl_xor_sync(0xffffffffu, m.m2, o)};
}

// Block-wide merge of per-thread moments; `smem` holds 3 × 32 floats. Every thread gets
// the result.
__device__ __forceinline__ Moments block_moments(Moments m, float* smem) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = merge(m, shfl_xor(m, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) {
        smem[warp] = m.n;
        smem[32 + warp] = m.mean;
        smem[64 + warp] = m.m2;
    }
    __syncthreads();
    m = lane < (int)(blockDim.x >> 5) ? Moments{smem[lane], smem[32 + lane], smem[64 + lane]} : Moments{0.f, 0.f, 0.f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = merge(m, shfl_xor(m, o));
    return m;
}

// Moments of V values held in registers: two passes, never E[x²] − mean².
template <int V, bool CENTER> __device__ __forceinline__ Moments pack_moments(const float* v) {
    float s = 0.f, m2 = 0.f;
    if constexpr (CENTER) {
#pragma unroll
        for (int i = 0; i < V; i++) s += v[i];
    }
    const float mean = CENTER ? s / V : 0.f;
#pragma unroll
    for (int i = 0; i < V; i++) m2 += (v[i] - mean) * (v[i] - mean);
    return {(float)V, mean, m2};
}

// dγ/dβ from P per-block f32 partial rows of N columns. A block of DPARAMS_THREADS owns
// 32 columns: warp k sums partial rows k, k + 8, ... in order, then warp 0 adds the 8
// warp sums in order, so the result is the same bit for bit from run to run while
// every SM has columns to read.
constexpr int DPARAMS_THREADS = 256;

template <typename T>
__device__ void reduce_param_partials(const float* dg, const float* db, T* dw, T* dbias, int P, int N) {
    constexpr int WARPS = DPARAMS_THREADS / 32;
    __shared__ float sg[WARPS][32], sb[WARPS][32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j = blockIdx.x * 32 + lane;
    float g = 0.f, b = 0.f;
    if (j < N) {
        for (int p = warp; p < P; p += WARPS) {
            if (dw) g += dg[(size_t)p * N + j];
            if (dbias) b += db[(size_t)p * N + j];
        }
    }
    sg[warp][lane] = g;
    sb[warp][lane] = b;
    __syncthreads();
    if (warp != 0 || j >= N) return;
    for (int k = 1; k < WARPS; k++) {
        g += sg[k][lane];
        b += sb[k][lane];
    }
    if (dw) dw[j] = from_f32<T>(g);
    if (dbias) dbias[j] = from_f32<T>(b);
}

}  // namespace cn

#define CN_DPARAMS_PARAMS(T) (const float* dg, const float* db, T* dw, T* dbias, int P, int N)

// Largest block any kernel is launched with; the bound caps registers at 128 a thread
// so that such a block always fits on an SM. The Rust launch code uses the same value.
#define CN_MAX_THREADS 512

// Emits the extern "C" entry points of one kernel for the three dtypes:
// NAME_f32, NAME_f16, NAME_bf16, each calling BODY<T>(args...).
#define CN_INSTANTIATE(NAME, BODY, PARAMS, ARGS)                                                      \
    extern "C" __global__ void __launch_bounds__(CN_MAX_THREADS) NAME##_f32 PARAMS(float) {          \
        BODY<float> ARGS;                                                                           \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(CN_MAX_THREADS) NAME##_f16 PARAMS(__half) {         \
        BODY<__half> ARGS;                                                                          \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(CN_MAX_THREADS) NAME##_bf16 PARAMS(__nv_bfloat16) { \
        BODY<__nv_bfloat16> ARGS;                                                                   \
    }
