//! BatchNorm: the public functions and their checks.

use super::{affine, run_backward, run_forward, NormGrads, Tangents};
use crate::backend::Slots;
use crate::check;
use crate::spec::Spec;
use candle_core::{bail, Result, Tensor};

const OP: &str = "batch_norm";

/// BatchNorm in training mode over channels-first `x` of shape `[B, C]` or
/// `[B, C, *spatial]`: each channel is normalized with the mean and biased variance of
/// its B·prod(spatial) elements in this batch, then scaled and shifted, as
/// `torch.nn.functional.batch_norm(training=True)`. Statistics are accumulated in f32
/// (f64 for f64); the op is differentiable in `x`, `weight` and `bias` through one
/// fused backward. [`batch_norm_train`] also returns the statistics, and
/// [`batch_norm_eval`] normalizes with running ones.
///
/// # Errors
/// `x` of rank < 2 or with fewer than two values per channel (B·prod(spatial) < 2, as
/// PyTorch refuses in training), an unsupported dtype, a `weight`/`bias` not of shape
/// `[C]`, on another device, or of another dtype than `x` (f32 is also accepted for
/// f16 and bf16 `x`, all parameters alike), or an `eps` that is negative or not
/// finite.
pub fn batch_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    Ok(batch_norm_train(x, weight, bias, eps)?.0)
}

/// [`batch_norm`], returning `(y, mean, var)`: y, and each channel's batch mean and
/// biased variance (shape `[C]`, the dtype of `weight` and `bias`: f32 beside f16 or
/// bf16 x in mixed precision, x's without them) from the same pass that normalized it,
/// for updating running statistics without reading x again. The statistics are
/// detached: no gradient flows through them.
///
/// # Errors
/// As [`batch_norm`].
pub fn batch_norm_train(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let spec = spec(x, weight, bias, eps, None)?;
    let slots = Slots {
        weight,
        bias,
        ..Slots::new(x)
    };
    let out = run_forward(&spec, slots)?;
    let Some([mean, var]) = out.stats else {
        bail!("{OP}: internal error: the forward left no statistics")
    };
    Ok((out.y, mean, var))
}

/// BatchNorm in eval mode: `(x − running_mean) / sqrt(running_var + eps) · weight +
/// bias` per channel, in one fused pass, as `torch.nn.functional.batch_norm(training=False)`.
/// Differentiable in `x`, `weight` and `bias` (fine-tuning with frozen statistics:
/// dx = dy·γ/sqrt(running_var + eps)); the running statistics are constants.
///
/// # Errors
/// Those of [`batch_norm`] but the count of values per channel, and a `running_mean` or
/// `running_var` not of shape `[C]`, or of another device or dtype than the other
/// parameters accept.
pub fn batch_norm_eval(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let spec = spec(x, weight, bias, eps, Some((running_mean, running_var)))?;
    // The running statistics are constants: no gradient reaches them.
    let (m, v) = (running_mean.detach(), running_var.detach());
    let slots = Slots {
        weight,
        bias,
        running: Some([&m, &v]),
        ..Slots::new(x)
    };
    Ok(run_forward(&spec, slots)?.y)
}

/// The training backward of [`batch_norm`] on its own, outside autograd: given `dy`
/// (shape, dtype and device of `x`), the gradients of `x`, of `weight` when given and
/// of `bias` when given, from the fused kernels `Tensor::backward` runs (statistics
/// recomputed from `x`).
///
/// # Errors
/// Those of [`batch_norm`], and a `dy` whose shape, dtype or device differ from `x`'s.
pub fn batch_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    dy: &Tensor,
    eps: f64,
) -> Result<NormGrads> {
    let spec = spec(x, weight, bias, eps, None)?;
    check::same(OP, dy, "dy", x, "x")?;
    let slots = Slots {
        weight,
        bias,
        dy: Some(dy),
        ..Slots::new(x)
    };
    Ok(run_backward(&spec, affine(weight, bias), slots)?.into())
}

/// The forward-mode derivative of [`batch_norm`] (training): `(y, ẏ)` along the
/// tangents `t` of x, the weight and the bias, with the means of
/// [`crate::layer_norm_jvp`]'s formula over each channel (the batch and the spatial
/// dimensions).
///
/// # Errors
/// Those of [`batch_norm`] and of [`crate::layer_norm_jvp`].
pub fn batch_norm_jvp(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    super::jvp(spec(x, weight, bias, eps, None)?, x, (weight, bias), None, t)
}

/// The forward-mode derivative of [`batch_norm_eval`]: `(y, ẏ)` along the tangents `t`
/// of x, the weight and the bias. The running statistics are constants: ẏ =
/// ẋ·γ/sqrt(running_var + eps) + x̂·γ̇ + β̇.
///
/// # Errors
/// Those of [`batch_norm_eval`] and of [`crate::layer_norm_jvp`].
pub fn batch_norm_eval_jvp(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    t: Tangents,
) -> Result<(Tensor, Tensor)> {
    let spec = spec(x, weight, bias, eps, Some((running_mean, running_var)))?;
    let running = [running_mean.detach(), running_var.detach()];
    super::jvp(spec, x, (weight, bias), Some([&running[0], &running[1]]), t)
}

/// The checked [`Spec`]: running statistics given for eval, else training's rule of
/// more than one value per channel.
fn spec(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    running: Option<(&Tensor, &Tensor)>,
) -> Result<Spec> {
    check::input(OP, x, 2, "[B, C, *spatial]")?;
    check::eps(OP, eps)?;
    let c = x.dims()[1];
    check::param(OP, x, weight, "weight", c, "the channel dimension")?;
    check::param(OP, x, bias, "bias", c, "the channel dimension")?;
    let (m, v) = running.unzip();
    check::one_param_dtype(
        OP,
        &[
            ("weight", weight),
            ("bias", bias),
            ("running_mean", m),
            ("running_var", v),
        ],
    )?;
    match running {
        Some((m, v)) => {
            check::param(OP, x, Some(m), "running_mean", c, "the channel dimension")?;
            check::param(OP, x, Some(v), "running_var", c, "the channel dimension")?;
        }
        None if x.elem_count() / c.max(1) < 2 => bail!(
            "{OP}: training needs more than 1 value per channel, got x of shape {:?}",
            x.dims()
        ),
        None => {}
    }
    Ok(Spec::batch(x.dims(), eps))
}
