//! PyTorch's norm layers, built with PyTorch's constructor arguments, defaults, tensor
//! names and shapes, so that a `state_dict` saved from PyTorch loads through a
//! `VarBuilder` whatever the layer's options: `nn.LayerNorm` and `nn.RMSNorm` over
//! several trailing dimensions or without affine parameters, `nn.GroupNorm(affine=False)`,
//! `nn.BatchNorm1d/2d/3d` with `momentum=None` or `track_running_stats=False` and its
//! `num_batches_tracked`. The layers are this crate's modules; the builders of
//! [`super`] mirror candle-nn's instead.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::VarBuilder;
//! use candle_norm::nn::pytorch::{self, LayerNormConfig};
//!
//! // nn.LayerNorm([4, 8], elementwise_affine=False): no tensors to read.
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let config = LayerNormConfig { elementwise_affine: false, ..Default::default() };
//! let ln = pytorch::layer_norm(&[4, 8], config, vb)?;
//! let y = ln.forward(&Tensor::randn(0f32, 1., (2, 4, 8), &Device::Cpu)?)?;
//! assert_eq!(y.dims(), [2, 4, 8]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use super::batch::{self, BatchNorm};
use super::norm::{GroupNorm, LayerNorm, RmsNorm};
use candle_core::{bail, Result};
use candle_nn::{Init, VarBuilder};

/// `nn.LayerNorm`'s options, with its defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormConfig {
    /// Added to the variance inside the square root (1e-5).
    pub eps: f64,
    /// Whether the layer has a weight (and, with `bias`, a bias) of the normalized
    /// shape (true).
    pub elementwise_affine: bool,
    /// Whether an affine layer has a bias (true).
    pub bias: bool,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
        }
    }
}

/// `nn.RMSNorm`'s options, with its defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsNormConfig {
    /// Added to the mean square inside the square root; None (the default) takes the
    /// machine epsilon of the dtype the statistics are computed in, as PyTorch's code
    /// does: f32's (2⁻²³) for f16, bf16 and f32 inputs, f64's for f64. (PyTorch's
    /// documentation says the input dtype's, which for f16 and bf16 its code does not
    /// use.)
    pub eps: Option<f64>,
    /// Whether the layer has a weight of the normalized shape (true).
    pub elementwise_affine: bool,
}

impl Default for RmsNormConfig {
    fn default() -> Self {
        Self {
            eps: None,
            elementwise_affine: true,
        }
    }
}

/// `nn.GroupNorm`'s options, with its defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormConfig {
    /// Added to the variance inside the square root (1e-5).
    pub eps: f64,
    /// Whether the layer has a per-channel weight and bias (true).
    pub affine: bool,
}

impl Default for GroupNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            affine: true,
        }
    }
}

/// `nn.BatchNorm1d/2d/3d`'s options, with their defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance inside the square root (1e-5).
    pub eps: f64,
    /// The weight of a batch's statistics in the running ones (0.1); None for the
    /// cumulative average over the batches seen.
    pub momentum: Option<f64>,
    /// Whether the layer has a per-channel weight and bias (true).
    pub affine: bool,
    /// Whether the layer keeps running statistics and `num_batches_tracked` (true);
    /// without them it normalizes with the batch's statistics in eval too.
    pub track_running_stats: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
        }
    }
}

/// Checks a normalized shape as PyTorch does: at least one dimension.
fn check_shape(layer: &str, normalized_shape: &[usize]) -> Result<()> {
    if normalized_shape.is_empty() {
        bail!("{layer}: normalized_shape must have at least one dimension")
    }
    Ok(())
}

/// `nn.LayerNorm(normalized_shape, eps, elementwise_affine, bias)`: with
/// `elementwise_affine`, tensors `weight` (ones) and, with `bias`, `bias` (zeros) of
/// shape `normalized_shape`.
///
/// # Errors
/// An empty `normalized_shape`, or a tensor missing from a checkpoint or of another
/// shape.
pub fn layer_norm(normalized_shape: &[usize], config: LayerNormConfig, vb: VarBuilder) -> Result<LayerNorm> {
    check_shape("LayerNorm", normalized_shape)?;
    let shape = normalized_shape.to_vec();
    let (weight, bias) = if config.elementwise_affine {
        let weight = vb.get_with_hints(shape.as_slice(), "weight", Init::Const(1.))?;
        let bias = config
            .bias
            .then(|| vb.get_with_hints(shape.as_slice(), "bias", Init::Const(0.)))
            .transpose()?;
        (Some(weight), bias)
    } else {
        (None, None)
    };
    Ok(LayerNorm::from_parts(weight, bias, Some(shape), true, Some(config.eps)))
}

/// `nn.RMSNorm(normalized_shape, eps, elementwise_affine)`: with `elementwise_affine`,
/// a tensor `weight` (ones) of shape `normalized_shape`.
///
/// # Errors
/// As [`layer_norm`].
pub fn rms_norm(normalized_shape: &[usize], config: RmsNormConfig, vb: VarBuilder) -> Result<RmsNorm> {
    check_shape("RMSNorm", normalized_shape)?;
    let weight = config
        .elementwise_affine
        .then(|| vb.get_with_hints(normalized_shape, "weight", Init::Const(1.)))
        .transpose()?;
    Ok(RmsNorm::from_parts(weight, normalized_shape.to_vec(), config.eps))
}

/// `nn.GroupNorm(num_groups, num_channels, eps, affine)`: with `affine`, tensors
/// `weight` (ones) and `bias` (zeros) of shape `[num_channels]`.
///
/// # Errors
/// As [`GroupNorm::new`], or a tensor missing from a checkpoint or of another shape.
pub fn group_norm(
    num_groups: usize,
    num_channels: usize,
    config: GroupNormConfig,
    vb: VarBuilder,
) -> Result<GroupNorm> {
    if !config.affine {
        return GroupNorm::new_no_affine(num_channels, num_groups, config.eps);
    }
    super::group_norm(num_groups, num_channels, config.eps, vb)
}

/// `nn.BatchNorm1d/2d/3d(num_features, eps, momentum, affine, track_running_stats)`:
/// with `affine`, tensors `weight` (ones) and `bias` (zeros); with
/// `track_running_stats`, `running_mean` (zeros), `running_var` (ones), all of shape
/// `[num_features]`, and `num_batches_tracked` (an i64 scalar, 0).
///
/// # Errors
/// An `eps` or `momentum` out of range, or a tensor missing from a checkpoint or of
/// another shape or dtype.
pub fn batch_norm(num_features: usize, config: BatchNormConfig, vb: VarBuilder) -> Result<BatchNorm> {
    let affine = config
        .affine
        .then(|| {
            Ok::<_, candle_core::Error>((
                vb.get_with_hints(num_features, "weight", Init::Const(1.))?,
                vb.get_with_hints(num_features, "bias", Init::Const(0.))?,
            ))
        })
        .transpose()?;
    if !config.track_running_stats {
        return BatchNorm::new(num_features, None, affine, config.eps, 0.1)?.with_momentum(config.momentum);
    }
    let running = (
        vb.get_with_hints(num_features, "running_mean", Init::Const(0.))?,
        vb.get_with_hints(num_features, "running_var", Init::Const(1.))?,
    );
    BatchNorm::new(num_features, Some(running), affine, config.eps, 0.1)?
        .with_num_batches_tracked(batch::num_batches_tracked(&vb)?)?
        .with_momentum(config.momentum)
}
