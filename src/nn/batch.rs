//! BatchNorm as a module: batch statistics in training, running ones in eval, updated
//! as PyTorch updates them, under PyTorch's checkpoint names.

use candle_core::{bail, DType, ModuleT, Result, Tensor, Var};
use candle_nn::{BatchNormConfig, Init, VarBuilder};

/// BatchNorm over `[B, C]` or `[B, C, *spatial]` (PyTorch's `BatchNorm1d/2d/3d`), a
/// drop-in for `candle_nn::BatchNorm` whose training forward and backward are fused;
/// see [`crate::batch_norm`].
///
/// `forward_t(x, true)` normalizes with the batch's statistics and, when the layer
/// tracks running statistics, updates them: `running_mean ← (1 − m)·running_mean +
/// m·mean` and `running_var ← (1 − m)·running_var + m·var·n/(n − 1)` (n values per
/// channel, the variance unbiased), with PyTorch's momentum m, or with PyTorch's
/// `momentum=None` the cumulative average m = 1/t at the t-th training batch, t
/// counted by `num_batches_tracked` (an i64 scalar, which counts either way when the
/// layer has one). `forward_t(x, false)` normalizes with the running statistics, or
/// with the batch's when the layer does not track them, as PyTorch does.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    running: Option<(Var, Var)>,
    weight_and_bias: Option<(Tensor, Tensor)>,
    num_features: usize,
    eps: f64,
    /// None: the cumulative average, by `num_batches_tracked`.
    momentum: Option<f64>,
    num_batches_tracked: Option<Var>,
}

impl BatchNorm {
    /// A BatchNorm over `num_features` channels with running statistics (`[C]` each,
    /// kept as variables so that training updates them in place), an optional weight
    /// and bias, `eps` and `momentum`.
    ///
    /// # Errors
    /// Tensors not of shape `[num_features]`, or an `eps` or `momentum` that is
    /// negative or not finite (a momentum above 1 too).
    pub fn new(
        num_features: usize,
        running: Option<(Tensor, Tensor)>,
        weight_and_bias: Option<(Tensor, Tensor)>,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        if !(eps.is_finite() && eps >= 0.0) {
            bail!("BatchNorm: eps must be finite and >= 0, got {eps}")
        }
        check_momentum(momentum)?;
        let pairs = [
            ("running_mean", "running_var", &running),
            ("weight", "bias", &weight_and_bias),
        ];
        for (a, b, pair) in pairs {
            if let Some((ta, tb)) = pair {
                for (name, t) in [(a, ta), (b, tb)] {
                    if t.dims() != [num_features] {
                        bail!("BatchNorm: {name} has shape {:?}, expected [{num_features}]", t.dims())
                    }
                }
            }
        }
        let running = running
            .map(|(m, v)| Ok::<_, candle_core::Error>((Var::from_tensor(&m)?, Var::from_tensor(&v)?)))
            .transpose()?;
        Ok(Self {
            running,
            weight_and_bias,
            num_features,
            eps,
            momentum: Some(momentum),
            num_batches_tracked: None,
        })
    }

    /// The same layer with momentum `momentum`, or with `None` PyTorch's cumulative
    /// moving average (a layer that tracks running statistics and has no
    /// `num_batches_tracked` then gets one, at 0).
    ///
    /// # Errors
    /// A momentum that is not in [0, 1].
    pub fn with_momentum(self, momentum: Option<f64>) -> Result<Self> {
        if let Some(m) = momentum {
            check_momentum(m)?;
        }
        let counter = match (&self.num_batches_tracked, &self.running, momentum) {
            (None, Some((mean, _)), None) => Some(Var::zeros((), DType::I64, mean.device())?),
            _ => self.num_batches_tracked,
        };
        Ok(Self {
            momentum,
            num_batches_tracked: counter,
            ..self
        })
    }

    /// The same layer counting its training batches in `num_batches_tracked`, an i64
    /// scalar (PyTorch's buffer of that name), kept as a variable so that training
    /// updates it in place.
    ///
    /// # Errors
    /// A tensor that is not an i64 scalar, or a layer without running statistics.
    pub fn with_num_batches_tracked(self, num_batches_tracked: Tensor) -> Result<Self> {
        let t = &num_batches_tracked;
        if t.rank() != 0 || t.dtype() != DType::I64 {
            bail!(
                "BatchNorm: num_batches_tracked must be an i64 scalar, got shape {:?} and dtype {:?}",
                t.dims(),
                t.dtype()
            )
        }
        if self.running.is_none() {
            bail!("BatchNorm: num_batches_tracked without running statistics")
        }
        Ok(Self {
            num_batches_tracked: Some(Var::from_tensor(t)?),
            ..self
        })
    }

    /// The running mean, `[C]`, when the layer tracks running statistics.
    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(m, _)| m.as_tensor())
    }

    /// The running (unbiased) variance, `[C]`, when the layer tracks running statistics.
    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(_, v)| v.as_tensor())
    }

    /// The weight (γ) and bias (β), if the layer is affine.
    pub fn weight_and_bias(&self) -> Option<(&Tensor, &Tensor)> {
        self.weight_and_bias.as_ref().map(|(w, b)| (w, b))
    }

    /// The epsilon added to the variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The weight of the new batch's statistics in the running ones; None for the
    /// cumulative average (PyTorch's `momentum=None`).
    pub fn momentum(&self) -> Option<f64> {
        self.momentum
    }

    /// The number of training batches seen, an i64 scalar, when the layer counts them.
    pub fn num_batches_tracked(&self) -> Option<&Tensor> {
        self.num_batches_tracked.as_ref().map(Var::as_tensor)
    }

    /// The number of channels.
    pub fn num_features(&self) -> usize {
        self.num_features
    }
}

impl ModuleT for BatchNorm {
    /// Normalizes `x` of shape `[B, C, *spatial]`: with batch statistics (updating the
    /// running ones) when `train`, else with the running statistics. Errors as
    /// [`crate::batch_norm`] and [`crate::batch_norm_eval`] do, and when C differs from
    /// `num_features`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        crate::check::channels("BatchNorm", x, self.num_features, false)?;
        let (w, b) = self.weight_and_bias.as_ref().map(|(w, b)| (w, b)).unzip();
        match &self.running {
            Some((mean, var)) if !train => crate::batch_norm_eval(x, mean, var, w, b, self.eps),
            Some((mean, var)) => {
                let (y, batch_mean, batch_var) = crate::batch_norm_train(x, w, b, self.eps)?;
                let n = (x.elem_count() / self.num_features) as f64;
                if let Some(t) = &self.num_batches_tracked {
                    t.set(
                        &t.as_tensor()
                            .broadcast_add(&Tensor::ones((), DType::I64, t.device())?)?,
                    )?;
                }
                let m = match (self.momentum, &self.num_batches_tracked) {
                    (Some(m), _) => m,
                    // Read back only here: on a GPU it waits for the device.
                    (None, Some(t)) => 1.0 / t.as_tensor().to_scalar::<i64>()? as f64,
                    (None, None) => bail!("BatchNorm: momentum None needs num_batches_tracked"),
                };
                let update = |running: &Var, batch: Tensor| {
                    let batch = batch.to_dtype(running.dtype())?;
                    running.set(&((running.as_tensor() * (1.0 - m))? + (batch * m)?)?.detach())
                };
                update(mean, batch_mean)?;
                update(var, (batch_var * (n / (n - 1.0)))?)?;
                Ok(y)
            }
            None => crate::batch_norm(x, w, b, self.eps),
        }
    }
}

/// Builds a [`BatchNorm`] over `num_features` channels from `vb`, as
/// `candle_nn::batch_norm`: `running_mean` (zeros) and `running_var` (ones), and with
/// `config.affine` a `weight` (ones) and `bias` (zeros), PyTorch's names; a
/// `num_batches_tracked` in a checkpoint is loaded and counts on (none is created: for
/// PyTorch's buffers and options, [`pytorch::batch_norm`](super::pytorch::batch_norm)).
/// `config.momentum` is PyTorch's momentum.
///
/// # Errors
/// `config.remove_mean == false` (BatchNorm always centers here), an `eps` or
/// `momentum` out of range, or a tensor missing from a checkpoint or of another shape.
pub fn batch_norm<C: Into<BatchNormConfig>>(num_features: usize, config: C, vb: VarBuilder) -> Result<BatchNorm> {
    let config = config.into();
    if !config.remove_mean {
        bail!("BatchNorm: remove_mean = false is not supported (the mean is always subtracted)")
    }
    let running = (
        vb.get_with_hints(num_features, "running_mean", Init::Const(0.))?,
        vb.get_with_hints(num_features, "running_var", Init::Const(1.))?,
    );
    let weight_and_bias = if config.affine {
        Some((
            vb.get_with_hints(num_features, "weight", Init::Const(1.))?,
            vb.get_with_hints(num_features, "bias", Init::Const(0.))?,
        ))
    } else {
        None
    };
    let bn = BatchNorm::new(
        num_features,
        Some(running),
        weight_and_bias,
        config.eps,
        config.momentum,
    )?;
    if vb.contains_tensor("num_batches_tracked") {
        return bn.with_num_batches_tracked(num_batches_tracked(&vb)?);
    }
    Ok(bn)
}

/// The `num_batches_tracked` of `vb`: an i64 scalar, 0 when `vb` creates it.
pub(super) fn num_batches_tracked(vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints_dtype((), "num_batches_tracked", Init::Const(0.), DType::I64)
}

/// PyTorch's range for a momentum.
fn check_momentum(momentum: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&momentum) {
        bail!("BatchNorm: momentum must be in [0, 1], got {momentum}")
    }
    Ok(())
}
