//! The activation norms as modules: drop-in replacements for candle-nn's norm layers
//! and their `VarBuilder` builders.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use candle_nn::LayerNormConfig;

/// LayerNorm (or, with `remove_mean = false`, RMSNorm) over the last dimension with a
/// learned weight and an optional bias; see [`crate::layer_norm`].
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    remove_mean: bool,
    eps: f64,
}

impl LayerNorm {
    /// LayerNorm with a weight and a bias, both of shape `[N]`.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: Some(bias),
            remove_mean: true,
            eps,
        }
    }

    /// LayerNorm with a weight and no bias.
    pub fn new_no_bias(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: None,
            remove_mean: true,
            eps,
        }
    }

    /// RMSNorm (no mean subtraction, no bias) with a weight.
    pub fn rms_norm(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: None,
            remove_mean: false,
            eps,
        }
    }

    /// The weight (γ), shape `[N]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias (β), shape `[N]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The epsilon added to the variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether the mean is subtracted (LayerNorm) or not (RMSNorm).
    pub fn remove_mean(&self) -> bool {
        self.remove_mean
    }

    /// The residual add of a pre-norm block fused with this norm: returns
    /// `(self.forward(&(x + residual)?)?, (x + residual)?)` from one pass over memory,
    /// the sum rounded as candle's add rounds it; see [`crate::add_layer_norm`] and
    /// [`crate::add_rms_norm`]. Both outputs are differentiable.
    ///
    /// # Errors
    /// As [`Module::forward`], and a `residual` whose shape, dtype or device differ
    /// from `x`'s.
    pub fn forward_with_residual(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.remove_mean {
            return crate::add_layer_norm(x, residual, Some(&self.weight), self.bias.as_ref(), self.eps);
        }
        let (y, h) = crate::add_rms_norm(x, residual, Some(&self.weight), self.eps)?;
        match &self.bias {
            Some(b) => Ok((y.broadcast_add(b)?, h)),
            None => Ok((y, h)),
        }
    }
}

impl Module for LayerNorm {
    /// Normalizes `x` over its last dimension. Errors as [`crate::layer_norm`] does.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.remove_mean {
            return crate::layer_norm(x, Some(&self.weight), self.bias.as_ref(), self.eps);
        }
        let y = crate::rms_norm(x, Some(&self.weight), self.eps)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Builds a [`LayerNorm`] of size `size` from `vb`, as `candle_nn::layer_norm`: the
/// weight is read from `weight` (or `gamma`), the bias, when `config.affine`, from
/// `bias` (or `beta`); missing tensors are created as ones and zeros when `vb` can
/// create them (a `VarMap`).
///
/// # Errors
/// A tensor that is missing from a checkpoint or has another shape.
pub fn layer_norm<C: Into<LayerNormConfig>>(size: usize, config: C, vb: VarBuilder) -> Result<LayerNorm> {
    let config = config.into();
    let find = |names: [&'static str; 2]| names.into_iter().find(|n| vb.contains_tensor(n)).unwrap_or(names[0]);
    let weight = vb.get_with_hints(size, find(["weight", "gamma"]), Init::Const(1.))?;
    let bias = if config.affine {
        Some(vb.get_with_hints(size, find(["bias", "beta"]), Init::Const(0.))?)
    } else {
        None
    };
    Ok(LayerNorm {
        weight,
        bias,
        remove_mean: config.remove_mean,
        eps: config.eps,
    })
}

/// Builds a bias-free [`LayerNorm`] from `vb`, as `candle_nn::layer_norm_no_bias`.
///
/// # Errors
/// As [`layer_norm`].
pub fn layer_norm_no_bias(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    layer_norm(
        size,
        LayerNormConfig {
            eps,
            remove_mean: true,
            affine: false,
        },
        vb,
    )
}

/// RMSNorm over the last dimension with a learned weight; see [`crate::rms_norm`].
#[derive(Clone, Debug)]
pub struct RmsNorm(LayerNorm);

impl RmsNorm {
    /// RMSNorm with a weight of shape `[N]`.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self(LayerNorm::rms_norm(weight, eps))
    }

    /// The underlying [`LayerNorm`] (with `remove_mean = false`).
    pub fn into_inner(self) -> LayerNorm {
        self.0
    }

    /// The weight (γ), shape `[N]`.
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// The epsilon added to the mean square inside the square root.
    pub fn eps(&self) -> f64 {
        self.0.eps()
    }

    /// The residual add of a pre-norm block fused with this norm: `(y, h)` with
    /// `h = x + residual` and `y` its RMSNorm; see [`crate::add_rms_norm`].
    ///
    /// # Errors
    /// As [`crate::add_rms_norm`].
    pub fn forward_with_residual(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        self.0.forward_with_residual(x, residual)
    }
}

impl Module for RmsNorm {
    /// Normalizes `x` over its last dimension. Errors as [`crate::rms_norm`] does.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x)
    }
}

/// Builds an [`RmsNorm`] of size `size` from `vb` (tensor `weight`), as `candle_nn::rms_norm`.
///
/// # Errors
/// As [`layer_norm`].
pub fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    Ok(RmsNorm(layer_norm(
        size,
        LayerNormConfig {
            eps,
            remove_mean: false,
            affine: false,
        },
        vb,
    )?))
}

/// GroupNorm over `[B, C, *spatial]` with a per-channel weight and bias; see
/// [`crate::group_norm`]. With [`GroupNorm::with_channels_last`], over
/// `[B, *spatial, C]` instead ([`crate::group_norm_channels_last`]).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    num_channels: usize,
    num_groups: usize,
    channels_last: bool,
}

impl GroupNorm {
    /// GroupNorm with `num_groups` groups over `num_channels` channels; weight and bias
    /// have shape `[num_channels]`.
    ///
    /// # Errors
    /// `num_groups` of 0 or not dividing `num_channels`.
    pub fn new(weight: Tensor, bias: Tensor, num_channels: usize, num_groups: usize, eps: f64) -> Result<Self> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "GroupNorm: num_groups ({num_groups}) must be > 0 and divide num_channels ({num_channels})"
            )
        }
        Ok(Self {
            weight,
            bias,
            eps,
            num_channels,
            num_groups,
            channels_last: false,
        })
    }

    /// The same layer over channels-last input `[B, *spatial, C]` when `channels_last`
    /// (channels-first `[B, C, *spatial]` otherwise, the default): the same weights,
    /// statistics and output, without moving x.
    pub fn with_channels_last(self, channels_last: bool) -> Self {
        Self { channels_last, ..self }
    }

    /// Whether x is channels-last, `[B, *spatial, C]`.
    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    /// The per-channel weight (γ).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-channel bias (β).
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The epsilon added to the variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The number of groups.
    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    /// The number of channels.
    pub fn num_channels(&self) -> usize {
        self.num_channels
    }
}

impl Module for GroupNorm {
    /// Normalizes `x` of shape `[B, C, *spatial]` (or `[B, *spatial, C]` when
    /// channels-last). Errors as [`crate::group_norm`] does, and when C differs from
    /// `num_channels`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check::channels("GroupNorm", x, self.num_channels, self.channels_last)?;
        let (w, b) = (Some(&self.weight), Some(&self.bias));
        if self.channels_last {
            crate::group_norm_channels_last(x, self.num_groups, w, b, self.eps)
        } else {
            crate::group_norm(x, self.num_groups, w, b, self.eps)
        }
    }
}

/// Builds a [`GroupNorm`] from `vb` (tensors `weight` and `bias` of shape
/// `[num_channels]`), as `candle_nn::group_norm`.
///
/// # Errors
/// As [`GroupNorm::new`], or a tensor missing from a checkpoint or of another shape.
pub fn group_norm(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(num_channels, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(num_channels, "bias", Init::Const(0.))?;
    GroupNorm::new(weight, bias, num_channels, num_groups, eps)
}

/// Options of an [`InstanceNorm`], with PyTorch's defaults (`eps = 1e-5`, no affine).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstanceNormConfig {
    /// Added to the variance inside the square root.
    pub eps: f64,
    /// Whether the layer has a learned per-channel weight and bias.
    pub affine: bool,
}

impl Default for InstanceNormConfig {
    fn default() -> Self {
        Self {
            eps: 1e-5,
            affine: false,
        }
    }
}

impl From<f64> for InstanceNormConfig {
    fn from(eps: f64) -> Self {
        Self { eps, ..Self::default() }
    }
}

/// InstanceNorm over `[B, C, *spatial]` (PyTorch's `InstanceNorm1d/2d/3d` without
/// running statistics), with an optional per-channel weight and bias; see
/// [`crate::instance_norm`].
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    num_features: usize,
    eps: f64,
}

impl InstanceNorm {
    /// InstanceNorm over `num_features` channels, with a weight and bias of shape
    /// `[num_features]` when `affine` is given as `Some((weight, bias))`.
    pub fn new(num_features: usize, affine: Option<(Tensor, Tensor)>, eps: f64) -> Self {
        let (weight, bias) = affine.unzip();
        Self {
            weight,
            bias,
            num_features,
            eps,
        }
    }

    /// The per-channel weight (γ), if the layer is affine.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// The per-channel bias (β), if the layer is affine.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The epsilon added to the variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }
}

impl Module for InstanceNorm {
    /// Normalizes `x` of shape `[B, C, *spatial]`. Errors as [`crate::instance_norm`]
    /// does, and when C differs from `num_features`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check::channels("InstanceNorm", x, self.num_features, false)?;
        crate::instance_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// Builds an [`InstanceNorm`] over `num_features` channels from `vb`: with
/// `config.affine`, tensors `weight` and `bias` of shape `[num_features]` (ones and
/// zeros when `vb` creates them), as PyTorch's `InstanceNorm2d(affine=True)` names them.
///
/// # Errors
/// A tensor missing from a checkpoint or of another shape.
pub fn instance_norm<C: Into<InstanceNormConfig>>(
    num_features: usize,
    config: C,
    vb: VarBuilder,
) -> Result<InstanceNorm> {
    let config = config.into();
    let affine = if config.affine {
        Some((
            vb.get_with_hints(num_features, "weight", Init::Const(1.))?,
            vb.get_with_hints(num_features, "bias", Init::Const(0.))?,
        ))
    } else {
        None
    };
    Ok(InstanceNorm::new(num_features, affine, config.eps))
}
