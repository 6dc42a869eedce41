// RMSNorm over the last dimension (PyTorch semantics: rstd = 1/sqrt(mean(x²) + eps)),
// forward and backward, for f32, f16 and bf16 with f32 statistics.
//
// rms_norm_fwd_*:     y = x · rstd · γ   (γ optional: a null pointer; β is always null)
// rms_norm_bwd_*:     dx, plus per-block f32 partials of dγ = Σ dy·x̂
// rms_norm_dparams_*: sums the partials in order into dγ (deterministic)
// rms_norm_add_fwd_*: the fused residual add: h = x + r (rounded to T), y of h
// rms_norm_add_bwd_*: its backward from h: dx = dh + the backward above
//
// The algorithm and its limits are in row_norm.cuh (the same kernels as LayerNorm,
// without the mean).
#include "row_norm.cuh"

template <typename T, cn::Path P, bool VEC>
__device__ void rms_norm_fwd(const T* x, const T* w, const T* b, T* y, int M, int N, float eps) {
    cn::row_fwd<T, false, false, P, VEC>(x, nullptr, w, b, nullptr, y, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* dy, T* dx, float* pdg, float* pdb, int M, int N, float eps) {
    cn::row_bwd<T, false, false, P, VEC>(x, w, dy, nullptr, dx, pdg, pdb, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void rms_norm_add_fwd(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int M, int N, float eps) {
    cn::row_fwd<T, false, true, P, VEC>(x, r, w, b, h, y, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void rms_norm_add_bwd(const T* h, const T* w, const T* dy, const T* dh, T* dx, float* pdg, float* pdb, int M,
                        int N, float eps) {
    cn::row_bwd<T, false, true, P, VEC>(h, w, dy, dh, dx, pdg, pdb, M, N, eps);
}

CN_ROW_INSTANTIATE(rms_norm_fwd, rms_norm_fwd, CN_ROW_FWD_PARAMS, (x, w, b, y, M, N, eps))
CN_ROW_INSTANTIATE(rms_norm_bwd, rms_norm_bwd, CN_ROW_BWD_PARAMS, (x, w, dy, dx, pdg, pdb, M, N, eps))
CN_ROW_INSTANTIATE(rms_norm_add_fwd, rms_norm_add_fwd, CN_ADD_FWD_PARAMS, (x, r, w, b, h, y, M, N, eps))
CN_ROW_INSTANTIATE(rms_norm_add_bwd, rms_norm_add_bwd, CN_ADD_BWD_PARAMS, (h, w, dy, dh, dx, pdg, pdb, M, N, eps))
CN_INSTANTIATE(rms_norm_dparams, cn::reduce_param_partials, CN_DPARAMS_PARAMS, (dg, db, dw, dbias, P, N))
