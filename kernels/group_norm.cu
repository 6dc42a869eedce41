// GroupNorm over channels-first input [B, C, *spatial] and over channels-last input
// [B, *spatial, C] (PyTorch semantics), forward and backward, for f32, f16 and bf16
// with f32 statistics; γ and β of x's dtype, or f32 beside f16 and bf16 x (the
// `*_f16_f32` and `*_bf16_f32` entries of the kernels that read them).
//
// Each (b, g) is a "row" of K = (C/G)·S elements (S = prod(spatial)): contiguous when
// channels-first; channels-last, the C/G columns of group g in each of the sample's S
// rows of C, element i at spatial row i / (C/G), channel i mod (C/G) of the group. A
// row can be huge while B·G is small (a diffusion UNet: 32 rows of 40 960), so every
// row is split across `splits` blocks and the whole GPU works on it:
//
// group_norm[_channels_last]_stats_*: (count, mean, M2) of each block's slice,
//                       Chan-merged within the block → part[rows, splits, 3]
// group_norm[_channels_last]_fwd_*: each block merges its row's partials (in order, so
//                       every block of a row sees the same statistics) and writes its
//                       slice
// group_norm_bwd_sums_*: one block per (b, c): partial_dw = Σ dy·x̂ and partial_db =
//                       Σ dy over the S elements of the channel → [B, C] each
// group_norm_channels_last_bwd_sums_*: one block per (b, slice of R of the spatial
//                       rows), a thread per channel, so that a warp reads consecutive
//                       channels of a row: partial_dw, partial_db of the slice →
//                       [B, R, C] each
// group_norm[_channels_last]_bwd_dx_*: dx = rstd · (γ_c·dy − mean(g) − x̂ · mean(g·x̂)),
//                       the means over the row rebuilt from partial_dw, partial_db
//                       (over the R slices) and γ
// group_norm[_channels_last]_dparams_*: dγ_c = Σ partial_dw[p, c], dβ_c =
//                       Σ partial_db[p, c] over the B (or B·R) partial rows, in order
//
// No atomics: results are the same bit for bit from run to run. 16-byte accesses when
// every pointer is aligned and a vector stays in one channel (channels-first: S a
// multiple of the vector width) or in one row's group (channels-last: C/G a multiple
// of it), else scalar. Limits: B·C·S < 2^31.
#include "common.cuh"

namespace cn {

// Where row `row` starts, and where its element i lies from there: channels-last rows
// are strided (module comment).
template <bool LAST> __device__ __forceinline__ size_t row_start(const GroupShape& g, int row) {
    if constexpr (LAST) {
        return (size_t)(row / g.groups) * g.spatial * g.channels + (row % g.groups) * g.per_group;
    } else {
        return (size_t)row * g.len;
    }
}

template <bool LAST> __device__ __forceinline__ auto elem(const GroupShape& g, int i) {
    if constexpr (LAST) {
        return (size_t)(i / g.per_group) * g.channels + i % g.per_group;
    } else {
        return i;
    }
}

// y of one element.
__device__ __forceinline__ float gn_y(float x, float mean, float scale, float shift) {
    return (x - mean) * scale + shift;
}

// dx of one element, g = dy·γ.
__device__ __forceinline__ float gn_dx(float x, float g, float mean, float rstd, float mean_g, float mean_gx) {
    const float xh = (x - mean) * rstd;
    return rstd * (g - mean_g - xh * mean_gx);
}

template <typename T, int V, bool LAST> __device__ void gn_stats(const T* x, float* part, GroupShape g) {
    __shared__ float smem[96];
    const int row = blockIdx.x, s = blockIdx.y;
    const int start = s * g.chunk, end = min(g.len, start + g.chunk);
    const auto at = [&](int i) { return elem<LAST>(g, i); };
    slice_moments<T, V>(x + row_start<LAST>(g, row), start, end, at, smem, part + 3 * ((size_t)row * g.splits + s));
}

template <typename T, typename W, int V, bool LAST>
__device__ void gn_fwd(const T* x, const W* w, const W* b, const float* part, T* y, GroupShape g, float eps) {
    const int row = blockIdx.x, s = blockIdx.y;
    const Moments m = row_moments(part, row, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const int p0 = (row % g.groups) * g.per_group;
    const int start = s * g.chunk, end = min(g.len, start + g.chunk);
    const size_t off = row_start<LAST>(g, row);
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        float v[V];
        load<T, V>(x + off + elem<LAST>(g, i), v);
        if constexpr (LAST) {
            // V consecutive channels of one spatial row: C/G is a multiple of V.
            float wv[V], bv[V];
            params_or<W, V>(w, p0 + i % g.per_group, 1.f, wv);
            params_or<W, V>(b, p0 + i % g.per_group, 0.f, bv);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = gn_y(v[k], mean, rstd * wv[k], bv[k]);
        } else {
            // One channel per vector: S is a multiple of V.
            const int c = p0 + i / g.spatial;
            const float scale = rstd * param_or(w, c, 1.f), shift = param_or(b, c, 0.f);
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = gn_y(v[k], mean, scale, shift);
        }
        store<T, V>(y + off + elem<LAST>(g, i), v);
    }
}

template <typename T, int V>
__device__ void gn_bwd_sums(const T* x, const T* dy, const float* part, float* partial_dw, float* partial_db,
                            GroupShape g, float eps) {
    __shared__ float smem[32];
    const int bc = blockIdx.x, b = bc / g.channels, c = bc % g.channels;
    const Moments m = row_moments(part, b * g.groups + c / g.per_group, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const size_t off = (size_t)bc * g.spatial;
    float a1 = 0.f, a2 = 0.f;
    for (int i = threadIdx.x * V; i < g.spatial; i += blockDim.x * V) {
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
        partial_dw[bc] = a1;
        partial_db[bc] = a2;
    }
}

// Channels-last: partial_dw = Σ dy·x̂ and partial_db = Σ dy of each channel over rows
// [r·rows, (r + 1)·rows) of sample b, written to [b, r, c] of [B, R, C].
template <typename T>
__device__ void gn_last_bwd_sums(const T* x, const T* dy, const float* part, float* partial_dw, float* partial_db,
                                 GroupShape g, float eps, int R, int rows) {
    const int b = blockIdx.x, r = blockIdx.y;
    const int s_end = min(g.spatial, (r + 1) * rows);
    for (int c = threadIdx.x; c < g.channels; c += blockDim.x) {
        const Moments m = row_moments(part, b * g.groups + c / g.per_group, g.splits);
        const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
        float a1 = 0.f, a2 = 0.f;
        for (int s = r * rows; s < s_end; s++) {
            const size_t at = ((size_t)b * g.spatial + s) * g.channels + c;
            const float xv = to_f32(x[at]), gv = to_f32(dy[at]);
            a1 += gv * (xv - mean) * rstd;
            a2 += gv;
        }
        const size_t o = ((size_t)b * R + r) * g.channels + c;
        partial_dw[o] = a1;
        partial_db[o] = a2;
    }
}

// R: the slices of spatial rows the channels-last sums come in (1 channels-first).
template <typename T, typename W, int V, bool LAST>
__device__ void gn_bwd_dx(const T* x, const W* w, const T* dy, const float* part, const float* partial_dw,
                          const float* partial_db, T* dx, GroupShape g, float eps, int R) {
    __shared__ float smem[32];
    const int row = blockIdx.x, s = blockIdx.y;
    const Moments m = row_moments(part, row, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const int p0 = (row % g.groups) * g.per_group;
    // Σ g = Σ_c γ_c·partial_db and Σ g·x̂ = Σ_c γ_c·partial_dw over the group's channels.
    float sg = 0.f, sgx = 0.f;
    if constexpr (LAST) {
        const size_t sums0 = (size_t)(row / g.groups) * R * g.channels + p0;
        for (int j = threadIdx.x; j < g.per_group * R; j += blockDim.x) {
            const int c = j % g.per_group;
            const float wc = param_or(w, p0 + c, 1.f);
            const size_t at = sums0 + (size_t)(j / g.per_group) * g.channels + c;
            sg += wc * partial_db[at];
            sgx += wc * partial_dw[at];
        }
    } else {
        const size_t sums0 = (size_t)(row / g.groups) * g.channels + p0;
        for (int j = threadIdx.x; j < g.per_group; j += blockDim.x) {
            const float wc = param_or(w, p0 + j, 1.f);
            sg += wc * partial_db[sums0 + j];
            sgx += wc * partial_dw[sums0 + j];
        }
    }
    const float inv_k = 1.f / g.len;
    const float mean_g = team_sum<false>(sg, smem) * inv_k;
    const float mean_gx = team_sum<false>(sgx, smem) * inv_k;
    const int start = s * g.chunk, end = min(g.len, start + g.chunk);
    const size_t off = row_start<LAST>(g, row);
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        float xv[V], gv[V];
        load<T, V>(x + off + elem<LAST>(g, i), xv);
        load<T, V>(dy + off + elem<LAST>(g, i), gv);
        if constexpr (LAST) {
            float wv[V];
            params_or<W, V>(w, p0 + i % g.per_group, 1.f, wv);
#pragma unroll
            for (int k = 0; k < V; k++) xv[k] = gn_dx(xv[k], gv[k] * wv[k], mean, rstd, mean_g, mean_gx);
        } else {
            const float wc = param_or(w, p0 + i / g.spatial, 1.f);
#pragma unroll
            for (int k = 0; k < V; k++) xv[k] = gn_dx(xv[k], gv[k] * wc, mean, rstd, mean_g, mean_gx);
        }
        store<T, V>(dx + off + elem<LAST>(g, i), xv);
    }
}

}  // namespace cn

// The entry bodies: each reads its tensors from its kernel's arguments (params.h), and
// the runtime flag picks the vector width. FN's template arguments are TYPES, in
// parentheses ((T) or (T, W)), the width and the layout.
#define CN_GN_DISPATCH(FN, TYPES, ...)                                                  \
    if (a.flags & cn::GVEC) cn::FN<CN_UNPAREN TYPES, cn::pack_of<T>(), LAST>(__VA_ARGS__); \
    else cn::FN<CN_UNPAREN TYPES, 1, LAST>(__VA_ARGS__);

template <bool LAST> struct GroupNorm {
    template <typename T> static __device__ __forceinline__ void stats(const cn::GroupStatsArgs& a) {
        CN_GN_DISPATCH(gn_stats, (T), cn::in<T>(a.x), cn::out<float>(a.moments), a.shape)
    }

    template <typename T, typename W> static __device__ __forceinline__ void fwd(const cn::GroupFwdArgs& a) {
        CN_GN_DISPATCH(gn_fwd, (T, W), cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias),
                       cn::in<float>(a.moments), cn::out<T>(a.y), a.shape, a.eps)
    }
};
template <typename T> __device__ __forceinline__ void group_norm_bwd_sums(const cn::GroupSumsArgs& a) {
    const float* m = cn::in<float>(a.moments);
    float *dw = cn::out<float>(a.partial_dw), *db = cn::out<float>(a.partial_db);
    if (a.flags & cn::GVEC) cn::gn_bwd_sums<T, cn::pack_of<T>()>(cn::in<T>(a.x), cn::in<T>(a.dy), m, dw, db, a.shape, a.eps);
    else cn::gn_bwd_sums<T, 1>(cn::in<T>(a.x), cn::in<T>(a.dy), m, dw, db, a.shape, a.eps);
}

template <typename T> __device__ __forceinline__ void group_norm_last_bwd_sums(const cn::GroupLastSumsArgs& a) {
    cn::gn_last_bwd_sums<T>(cn::in<T>(a.x), cn::in<T>(a.dy), cn::in<float>(a.moments), cn::out<float>(a.partial_dw),
                            cn::out<float>(a.partial_db), a.shape, a.eps, a.slices, a.slice_rows);
}

// dx from sums in R slices a sample (channels-last) or one (channels-first).
template <typename T, typename W, bool LAST, typename A>
__device__ __forceinline__ void group_norm_bwd_dx(const A& a, int R) {
    CN_GN_DISPATCH(gn_bwd_dx, (T, W), cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<T>(a.dy), cn::in<float>(a.moments),
                   cn::in<float>(a.partial_dw), cn::in<float>(a.partial_db), cn::out<T>(a.dx), a.shape, a.eps, R)
}

template <typename T, typename W> __device__ __forceinline__ void group_norm_first_bwd_dx(const cn::GroupDxArgs& a) {
    group_norm_bwd_dx<T, W, false>(a, 1);
}

template <typename T, typename W>
__device__ __forceinline__ void group_norm_last_bwd_dx(const cn::GroupLastDxArgs& a) {
    group_norm_bwd_dx<T, W, true>(a, a.slices);
}

CN_INSTANTIATE(group_norm_stats, GroupNorm<false>::stats, GroupStatsArgs)
CN_INSTANTIATE_PARAMS(group_norm_fwd, GroupNorm<false>::fwd, GroupFwdArgs)
CN_INSTANTIATE(group_norm_bwd_sums, group_norm_bwd_sums, GroupSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_bwd_dx, group_norm_first_bwd_dx, GroupDxArgs)
CN_INSTANTIATE(group_norm_dparams, cn::reduce_param_partials, PartialsArgs)
CN_INSTANTIATE(group_norm_channels_last_stats, GroupNorm<true>::stats, GroupStatsArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_fwd, GroupNorm<true>::fwd, GroupFwdArgs)
CN_INSTANTIATE(group_norm_channels_last_bwd_sums, group_norm_last_bwd_sums, GroupLastSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_bwd_dx, group_norm_last_bwd_dx, GroupLastDxArgs)
CN_INSTANTIATE(group_norm_channels_last_dparams, cn::reduce_param_partials, PartialsArgs)
