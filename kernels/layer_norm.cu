// LayerNorm over the last dimension (PyTorch semantics: biased variance, eps inside
// the square root), forward and backward, for f32, f16 and bf16 with f32 statistics.
//
// layer_norm_fwd_*:     y = (x − mean) · rstd · γ + β   (γ, β optional: null pointers)
// layer_norm_bwd_*:     dx, plus per-block f32 partials of dγ = Σ dy·x̂ and dβ = Σ dy
// layer_norm_dparams_*: sums the partials in order into dγ, dβ (deterministic)
// layer_norm_add_fwd_*: the fused residual add: h = x + r (rounded to T), y of h
// layer_norm_add_bwd_*: its backward from h: dx = dh + the backward above
//
// Each is a family of entry points, one per (path, width, dtype), the path chosen on
// the host. The algorithm and its limits are in row_norm.cuh: rows up to 16 384
// elements (8 192 backward; half that on the scalar paths) are held in registers;
// longer ones, up to 2^31 − 1, are re-read.
#include "row_norm.cuh"

template <typename T, cn::Path P, bool VEC>
__device__ void layer_norm_fwd(const T* x, const T* w, const T* b, T* y, int M, int N, float eps) {
    cn::row_fwd<T, true, false, P, VEC>(x, nullptr, w, b, nullptr, y, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void layer_norm_bwd(const T* x, const T* w, const T* dy, T* dx, float* pdg, float* pdb, int M, int N, float eps) {
    cn::row_bwd<T, true, false, P, VEC>(x, w, dy, nullptr, dx, pdg, pdb, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void layer_norm_add_fwd(const T* x, const T* r, const T* w, const T* b, T* h, T* y, int M, int N, float eps) {
    cn::row_fwd<T, true, true, P, VEC>(x, r, w, b, h, y, M, N, eps);
}

template <typename T, cn::Path P, bool VEC>
__device__ void layer_norm_add_bwd(const T* h, const T* w, const T* dy, const T* dh, T* dx, float* pdg, float* pdb, int M,
                        int N, float eps) {
    cn::row_bwd<T, true, true, P, VEC>(h, w, dy, dh, dx, pdg, pdb, M, N, eps);
}

CN_ROW_INSTANTIATE(layer_norm_fwd, layer_norm_fwd, CN_ROW_FWD_PARAMS, (x, w, b, y, M, N, eps))
CN_ROW_INSTANTIATE(layer_norm_bwd, layer_norm_bwd, CN_ROW_BWD_PARAMS, (x, w, dy, dx, pdg, pdb, M, N, eps))
CN_ROW_INSTANTIATE(layer_norm_add_fwd, layer_norm_add_fwd, CN_ADD_FWD_PARAMS, (x, r, w, b, h, y, M, N, eps))
CN_ROW_INSTANTIATE(layer_norm_add_bwd, layer_norm_add_bwd, CN_ADD_BWD_PARAMS, (h, w, dy, dh, dx, pdg, pdb, M, N, eps))
CN_INSTANTIATE(layer_norm_dparams, cn::reduce_param_partials, CN_DPARAMS_PARAMS, (dg, db, dw, dbias, P, N))
