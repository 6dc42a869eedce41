//! A tour of what normalization does: the checks a normalization notebook walks
//! through, each computed with this crate's ops and printed PASS or FAIL with its
//! numbers. A few seconds on the CPU:
//!
//! ```text
//! cargo run --release --example tour
//! ```

#[path = "../common/mod.rs"]
mod common;

use candle_core::{DType, Device, ModuleT, Result, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use candle_norm::nn::{batch_norm, spectral_norm_linear};

/// One property and what was measured.
struct Check {
    name: &'static str,
    pass: bool,
    detail: String,
}

fn check(name: &'static str, pass: bool, detail: String) -> Check {
    Check { name, pass, detail }
}

/// Standard normal values of `shape`, seeded, times `scale` plus `offset`.
fn randn(seed: u64, shape: &[usize], offset: f64, scale: f64) -> Result<Tensor> {
    let mut rng = common::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (offset + scale * f64::from(rng.normal())) as f32)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// The largest absolute element.
fn max_abs(t: &Tensor) -> Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar()
}

/// Mean and biased variance over dimension `d` of a 2-D tensor, each as a vector.
fn moments(t: &Tensor, d: usize) -> Result<(Tensor, Tensor)> {
    let mean = t.mean_keepdim(d)?;
    let var = t.broadcast_sub(&mean)?.sqr()?.mean_keepdim(d)?;
    Ok((mean.flatten_all()?, var.flatten_all()?))
}

fn checks() -> Result<Vec<Check>> {
    let eps = 1e-5;
    let mut out = Vec::new();

    // 1. BatchNorm: every feature has mean 0 and variance 1 over the batch.
    let x = randn(1, &[64, 8], 3.0, 2.5)?;
    let y = candle_norm::batch_norm(&x, None, None, eps)?;
    let (m, v) = moments(&y, 0)?;
    let (m, v) = (max_abs(&m)?, max_abs(&(v - 1.0)?)?);
    out.push(check(
        "BatchNorm: each feature's mean is 0 and variance 1",
        m < 1e-5 && v < 1e-3,
        format!("max |mean| {m:.1e}, max |var − 1| {v:.1e}"),
    ));

    // 2. The same sample in two batches.
    let (a, b) = (randn(2, &[16, 8], 0.0, 1.0)?, randn(3, &[16, 8], 1.0, 2.0)?);
    let sample = a.narrow(0, 0, 1)?;
    let b = Tensor::cat(&[&sample, &b.narrow(0, 1, 15)?], 0)?;
    let bn = |t: &Tensor| candle_norm::batch_norm(t, None, None, eps)?.narrow(0, 0, 1);
    let ln = |t: &Tensor| candle_norm::layer_norm(t, None, None, eps)?.narrow(0, 0, 1);
    let bn_gap = max_abs(&(bn(&a)? - bn(&b)?)?)?;
    let ln_gap = max_abs(&(ln(&a)? - ln(&b)?)?)?;
    out.push(check(
        "the same sample in two batches: two outputs under BatchNorm, one under LayerNorm",
        bn_gap > 0.1 && ln_gap == 0.0,
        format!("BatchNorm outputs differ by up to {bn_gap:.3}, LayerNorm's by {ln_gap}"),
    ));

    // 3. Running averages over five batches, momentum 0.1.
    let varmap = VarMap::new();
    let module = batch_norm(8, 1e-5, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let mut want = Tensor::zeros(8, DType::F32, &Device::Cpu)?;
    for k in 0..5 {
        let x = randn(10 + k, &[32, 8], k as f64, 1.0)?;
        module.forward_t(&x, true)?;
        want = ((want * 0.9)? + (x.mean(0)? * 0.1)?)?;
    }
    let got = module.running_mean().expect("running statistics");
    let err = max_abs(&(got - &want)?)?;
    out.push(check(
        "running mean after five batches is the exponential average, momentum 0.1",
        err < 1e-5,
        format!(
            "running mean[0] {:.4}, by hand {:.4}",
            got.get(0)?.to_scalar::<f32>()?,
            want.get(0)?.to_scalar::<f32>()?
        ),
    ));

    // 4. The train/eval gap with stale running statistics: data around 7, which the
    // running statistics (of batches around 0 to 4) never saw.
    let shifted = randn(20, &[32, 8], 7.0, 1.0)?;
    let eval_mean = module.forward_t(&shifted, false)?.mean_all()?.to_scalar::<f32>()?;
    let train_mean = candle_norm::batch_norm(&shifted, None, None, eps)?
        .mean_all()?
        .to_scalar::<f32>()?;
    out.push(check(
        "stale running statistics: eval mode is off where train mode is centred",
        eval_mean > 1.0 && train_mean.abs() < 1e-5,
        format!("output mean {eval_mean:.2} in eval mode, {train_mean:.1e} in train mode"),
    ));

    // 5. RMSNorm does not centre.
    let x = randn(4, &[8, 64], 5.0, 1.0)?;
    let rms = candle_norm::rms_norm(&x, None, eps)?.mean_all()?.to_scalar::<f32>()?;
    let ln = candle_norm::layer_norm(&x, None, None, eps)?
        .mean_all()?
        .to_scalar::<f32>()?;
    out.push(check(
        "RMSNorm does not centre, LayerNorm does",
        rms > 0.9 && ln.abs() < 1e-5,
        format!("mean output {rms:.3} under RMSNorm, {ln:.1e} under LayerNorm"),
    ));

    // 6. eps against a nearly constant row (spread 1e-4, variance 1e-8 ≪ eps).
    let row = randn(5, &[1, 256], 1.0, 1e-4)?;
    let with_eps = max_abs(&candle_norm::layer_norm(&row, None, None, 1e-5)?)?;
    let without = candle_norm::layer_norm(&row, None, None, 0.0)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?;
    out.push(check(
        "eps keeps a nearly constant row from being blown up to unit variance",
        with_eps < 0.2 && (without - 1.0).abs() < 0.05,
        format!("max |y| {with_eps:.3} with eps 1e-5; variance {without:.3} with eps 0"),
    ));

    // 7. InstanceNorm normalizes each (sample, channel).
    let x = randn(6, &[2, 3, 10, 10], 2.0, 3.0)?;
    let y = candle_norm::instance_norm(&x, None, None, eps)?.reshape((6, 100))?;
    let (m, v) = moments(&y, 1)?;
    let (m, v) = (max_abs(&m)?, max_abs(&(v - 1.0)?)?);
    out.push(check(
        "InstanceNorm: each sample's channel has mean 0 and variance 1",
        m < 1e-5 && v < 1e-3,
        format!("max |mean| {m:.1e}, max |var − 1| {v:.1e} over 6 (sample, channel) pairs"),
    ));

    // 8. Weight norm: ‖w‖ = g for each output unit.
    let v = randn(7, &[4, 10], 0.0, 1.0)?;
    let g = Tensor::new(&[[0.5f32], [1.0], [2.0], [3.0]], &Device::Cpu)?;
    let w = candle_norm::weight_norm(&v, &g, Some(0))?;
    let norms = w.sqr()?.sum_keepdim(1)?.sqrt()?;
    let err = max_abs(&(&norms - &g)?)?;
    out.push(check(
        "weight norm: each row of w = g·v/‖v‖ has norm g",
        err < 1e-5,
        format!("row norms {:?}", norms.flatten_all()?.to_vec1::<f32>()?),
    ));

    // 9. Spectral norm: the power iteration's σ against the exact largest singular value.
    // Seeded weight and power-iteration vectors: a fresh layer's are random, and how fast
    // the iteration converges depends on the gap between the top singular values.
    let seeded = std::collections::HashMap::from([
        ("weight_orig".to_string(), randn(9, &[8, 12], 0.0, 0.3)?),
        ("bias".to_string(), randn(10, &[8], 0.0, 0.1)?),
        ("weight_u".to_string(), randn(11, &[8], 0.0, 1.0)?),
        ("weight_v".to_string(), randn(12, &[12], 0.0, 1.0)?),
    ]);
    let sn = spectral_norm_linear(12, 8, 1, VarBuilder::from_tensors(seeded, DType::F32, &Device::Cpu))?;
    let probe = randn(8, &[1, 12], 0.0, 1.0)?;
    for _ in 0..30 {
        sn.forward_t(&probe, true)?;
    }
    let sigma = |w: &Tensor| -> Result<f64> {
        // σ² is the largest eigenvalue of WᵀW: many power steps in f64.
        let w = w.to_dtype(DType::F64)?;
        let wtw = w.t()?.matmul(&w)?;
        let mut v = Tensor::ones((w.dim(1)?, 1), DType::F64, &Device::Cpu)?;
        for _ in 0..500 {
            v = wtw.matmul(&v)?;
            v = v.broadcast_div(&v.sqr()?.sum_all()?.sqrt()?)?;
        }
        v.t()?
            .matmul(&wtw)?
            .matmul(&v)?
            .flatten_all()?
            .get(0)?
            .to_scalar::<f64>()
            .map(f64::sqrt)
    };
    let (exact, normalized) = (sigma(sn.weight_orig())?, sigma(&sn.weight_t(false)?)?);
    out.push(check(
        "spectral norm: after 30 power steps W/σ̂ has largest singular value 1",
        (normalized - 1.0).abs() < 1e-3,
        format!("σ(W) = {exact:.4}, σ(W/σ̂) = {normalized:.5}"),
    ));

    // 10. Pre-norm against post-norm: the residual stream's variance over 16 blocks.
    let mut pre = randn(9, &[64, 32], 0.0, 1.0)?;
    let mut post = pre.clone();
    for l in 0..16u64 {
        let w = randn(100 + l, &[32, 32], 0.0, (1.0f64 / 32.0).sqrt())?;
        let f = |t: &Tensor| t.matmul(&w);
        pre = (&pre + f(&candle_norm::layer_norm(&pre, None, None, eps)?)?)?;
        post = candle_norm::layer_norm(&(&post + f(&post)?)?, None, None, eps)?;
    }
    let var = |t: &Tensor| -> Result<f32> { t.sqr()?.mean_all()?.to_scalar() };
    let (vpre, vpost) = (var(&pre)?, var(&post)?);
    out.push(check(
        "pre-norm's residual stream grows with depth, post-norm's stays at 1",
        vpre > 4.0 * vpost && (vpost - 1.0).abs() < 0.05,
        format!("mean square after 16 blocks: {vpre:.1} pre-norm, {vpost:.3} post-norm"),
    ));

    // 11. BatchNorm of identical examples: x − mean is 0; one example alone is refused.
    let one = randn(11, &[1, 8], 0.0, 1.0)?;
    let twice = Tensor::cat(&[&one, &one], 0)?;
    let zeros = max_abs(&candle_norm::batch_norm(&twice, None, None, eps)?)?;
    let refused = candle_norm::batch_norm(&one, None, None, eps).is_err();
    out.push(check(
        "a batch of one example under BatchNorm: zeros (refused, as PyTorch does)",
        zeros == 0.0 && refused,
        format!("max |y| of two copies {zeros}; a batch of one is an error: {refused}"),
    ));

    // 12. A tiny variance in f16 input survives: the statistics are f32.
    let row = Tensor::new(&[[1000f32, 1000.5, 1001.0, 1001.5]], &Device::Cpu)?;
    let want = candle_norm::layer_norm(&row.to_dtype(DType::F64)?, None, None, 0.0)?;
    let half = row.to_dtype(DType::F16)?;
    let ours = candle_norm::layer_norm(&half, None, None, 0.0)?.to_dtype(DType::F64)?;
    // The same formula with every step in f16: the sum of squares overflows.
    let mean = half.mean_keepdim(1)?;
    let var = (half.sqr()?.mean_keepdim(1)? - mean.sqr()?)?;
    let naive = half
        .broadcast_sub(&mean)?
        .broadcast_div(&var.sqrt()?)?
        .to_dtype(DType::F64)?;
    let ours_err = max_abs(&(&ours - &want)?)?;
    let naive_err = (&naive - &want)?.abs()?.flatten_all()?.to_vec1::<f64>()?;
    let naive_bad = naive_err.iter().any(|e| !e.is_finite() || *e > 0.1);
    out.push(check(
        "a spread of 0.5 at 1000 in f16 input survives: statistics in f32",
        ours_err < 2e-3 && naive_bad,
        format!(
            "ours {:?} (error {ours_err:.1e}); f16 arithmetic gives {:?}",
            ours.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            naive.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?
        ),
    ));

    // 13. The fused op equals the staged algebra.
    let x = randn(12, &[16, 48], 1.0, 2.0)?;
    let (w, b) = (randn(13, &[48], 1.0, 0.2)?, randn(14, &[48], 0.0, 0.2)?);
    let fused = candle_norm::layer_norm(&x, Some(&w), Some(&b), eps)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let c = x.broadcast_sub(&mean)?;
    let staged = c
        .broadcast_div(&(c.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?
        .broadcast_mul(&w)?
        .broadcast_add(&b)?;
    let err = max_abs(&(&fused - &staged)?)?;
    out.push(check(
        "the fused LayerNorm equals (x − μ)/√(σ² + ε)·γ + β step by step",
        err < 1e-5,
        format!("max difference {err:.1e}"),
    ));

    // 14. γ and β can undo the normalization: γ = √(σ² + ε), β = μ gives x back.
    let x = randn(15, &[32, 6], 4.0, 3.0)?;
    let (m, v) = moments(&x, 0)?;
    let gamma = (v + eps)?.sqrt()?;
    let y = candle_norm::batch_norm(&x, Some(&gamma), Some(&m), eps)?;
    let err = max_abs(&(&y - &x)?)?;
    out.push(check(
        "γ = √(σ² + ε), β = μ restore BatchNorm's input: the scale is learnable",
        err < 1e-4,
        format!("max |y − x| {err:.1e}"),
    ));
    Ok(out)
}

fn main() -> Result<()> {
    let checks = checks()?;
    for c in &checks {
        println!("{} {}\n     {}", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    println!("\n{} of {} checks pass", checks.len() - failed, checks.len());
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_check_passes() {
        for c in super::checks().unwrap() {
            assert!(c.pass, "{}: {}", c.name, c.detail);
        }
    }
}
