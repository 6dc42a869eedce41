//! Fused, differentiable LayerNorm, RMSNorm, GroupNorm (channels-first and
//! channels-last), InstanceNorm and BatchNorm, and a fused residual add + norm, for
//! [candle].
//!
//! candle's own fused norms have no backward (their gradients are silently dropped)
//! and candle has no fused GroupNorm, InstanceNorm or BatchNorm. This crate provides
//! them as candle custom ops whose backward is itself one fused op, so
//! `Tensor::backward`, `Var` and the candle-nn optimizers train through them:
//!
//! - [`layer_norm`], [`rms_norm`], [`group_norm`]: the functional ops;
//! - [`layer_norm_backward`], [`rms_norm_backward`], [`group_norm_backward`]: their
//!   fused backward on its own, returning [`NormGrads`], for hand-written backward
//!   passes and benchmarks;
//! - [`batch_norm`], [`batch_norm_train`] (with the batch statistics),
//!   [`batch_norm_eval`] (with running statistics) and [`batch_norm_backward`]:
//!   BatchNorm, fused on the CPU;
//! - [`instance_norm`] (and [`instance_norm_backward`]): GroupNorm with one group per
//!   channel, with PyTorch's checks;
//! - [`group_norm_channels_last`] (and [`group_norm_channels_last_backward`]): GroupNorm
//!   over `[B, *spatial, C]`, without moving the channels;
//! - [`add_layer_norm`], [`add_rms_norm`]: the residual add of a pre-norm transformer
//!   block fused with its norm, returning both the norm and the sum, with their
//!   backward [`add_layer_norm_backward`], [`add_rms_norm_backward`];
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
//! Supported dtypes are f32, f16, bf16 and f64 on the CPU (multi-threaded); with the
//! `cuda` feature, f32, f16 and bf16 run on this crate's own CUDA kernels. The
//! contract in full (formulas, precision, bytes moved, errors) is `docs/semantics.md`
//! in the repository.
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

mod check;
mod cpu;
#[cfg(any(feature = "cuda", feature = "cuda-emulator"))]
mod cuda;
mod custom_op;
pub mod nn;
mod ops;
pub mod reference;
mod spec;

pub use cpu::simd::{cpu_level, detected_cpu_level, set_cpu_level_limit, CpuLevel};
#[cfg(feature = "cuda-emulator")]
pub use cuda::emulator;
pub use nn::{BatchNorm, GroupNorm, InstanceNorm, LayerNorm, RmsNorm, WsConv2d};
pub use ops::{
    add_layer_norm, add_layer_norm_backward, add_rms_norm, add_rms_norm_backward, batch_norm, batch_norm_backward,
    batch_norm_eval, batch_norm_train, group_norm, group_norm_backward, group_norm_channels_last,
    group_norm_channels_last_backward, instance_norm, instance_norm_backward, layer_norm, layer_norm_backward,
    rms_norm, rms_norm_backward, weight_norm, weight_standardization, AddNormGrads, NormGrads,
};
