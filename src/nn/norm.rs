//! The activation norms as modules: drop-in replacements for candle-nn's norm layers
//! and their `VarBuilder` builders.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use candle_nn::LayerNormConfig;

/// LayerNorm (or, with `remove_mean = false`, RMSNorm) over the trailing dimensions
/// `normalized_shape` (the last one, as candle-nn's, unless built by
/// [`pytorch::layer_norm`](super::pytorch::layer_norm)), with an optional weight and
/// bias of that shape; see [`crate::layer_norm`]. Several trailing dimensions are
/// normalized as one row of their product. With [`LayerNorm::with_channels_first`],
/// over the channels of `[B, C, *spatial]` instead ([`crate::layer_norm_channels_first`]).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    normalized_shape: Vec<usize>,
    remove_mean: bool,
    /// None: PyTorch's `eps=None` of RMSNorm, the epsilon of the statistics' dtype.
    eps: Option<f64>,
    weight_offset: f64,
    channels_first: bool,
}

impl LayerNorm {
    /// LayerNorm with a weight and a bias, both of the shape of the normalized
    /// dimensions (`[N]` for the last one).
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self::from_parts(Some(weight), Some(bias), None, true, Some(eps))
    }

    /// LayerNorm with a weight and no bias.
    pub fn new_no_bias(weight: Tensor, eps: f64) -> Self {
        Self::from_parts(Some(weight), None, None, true, Some(eps))
    }

    /// RMSNorm (no mean subtraction, no bias) with a weight.
    pub fn rms_norm(weight: Tensor, eps: f64) -> Self {
        Self::from_parts(Some(weight), None, None, false, Some(eps))
    }

    /// LayerNorm over the trailing dimensions `normalized_shape`, without a weight or
    /// a bias (PyTorch's `elementwise_affine=False`).
    pub fn new_no_affine(normalized_shape: &[usize], eps: f64) -> Self {
        Self::from_parts(None, None, Some(normalized_shape.to_vec()), true, Some(eps))
    }

    /// The layer from its parts; the normalized shape is the weight's (or the bias's)
    /// when not given.
    pub(crate) fn from_parts(
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        normalized_shape: Option<Vec<usize>>,
        remove_mean: bool,
        eps: Option<f64>,
    ) -> Self {
        let normalized_shape = normalized_shape
            .or_else(|| weight.as_ref().or(bias.as_ref()).map(|t| t.dims().to_vec()))
            .unwrap_or_default();
        Self {
            weight,
            bias,
            normalized_shape,
            remove_mean,
            eps,
            weight_offset: 0.0,
            channels_first: false,
        }
    }

    /// The weight (γ), of the normalized shape, if the layer has one.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// The bias (β), of the normalized shape, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The trailing dimensions of x that are normalized together.
    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    /// The epsilon added to the variance inside the square root. For an RMSNorm built
    /// with PyTorch's `eps=None`, the one its f32, f16 and bf16 inputs get
    /// ([`Self::eps_for`]).
    pub fn eps(&self) -> f64 {
        self.eps_for(DType::F32)
    }

    /// The epsilon applied to inputs of `dtype`: the layer's, or with PyTorch's
    /// `eps=None` the machine epsilon of the dtype the statistics are computed in, as
    /// PyTorch's code takes it (f32's for f16, bf16 and f32 inputs; f64's for f64).
    pub fn eps_for(&self, dtype: DType) -> f64 {
        match (self.eps, dtype) {
            (Some(eps), _) => eps,
            (None, DType::F64) => f64::EPSILON,
            (None, _) => f32::EPSILON as f64,
        }
    }

    /// Whether the mean is subtracted (LayerNorm) or not (RMSNorm).
    pub fn remove_mean(&self) -> bool {
        self.remove_mean
    }

    /// The same layer computing `x̂·(weight_offset + γ)` from its weight γ, in one fused
    /// op ([`crate::RowNorm`]): for checkpoints that store γ − offset (Gemma's RMSNorm
    /// stores γ − 1).
    pub fn with_weight_offset(self, weight_offset: f64) -> Self {
        Self { weight_offset, ..self }
    }

    /// The constant added to every weight element (0 unless set).
    pub fn weight_offset(&self) -> f64 {
        self.weight_offset
    }

    /// The same layer over the channels of channels-first input `[B, C, *spatial]`
    /// when `channels_first` (ConvNeXt's `LayerNorm(data_format="channels_first")`,
    /// SAM's `LayerNorm2d`; the same `weight` and `bias` tensors of shape `[C]`), or
    /// over the trailing dimensions (the default). Only a LayerNorm over one dimension
    /// without a weight offset has this form: others fail in [`Module::forward`].
    ///
    /// ```
    /// use candle_core::{DType, Device, Module, Tensor};
    /// use candle_norm::nn::LayerNorm;
    ///
    /// let dev = Device::Cpu;
    /// let x = Tensor::randn(0f32, 1., (2, 8, 4, 4), &dev)?;
    /// let w = Tensor::randn(1f32, 0.1, 8, &dev)?;
    /// let b = Tensor::randn(0f32, 0.1, 8, &dev)?;
    /// let y = LayerNorm::new(w.clone(), b.clone(), 1e-6).with_channels_first(true).forward(&x)?;
    /// // LayerNorm over the channels moved last, moved back.
    /// let last = candle_norm::layer_norm(&x.permute((0, 2, 3, 1))?, Some(&w), Some(&b), 1e-6)?;
    /// let diff = (y - last.permute((0, 3, 1, 2))?)?.abs()?.max_all()?.to_scalar::<f32>()?;
    /// assert!(diff < 1e-5);
    /// // RMSNorm has no channels-first form.
    /// assert!(LayerNorm::rms_norm(w, 1e-6).with_channels_first(true).forward(&x).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_channels_first(self, channels_first: bool) -> Self {
        Self { channels_first, ..self }
    }

    /// Whether the layer normalizes the channels of `[B, C, *spatial]`.
    pub fn channels_first(&self) -> bool {
        self.channels_first
    }

    /// The channels-first forward ([`Self::with_channels_first`]).
    fn forward_channels_first(&self, x: &Tensor) -> Result<Tensor> {
        let [c] = self.normalized_shape[..] else {
            bail!(
                "LayerNorm: channels-first input needs one normalized dimension, the layer has {:?}",
                self.normalized_shape
            )
        };
        if !self.remove_mean || self.weight_offset != 0.0 {
            bail!("LayerNorm: channels-first input is for LayerNorm without a weight offset, not RMSNorm or an offset")
        }
        crate::check::channels("LayerNorm", x, c, false)?;
        let eps = self.eps_for(x.dtype());
        crate::layer_norm_channels_first(x, self.weight.as_ref(), self.bias.as_ref(), eps)
    }

    /// The op on x's rows, with the layer's options; an RMSNorm's bias is added after
    /// it ([`Self::rms_bias`]).
    fn op<'a>(&self, x: &Tensor, w: Option<&'a Tensor>, b: Option<&'a Tensor>) -> crate::RowNorm<'a> {
        let eps = self.eps_for(x.dtype());
        let op = if self.remove_mean {
            crate::RowNorm::layer(w, b, eps)
        } else {
            crate::RowNorm::rms(w, eps)
        };
        op.with_weight_offset(self.weight_offset)
    }

    /// y plus the bias of an RMSNorm that has one (candle-nn's `LayerNorm` with
    /// `remove_mean = false` adds it after the norm).
    fn rms_bias(&self, y: Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        match b {
            Some(b) if !self.remove_mean => y.broadcast_add(b),
            _ => Ok(y),
        }
    }

    /// x with its normalized dimensions merged into one, the weight and bias as
    /// vectors, and x's shape to restore.
    fn rows(&self, module: &str, x: &Tensor) -> Result<Rows> {
        let k = self.normalized_shape.len();
        if k <= 1 {
            return Ok(Rows {
                x: x.clone(),
                weight: self.weight.clone(),
                bias: self.bias.clone(),
                shape: x.dims().to_vec(),
            });
        }
        let dims = x.dims();
        if dims.len() < k || dims[dims.len() - k..] != self.normalized_shape[..] {
            bail!(
                "{module}: x of shape {dims:?} does not end in the normalized shape {:?}",
                self.normalized_shape
            )
        }
        let flat = |t: &Option<Tensor>| t.as_ref().map(|t| t.flatten_all()).transpose();
        Ok(Rows {
            x: x.flatten_from(dims.len() - k)?,
            weight: flat(&self.weight)?,
            bias: flat(&self.bias)?,
            shape: dims.to_vec(),
        })
    }

    /// The residual add of a pre-norm block fused with this norm: returns
    /// `(self.forward(&(x + residual)?)?, (x + residual)?)` from one pass over memory,
    /// the sum rounded as candle's add rounds it; see [`crate::add_layer_norm`] and
    /// [`crate::add_rms_norm`]. Both outputs are differentiable.
    ///
    /// # Errors
    /// As [`Module::forward`], a `residual` whose shape, dtype or device differ from
    /// `x`'s, and a channels-first layer.
    pub fn forward_with_residual(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.channels_first {
            bail!("LayerNorm: the fused residual add takes the trailing dimensions, not channels-first input")
        }
        let Rows {
            x: x2,
            weight: w,
            bias: b,
            shape,
        } = self.rows("LayerNorm", x)?;
        let r2 = if self.normalized_shape.len() > 1 {
            if residual.dims() != x.dims() {
                bail!(
                    "LayerNorm: residual has shape {:?}, x has shape {:?}",
                    residual.dims(),
                    x.dims()
                )
            }
            residual.reshape(x2.shape())?
        } else {
            residual.clone()
        };
        let (y, h) = self.op(x, w.as_ref(), b.as_ref()).forward_add(&x2, &r2)?;
        let y = self.rms_bias(y, b.as_ref())?;
        Ok((y.reshape(shape.as_slice())?, h.reshape(shape)?))
    }
}

/// A LayerNorm's input as rows: x with the normalized dimensions merged, the weight
/// and bias flattened, and x's shape.
struct Rows {
    x: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    shape: Vec<usize>,
}

impl Module for LayerNorm {
    /// Normalizes `x` over its normalized (trailing) dimensions, or over the channels
    /// of `[B, C, *spatial]` when channels-first. Errors as [`crate::layer_norm`] (or
    /// [`crate::layer_norm_channels_first`]) does, and when x does not end in the
    /// normalized shape (has another number of channels).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.channels_first {
            return self.forward_channels_first(x);
        }
        let Rows {
            x: x2,
            weight: w,
            bias: b,
            shape,
        } = self.rows("LayerNorm", x)?;
        let y = self.op(x, w.as_ref(), b.as_ref()).forward(&x2)?;
        self.rms_bias(y, b.as_ref())?.reshape(shape)
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
    Ok(LayerNorm::from_parts(
        Some(weight),
        bias,
        None,
        config.remove_mean,
        Some(config.eps),
    ))
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

/// RMSNorm over the trailing dimensions `normalized_shape` (the last one, as
/// candle-nn's, unless built by [`pytorch::rms_norm`](super::pytorch::rms_norm)) with an
/// optional weight; see [`crate::rms_norm`].
#[derive(Clone, Debug)]
pub struct RmsNorm(LayerNorm);

impl RmsNorm {
    /// RMSNorm with a weight of the normalized shape (`[N]` for the last dimension).
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self(LayerNorm::rms_norm(weight, eps))
    }

    /// The underlying [`LayerNorm`] (with `remove_mean = false`).
    pub fn into_inner(self) -> LayerNorm {
        self.0
    }

    /// RMSNorm over the trailing dimensions `normalized_shape` without a weight
    /// (PyTorch's `elementwise_affine=False`); `eps` None is PyTorch's default
    /// ([`LayerNorm::eps_for`]).
    pub fn new_no_affine(normalized_shape: &[usize], eps: Option<f64>) -> Self {
        Self::from_parts(None, normalized_shape.to_vec(), eps)
    }

    /// The layer from its parts.
    pub(crate) fn from_parts(weight: Option<Tensor>, normalized_shape: Vec<usize>, eps: Option<f64>) -> Self {
        Self(LayerNorm::from_parts(weight, None, Some(normalized_shape), false, eps))
    }

    /// The weight (γ), of the normalized shape, if the layer has one.
    pub fn weight(&self) -> Option<&Tensor> {
        self.0.weight()
    }

    /// The trailing dimensions of x that are normalized together.
    pub fn normalized_shape(&self) -> &[usize] {
        self.0.normalized_shape()
    }

    /// The epsilon added to the mean square inside the square root (for PyTorch's
    /// `eps=None`, the one f32, f16 and bf16 inputs get: [`LayerNorm::eps_for`]).
    pub fn eps(&self) -> f64 {
        self.0.eps()
    }

    /// The epsilon applied to inputs of `dtype` ([`LayerNorm::eps_for`]).
    pub fn eps_for(&self, dtype: DType) -> f64 {
        self.0.eps_for(dtype)
    }

    /// The same layer computing `x̂·(weight_offset + γ)` ([`LayerNorm::with_weight_offset`]);
    /// Gemma's RMSNorm is `with_weight_offset(1.0)`.
    pub fn with_weight_offset(self, weight_offset: f64) -> Self {
        Self(self.0.with_weight_offset(weight_offset))
    }

    /// The constant added to every weight element (0 unless set).
    pub fn weight_offset(&self) -> f64 {
        self.0.weight_offset()
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
    /// Normalizes `x` over its normalized (trailing) dimensions. Errors as
    /// [`crate::rms_norm`] does, and when x does not end in the normalized shape.
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

/// GroupNorm over `[B, C, *spatial]` with an optional per-channel weight and bias;
/// see [`crate::group_norm`]. With [`GroupNorm::with_channels_last`], over
/// `[B, *spatial, C]` instead ([`crate::group_norm_channels_last`]); with
/// [`GroupNorm::with_silu`], followed by SiLU in the same op
/// ([`crate::group_norm_silu`]).
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
    num_channels: usize,
    num_groups: usize,
    channels_last: bool,
    silu: bool,
}

impl GroupNorm {
    /// GroupNorm with `num_groups` groups over `num_channels` channels; weight and bias
    /// have shape `[num_channels]`.
    ///
    /// # Errors
    /// `num_groups` of 0 or not dividing `num_channels`.
    pub fn new(weight: Tensor, bias: Tensor, num_channels: usize, num_groups: usize, eps: f64) -> Result<Self> {
        Self::from_parts(Some((weight, bias)), num_channels, num_groups, eps)
    }

    /// GroupNorm without a weight or a bias (PyTorch's `affine=False`).
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn new_no_affine(num_channels: usize, num_groups: usize, eps: f64) -> Result<Self> {
        Self::from_parts(None, num_channels, num_groups, eps)
    }

    fn from_parts(affine: Option<(Tensor, Tensor)>, num_channels: usize, num_groups: usize, eps: f64) -> Result<Self> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            bail!("GroupNorm: num_groups ({num_groups}) must be > 0 and divide num_channels ({num_channels})")
        }
        let (weight, bias) = affine.unzip();
        Ok(Self {
            weight,
            bias,
            eps,
            num_channels,
            num_groups,
            channels_last: false,
            silu: false,
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

    /// The same layer followed by SiLU when `silu` (`silu(group_norm(x))`, a diffusion
    /// UNet's or VAE's `norm` then `nonlinearity`), in one fused op forward and
    /// backward ([`crate::group_norm_silu`], [`crate::group_norm_channels_last_silu`]).
    pub fn with_silu(self, silu: bool) -> Self {
        Self { silu, ..self }
    }

    /// Whether SiLU follows the norm.
    pub fn silu(&self) -> bool {
        self.silu
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
    /// channels-last), then applies SiLU when the layer has it. Errors as
    /// [`crate::group_norm`] does, and when C differs from `num_channels`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check::channels("GroupNorm", x, self.num_channels, self.channels_last)?;
        let (w, b, g, eps) = (self.weight.as_ref(), self.bias.as_ref(), self.num_groups, self.eps);
        match (self.channels_last, self.silu) {
            (false, false) => crate::group_norm(x, g, w, b, eps),
            (true, false) => crate::group_norm_channels_last(x, g, w, b, eps),
            (false, true) => crate::group_norm_silu(x, g, w, b, eps),
            (true, true) => crate::group_norm_channels_last_silu(x, g, w, b, eps),
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
