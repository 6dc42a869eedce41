// RMSNorm over the last dimension (PyTorch semantics: rstd = 1/sqrt(mean(x²) + eps)),
// forward and backward, for f32, f16 and bf16 with f32 statistics.
//
// rms_norm_fwd_*:     y = x · rstd · γ   (γ optional: a null pointer; β is always null)
// rms_norm_bwd_*:     dx, plus per-block f32 partials of dγ = Σ dy·x̂
// rms_norm_dparams_*: sums the partials in order into dγ (deterministic)
//
// The algorithm and its limits are in row_norm.cuh (the same kernels as LayerNorm,
// without the mean).
#include "row_norm.cuh"

template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, const T* b, T* y, int M, int N, float eps, int flags) {
    cn::row_fwd<T, false>(x, w, b, y, M, N, eps, flags);
}

template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* dy, T* dx, float* pdg, float* pdb, int M, int N,
                             float eps, int flags) {
    cn::row_bwd<T, false>(x, w, dy, dx, pdg, pdb, M, N, eps, flags);
}

CN_INSTANTIATE(rms_norm_fwd, rms_norm_fwd, CN_ROW_FWD_PARAMS, (x, w, b, y, M, N, eps, flags))
CN_INSTANTIATE(rms_norm_bwd, rms_norm_bwd, CN_ROW_BWD_PARAMS, (x, w, dy, dx, pdg, pdb, M, N, eps, flags))
CN_INSTANTIATE(rms_norm_dparams, cn::reduce_param_partials, CN_DPARAMS_PARAMS, (dg, db, dw, dbias, P, N))
