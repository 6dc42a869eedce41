// GroupNorm over channels-first input [B, C, *spatial] (PyTorch semantics), forward
// and backward, for f32, f16 and bf16 with f32 statistics.
//
// Each (b, g) is a "row" of K = (C/G)·S contiguous elements (S = prod(spatial)). A
// row can be huge while B·G is small (a diffusion UNet: 32 rows of 40 960), so every
// row is split across `splits` blocks and the whole GPU works on it:
//
// group_norm_stats_*:   (count, mean, M2) of each block's slice, Chan-merged within
//                       the block → part[rows, splits, 3]
// group_norm_fwd_*:     each block merges its row's partials (in order, so every block
//                       of a row sees the same statistics) and writes its slice
// group_norm_bwd_sums_*: one block per (b, c): s1 = Σ dy·x̂ and s2 = Σ dy over the S
//                       elements of the channel → [B, C] each
// group_norm_bwd_dx_*:  dx = rstd · (γ_c·dy − mean(g) − x̂ · mean(g·x̂)), the means
//                       over the row rebuilt from s1, s2 and γ
// group_norm_dparams_*: dγ_c = Σ_b s1[b, c], dβ_c = Σ_b s2[b, c] in order of b
//
// No atomics: results are the same bit for bit from run to run. 16-byte accesses when
// every pointer is aligned and S is a multiple of the vector width (so a vector never
// straddles two channels), else scalar. Limits: B·C·S < 2^31.
#include "common.cuh"

namespace cn {

struct GroupShape {
    int rows, K, S, cpg, G, C, splits, chunk;
};

// Statistics of `row`, merged from its split partials in split order.
__device__ __forceinline__ Moments row_moments(const float* part, int row, int splits) {
    Moments m{0.f, 0.f, 0.f};
    for (int s = 0; s < splits; s++) {
        const float* p = part + 3 * ((size_t)row * splits + s);
        m = merge(m, Moments{p[0], p[1], p[2]});
    }
    return m;
}

template <typename T, int V> __device__ void gn_stats(const T* x, float* part, GroupShape g) {
    __shared__ float smem[96];
    const int row = blockIdx.x, s = blockIdx.y;
    const int start = s * g.chunk, end = min(g.K, start + g.chunk);
    const T* xr = x + (size_t)row * g.K;
    Moments m{0.f, 0.f, 0.f};
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        float v[V];
        load<T, V>(xr + i, v);
        m = merge(m, pack_moments<V, true>(v));
    }
    m = block_moments(m, smem);
    if (threadIdx.x == 0) {
        float* p = part + 3 * ((size_t)row * g.splits + s);
        p[0] = m.n;
        p[1] = m.mean;
        p[2] = m.m2;
    }
}

template <typename T, int V>
__device__ void gn_fwd(const T* x, const T* w, const T* b, const float* part, T* y, GroupShape g, float eps) {
    const int row = blockIdx.x, s = blockIdx.y;
    const Moments m = row_moments(part, row, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const int p0 = (row % g.G) * g.cpg;
    const int start = s * g.chunk, end = min(g.K, start + g.chunk);
    const size_t off = (size_t)row * g.K;
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        float v[V];
        load<T, V>(x + off + i, v);
        // One channel per vector: S is a multiple of V.
        const int c = p0 + i / g.S;
        const float scale = rstd * param_or(w, c, 1.f), shift = param_or(b, c, 0.f);
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = (v[k] - mean) * scale + shift;
        store<T, V>(y + off + i, v);
    }
}

template <typename T, int V>
__device__ void gn_bwd_sums(const T* x, const T* dy, const float* part, float* s1, float* s2, GroupShape g,
                            float eps) {
    __shared__ float smem[32];
    const int bc = blockIdx.x, b = bc / g.C, c = bc % g.C;
    const Moments m = row_moments(part, b * g.G + c / g.cpg, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const size_t off = (size_t)bc * g.S;
    float a1 = 0.f, a2 = 0.f;
    for (int i = threadIdx.x * V; i < g.S; i += blockDim.x * V) {
        float xv[V], gv[V];
        load<T, V>(x + off + i, xv);
        load<T, V>(dy + off + i, gv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            a1 += gv[k] * (xv[k] - mean) * rstd;
            a2 += gv[k];
        }
    }
    a1 = team_sum<false>(a1, smem);
    a2 = team_sum<false>(a2, smem);
    if (threadIdx.x == 0) {
        s1[bc] = a1;
        s2[bc] = a2;
    }
}

template <typename T, int V>
__device__ void gn_bwd_dx(const T* x, const T* w, const T* dy, const float* part, const float* s1, const float* s2,
                          T* dx, GroupShape g, float eps) {
    __shared__ float smem[32];
    const int row = blockIdx.x, s = blockIdx.y;
    const Moments m = row_moments(part, row, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const int p0 = (row % g.G) * g.cpg;
    const size_t sums0 = (size_t)(row / g.G) * g.C + p0;
    // Σ g = Σ_c γ_c·s2 and Σ g·x̂ = Σ_c γ_c·s1 over the group's channels.
    float sg = 0.f, sgx = 0.f;
    for (int j = threadIdx.x; j < g.cpg; j += blockDim.x) {
        const float wc = param_or(w, p0 + j, 1.f);
        sg += wc * s2[sums0 + j];
        sgx += wc * s1[sums0 + j];
    }
    const float inv_k = 1.f / g.K;
    const float mean_g = team_sum<false>(sg, smem) * inv_k;
    const float mean_gx = team_sum<false>(sgx, smem) * inv_k;
    const int start = s * g.chunk, end = min(g.K, start + g.chunk);
    const size_t off = (size_t)row * g.K;
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        float xv[V], gv[V];
        load<T, V>(x + off + i, xv);
        load<T, V>(dy + off + i, gv);
        const float wc = param_or(w, p0 + i / g.S, 1.f);
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float xh = (xv[k] - mean) * rstd;
            xv[k] = rstd * (gv[k] * wc - mean_g - xh * mean_gx);
        }
        store<T, V>(dx + off + i, xv);
    }
}

}  // namespace cn

// One body per kernel: the runtime flag picks the vector width.
#define CN_GN_DISPATCH(FN, ...)                                      \
    if (flags & cn::GVEC) cn::FN<T, cn::pack_of<T>()>(__VA_ARGS__); \
    else cn::FN<T, 1>(__VA_ARGS__);

template <typename T> __device__ void group_norm_stats(const T* x, float* part, cn::GroupShape g, int flags) {
    CN_GN_DISPATCH(gn_stats, x, part, g)
}

template <typename T>
__device__ void group_norm_fwd(const T* x, const T* w, const T* b, const float* part, T* y, cn::GroupShape g,
                               float eps, int flags) {
    CN_GN_DISPATCH(gn_fwd, x, w, b, part, y, g, eps)
}

template <typename T>
__device__ void group_norm_bwd_sums(const T* x, const T* dy, const float* part, float* s1, float* s2, cn::GroupShape g,
                                    float eps, int flags) {
    CN_GN_DISPATCH(gn_bwd_sums, x, dy, part, s1, s2, g, eps)
}

template <typename T>
__device__ void group_norm_bwd_dx(const T* x, const T* w, const T* dy, const float* part, const float* s1,
                                  const float* s2, T* dx, cn::GroupShape g, float eps, int flags) {
    CN_GN_DISPATCH(gn_bwd_dx, x, w, dy, part, s1, s2, dx, g, eps)
}

#define CN_GN_STATS_PARAMS(T) (const T* x, float* part, cn::GroupShape g, int flags)
#define CN_GN_FWD_PARAMS(T) \
    (const T* x, const T* w, const T* b, const float* part, T* y, cn::GroupShape g, float eps, int flags)
#define CN_GN_SUMS_PARAMS(T) \
    (const T* x, const T* dy, const float* part, float* s1, float* s2, cn::GroupShape g, float eps, int flags)
#define CN_GN_DX_PARAMS(T)                                                                                \
    (const T* x, const T* w, const T* dy, const float* part, const float* s1, const float* s2, T* dx, \
     cn::GroupShape g, float eps, int flags)
CN_INSTANTIATE(group_norm_stats, group_norm_stats, CN_GN_STATS_PARAMS, (x, part, g, flags))
CN_INSTANTIATE(group_norm_fwd, group_norm_fwd, CN_GN_FWD_PARAMS, (x, w, b, part, y, g, eps, flags))
CN_INSTANTIATE(group_norm_bwd_sums, group_norm_bwd_sums, CN_GN_SUMS_PARAMS, (x, dy, part, s1, s2, g, eps, flags))
CN_INSTANTIATE(group_norm_bwd_dx, group_norm_bwd_dx, CN_GN_DX_PARAMS, (x, w, dy, part, s1, s2, dx, g, eps, flags))
CN_INSTANTIATE(group_norm_dparams, cn::reduce_param_partials, CN_DPARAMS_PARAMS, (dg, db, dw, dbias, P, N))
