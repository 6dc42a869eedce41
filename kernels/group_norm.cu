// GroupNorm over channels-first input [B, C, *spatial] and over channels-last input
// [B, *spatial, C] (PyTorch semantics), forward and backward, for f32, f16 and bf16
// with f32 statistics; γ and β of x's dtype, or f32 beside f16 and bf16 x (the
// `*_f16_f32` and `*_bf16_f32` entries of the kernels that read them).
//
// Each (b, g) is a "row" of K = (C/G)·S elements (S = prod(spatial)): contiguous when
// channels-first; channels-last, the C/G columns of group g in each of the sample's S
// rows of C, element i at spatial row i / (C/G), channel i mod (C/G) of the group. A
// row can be huge while B·G is small (a diffusion UNet: 32 rows of 40 960), so a row
// larger than one block holds (the group path, below) is split across `splits` blocks
// and the whole GPU works on it, the split path:
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
// GroupNorm + SiLU (entries `group_norm[_channels_last]_silu_{fwd,bwd_sums,bwd_dx}_*`,
// beside the statistics and dparams kernels above) is the same kernels with
// y = silu(z), z = x̂·γ + β, in the forward, and dy·silu'(z) in dy's place in both
// backward kernels, z recomputed from x, γ and β where dy is read: the pre-activation
// is never stored.
//
// Groups small enough for one block (K ≤ 16 384 forward, 8 192 backward) take the
// group path instead (entries `group_norm[_channels_last][_silu]_reg_{fwd,bwd}_*`,
// vector accesses only, 16 bytes, or 8 channels-last where C/G is a multiple of 8
// bytes but not of 16, as f16/bf16 at C/G = 4; chosen on the host): the
// block holds the whole group in registers (ROW_REG elements a thread forward,
// ROW_REG_BWD backward, as the row kernels), so x is read once forward and x and dy
// once backward, in one launch (the backward's dγ/dβ partials, one row of C a
// sample, then summed by the dparams kernel). Thread t holds the vectors t + k·T of
// the group. Per-channel sums (Σ dz·x̂ and Σ dz, the dγ/dβ partials) in a fixed order:
// channels-first, each vector lies in one channel (S a multiple of V); its sums go to
// shared memory, one slot a vector, and a warp adds each channel's slots. Channels-
// last, the V channels of a thread's vectors are the same in every vector (T·V a
// multiple of C/G: C/G/V divides 32), so each thread keeps V sums in registers, the
// lanes of a warp with the same channels are added by shuffles, and the warps' sums
// in order through shared memory.
//
// No atomics: results are the same bit for bit from run to run. 16-byte accesses when
// every pointer is aligned and a vector stays in one channel (channels-first: S a
// multiple of the vector width) or in one row's group (channels-last: C/G a multiple
// of it); else 8-byte ones on the channels-last group path where they fit so, and
// scalar ones.
// Limits: B·C·S < 2^31.
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

// SiLU, z·σ(z), and its derivative σ(z)·(1 + z·(1 − σ(z))), in f32 (σ's reciprocal
// correctly rounded, `__frcp_rn`, without the division's slow-path call).
__device__ __forceinline__ float gn_sigmoid(float z) { return __frcp_rn(1.f + expf(-z)); }
__device__ __forceinline__ float gn_silu(float z) { return z * gn_sigmoid(z); }
__device__ __forceinline__ float gn_silu_grad(float z) {
    const float s = gn_sigmoid(z);
    return s * (1.f + z * (1.f - s));
}

// The gradient reaching z = x̂·γ + β: dy, or with SiLU dy·silu'(z).
template <bool SILU> __device__ __forceinline__ float gn_dz(float dy, float xh, float w, float b) {
    if constexpr (SILU) {
        return dy * gn_silu_grad(xh * w + b);
    } else {
        return dy;
    }
}

// dx of one element, g = dz·γ.
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

template <typename T, typename W, int V, bool LAST, bool SILU>
__device__ __forceinline__ void gn_fwd(const T* x, const W* w, const W* b, const float* part, T* y, GroupShape g, float eps) {
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
        if constexpr (SILU) {
#pragma unroll
            for (int k = 0; k < V; k++) v[k] = gn_silu(v[k]);
        }
        store<T, V>(y + off + elem<LAST>(g, i), v);
    }
}

template <typename T, typename W, int V, bool SILU>
__device__ __forceinline__ void gn_bwd_sums(const T* x, const W* w, const W* bias, const T* dy, const float* part, float* partial_dw,
                            float* partial_db, GroupShape g, float eps) {
    __shared__ float smem[32];
    const int bc = blockIdx.x, b = bc / g.channels, c = bc % g.channels;
    const Moments m = row_moments(part, b * g.groups + c / g.per_group, g.splits);
    const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
    const float wc = SILU ? param_or(w, c, 1.f) : 1.f, bc0 = SILU ? param_or(bias, c, 0.f) : 0.f;
    const size_t off = (size_t)bc * g.spatial;
    float a1 = 0.f, a2 = 0.f;
    for (int i = threadIdx.x * V; i < g.spatial; i += blockDim.x * V) {
        float xv[V], gv[V];
        load<T, V>(x + off + i, xv);
        load<T, V>(dy + off + i, gv);
#pragma unroll
        for (int k = 0; k < V; k++) {
            const float xh = (xv[k] - mean) * rstd, dz = gn_dz<SILU>(gv[k], xh, wc, bc0);
            a1 += dz * xh;
            a2 += dz;
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
template <typename T, typename W, bool SILU>
__device__ __forceinline__ void gn_last_bwd_sums(const T* x, const W* w, const W* bias, const T* dy, const float* part,
                                 float* partial_dw, float* partial_db, GroupShape g, float eps, int R, int rows) {
    const int b = blockIdx.x, r = blockIdx.y;
    const int s_end = min(g.spatial, (r + 1) * rows);
    for (int c = threadIdx.x; c < g.channels; c += blockDim.x) {
        const Moments m = row_moments(part, b * g.groups + c / g.per_group, g.splits);
        const float mean = m.mean, rstd = rsqrtf(m.m2 / m.n + eps);
        const float wc = SILU ? param_or(w, c, 1.f) : 1.f, bc0 = SILU ? param_or(bias, c, 0.f) : 0.f;
        float a1 = 0.f, a2 = 0.f;
        for (int s = r * rows; s < s_end; s++) {
            const size_t at = ((size_t)b * g.spatial + s) * g.channels + c;
            const float xh = (to_f32(x[at]) - mean) * rstd, dz = gn_dz<SILU>(to_f32(dy[at]), xh, wc, bc0);
            a1 += dz * xh;
            a2 += dz;
        }
        const size_t o = ((size_t)b * R + r) * g.channels + c;
        partial_dw[o] = a1;
        partial_db[o] = a2;
    }
}

// R: the slices of spatial rows the channels-last sums come in (1 channels-first).
template <typename T, typename W, int V, bool LAST, bool SILU>
__device__ __forceinline__ void gn_bwd_dx(const T* x, const W* w, const W* bias, const T* dy, const float* part,
                          const float* partial_dw, const float* partial_db, T* dx, GroupShape g, float eps, int R) {
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
            float wv[V], bv[V];
            params_or<W, V>(w, p0 + i % g.per_group, 1.f, wv);
            if constexpr (SILU) params_or<W, V>(bias, p0 + i % g.per_group, 0.f, bv);
#pragma unroll
            for (int k = 0; k < V; k++) {
                const float dz = gn_dz<SILU>(gv[k], (xv[k] - mean) * rstd, wv[k], SILU ? bv[k] : 0.f);
                xv[k] = gn_dx(xv[k], dz * wv[k], mean, rstd, mean_g, mean_gx);
            }
        } else {
            const int c = p0 + i / g.spatial;
            const float wc = param_or(w, c, 1.f), bc0 = SILU ? param_or(bias, c, 0.f) : 0.f;
#pragma unroll
            for (int k = 0; k < V; k++) gv[k] = gn_dz<SILU>(gv[k], (xv[k] - mean) * rstd, wc, bc0);
#pragma unroll
            for (int k = 0; k < V; k++) xv[k] = gn_dx(xv[k], gv[k] * wc, mean, rstd, mean_g, mean_gx);
        }
        store<T, V>(dx + off + elem<LAST>(g, i), xv);
    }
}

// The group path's forward: block `row` normalizes its group from registers.
template <typename T, typename W, int V, bool LAST, bool SILU>
__device__ void gn_reg_fwd(const T* x, const W* w, const W* b, T* y, GroupShape g, float eps) {
    constexpr int ITEMS = ROW_REG / V;
    __shared__ float smem[32];
    const int row = blockIdx.x, nitems = g.len / V, p0 = (row % g.groups) * g.per_group;
    const int tid = threadIdx.x, threads = blockDim.x;
    const size_t off = row_start<LAST>(g, row);
    const float inv_n = __frcp_rn((float)g.len);
    float v[ROW_REG];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int it = tid + k * threads;
        if (it < nitems) {
            load<T, V>(x + off + elem<LAST>(g, it * V), v + k * V);
#pragma unroll
            for (int i = 0; i < V; i++) s += v[k * V + i];
        }
    }
    const float mean = team_sum<false>(s, smem) * inv_n;
    float m2 = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        if (tid + k * threads < nitems) {
#pragma unroll
            for (int i = 0; i < V; i++) m2 += (v[k * V + i] - mean) * (v[k * V + i] - mean);
        }
    }
    const float rstd = rsqrtf(team_sum<false>(m2, smem) * inv_n + eps);
    // Channels-last, this thread's channels are the same in each of its vectors.
    float wv[V], bv[V];
    if constexpr (LAST) {
        params_or<W, V>(w, p0 + tid * V % g.per_group, 1.f, wv);
        params_or<W, V>(b, p0 + tid * V % g.per_group, 0.f, bv);
    }
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int it = tid + k * threads;
        if (it < nitems) {
            float o[V];
            if constexpr (LAST) {
#pragma unroll
                for (int i = 0; i < V; i++) o[i] = gn_y(v[k * V + i], mean, rstd * wv[i], bv[i]);
            } else {
                const int c = p0 + it * V / g.spatial;
                const float scale = rstd * param_or(w, c, 1.f), shift = param_or(b, c, 0.f);
#pragma unroll
                for (int i = 0; i < V; i++) o[i] = gn_y(v[k * V + i], mean, scale, shift);
            }
            if constexpr (SILU) {
#pragma unroll
                for (int i = 0; i < V; i++) o[i] = gn_silu(o[i]);
            }
            store<T, V>(y + off + elem<LAST>(g, it * V), o);
        }
    }
}

// The group path's backward: block `row` = (b, group) writes dx of its group and the
// group's channels of partial row b of [B, C] (Σ dz·x̂, Σ dz). Dynamic shared memory:
// 2 floats a vector of the group (channels-first), 2·(warps)·(C/G) (channels-last).
template <typename T, typename W, int V, bool LAST, bool SILU>
__device__ void gn_reg_bwd(const T* x, const W* w, const W* bias, const T* dy, T* dx, float* partial_dw,
                           float* partial_db, GroupShape g, float eps) {
    constexpr int ITEMS = ROW_REG_BWD / V;
    __shared__ float smem[32];
    CN_DYNAMIC_SHARED(float, sums);
    const int row = blockIdx.x, nitems = g.len / V, p0 = (row % g.groups) * g.per_group;
    const int tid = threadIdx.x, threads = blockDim.x;
    const size_t off = row_start<LAST>(g, row);
    const float inv_n = __frcp_rn((float)g.len);
    float xv[ROW_REG_BWD], gv[ROW_REG_BWD];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int it = tid + k * threads;
        if (it < nitems) {
            load<T, V>(x + off + elem<LAST>(g, it * V), xv + k * V);
            load<T, V>(dy + off + elem<LAST>(g, it * V), gv + k * V);
#pragma unroll
            for (int i = 0; i < V; i++) s += xv[k * V + i];
        }
    }
    const float mean = team_sum<false>(s, smem) * inv_n;
    float m2 = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        if (tid + k * threads < nitems) {
#pragma unroll
            for (int i = 0; i < V; i++) m2 += (xv[k * V + i] - mean) * (xv[k * V + i] - mean);
        }
    }
    const float rstd = rsqrtf(team_sum<false>(m2, smem) * inv_n + eps);
    // γ (and β for SiLU) of each element: channels-last, V values the same in every
    // vector of this thread; channels-first, one a vector.
    const int c0 = p0 + tid * V % g.per_group;
    float wv[V], bv[V], wk[ITEMS], bk[ITEMS];
    if constexpr (LAST) {
        params_or<W, V>(w, c0, 1.f, wv);
        if constexpr (SILU) params_or<W, V>(bias, c0, 0.f, bv);
    }
    // x̂ and dz in place of x and dy; the per-vector (channels-first) or per-channel
    // (channels-last, aw and ab) sums of dz·x̂ and dz.
    float aw[V], ab[V];
#pragma unroll
    for (int i = 0; i < V; i++) aw[i] = ab[i] = 0.f;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int it = tid + k * threads;
        if (it < nitems) {
            if constexpr (!LAST) {
                const int c = p0 + it * V / g.spatial;
                wk[k] = param_or(w, c, 1.f);
                bk[k] = SILU ? param_or(bias, c, 0.f) : 0.f;
            }
            float pw = 0.f, pb = 0.f;
#pragma unroll
            for (int i = 0; i < V; i++) {
                const int e = k * V + i;
                const float xh = (xv[e] - mean) * rstd;
                float dz;
                if constexpr (LAST) dz = gn_dz<SILU>(gv[e], xh, wv[i], SILU ? bv[i] : 0.f);
                else dz = gn_dz<SILU>(gv[e], xh, wk[k], bk[k]);
                xv[e] = xh;
                gv[e] = dz;
                if constexpr (LAST) {
                    aw[i] += dz * xh;
                    ab[i] += dz;
                } else {
                    pw += dz * xh;
                    pb += dz;
                }
            }
            if constexpr (!LAST) {
                sums[it] = pw;
                sums[nitems + it] = pb;
            }
        }
    }
    // Each channel's sums, then Σ g = Σ_c γ_c·Σ dz and Σ g·x̂ = Σ_c γ_c·Σ dz·x̂ over
    // the group (this thread's share of them in sg, sgx).
    const int lane = tid & 31, warp = tid >> 5, warps = threads >> 5;
    const size_t prow = (size_t)(row / g.groups) * g.channels + p0;
    float sg = 0.f, sgx = 0.f;
    if constexpr (LAST) {
        // Lanes l and l ^ o hold the same channels for o a multiple of (C/G)/V.
        const int period = g.per_group / V;
        for (int o = 16; o >= period; o >>= 1) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                aw[i] += __shfl_xor_sync(0xffffffffu, aw[i], o);
                ab[i] += __shfl_xor_sync(0xffffffffu, ab[i], o);
            }
        }
        const int cw = warps * g.per_group;
        if (lane < period) {
#pragma unroll
            for (int i = 0; i < V; i++) {
                sums[warp * g.per_group + lane * V + i] = aw[i];
                sums[cw + warp * g.per_group + lane * V + i] = ab[i];
            }
        }
        __syncthreads();
        for (int j = tid; j < g.per_group; j += threads) {
            float pw = 0.f, pb = 0.f;
            for (int q = 0; q < warps; q++) {
                pw += sums[q * g.per_group + j];
                pb += sums[cw + q * g.per_group + j];
            }
            partial_dw[prow + j] = pw;
            partial_db[prow + j] = pb;
            const float wc = param_or(w, p0 + j, 1.f);
            sg += wc * pb;
            sgx += wc * pw;
        }
    } else {
        __syncthreads();
        const int per = g.spatial / V;
        for (int c = warp; c < g.per_group; c += warps) {
            float pw = 0.f, pb = 0.f;
            for (int j = lane; j < per; j += 32) {
                pw += sums[c * per + j];
                pb += sums[nitems + c * per + j];
            }
            pw = warp_sum(pw);
            pb = warp_sum(pb);
            if (lane == 0) {
                partial_dw[prow + c] = pw;
                partial_db[prow + c] = pb;
                const float wc = param_or(w, p0 + c, 1.f);
                sg += wc * pb;
                sgx += wc * pw;
            }
        }
    }
    const float mean_g = team_sum<false>(sg, smem) * inv_n;
    const float mean_gx = team_sum<false>(sgx, smem) * inv_n;
#pragma unroll
    for (int k = 0; k < ITEMS; k++) {
        const int it = tid + k * threads;
        if (it < nitems) {
            float o[V];
#pragma unroll
            for (int i = 0; i < V; i++) {
                const int e = k * V + i;
                float wi;
                if constexpr (LAST) wi = wv[i];
                else wi = wk[k];
                o[i] = rstd * (gv[e] * wi - mean_g - xv[e] * mean_gx);
            }
            store<T, V>(dx + off + elem<LAST>(g, it * V), o);
        }
    }
}

}  // namespace cn

// The entry bodies: each reads its tensors from its kernel's arguments (params.h), and
// the runtime flag picks the vector width; GroupNorm + SiLU has entries of its own
// (`group_norm_silu_*`, `group_norm_channels_last_silu_*`), chosen on the host. FN's
// template arguments are TYPES, in parentheses ((T) or (T, W)), the width, the layout
// and SiLU.
#define CN_GN_DISPATCH(FN, TYPES, ...)                                                         \
    if (a.flags & cn::GVEC) cn::FN<CN_UNPAREN TYPES, cn::pack_of<T>(), LAST, SILU>(__VA_ARGS__); \
    else cn::FN<CN_UNPAREN TYPES, 1, LAST, SILU>(__VA_ARGS__);

template <bool LAST, bool SILU> struct GroupNorm {
    template <typename T> static __device__ __forceinline__ void stats(const cn::GroupStatsArgs& a) {
        if (a.flags & cn::GVEC) cn::gn_stats<T, cn::pack_of<T>(), LAST>(cn::in<T>(a.x), cn::out<float>(a.moments), a.shape);
        else cn::gn_stats<T, 1, LAST>(cn::in<T>(a.x), cn::out<float>(a.moments), a.shape);
    }

    template <typename T, typename W> static __device__ __forceinline__ void fwd(const cn::GroupFwdArgs& a) {
        CN_GN_DISPATCH(gn_fwd, (T, W), cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias),
                       cn::in<float>(a.moments), cn::out<T>(a.y), a.shape, a.eps)
    }

    // The group path (one block a group), by 16-byte vectors, or channels-last by 8-byte
    // ones (GVEC8; channels-first would pay for that variant in every launch: the f32
    // forward's entry took 88 registers instead of 62).
    template <typename T, typename W> static __device__ __forceinline__ void reg_fwd(const cn::GroupRegFwdArgs& a) {
        if constexpr (LAST) {
            if (a.flags & cn::GVEC8) return reg_fwd_by<T, W, cn::pack_of<T>() / 2>(a);
        }
        reg_fwd_by<T, W, cn::pack_of<T>()>(a);
    }

    template <typename T, typename W> static __device__ __forceinline__ void reg_bwd(const cn::GroupRegBwdArgs& a) {
        if constexpr (LAST) {
            if (a.flags & cn::GVEC8) return reg_bwd_by<T, W, cn::pack_of<T>() / 2>(a);
        }
        reg_bwd_by<T, W, cn::pack_of<T>()>(a);
    }

    template <typename T, typename W, int V>
    static __device__ __forceinline__ void reg_fwd_by(const cn::GroupRegFwdArgs& a) {
        cn::gn_reg_fwd<T, W, V, LAST, SILU>(cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias), cn::out<T>(a.y),
                                            a.shape, a.eps);
    }

    template <typename T, typename W, int V>
    static __device__ __forceinline__ void reg_bwd_by(const cn::GroupRegBwdArgs& a) {
        cn::gn_reg_bwd<T, W, V, LAST, SILU>(cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias), cn::in<T>(a.dy),
                                            cn::out<T>(a.dx), cn::out<float>(a.partial_dw),
                                            cn::out<float>(a.partial_db), a.shape, a.eps);
    }

    // dx from sums in R slices a sample (channels-last) or one (channels-first).
    template <typename T, typename W, typename A> static __device__ __forceinline__ void dx(const A& a, int R) {
        CN_GN_DISPATCH(gn_bwd_dx, (T, W), cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias), cn::in<T>(a.dy),
                       cn::in<float>(a.moments), cn::in<float>(a.partial_dw), cn::in<float>(a.partial_db),
                       cn::out<T>(a.dx), a.shape, a.eps, R)
    }
};

template <bool SILU> struct GroupNormBwd {
    template <typename T, typename W> static __device__ __forceinline__ void sums(const cn::GroupSumsArgs& a) {
        const float* m = cn::in<float>(a.moments);
        float *dw = cn::out<float>(a.partial_dw), *db = cn::out<float>(a.partial_db);
        const T *x = cn::in<T>(a.x), *dy = cn::in<T>(a.dy);
        const W *w = cn::in<W>(a.weight), *b = cn::in<W>(a.bias);
        if (a.flags & cn::GVEC) cn::gn_bwd_sums<T, W, cn::pack_of<T>(), SILU>(x, w, b, dy, m, dw, db, a.shape, a.eps);
        else cn::gn_bwd_sums<T, W, 1, SILU>(x, w, b, dy, m, dw, db, a.shape, a.eps);
    }

    template <typename T, typename W> static __device__ __forceinline__ void last_sums(const cn::GroupLastSumsArgs& a) {
        cn::gn_last_bwd_sums<T, W, SILU>(cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias), cn::in<T>(a.dy),
                                         cn::in<float>(a.moments), cn::out<float>(a.partial_dw),
                                         cn::out<float>(a.partial_db), a.shape, a.eps, a.slices, a.slice_rows);
    }

    template <typename T, typename W> static __device__ __forceinline__ void first_dx(const cn::GroupDxArgs& a) {
        GroupNorm<false, SILU>::template dx<T, W>(a, 1);
    }

    template <typename T, typename W> static __device__ __forceinline__ void last_dx(const cn::GroupLastDxArgs& a) {
        GroupNorm<true, SILU>::template dx<T, W>(a, a.slices);
    }
};

// The layouts and SiLU as names the entry macros take (no comma in them).
using GroupNormFirst = GroupNorm<false, false>;
using GroupNormLast = GroupNorm<true, false>;
using GroupNormFirstSilu = GroupNorm<false, true>;
using GroupNormLastSilu = GroupNorm<true, true>;

CN_INSTANTIATE(group_norm_stats, GroupNormFirst::stats, GroupStatsArgs)
CN_INSTANTIATE_PARAMS(group_norm_fwd, GroupNormFirst::fwd, GroupFwdArgs)
CN_INSTANTIATE_PARAMS(group_norm_bwd_sums, GroupNormBwd<false>::sums, GroupSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_bwd_dx, GroupNormBwd<false>::first_dx, GroupDxArgs)
CN_INSTANTIATE(group_norm_dparams, cn::reduce_param_partials, PartialsArgs)
CN_INSTANTIATE(group_norm_channels_last_stats, GroupNormLast::stats, GroupStatsArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_fwd, GroupNormLast::fwd, GroupFwdArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_bwd_sums, GroupNormBwd<false>::last_sums, GroupLastSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_bwd_dx, GroupNormBwd<false>::last_dx, GroupLastDxArgs)
CN_INSTANTIATE(group_norm_channels_last_dparams, cn::reduce_param_partials, PartialsArgs)
CN_INSTANTIATE_PARAMS(group_norm_silu_fwd, GroupNormFirstSilu::fwd, GroupFwdArgs)
CN_INSTANTIATE_PARAMS(group_norm_silu_bwd_sums, GroupNormBwd<true>::sums, GroupSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_silu_bwd_dx, GroupNormBwd<true>::first_dx, GroupDxArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_silu_fwd, GroupNormLastSilu::fwd, GroupFwdArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_silu_bwd_sums, GroupNormBwd<true>::last_sums, GroupLastSumsArgs)
CN_INSTANTIATE_PARAMS(group_norm_channels_last_silu_bwd_dx, GroupNormBwd<true>::last_dx, GroupLastDxArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_reg_fwd, GroupNormFirst::reg_fwd, GroupRegFwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_reg_bwd, GroupNormFirst::reg_bwd, GroupRegBwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_channels_last_reg_fwd, GroupNormLast::reg_fwd, GroupRegFwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_channels_last_reg_bwd, GroupNormLast::reg_bwd, GroupRegBwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_silu_reg_fwd, GroupNormFirstSilu::reg_fwd, GroupRegFwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_silu_reg_bwd, GroupNormFirstSilu::reg_bwd, GroupRegBwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_channels_last_silu_reg_fwd, GroupNormLastSilu::reg_fwd, GroupRegFwdArgs)
CN_INSTANTIATE_PARAMS_REG(group_norm_channels_last_silu_reg_bwd, GroupNormLastSilu::reg_bwd, GroupRegBwdArgs)
