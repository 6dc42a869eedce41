// Normalization over the last dimension, forward and backward, shared by LayerNorm
// (CENTER: subtract the mean) and RMSNorm (no mean, no bias).
//
// A "team" owns one row at a time: a warp when the row has at most 32 × REG
// elements (several rows per block), else the whole block (up to MAX_THREADS). Each
// thread keeps its part of the row in registers, REG elements, so x and dy are read
// once; rows too long for that take a multi-pass path that re-reads them (mostly from
// L2). Loads are 16-byte vectors when every pointer is 16-byte aligned and N is a
// multiple of the vector width, else scalar. REG is ROW_REG forward and ROW_REG_BWD
// backward on the vector paths, ROW_REG_SCALAR and ROW_REG_BWD_SCALAR on the scalar
// ones, whose every element is a load with its own address and bounds check (launch.h).
//
// Each (path, width, dtype) is an entry point of its own, chosen on the host, with
// its own launch bounds, so no path is compiled at another's register budget:
// NAME_{warp,block,multi}_{vec,scalar}_{f32,f16,bf16,f16_f32,bf16_f32}, the last two
// with f32 γ and β beside f16 or bf16 x (mixed precision: a vector of x then meets two
// 16-byte loads of each parameter). nvcc -Xptxas -v reports no spills for any of them
// on sm_80 to sm_90.
//
// Fused residual add (ADD): the forward also reads r and writes h = x + r, rounded to
// T, and normalizes that rounded h; the backward reads h for x and adds dh (the
// gradient reaching h directly) to dx before rounding it. Without ADD these pointers
// are unused and the code is the plain norm's.
//
// Backward: a persistent grid of P blocks. Each thread accumulates dγ/dβ for the
// columns it owns in f32 registers over all the rows its team visits; the block writes
// one [N] partial row, and a second kernel sums the P partials in order. No atomics,
// so the result is the same bit for bit from run to run.
#pragma once
#include "common.cuh"

namespace cn {

// The three ways a row kernel holds a row: a warp's registers, a block's registers, or
// re-read from memory (multi-pass).
enum class Path { Warp, Block, Multi };

struct Team {
    int size, tid, first, stride;
};

template <bool WARP> __device__ __forceinline__ Team team() {
    if constexpr (WARP) {
        const int per_block = blockDim.x >> 5;
        return {32, (int)(threadIdx.x & 31), (int)(blockIdx.x * per_block + (threadIdx.x >> 5)),
                (int)(gridDim.x * per_block)};
    } else {
        return {(int)blockDim.x, (int)threadIdx.x, (int)blockIdx.x, (int)gridDim.x};
    }
}

// (mean, rstd) of a row read from memory by the whole block: two passes over the row.
template <typename T, bool CENTER, int V>
__device__ __forceinline__ float2 multi_stats(const T* xr, int nitems, float inv_n, float eps, float* smem) {
    float v[V], s = 0.f, m2 = 0.f;
    if (CENTER) {
        for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
            load<T, V>(xr + it * V, v);
#pragma unroll
            for (int i = 0; i < V; i++) s += v[i];
        }
    }
    const float mean = CENTER ? team_sum<false>(s, smem) * inv_n : 0.f;
    for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
        load<T, V>(xr + it * V, v);
#pragma unroll
        for (int i = 0; i < V; i++) m2 += (v[i] - mean) * (v[i] - mean);
    }
    return make_float2(mean, rsqrtf(team_sum<false>(m2, smem) * inv_n + eps));
}

template <typename T, typename W, bool CENTER, int V, int REG, bool WARP, bool ADD>
__device__ void row_fwd_reg(const T* x, const T* r, const W* w, const W* b, T* h, T* y, int M, int N, float eps) {
    constexpr int ITEMS = REG / V;
    __shared__ float smem[32];
    const Team t = team<WARP>();
    const int nitems = N / V;
    const float inv_n = __frcp_rn((float)N);
    for (int row = t.first; row < M; row += t.stride) {
        const T* xr = x + (size_t)row * N;
        float v[REG];
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                load<T, V>(xr + it * V, v + k * V);
                if constexpr (ADD) {
                    const size_t at = (size_t)row * N + it * V;
                    add_store<T, V>(r + at, v + k * V, h + at);
                }
#pragma unroll
                for (int i = 0; i < V; i++) s += v[k * V + i];
            }
        }
        const float mean = CENTER ? team_sum<WARP>(s, smem) * inv_n : 0.f;
        float m2 = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            if (t.tid + k * t.size < nitems) {
#pragma unroll
                for (int i = 0; i < V; i++) m2 += (v[k * V + i] - mean) * (v[k * V + i] - mean);
            }
        }
        const float rstd = rsqrtf(team_sum<WARP>(m2, smem) * inv_n + eps);
        T* yr = y + (size_t)row * N;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                float o[V], wv[V], bv[V];
                params_or<W, V>(w, it * V, 1.f, wv);
                params_or<W, V>(b, it * V, 0.f, bv);
#pragma unroll
                for (int i = 0; i < V; i++) o[i] = (v[k * V + i] - mean) * rstd * wv[i] + bv[i];
                store<T, V>(yr + it * V, o);
            }
        }
    }
}

// One block per row, three passes over the row (mean, variance, output). With ADD, a
// first pass writes h, which each thread then reads back at the same places it wrote.
template <typename T, typename W, bool CENTER, int V, bool ADD>
__device__ void row_fwd_multi(const T* x, const T* r, const W* w, const W* b, T* h, T* y, int M, int N, float eps) {
    __shared__ float smem[32];
    const int nitems = N / V;
    const float inv_n = __frcp_rn((float)N);
    for (int row = blockIdx.x; row < M; row += gridDim.x) {
        const T* xr = x + (size_t)row * N;
        if constexpr (ADD) {
            const size_t off = (size_t)row * N;
            for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
                float v[V];
                load<T, V>(xr + it * V, v);
                add_store<T, V>(r + off + it * V, v, h + off + it * V);
            }
            xr = h + off;
        }
        const float2 st = multi_stats<T, CENTER, V>(xr, nitems, inv_n, eps, smem);
        const float mean = st.x, rstd = st.y;
        float v[V];
        T* yr = y + (size_t)row * N;
        for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
            float wv[V], bv[V];
            load<T, V>(xr + it * V, v);
            params_or<W, V>(w, it * V, 1.f, wv);
            params_or<W, V>(b, it * V, 0.f, bv);
#pragma unroll
            for (int i = 0; i < V; i++) v[i] = (v[i] - mean) * rstd * wv[i] + bv[i];
            store<T, V>(yr + it * V, v);
        }
    }
}

// The forward of one path, chosen on the host: each (path, width, dtype) is its own
// entry point, compiled with its own launch bounds and no other path's registers.
template <typename T, typename W, bool CENTER, bool ADD, Path PATH, bool VEC>
__device__ __forceinline__ void row_fwd(const T* x, const T* r, const W* w, const W* b, T* h, T* y, int M, int N,
                                        float eps) {
    constexpr int V = VEC ? pack_of<T>() : 1;
    if constexpr (PATH == Path::Multi) row_fwd_multi<T, W, CENTER, V, ADD>(x, r, w, b, h, y, M, N, eps);
    else row_fwd_reg<T, W, CENTER, V, VEC ? ROW_REG : ROW_REG_SCALAR, PATH == Path::Warp, ADD>(x, r, w, b, h, y, M, N, eps);
}

// Backward with the row in registers. Partials: partial_dw/partial_db hold [gridDim.x, N];
// with warp teams the block's warps add theirs in warp order through shared memory (2·N
// floats).
template <typename T, typename W, bool CENTER, int V, int REG, bool WARP, bool ADD>
__device__ void row_bwd_reg(const T* x, const W* w, const T* dy, const T* dh, T* dx, float* partial_dw,
                            float* partial_db, int M, int N, float eps) {
    constexpr int ITEMS = REG / V;
    __shared__ float smem[32];
    CN_DYNAMIC_SHARED(float, part);
    const Team t = team<WARP>();
    const int nitems = N / V;
    const float inv_n = __frcp_rn((float)N);
    float ag[REG], ab[REG];
#pragma unroll
    for (int i = 0; i < REG; i++) ag[i] = ab[i] = 0.f;
    for (int row = t.first; row < M; row += t.stride) {
        const size_t off = (size_t)row * N;
        float xv[REG], gv[REG];
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                load<T, V>(x + off + it * V, xv + k * V);
                load<T, V>(dy + off + it * V, gv + k * V);
#pragma unroll
                for (int i = 0; i < V; i++) s += xv[k * V + i];
            }
        }
        const float mean = CENTER ? team_sum<WARP>(s, smem) * inv_n : 0.f;
        float m2 = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            if (t.tid + k * t.size < nitems) {
#pragma unroll
                for (int i = 0; i < V; i++) m2 += (xv[k * V + i] - mean) * (xv[k * V + i] - mean);
            }
        }
        const float rstd = rsqrtf(team_sum<WARP>(m2, smem) * inv_n + eps);
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                float wv[V];
                params_or<W, V>(w, it * V, 1.f, wv);
#pragma unroll
                for (int i = 0; i < V; i++) {
                    const int e = k * V + i;
                    const float xh = (xv[e] - mean) * rstd;
                    ag[e] += gv[e] * xh;
                    ab[e] += gv[e];
                    const float g = gv[e] * wv[i];
                    xv[e] = xh;
                    gv[e] = g;
                    sg += g;
                    sgx += g * xh;
                }
            }
        }
        const float mean_g = CENTER ? team_sum<WARP>(sg, smem) * inv_n : 0.f;
        const float mean_gx = team_sum<WARP>(sgx, smem) * inv_n;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                float o[V];
#pragma unroll
                for (int i = 0; i < V; i++) o[i] = rstd * (gv[k * V + i] - mean_g - xv[k * V + i] * mean_gx);
                if constexpr (ADD) add_loaded<T, V>(dh + off + it * V, o);
                store<T, V>(dx + off + it * V, o);
            }
        }
    }
    float* dg = partial_dw + (size_t)blockIdx.x * N;
    float* db = partial_db + (size_t)blockIdx.x * N;
    if constexpr (WARP) {
        for (int j = threadIdx.x; j < 2 * N; j += blockDim.x) part[j] = 0.f;
        const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5;
        for (int wi = 0; wi < warps; wi++) {
            __syncthreads();
            if (warp == wi) {
#pragma unroll
                for (int k = 0; k < ITEMS; k++) {
                    const int it = t.tid + k * t.size;
                    if (it < nitems) {
#pragma unroll
                        for (int i = 0; i < V; i++) {
                            part[it * V + i] += ag[k * V + i];
                            part[N + it * V + i] += ab[k * V + i];
                        }
                    }
                }
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < N; j += blockDim.x) {
            dg[j] = part[j];
            db[j] = part[N + j];
        }
    } else {
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
#pragma unroll
                for (int i = 0; i < V; i++) {
                    dg[it * V + i] = ag[k * V + i];
                    db[it * V + i] = ab[k * V + i];
                }
            }
        }
    }
}

// Backward for rows too long for registers: one block per row, statistics in two
// passes, then Σg and Σg·x̂ (adding dγ/dβ into this block's zero-initialized partial
// row, which only this thread touches at these columns), then dx.
template <typename T, typename W, bool CENTER, int V, bool ADD>
__device__ void row_bwd_multi(const T* x, const W* w, const T* dy, const T* dh, T* dx, float* partial_dw,
                              float* partial_db, int M, int N, float eps) {
    __shared__ float smem[32];
    const int nitems = N / V;
    const float inv_n = __frcp_rn((float)N);
    float* dg = partial_dw + (size_t)blockIdx.x * N;
    float* db = partial_db + (size_t)blockIdx.x * N;
    for (int row = blockIdx.x; row < M; row += gridDim.x) {
        const size_t off = (size_t)row * N;
        const float2 st = multi_stats<T, CENTER, V>(x + off, nitems, inv_n, eps, smem);
        const float mean = st.x, rstd = st.y;
        float xv[V], gv[V];
        float sg = 0.f, sgx = 0.f;
        for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
            float wv[V];
            load<T, V>(x + off + it * V, xv);
            load<T, V>(dy + off + it * V, gv);
            params_or<W, V>(w, it * V, 1.f, wv);
#pragma unroll
            for (int i = 0; i < V; i++) {
                const int j = it * V + i;
                const float xh = (xv[i] - mean) * rstd;
                dg[j] += gv[i] * xh;
                db[j] += gv[i];
                const float g = gv[i] * wv[i];
                sg += g;
                sgx += g * xh;
            }
        }
        const float mean_g = CENTER ? team_sum<false>(sg, smem) * inv_n : 0.f;
        const float mean_gx = team_sum<false>(sgx, smem) * inv_n;
        for (int it = threadIdx.x; it < nitems; it += blockDim.x) {
            float wv[V];
            load<T, V>(x + off + it * V, xv);
            load<T, V>(dy + off + it * V, gv);
            params_or<W, V>(w, it * V, 1.f, wv);
#pragma unroll
            for (int i = 0; i < V; i++) {
                const float xh = (xv[i] - mean) * rstd;
                xv[i] = rstd * (gv[i] * wv[i] - mean_g - xh * mean_gx);
            }
            if constexpr (ADD) add_loaded<T, V>(dh + off + it * V, xv);
            store<T, V>(dx + off + it * V, xv);
        }
    }
}

// The backward of one path, as row_fwd.
template <typename T, typename W, bool CENTER, bool ADD, Path PATH, bool VEC>
__device__ __forceinline__ void row_bwd(const T* x, const W* w, const T* dy, const T* dh, T* dx, float* partial_dw,
                                        float* partial_db, int M, int N, float eps) {
    constexpr int V = VEC ? pack_of<T>() : 1;
    if constexpr (PATH == Path::Multi) {
        row_bwd_multi<T, W, CENTER, V, ADD>(x, w, dy, dh, dx, partial_dw, partial_db, M, N, eps);
    } else {
        constexpr int REG = VEC ? ROW_REG_BWD : ROW_REG_BWD_SCALAR;
        row_bwd_reg<T, W, CENTER, V, REG, PATH == Path::Warp, ADD>(x, w, dy, dh, dx, partial_dw, partial_db, M, N, eps);
    }
}

// The entry bodies of one row norm, as CN_ROW_NORM instantiates them: LayerNorm when
// CENTER, RMSNorm (no mean, no bias) otherwise, for elements of T and parameters of W.
// Each reads its tensors from its kernel's arguments (params.h).
template <bool CENTER> struct RowNorm {
    template <typename T, typename W, Path P, bool VEC> static __device__ __forceinline__ void fwd(const RowFwdArgs& a) {
        row_fwd<T, W, CENTER, false, P, VEC>(in<T>(a.x), nullptr, in<W>(a.weight), in<W>(a.bias), nullptr,
                                             out<T>(a.y), a.rows, a.len, a.eps);
    }
    template <typename T, typename W, Path P, bool VEC> static __device__ __forceinline__ void bwd(const RowBwdArgs& a) {
        row_bwd<T, W, CENTER, false, P, VEC>(in<T>(a.x), in<W>(a.weight), in<T>(a.dy), nullptr, out<T>(a.dx),
                                             out<float>(a.partial_dw), out<float>(a.partial_db), a.rows, a.len, a.eps);
    }
    template <typename T, typename W, Path P, bool VEC>
    static __device__ __forceinline__ void add_fwd(const AddFwdArgs& a) {
        row_fwd<T, W, CENTER, true, P, VEC>(in<T>(a.x), in<T>(a.residual), in<W>(a.weight), in<W>(a.bias),
                                            out<T>(a.h), out<T>(a.y), a.rows, a.len, a.eps);
    }
    template <typename T, typename W, Path P, bool VEC>
    static __device__ __forceinline__ void add_bwd(const AddBwdArgs& a) {
        row_bwd<T, W, CENTER, true, P, VEC>(in<T>(a.h), in<W>(a.weight), in<T>(a.dy), in<T>(a.dh), out<T>(a.dx),
                                            out<float>(a.partial_dw), out<float>(a.partial_db), a.rows, a.len, a.eps);
    }
};

}  // namespace cn

// One entry point NAME_PATH_WIDTH_SUFFIX for elements of T and parameters of W, taking
// the fields of its kernel's argument struct ARGS as parameters (params.h) and calling
// BODY<T, W, P, VEC> with them as one struct, under __launch_bounds__(THREADS,
// MIN_BLOCKS).
#define CN_ROW_ENTRY(NAME, BODY, ARGS, PATH, P, THREADS, MIN_BLOCKS, WIDTH, VEC, SUFFIX, T, W)   \
    extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)                               \
        NAME##_##PATH##_##WIDTH##_##SUFFIX(CN_PARAMS_##ARGS(T, W)) {                                \
        BODY<T, W, P, VEC>(CN_ARGS_##ARGS);                                                         \
    }

// The entries of one path and width: parameters of the elements' dtype (f32, f16,
// bf16), and f32 parameters with f16 and bf16 elements (f16_f32, bf16_f32).
#define CN_ROW_DTYPES(NAME, BODY, ARGS, ...)                                  \
    CN_ROW_ENTRY(NAME, BODY, ARGS, __VA_ARGS__, f32, float, float)            \
    CN_ROW_ENTRY(NAME, BODY, ARGS, __VA_ARGS__, f16, __half, __half)          \
    CN_ROW_ENTRY(NAME, BODY, ARGS, __VA_ARGS__, bf16, __nv_bfloat16, __nv_bfloat16) \
    CN_ROW_ENTRY(NAME, BODY, ARGS, __VA_ARGS__, f16_f32, __half, float)       \
    CN_ROW_ENTRY(NAME, BODY, ARGS, __VA_ARGS__, bf16_f32, __nv_bfloat16, float)

// Every (path, width, dtype) entry of a row kernel: warp teams in blocks of BLOCK
// threads; a block per row in at most MAX_THREADS. The multi-pass path needs few
// registers; asking for two resident blocks keeps ptxas from spilling its f32 backward
// at 32 registers. Names as src/cuda/row.rs builds them.
#define CN_ROW_INSTANTIATE(NAME, BODY, ARGS)                                                         \
    CN_ROW_DTYPES(NAME, BODY, ARGS, warp, cn::Path::Warp, cn::BLOCK, 1, vec, true)                       \
    CN_ROW_DTYPES(NAME, BODY, ARGS, warp, cn::Path::Warp, cn::BLOCK, 1, scalar, false)                   \
    CN_ROW_DTYPES(NAME, BODY, ARGS, block, cn::Path::Block, cn::MAX_THREADS, 1, vec, true)               \
    CN_ROW_DTYPES(NAME, BODY, ARGS, block, cn::Path::Block, cn::MAX_THREADS, 1, scalar, false)           \
    CN_ROW_DTYPES(NAME, BODY, ARGS, multi, cn::Path::Multi, cn::MAX_THREADS, 2, vec, true)               \
    CN_ROW_DTYPES(NAME, BODY, ARGS, multi, cn::Path::Multi, cn::MAX_THREADS, 2, scalar, false)

// Every entry point of one row norm: NAME_{fwd,bwd,add_fwd,add_bwd}_PATH_WIDTH_* and
// NAME_dparams_*.
#define CN_ROW_NORM(NAME, CENTER)                                                         \
    CN_ROW_INSTANTIATE(NAME##_fwd, cn::RowNorm<CENTER>::fwd, RowFwdArgs)                  \
    CN_ROW_INSTANTIATE(NAME##_bwd, cn::RowNorm<CENTER>::bwd, RowBwdArgs)                  \
    CN_ROW_INSTANTIATE(NAME##_add_fwd, cn::RowNorm<CENTER>::add_fwd, AddFwdArgs)          \
    CN_ROW_INSTANTIATE(NAME##_add_bwd, cn::RowNorm<CENTER>::add_bwd, AddBwdArgs)          \
    CN_INSTANTIATE(NAME##_dparams, cn::reduce_param_partials, PartialsArgs)
