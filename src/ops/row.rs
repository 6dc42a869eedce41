//! The row norms (LayerNorm, RMSNorm and their fused residual adds) with every option,
//! as a value: the general form of their functions.

use super::{add, layer, rms, AddNormGrads, NormGrads};
use crate::spec::Spec;
use candle_core::{bail, DType, Result, Tensor};

/// LayerNorm or RMSNorm over the last dimension, with every option: the general form of
/// [`layer_norm`](crate::layer_norm), [`rms_norm`](crate::rms_norm), their fused
/// residual adds and their backward, which are this with the default options.
///
/// The option beyond those functions' arguments is `weight_offset`: the norm computes
/// `y = x̂·(weight_offset + γ) (+ β)`, the sum taken in the statistics' precision (f32
/// for f16, bf16 and f32 x) inside the fused op, for weights stored as γ − offset
/// (Gemma's RMSNorm stores γ − 1; TransformerEngine calls it zero-centred gamma). The
/// gradient of the stored weight is that of γ, Σ dy·x̂, as without an offset.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_norm::RowNorm;
///
/// let x = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu)?;
/// let w = Tensor::zeros(64, DType::F32, &Device::Cpu)?; // γ − 1, as Gemma stores it
/// let y = RowNorm::rms(Some(&w), 1e-6).with_weight_offset(1.0).forward(&x)?;
/// let plain = candle_norm::rms_norm(&x, None, 1e-6)?;
/// assert_eq!(y.to_vec2::<f32>()?, plain.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RowNorm<'a> {
    /// γ, of shape `[N]`, x's dtype or f32 for f16 and bf16 x.
    pub weight: Option<&'a Tensor>,
    /// β, as the weight (LayerNorm only).
    pub bias: Option<&'a Tensor>,
    /// Added to the variance (mean square) inside the square root.
    pub eps: f64,
    /// Added to every element of the weight; 0 by default. Needs a weight.
    pub weight_offset: f64,
    /// Whether the mean is subtracted: LayerNorm (true) or RMSNorm (false).
    pub center: bool,
}

impl<'a> RowNorm<'a> {
    /// LayerNorm, as [`layer_norm`](crate::layer_norm).
    pub fn layer(weight: Option<&'a Tensor>, bias: Option<&'a Tensor>, eps: f64) -> Self {
        Self {
            weight,
            bias,
            eps,
            weight_offset: 0.0,
            center: true,
        }
    }

    /// RMSNorm, as [`rms_norm`](crate::rms_norm).
    pub fn rms(weight: Option<&'a Tensor>, eps: f64) -> Self {
        Self {
            weight,
            bias: None,
            eps,
            weight_offset: 0.0,
            center: false,
        }
    }

    /// The same norm with `weight_offset` added to every weight element.
    pub fn with_weight_offset(self, weight_offset: f64) -> Self {
        Self { weight_offset, ..self }
    }

    /// The checked [`Spec`] for `x` (of `x + residual` when `residual`), and the weight
    /// and bias the fused op runs with: with a weight offset, `weight + offset` and the
    /// bias in the statistics' dtype (f32, f64 for f64 x), which the op then takes as
    /// mixed-precision parameters; autograd carries the gradient back to `weight`
    /// through the add, unchanged in form.
    fn prepare(&self, x: &Tensor, residual: bool) -> Result<(Spec, Params)> {
        let spec = if self.center {
            layer::checked(x, self.weight, self.bias, self.eps, residual)?
        } else {
            let spec = rms::checked(x, self.weight, self.eps, residual)?;
            if self.bias.is_some() {
                bail!("{}: RMSNorm has no bias", spec.name())
            }
            spec
        };
        if self.weight_offset == 0.0 {
            return Ok((
                spec,
                Params {
                    weight: self.weight.cloned(),
                    bias: self.bias.cloned(),
                },
            ));
        }
        if !self.weight_offset.is_finite() {
            bail!(
                "{}: weight_offset must be finite, got {}",
                spec.name(),
                self.weight_offset
            )
        }
        let Some(w) = self.weight else {
            bail!("{}: a weight_offset needs a weight", spec.name())
        };
        let acc = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let params = Params {
            weight: Some((w.to_dtype(acc)? + self.weight_offset)?),
            bias: self.bias.map(|b| b.to_dtype(acc)).transpose()?,
        };
        Ok((spec, params))
    }

    /// The norm of `x` over its last dimension: y, as [`layer_norm`](crate::layer_norm)
    /// (differentiable).
    ///
    /// # Errors
    /// Those of [`layer_norm`](crate::layer_norm) or [`rms_norm`](crate::rms_norm), a
    /// bias with `center == false`, and a `weight_offset` that is not finite or has no
    /// weight.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (spec, p) = self.prepare(x, false)?;
        super::forward(spec, x, p.weight.as_ref(), p.bias.as_ref())
    }

    /// `h = x + residual` and the norm of h in one fused op: `(y, h)`, as
    /// [`add_layer_norm`](crate::add_layer_norm).
    ///
    /// # Errors
    /// Those of [`Self::forward`], and a `residual` whose shape, dtype or device differ
    /// from `x`'s.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        let (spec, p) = self.prepare(x, true)?;
        super::forward_add(spec, x, residual, p.weight.as_ref(), p.bias.as_ref())
    }

    /// The backward of [`Self::forward`] on its own, outside autograd, as
    /// [`layer_norm_backward`](crate::layer_norm_backward).
    ///
    /// # Errors
    /// Those of [`Self::forward`], and a `dy` whose shape, dtype or device differ from
    /// `x`'s.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<NormGrads> {
        let (spec, p) = self.prepare(x, false)?;
        let g = super::backward(spec, x, p.weight.as_ref(), p.bias.as_ref(), dy, None)?;
        self.in_param_dtypes(g)
    }

    /// The backward of [`Self::forward_add`] on its own, from h, as
    /// [`add_layer_norm_backward`](crate::add_layer_norm_backward).
    ///
    /// # Errors
    /// Those of [`Self::forward`] for `h`, and a `dy` or `dh` whose shape, dtype or
    /// device differ from `h`'s.
    pub fn backward_add(&self, h: &Tensor, dy: &Tensor, dh: Option<&Tensor>) -> Result<AddNormGrads> {
        let (spec, p) = self.prepare(h, true)?;
        let g = super::backward(spec, h, p.weight.as_ref(), p.bias.as_ref(), dy, dh)?;
        Ok(add::both(self.in_param_dtypes(g)?))
    }

    /// The gradients with dγ and dβ in the dtypes of the weight and bias given (with a
    /// weight offset the op ran on them in the statistics' dtype).
    fn in_param_dtypes(&self, g: NormGrads) -> Result<NormGrads> {
        let cast = |d: Option<Tensor>, p: Option<&Tensor>| match (d, p) {
            (Some(d), Some(p)) => d.to_dtype(p.dtype()).map(Some),
            (d, _) => Ok(d),
        };
        Ok(NormGrads {
            dweight: cast(g.dweight, self.weight)?,
            dbias: cast(g.dbias, self.bias)?,
            dx: g.dx,
        })
    }
}

/// The weight and bias a row norm's fused op runs with.
struct Params {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}
