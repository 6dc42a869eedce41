// BatchNorm over channels-first input [B, C, *spatial] (PyTorch semantics: biased
// variance, eps inside the square root), in training (batch statistics) and in eval
// (running statistics), forward and backward, for f32, f16 and bf16 with f32
// statistics. γ, β and the running statistics are of x's dtype, or f32 beside f16 and
// bf16 x (the `*_f16_f32` and `*_bf16_f32` entries of the kernels that read or write
// them).
//
// Channel c gathers K = B·S elements (S = prod(spatial)): B runs of S contiguous
// elements, run b at b·C·S + c·S. Element i of the channel is element i mod S of run
// i / S. A channel is long while C can be small (64 channels of 100 352 at
// [32, 64, 56, 56]), so each is split across `splits` blocks, a block per (c, slice).
// The host launches the kernels on batches of channels that fit in half of the L2: c
// is then a channel of the batch, x, dy, y, dx and every per-channel pointer start at
// the batch's first channel, and the strides are the whole tensor's (C).
//
// batch_norm_stats_*:   (count, mean, M2) of each block's slice, Chan-merged within the
//                       block → part[channels of the batch, splits, 3]
// batch_norm_fwd_*:     each block merges its channel's partials in order (so every
//                       block of a channel sees the same statistics) and writes its
//                       slice of y; the first block of a channel also writes the
//                       channel's mean and biased variance, rounded to the parameters'
//                       dtype, for the running statistics
// batch_norm_bwd_sums_*: partial_dw = Σ dy·x̂ and partial_db = Σ dy over each block's
//                       slice → [splits, C]
// batch_norm_bwd_dx_*:  dx = rstd·(γ·dy − γ·Σdb/K − x̂·γ·Σdw/K), with Σdw and Σdb the
//                       partials summed over the channel's slices in order
// batch_norm_eval_*:    the same kernels with the running mean and variance in place of
//                       the batch's (eval): the forward is a per-channel affine, and
//                       dx = γ·rstd·dy needs no sums (they are run for dγ/dβ alone)
// batch_norm_dparams_*: dγ_c = Σ partial_dw[s, c], dβ_c = Σ partial_db[s, c] over the
//                       slices, in order
//
// No atomics: results are the same bit for bit from run to run. 16-byte accesses when
// every pointer is aligned and S is a multiple of the vector width (a vector then stays
// in one run), else scalar. Limits: B·C·S < 2^31, and B·S plus a slice and a block's
// stride too (the host checks both).
#include "common.cuh"

namespace cn {

// Offset of element i of channel c (of the batch) from the batch's first channel.
__device__ __forceinline__ size_t bn_at(const BatchShape& s, int c, int i) {
    return (size_t)(i / s.spatial) * s.channels * s.spatial + (size_t)c * s.spatial + i % s.spatial;
}

// Mean and biased variance of channel c: from the running statistics (EVAL), else merged from its
// slices' partials in slice order.
template <typename W, bool EVAL>
__device__ __forceinline__ void bn_channel(const float* part, const W* rmean, const W* rvar, const BatchShape& s,
                                           int c, float& mean, float& var) {
    if constexpr (EVAL) {
        mean = to_f32(rmean[c]);
        var = to_f32(rvar[c]);
    } else {
        const Moments m = row_moments(part, c, s.splits);
        mean = m.mean;
        var = m.m2 / m.n;
    }
}

template <typename T, int V> __device__ void bn_stats(const T* x, float* part, BatchShape s) {
    __shared__ float smem[96];
    const int c = blockIdx.x, k = blockIdx.y;
    const int start = k * s.chunk, end = min(s.len, start + s.chunk);
    const auto at = [&](int i) { return bn_at(s, c, i); };
    slice_moments<T, V>(x, start, end, at, smem, part + 3 * ((size_t)c * s.splits + k));
}

// `mean` and `var` (training only; null in eval) receive the channel's statistics.
template <typename T, typename W, int V, bool EVAL>
__device__ void bn_fwd(const T* x, const W* w, const W* b, const float* part, const W* rmean, const W* rvar, T* y,
                       W* mean_out, W* var_out, BatchShape s, float eps) {
    const int c = blockIdx.x, k = blockIdx.y;
    float mean, var;
    bn_channel<W, EVAL>(part, rmean, rvar, s, c, mean, var);
    if (!EVAL && k == 0 && threadIdx.x == 0) {
        mean_out[c] = from_f32<W>(mean);
        var_out[c] = from_f32<W>(var);
    }
    const float scale = rsqrtf(var + eps) * param_or(w, c, 1.f), shift = param_or(b, c, 0.f);
    const int start = k * s.chunk, end = min(s.len, start + s.chunk);
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        const size_t at = bn_at(s, c, i);
        float v[V];
        load<T, V>(x + at, v);
#pragma unroll
        for (int j = 0; j < V; j++) v[j] = (v[j] - mean) * scale + shift;
        store<T, V>(y + at, v);
    }
}

template <typename T, typename W, int V, bool EVAL>
__device__ void bn_bwd_sums(const T* x, const T* dy, const float* part, const W* rmean, const W* rvar,
                            float* partial_dw, float* partial_db, BatchShape s, float eps) {
    __shared__ float smem[32];
    const int c = blockIdx.x, k = blockIdx.y;
    float mean, var;
    bn_channel<W, EVAL>(part, rmean, rvar, s, c, mean, var);
    const float rstd = rsqrtf(var + eps);
    const int start = k * s.chunk, end = min(s.len, start + s.chunk);
    float a1 = 0.f, a2 = 0.f;
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        const size_t at = bn_at(s, c, i);
        float xv[V], gv[V];
        load<T, V>(x + at, xv);
        load<T, V>(dy + at, gv);
#pragma unroll
        for (int j = 0; j < V; j++) {
            a1 += gv[j] * (xv[j] - mean) * rstd;
            a2 += gv[j];
        }
    }
    a1 = team_sum<false>(a1, smem);
    a2 = team_sum<false>(a2, smem);
    if (threadIdx.x == 0) {
        partial_dw[(size_t)k * s.channels + c] = a1;
        partial_db[(size_t)k * s.channels + c] = a2;
    }
}

// Training reads partial_dw and partial_db of every slice of the channel; eval reads
// neither, nor x.
template <typename T, typename W, int V, bool EVAL>
__device__ void bn_bwd_dx(const T* x, const W* w, const T* dy, const float* part, const W* rmean, const W* rvar,
                          const float* partial_dw, const float* partial_db, T* dx, BatchShape s, float eps) {
    const int c = blockIdx.x, k = blockIdx.y;
    float mean, var;
    bn_channel<W, EVAL>(part, rmean, rvar, s, c, mean, var);
    const float rstd = rsqrtf(var + eps), wc = param_or(w, c, 1.f);
    float mean_g = 0.f, mean_gx = 0.f;
    if constexpr (!EVAL) {
        float sgx = 0.f, sg = 0.f;
        for (int j = 0; j < s.splits; j++) {
            sgx += partial_dw[(size_t)j * s.channels + c];
            sg += partial_db[(size_t)j * s.channels + c];
        }
        mean_g = wc * sg / s.len;
        mean_gx = wc * sgx / s.len;
    }
    const int start = k * s.chunk, end = min(s.len, start + s.chunk);
    for (int i = start + threadIdx.x * V; i < end; i += blockDim.x * V) {
        const size_t at = bn_at(s, c, i);
        float gv[V];
        load<T, V>(dy + at, gv);
        if constexpr (EVAL) {
#pragma unroll
            for (int j = 0; j < V; j++) gv[j] *= wc * rstd;
        } else {
            float xv[V];
            load<T, V>(x + at, xv);
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float xh = (xv[j] - mean) * rstd;
                gv[j] = rstd * (gv[j] * wc - mean_g - xh * mean_gx);
            }
        }
        store<T, V>(dx + at, gv);
    }
}

}  // namespace cn

// The entry bodies: each reads its tensors from its kernel's arguments (params.h), and
// the runtime flag picks the vector width.
#define CN_BN_DISPATCH(FN, ...)                                                     \
    if (a.flags & cn::BVEC) cn::FN<T, W, cn::pack_of<T>(), EVAL>(__VA_ARGS__);      \
    else cn::FN<T, W, 1, EVAL>(__VA_ARGS__);

template <bool EVAL> struct BatchNorm {
    template <typename T, typename W> static __device__ __forceinline__ void fwd(const cn::BatchFwdArgs& a) {
        CN_BN_DISPATCH(bn_fwd, cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<W>(a.bias), cn::in<float>(a.moments),
                       cn::in<W>(a.running_mean), cn::in<W>(a.running_var), cn::out<T>(a.y), cn::out<W>(a.mean),
                       cn::out<W>(a.var), a.shape, a.eps)
    }

    template <typename T, typename W> static __device__ __forceinline__ void bwd_sums(const cn::BatchSumsArgs& a) {
        CN_BN_DISPATCH(bn_bwd_sums, cn::in<T>(a.x), cn::in<T>(a.dy), cn::in<float>(a.moments),
                       cn::in<W>(a.running_mean), cn::in<W>(a.running_var), cn::out<float>(a.partial_dw),
                       cn::out<float>(a.partial_db), a.shape, a.eps)
    }

    template <typename T, typename W> static __device__ __forceinline__ void bwd_dx(const cn::BatchDxArgs& a) {
        CN_BN_DISPATCH(bn_bwd_dx, cn::in<T>(a.x), cn::in<W>(a.weight), cn::in<T>(a.dy), cn::in<float>(a.moments),
                       cn::in<W>(a.running_mean), cn::in<W>(a.running_var), cn::in<float>(a.partial_dw),
                       cn::in<float>(a.partial_db), cn::out<T>(a.dx), a.shape, a.eps)
    }
};

template <typename T> __device__ __forceinline__ void batch_norm_stats(const cn::BatchStatsArgs& a) {
    if (a.flags & cn::BVEC) cn::bn_stats<T, cn::pack_of<T>()>(cn::in<T>(a.x), cn::out<float>(a.moments), a.shape);
    else cn::bn_stats<T, 1>(cn::in<T>(a.x), cn::out<float>(a.moments), a.shape);
}

CN_INSTANTIATE(batch_norm_stats, batch_norm_stats, BatchStatsArgs)
CN_INSTANTIATE_PARAMS(batch_norm_fwd, BatchNorm<false>::fwd, BatchFwdArgs)
CN_INSTANTIATE_PARAMS(batch_norm_eval_fwd, BatchNorm<true>::fwd, BatchFwdArgs)
CN_INSTANTIATE_PARAMS(batch_norm_bwd_sums, BatchNorm<false>::bwd_sums, BatchSumsArgs)
CN_INSTANTIATE_PARAMS(batch_norm_eval_bwd_sums, BatchNorm<true>::bwd_sums, BatchSumsArgs)
CN_INSTANTIATE_PARAMS(batch_norm_bwd_dx, BatchNorm<false>::bwd_dx, BatchDxArgs)
CN_INSTANTIATE_PARAMS(batch_norm_eval_bwd_dx, BatchNorm<true>::bwd_dx, BatchDxArgs)
CN_INSTANTIATE(batch_norm_dparams, cn::reduce_param_partials, PartialsArgs)
