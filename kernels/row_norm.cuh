// Normalization over the last dimension, forward and backward, shared by LayerNorm
// (CENTER: subtract the mean) and RMSNorm (no mean, no bias).
//
// A "team" owns one row at a time: a warp when the row has at most 32 × REG
// elements (several rows per block), else the whole block (up to MAX_THREADS). Each
// thread keeps its part of the row in registers, REG elements, so x and dy are read
// once. Rows too long for one block take the split path: a row cut into chunks, a
// block a chunk held in registers, a first kernel reducing each chunk to partial
// statistics and a second merging them and writing its chunk (below); the host runs
// the pair on batches of rows that fit in half the L2, so that the second kernel's
// reads are L2 hits. Loads are 16-byte vectors when every pointer is 16-byte aligned
// and N is a multiple of the vector width, else scalar. REG is ROW_REG forward and
// ROW_REG_BWD backward on the vector paths, ROW_REG_SCALAR and ROW_REG_BWD_SCALAR on
// the scalar ones, whose every element is a load with its own address and bounds
// check (launch.h).
//
// Each (path, width, dtype) is an entry point of its own, chosen on the host, with
// its own launch bounds, so no path is compiled at another's register budget:
// NAME_{warp,block}_{vec,scalar}_{f32,f16,bf16,f16_f32,bf16_f32}, the last two with
// f32 γ and β beside f16 or bf16 x (mixed precision: a vector of x then meets two
// 16-byte loads of each parameter), and the split path's (CN_ROW_NORM). nvcc -Xptxas
// -v reports no spills for any of them on sm_80 to sm_90.
//
// Fused residual add (ADD): the forward also reads r and writes h = x + r, rounded to
// T, and normalizes that rounded h; the backward reads h for x and adds dh (the
// gradient reaching h directly) to dx before rounding it. Without ADD these pointers
// are unused and the code is the plain norm's.
//
// Backward: a persistent grid of P blocks (the split path: P blocks per chunk). Each
// thread accumulates dγ/dβ for the columns it owns in f32 registers over all the rows
// its team visits; the block writes one [N] partial row (the split path's blocks of
// one P share a row, each its chunk's columns), and a second kernel sums the P
// partials in order. No atomics, so the result is the same bit for bit from run to
// run.
#pragma once
#include "common.cuh"

namespace cn {

// The two ways a row kernel holds a whole row: a warp's registers or a block's. Longer
// rows take the split path (below), with entries of its own.
enum class Path { Warp, Block };

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

// The forward of one path, chosen on the host: each (path, width, dtype) is its own
// entry point, compiled with its own launch bounds and no other path's registers.
template <typename T, typename W, bool CENTER, bool ADD, Path PATH, bool VEC>
__device__ __forceinline__ void row_fwd(const T* x, const T* r, const W* w, const W* b, T* h, T* y, int M, int N,
                                        float eps) {
    constexpr int V = VEC ? pack_of<T>() : 1;
    row_fwd_reg<T, W, CENTER, V, VEC ? ROW_REG : ROW_REG_SCALAR, PATH == Path::Warp, ADD>(x, r, w, b, h, y, M, N, eps);
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
    // Half precision on the vector paths: the team's next row of x and dy is loaded,
    // as 16-byte vectors not yet widened, before this row's sums, so that memory stays
    // busy through them (docs/perf-notes.md, v8); 16 registers.
    constexpr bool PIPE = V > 1 && sizeof(T) == 2;
    static_assert(!PIPE || V == pack_of<T>(), "one 16-byte vector an item");
    uint4 nx[PIPE ? ITEMS : 1], ndy[PIPE ? ITEMS : 1];
    const auto fetch = [&](int row) {
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                nx[k] = load_raw(x + (size_t)row * N + it * V);
                ndy[k] = load_raw(dy + (size_t)row * N + it * V);
            }
        }
    };
    if constexpr (PIPE) {
        if (t.first < M) fetch(t.first);
    }
    for (int row = t.first; row < M; row += t.stride) {
        const size_t off = (size_t)row * N;
        float xv[REG], gv[REG];
        float s = 0.f;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int it = t.tid + k * t.size;
            if (it < nitems) {
                if constexpr (PIPE) {
                    widen<T>(nx[k], xv + k * V);
                    widen<T>(ndy[k], gv + k * V);
                } else {
                    load<T, V>(x + off + it * V, xv + k * V);
                    load<T, V>(dy + off + it * V, gv + k * V);
                }
#pragma unroll
                for (int i = 0; i < V; i++) s += xv[k * V + i];
            }
        }
        if constexpr (PIPE) {
            if (row + t.stride < M) fetch(row + t.stride);
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

// The backward of one path, as row_fwd.
template <typename T, typename W, bool CENTER, bool ADD, Path PATH, bool VEC>
__device__ __forceinline__ void row_bwd(const T* x, const W* w, const T* dy, const T* dh, T* dx, float* partial_dw,
                                        float* partial_db, int M, int N, float eps) {
    constexpr int V = VEC ? pack_of<T>() : 1;
    constexpr int REG = VEC ? ROW_REG_BWD : ROW_REG_BWD_SCALAR;
    row_bwd_reg<T, W, CENTER, V, REG, PATH == Path::Warp, ADD>(x, w, dy, dh, dx, partial_dw, partial_db, M, N, eps);
}

// The split path, for rows too long for one block's registers: each row is cut into
// `chunks` chunks of `span` elements (RowSplit), a block a chunk, and normalized by
// two kernels. The first reduces its chunk, held in registers, to partials: forward
// (count, mean, M2); backward also Σg and Σg·(x − the chunk's mean), g = dy·γ. The
// second merges its row's partials across the block in a fixed order, so that every
// block of the row sees the same statistics, and writes its chunk of y, or of dx. The
// host launches the pair on batches of rows small enough that the second kernel finds
// its inputs still in L2, so memory is read about once.

// The elements [start, end) of this block's chunk, of row `row`: the grid is (chunks,
// rows of the launch) for the first kernels, (chunks, P) for the backward's second.
struct Chunk {
    int row, start, end;
};

__device__ __forceinline__ Chunk chunk_of(const RowSplit& s) {
    const int start = blockIdx.x * s.span;
    return {s.first + (int)blockIdx.y, start, min(start + s.span, s.len)};
}

// The first of the V elements of run k that this thread owns in chunk c: the block's
// threads take consecutive runs, k = 0 .. REG / V − 1 in turn. At c.end or beyond, the
// run is not the chunk's.
template <int V> __device__ __forceinline__ int chunk_elem(const Chunk& c, int k) {
    return c.start + (int)(threadIdx.x + k * blockDim.x) * V;
}

// Loads the chunk's elements that this thread owns (chunk_elem) into v[k·V...]; calls
// f(k, e) for each loaded run k starting at element e.
template <typename T, int V, int REG, typename F>
__device__ __forceinline__ void chunk_load(const T* p, const Chunk& c, float* v, F f) {
#pragma unroll
    for (int k = 0; k < REG / V; k++) {
        const int e = chunk_elem<V>(c, k);
        if (e < c.end) {
            load<T, V>(p + e, v + k * V);
            f(k, e);
        }
    }
}

// The statistics of the row whose S-float partials (count, mean, M2 first) start at
// `part`: thread t merges chunks t, t + blockDim.x, ..., then the block merges the
// threads' in its fixed order. `smem` holds 96 floats.
template <int S> __device__ __forceinline__ Moments split_moments(const float* part, int chunks, float* smem) {
    Moments m{0.f, 0.f, 0.f};
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
        const float* p = part + S * c;
        m = merge(m, Moments{p[0], p[1], p[2]});
    }
    return block_moments(m, smem);
}

// The split forward's first kernel: (count, mean, M2) of a chunk, two passes over its
// registers (M2 about the chunk's own mean; RMSNorm's about 0). With ADD, h = x + r is
// written first, rounded, and reduced.
template <typename T, bool CENTER, int V, int REG, bool ADD>
__device__ void row_split_stats(const T* x, const T* r, T* h, float* moments, const RowSplit s) {
    __shared__ float smem[32];
    const Chunk c = chunk_of(s);
    const size_t off = (size_t)c.row * s.len;
    float v[REG], sum = 0.f;
    chunk_load<T, V, REG>(x + off, c, v, [&](int k, int e) {
        if constexpr (ADD) add_store<T, V>(r + off + e, v + k * V, h + off + e);
#pragma unroll
        for (int i = 0; i < V; i++) sum += v[k * V + i];
    });
    const float n = (float)(c.end - c.start);
    const float mean = CENTER ? team_sum<false>(sum, smem) / n : 0.f;
    float m2 = 0.f;
#pragma unroll
    for (int k = 0; k < REG / V; k++) {
        if (chunk_elem<V>(c, k) < c.end) {
#pragma unroll
            for (int i = 0; i < V; i++) m2 += (v[k * V + i] - mean) * (v[k * V + i] - mean);
        }
    }
    m2 = team_sum<false>(m2, smem);
    if (threadIdx.x == 0) {
        float* p = moments + 3 * ((size_t)(c.row - s.first) * s.chunks + blockIdx.x);
        p[0] = n;
        p[1] = mean;
        p[2] = m2;
    }
}

// The split forward's second kernel: y of a chunk, from its row's merged moments.
template <typename T, typename W, bool CENTER, int V, int REG>
__device__ void row_split_fwd(const T* x, const W* w, const W* b, const float* moments, T* y, const RowSplit s,
                              float eps) {
    __shared__ float smem[96];
    const Chunk c = chunk_of(s);
    const size_t off = (size_t)c.row * s.len;
    float v[REG];
    chunk_load<T, V, REG>(x + off, c, v, [](int, int) {});
    const Moments m = split_moments<3>(moments + 3 * (size_t)(c.row - s.first) * s.chunks, s.chunks, smem);
    const float mean = CENTER ? m.mean : 0.f, rstd = rsqrtf(m.m2 * __frcp_rn((float)s.len) + eps);
#pragma unroll
    for (int k = 0; k < REG / V; k++) {
        const int e = chunk_elem<V>(c, k);
        if (e < c.end) {
            float o[V], wv[V], bv[V];
            params_or<W, V>(w, e, 1.f, wv);
            params_or<W, V>(b, e, 0.f, bv);
#pragma unroll
            for (int i = 0; i < V; i++) o[i] = (v[k * V + i] - mean) * rstd * wv[i] + bv[i];
            store<T, V>(y + off + e, o);
        }
    }
}

// The split backward's first kernel: (count, mean, M2, Σg, Σg·(x − mean)) of a chunk
// about its own mean (RMSNorm's about 0), g = dy·γ, from x and dy held in registers.
template <typename T, typename W, bool CENTER, int V, int REG>
__device__ void row_split_sums(const T* x, const W* w, const T* dy, float* sums, const RowSplit s) {
    __shared__ float smem[32];
    const Chunk c = chunk_of(s);
    const size_t off = (size_t)c.row * s.len;
    float xv[REG], gv[REG], sum = 0.f;
    chunk_load<T, V, REG>(x + off, c, xv, [&](int k, int e) {
        float wv[V];
        load<T, V>(dy + off + e, gv + k * V);
        params_or<W, V>(w, e, 1.f, wv);
#pragma unroll
        for (int i = 0; i < V; i++) {
            sum += xv[k * V + i];
            gv[k * V + i] *= wv[i];
        }
    });
    const float n = (float)(c.end - c.start);
    const float mean = CENTER ? team_sum<false>(sum, smem) / n : 0.f;
    float m2 = 0.f, sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int k = 0; k < REG / V; k++) {
        if (chunk_elem<V>(c, k) < c.end) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                const float d = xv[k * V + i] - mean;
                m2 += d * d;
                sg += gv[k * V + i];
                sgx += gv[k * V + i] * d;
            }
        }
    }
    m2 = team_sum<false>(m2, smem);
    sg = team_sum<false>(sg, smem);
    sgx = team_sum<false>(sgx, smem);
    if (threadIdx.x == 0) {
        float* p = sums + 5 * ((size_t)(c.row - s.first) * s.chunks + blockIdx.x);
        p[0] = n;
        p[1] = mean;
        p[2] = m2;
        p[3] = sg;
        p[4] = sgx;
    }
}

// The split backward's second kernel. Block (c, p) owns chunk c of rows first + p,
// first + p + P, ... of the launch (P = gridDim.y): for each, it merges the row's sums
// (Σg·(x − mean) moved from each chunk's mean to the row's), writes dx, and adds dy·x̂
// and dy to its columns' dγ/dβ in registers; then writes (or, with s.accumulate, adds
// to) partial row p at its columns, which no other block touches.
template <typename T, typename W, bool CENTER, int V, int REG, bool ADD>
__device__ void row_split_bwd(const T* x, const W* w, const T* dy, const T* dh, const float* sums, T* dx,
                              float* partial_dw, float* partial_db, const RowSplit s, float eps) {
    constexpr int ITEMS = REG / V;
    __shared__ float smem[96];
    const float inv_n = __frcp_rn((float)s.len);
    float ag[REG], ab[REG];
#pragma unroll
    for (int i = 0; i < REG; i++) ag[i] = ab[i] = 0.f;
    Chunk c = chunk_of(s);
    for (; c.row < s.first + s.rows; c.row += gridDim.y) {
        const size_t off = (size_t)c.row * s.len;
        float xv[REG], gv[REG];
        chunk_load<T, V, REG>(x + off, c, xv, [&](int k, int e) { load<T, V>(dy + off + e, gv + k * V); });
        const float* rs = sums + 5 * (size_t)(c.row - s.first) * s.chunks;
        const Moments m = split_moments<5>(rs, s.chunks, smem);
        const float mean = CENTER ? m.mean : 0.f, rstd = rsqrtf(m.m2 * inv_n + eps);
        float sg = 0.f, sgx = 0.f;
        for (int j = threadIdx.x; j < s.chunks; j += blockDim.x) {
            const float* p = rs + 5 * j;
            sg += p[3];
            sgx += p[4] + (p[1] - mean) * p[3];
        }
        const float mean_g = CENTER ? team_sum<false>(sg, smem) * inv_n : 0.f;
        const float mean_gx = team_sum<false>(sgx, smem) * rstd * inv_n;
#pragma unroll
        for (int k = 0; k < ITEMS; k++) {
            const int e = chunk_elem<V>(c, k);
            if (e < c.end) {
                float wv[V], o[V];
                params_or<W, V>(w, e, 1.f, wv);
#pragma unroll
                for (int i = 0; i < V; i++) {
                    const float xh = (xv[k * V + i] - mean) * rstd, g = gv[k * V + i];
                    ag[k * V + i] += g * xh;
                    ab[k * V + i] += g;
                    o[i] = rstd * (g * wv[i] - mean_g - xh * mean_gx);
                }
                if constexpr (ADD) add_loaded<T, V>(dh + off + e, o);
                store<T, V>(dx + off + e, o);
            }
        }
    }
    float* dg = partial_dw + (size_t)blockIdx.y * s.len;
    float* db = partial_db + (size_t)blockIdx.y * s.len;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int e = chunk_elem<V>(c, k);
        if (e < c.end) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                dg[e + i] = s.accumulate ? dg[e + i] + ag[k * V + i] : ag[k * V + i];
                db[e + i] = s.accumulate ? db[e + i] + ab[k * V + i] : ab[k * V + i];
            }
        }
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
    // The split path's kernels: one path of their own, so their entries take no Path.
    template <typename T, bool VEC> static __device__ __forceinline__ void split_stats(const SplitStatsArgs& a) {
        row_split_stats<T, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG : ROW_REG_SCALAR, false>(
            in<T>(a.x), nullptr, nullptr, a.moments, a.split);
    }
    template <typename T, bool VEC> static __device__ __forceinline__ void add_split_stats(const SplitStatsArgs& a) {
        row_split_stats<T, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG : ROW_REG_SCALAR, true>(
            in<T>(a.x), in<T>(a.residual), out<T>(a.h), a.moments, a.split);
    }
    template <typename T, typename W, bool VEC> static __device__ __forceinline__ void split_fwd(const SplitFwdArgs& a) {
        row_split_fwd<T, W, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG : ROW_REG_SCALAR>(
            in<T>(a.x), in<W>(a.weight), in<W>(a.bias), a.moments, out<T>(a.y), a.split, a.eps);
    }
    template <typename T, typename W, bool VEC> static __device__ __forceinline__ void split_sums(const SplitSumsArgs& a) {
        row_split_sums<T, W, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG_BWD : ROW_REG_BWD_SCALAR>(
            in<T>(a.x), in<W>(a.weight), in<T>(a.dy), a.sums, a.split);
    }
    template <typename T, typename W, bool VEC> static __device__ __forceinline__ void split_bwd(const SplitBwdArgs& a) {
        row_split_bwd<T, W, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG_BWD : ROW_REG_BWD_SCALAR, false>(
            in<T>(a.x), in<W>(a.weight), in<T>(a.dy), nullptr, a.sums, out<T>(a.dx), a.partial_dw, a.partial_db,
            a.split, a.eps);
    }
    template <typename T, typename W, bool VEC>
    static __device__ __forceinline__ void add_split_bwd(const SplitBwdArgs& a) {
        row_split_bwd<T, W, CENTER, VEC ? pack_of<T>() : 1, VEC ? ROW_REG_BWD : ROW_REG_BWD_SCALAR, true>(
            in<T>(a.x), in<W>(a.weight), in<T>(a.dy), in<T>(a.dh), a.sums, out<T>(a.dx), a.partial_dw, a.partial_db,
            a.split, a.eps);
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
// threads; a block per row in at most MAX_THREADS. Names as src/cuda/row.rs builds them.
#define CN_ROW_INSTANTIATE(NAME, BODY, ARGS)                                                         \
    CN_ROW_DTYPES(NAME, BODY, ARGS, warp, cn::Path::Warp, cn::BLOCK, 1, vec, true)                       \
    CN_ROW_DTYPES(NAME, BODY, ARGS, warp, cn::Path::Warp, cn::BLOCK, 1, scalar, false)                   \
    CN_ROW_DTYPES(NAME, BODY, ARGS, block, cn::Path::Block, cn::MAX_THREADS, 1, vec, true)               \
    CN_ROW_DTYPES(NAME, BODY, ARGS, block, cn::Path::Block, cn::MAX_THREADS, 1, scalar, false)

// One split-path entry NAME_WIDTH_SUFFIX, calling BODY<TYPES..., VEC>; TYPES are the
// parameter list's types, (T) or (T, W).
#define CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, SUFFIX, TYPES)                                          \
    extern "C" __global__ void __launch_bounds__(cn::MAX_THREADS, 1) NAME##_##WIDTH##_##SUFFIX(CN_PARAMS_##ARGS TYPES) { \
        BODY<CN_UNPAREN TYPES, VEC>(CN_ARGS_##ARGS);                                                          \
    }

// The split entries of a kernel that reads no parameters: both widths, three dtypes.
#define CN_SPLIT_X(NAME, BODY, ARGS)                                                             \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, vec, true, f32, (float))                                    \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, vec, true, f16, (__half))                                   \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, vec, true, bf16, (__nv_bfloat16))                           \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, scalar, false, f32, (float))                                \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, scalar, false, f16, (__half))                               \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, scalar, false, bf16, (__nv_bfloat16))

// The split entries of a kernel that reads parameters: both widths, five dtype pairs.
#define CN_SPLIT_WIDTH_PARAMS(NAME, BODY, ARGS, WIDTH, VEC)                                      \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, f32, (float, float))                            \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, f16, (__half, __half))                          \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, bf16, (__nv_bfloat16, __nv_bfloat16))           \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, f16_f32, (__half, float))                       \
    CN_SPLIT_ENTRY(NAME, BODY, ARGS, WIDTH, VEC, bf16_f32, (__nv_bfloat16, float))
#define CN_SPLIT_PARAMS(NAME, BODY, ARGS)                    \
    CN_SPLIT_WIDTH_PARAMS(NAME, BODY, ARGS, vec, true)       \
    CN_SPLIT_WIDTH_PARAMS(NAME, BODY, ARGS, scalar, false)

// Every entry point of one row norm: NAME_{fwd,bwd,add_fwd,add_bwd}_{warp,block}_WIDTH_*;
// the split path's NAME_{fwd,add_fwd}_stats_WIDTH_* (x's dtype), NAME_fwd_split_*,
// NAME_bwd_sums_*, NAME_{bwd,add_bwd}_split_* (the fused add's forward ends in the
// plain NAME_fwd_split, reading h); and NAME_dparams_*.
#define CN_ROW_NORM(NAME, CENTER)                                                         \
    CN_ROW_INSTANTIATE(NAME##_fwd, cn::RowNorm<CENTER>::fwd, RowFwdArgs)                  \
    CN_ROW_INSTANTIATE(NAME##_bwd, cn::RowNorm<CENTER>::bwd, RowBwdArgs)                  \
    CN_ROW_INSTANTIATE(NAME##_add_fwd, cn::RowNorm<CENTER>::add_fwd, AddFwdArgs)          \
    CN_ROW_INSTANTIATE(NAME##_add_bwd, cn::RowNorm<CENTER>::add_bwd, AddBwdArgs)          \
    CN_SPLIT_X(NAME##_fwd_stats, cn::RowNorm<CENTER>::split_stats, SplitStatsArgs)        \
    CN_SPLIT_X(NAME##_add_fwd_stats, cn::RowNorm<CENTER>::add_split_stats, SplitStatsArgs) \
    CN_SPLIT_PARAMS(NAME##_fwd_split, cn::RowNorm<CENTER>::split_fwd, SplitFwdArgs)       \
    CN_SPLIT_PARAMS(NAME##_bwd_sums, cn::RowNorm<CENTER>::split_sums, SplitSumsArgs)      \
    CN_SPLIT_PARAMS(NAME##_bwd_split, cn::RowNorm<CENTER>::split_bwd, SplitBwdArgs)       \
    CN_SPLIT_PARAMS(NAME##_add_bwd_split, cn::RowNorm<CENTER>::add_split_bwd, SplitBwdArgs) \
    CN_INSTANTIATE(NAME##_dparams, cn::reduce_param_partials, PartialsArgs)
