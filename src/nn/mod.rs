//! Modules and their `VarBuilder` builders.
//!
//! The norm layers mirror their candle-nn namesakes (constructors, accessors, builder
//! functions and tensor names), so a model switches by changing
//! `use candle_nn::{layer_norm, LayerNorm}` into `use candle_norm::nn::{layer_norm, LayerNorm}`.
//! Unlike candle-nn's fused paths, every forward here is differentiable. [`InstanceNorm`]
//! and the weight-side layers ([`WsConv2d`], [`WeightNorm`], [`SpectralNorm`]) have no
//! candle-nn counterpart; they follow PyTorch's names. [`pytorch`] builds the same
//! layers from PyTorch's constructor arguments, for every option PyTorch's layers have
//! (no affine parameters, several normalized dimensions, `momentum=None`, ...).

mod batch;
mod norm;
pub mod pytorch;
mod weight;

pub use batch::{batch_norm, BatchNorm};
pub use candle_nn::{BatchNormConfig, LayerNormConfig};
pub use norm::{
    group_norm, instance_norm, layer_norm, layer_norm_no_bias, rms_norm, GroupNorm, InstanceNorm, InstanceNormConfig,
    LayerNorm, RmsNorm,
};
pub use weight::{
    spectral_norm_linear, weight_norm_conv2d, weight_norm_linear, ws_conv2d, SpectralNorm, WeightNorm, WeightedLayer,
    WsConv2d,
};
