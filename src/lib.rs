//! Fused, differentiable LayerNorm (over the last dimension or the channels), RMSNorm,
//! GroupNorm (channels-first and channels-last), InstanceNorm and BatchNorm, and a
//! fused residual add + norm, for [candle].
//!
//! candle's own fused norms have no backward (their gradients are silently dropped)
//! and candle has no fused GroupNorm, InstanceNorm or BatchNorm. This crate provides
//! them as candle custom ops whose backward is itself one fused op, so
//! `Tensor::backward`, `Var` and the candle-nn optimizers train through them:
//!
//! - [`layer_norm`], [`rms_norm`], [`group_norm`]: the functional ops, and [`RowNorm`],
//!   the general form of the first two with a weight offset (Gemma's `x̂·(1 + γ)`);
//! - [`layer_norm_backward`], [`rms_norm_backward`], [`group_norm_backward`]: their
//!   fused backward on its own, returning [`NormGrads`], for hand-written backward
//!   passes and benchmarks;
//! - [`batch_norm`], [`batch_norm_train`] (with the batch statistics),
//!   [`batch_norm_eval`] (with running statistics) and [`batch_norm_backward`]:
//!   BatchNorm;
//! - [`instance_norm`] (and [`instance_norm_backward`]): GroupNorm with one group per
//!   channel, with PyTorch's checks;
//! - [`group_norm_channels_last`] (and [`group_norm_channels_last_backward`]): GroupNorm
//!   over `[B, *spatial, C]`, without moving the channels;
//! - [`layer_norm_channels_first`] (and [`layer_norm_channels_first_backward`]):
//!   LayerNorm over the channels of `[B, C, *spatial]` (ConvNeXt's and SAM's
//!   `LayerNorm2d`);
//! - [`group_norm_silu`], [`group_norm_channels_last_silu`] (and their backward):
//!   GroupNorm followed by SiLU in one op, a diffusion block's norm and activation;
//! - [`add_layer_norm`], [`add_rms_norm`]: the residual add of a pre-norm transformer
//!   block fused with its norm, returning both the norm and the sum, with their
//!   backward [`add_layer_norm_backward`], [`add_rms_norm_backward`];
//! - [`normalize`]: mean and variance over any set of axes, with a broadcast affine;
//! - [`layer_norm_jvp`] and the other `*_jvp` functions: forward-mode derivatives
//!   `(y, ẏ)` along [`Tangents`] of the inputs;
//! - [`nn`]: drop-in modules ([`LayerNorm`], [`RmsNorm`], [`GroupNorm`],
//!   [`InstanceNorm`], [`BatchNorm`]) and their `VarBuilder` builders, loading
//!   PyTorch/Hugging Face checkpoints;
//! - [`weight_standardization`], [`weight_norm`], [`nn::WsConv2d`] and
//!   [`nn::WeightNorm`]: norms of a layer's weight;
//! - [`mod@reference`]: slow composed-op implementations used by the tests and benches;
//! - [`cpu_level`], [`set_cpu_level_limit`]: which vector instructions the CPU path
//!   runs with (picked at run time), and a cap for benchmarks and tests.
//!
//! Semantics are PyTorch's: biased variance, eps inside the square root, statistics
//! accumulated in f32 (f64 for f64 inputs), output in the input's dtype, rounded once.
//! The contract in full (formulas, precision, bytes moved, errors) is
//! `docs/semantics.md` in the repository.
//!
//! # Devices
//!
//! Every op and module works on every candle device, in f32, f16, bf16 and f64 (where
//! the device has the dtype), forward and backward:
//!
//! - **CPU**: this crate's fused kernels, multi-threaded and vectorized.
//! - **CUDA**, with the `cuda` feature: this crate's fused CUDA kernels for f32, f16
//!   and bf16.
//! - **Every other case** (Metal; CUDA without the `cuda` feature; f64 on CUDA): the
//!   generic backend, the same computation written as candle tensor ops (statistics in
//!   f32 for f16/bf16, two-pass variance, the output rounded once), which autograd
//!   trains through and whose standalone `*_backward` functions give the same
//!   gradients. For inference (no input tracking a gradient), [`rms_norm`] there runs
//!   candle-nn's fused forward (`candle_nn::ops::rms_norm`) in f32, f16 and bf16, where
//!   it computes what this crate does and candle-nn has the device's kernels (its
//!   `metal` or `cuda` feature).
//!   [`layer_norm`] does not: candle-nn's fused LayerNorm takes the variance as
//!   E\[x²\] − mean², which loses accuracy for rows with a large mean, so it runs the
//!   composed ops.
//!
//! The same inputs give the same errors, naming the op and the shapes, on every device.
//!
//! Parameters (weight, bias, running statistics) have x's dtype or, with f16 and bf16
//! x, f32 (mixed precision: dγ, dβ and BatchNorm's batch statistics then come out in
//! f32), fused on the CPU and in the CUDA kernels alike.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//!
//! let dev = Device::Cpu;
//! let x = Var::randn(0f32, 1., (4, 64), &dev)?;
//! let w = Var::ones(64, candle_core::DType::F32, &dev)?;
//! let b = Var::zeros(64, candle_core::DType::F32, &dev)?;
//! let y = candle_norm::layer_norm(&x, Some(&w), Some(&b), 1e-5)?;
//! let grads = y.sqr()?.sum_all()?.backward()?;
//! assert!(grads.get(&w).is_some() && grads.get(&b).is_some() && grads.get(&x).is_some());
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! [candle]: https://github.com/huggingface/candle

mod backend;
mod bridge;
mod check;
mod cpu;
#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
mod cuda;
mod generic;
pub mod nn;
mod ops;
pub mod reference;
mod spec;

pub use cpu::simd::{cpu_level, detected_cpu_level, set_cpu_level_limit, CpuLevel};
#[cfg(feature = "cuda-emulator")]
pub use cuda::emulator;
pub use nn::{BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RmsNorm, WsConv2d};
pub use ops::*;

/// For this crate's own tests and benches; not part of its API.
#[doc(hidden)]
pub mod testing {
    /// Runs `f` with this crate's ops on this thread taking the generic backend (composed
    /// candle ops, the path of devices without fused kernels, such as Metal) whatever
    /// the device, so that the CPU runs what such a device runs.
    pub fn with_generic_backend<R>(f: impl FnOnce() -> R) -> R {
        crate::ops::with_generic(f)
    }
}
