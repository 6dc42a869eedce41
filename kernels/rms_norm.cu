// RMSNorm over the last dimension (PyTorch semantics: rstd = 1/sqrt(mean(x²) + eps)),
// forward and backward, for f32, f16 and bf16 with f32 statistics.
// γ of x's dtype, or f32 beside f16 and bf16 x (mixed precision; dγ then in f32).
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

CN_ROW_NORM(rms_norm, false)
