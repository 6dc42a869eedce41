// LayerNorm over the last dimension (PyTorch semantics: biased variance, eps inside
// the square root), forward and backward, for f32, f16 and bf16 with f32 statistics.
// γ (and β) of x's dtype, or f32 beside f16 and bf16 x (mixed precision; dγ, dβ then
// in f32).
//
// layer_norm_fwd_*:     y = (x − mean) · rstd · γ + β   (γ, β optional: null pointers)
// layer_norm_bwd_*:     dx, plus per-block f32 partials of dγ = Σ dy·x̂ and dβ = Σ dy
// layer_norm_dparams_*: sums the partials in order into dγ, dβ (deterministic)
// layer_norm_add_fwd_*: the fused residual add: h = x + r (rounded to T), y of h
// layer_norm_add_bwd_*: its backward from h: dx = dh + the backward above
//
// Each is a family of entry points, one per (path, width, dtype), the path chosen on
// the host. The algorithm and its limits are in row_norm.cuh: rows up to 16 384
// elements (8 192 backward; 6 144 and 4 096 on the scalar paths) are held in one
// block's registers; longer ones, up to 2^31 − 1, are split over blocks by chunks.
#include "row_norm.cuh"

CN_ROW_NORM(layer_norm, true)
