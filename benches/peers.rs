//! The Rust side of the CPU peer comparison (`benches/peers/run.sh`): this crate's ops
//! and candle-nn's on the rows `benches/peers/peers.py` times in PyTorch and JAX, timed
//! the same way, written as CSV lines `case,dtype,impl,ms` to the file given (or
//! printed):
//!
//! ```text
//! cargo bench --bench peers -- [OUT.csv [FILTER]]
//! ```
//!
//! FILTER keeps the cases whose name contains it.
//!
//! Each time is the median over 15 rounds of the mean of a batch of calls (as many as
//! take about 20 ms, at least one), after two warm-up calls. The inputs are the tests'
//! registry's (`benches/common`): standard normal x, weights around 1, biases around 0,
//! the same shapes and dtypes as the Python side.
//! Ours is timed three ways where it has a backward: forward, the standalone backward,
//! and forward + standalone backward; `ours autograd` is forward and backward through
//! candle autograd (a loss Σ y·dy), and `candle autograd bookkeeping` the same loss with
//! the norm left out, which is candle's share of that row.

/// The benches' shared cases and the tests' registry; this bench uses a part of them.
#[allow(dead_code)]
mod common;

use candle_core::{DType, Result, Var};
use common::registry::Impl;
use common::{Case, Norm};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Median over 15 rounds of the mean time of a batch of `f` calls, in ms.
fn time(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let start = Instant::now();
    f()?;
    let once = start.elapsed().max(Duration::from_micros(1));
    let batch = (Duration::from_millis(20).as_secs_f64() / once.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut rounds: Vec<f64> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batch {
                f()?;
            }
            Ok(start.elapsed().as_secs_f64() * 1e3 / batch as f64)
        })
        .collect::<Result<_>>()?;
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

/// The rows, as `benches/peers/peers.py` lists them (32 groups for GroupNorm).
fn rows() -> Vec<Case> {
    let row = |norm, shape: &[usize]| Case {
        norm,
        shape: shape.to_vec(),
    };
    let mut v = Vec::new();
    for norm in [Norm::Layer, Norm::Rms] {
        v.extend([&[4096, 768][..], &[2048, 4096], &[1, 4096]].map(|s| row(norm, s)));
    }
    v.extend([&[1, 320, 64, 64][..], &[8, 128, 32, 32]].map(|s| row(Norm::Group(32), s)));
    v.extend([&[1, 64, 64, 320][..], &[8, 32, 32, 128]].map(|s| row(Norm::GroupLast(32), s)));
    v.extend([&[8, 96, 56, 56][..], &[1, 256, 64, 64]].map(|s| row(Norm::LayerFirst, s)));
    v.push(row(Norm::GroupSilu(32), &[1, 320, 64, 64]));
    v.push(row(Norm::GroupLastSilu(32), &[1, 64, 64, 320]));
    for norm in [Norm::Batch, Norm::BatchEval] {
        v.extend([&[32, 64, 56, 56][..], &[256, 512, 7, 7]].map(|s| row(norm, s)));
    }
    v.push(row(Norm::Instance, &[8, 64, 64, 64]));
    v.push(row(Norm::AddLayer, &[2048, 4096]));
    v
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (out, keep) = (args.first(), args.get(1).map_or("", String::as_str));
    let mut csv = String::from("case,dtype,impl,ms\n");
    for row in rows() {
        for dtype in [DType::F32, DType::BF16] {
            let dims: Vec<String> = row.shape.iter().map(|d| d.to_string()).collect();
            let case = format!("{} {}", row.name(), dims.join("x"));
            if !case.contains(keep) {
                continue;
            }
            let dt = if dtype == DType::F32 { "f32" } else { "bf16" };
            let inputs = row.random(dtype);
            let dy = row.random(dtype).x;
            let mut put = |what: &str, ms: f64| {
                let _ = writeln!(csv, "{case},{dt},{what},{ms:.4}");
                eprintln!("{case} {dt} {what}: {ms:.3} ms");
            };
            put("ours forward", time(|| inputs.ours().map(|_| ()))?);
            // The backward rows the Python side has too.
            if !matches!(row.norm, Norm::BatchEval | Norm::AddLayer) {
                let bwd = || inputs.backward(&dy).expect("a norm with a backward").map(|_| ());
                put("ours backward", time(bwd)?);
                put(
                    "ours forward+backward",
                    time(|| {
                        inputs.ours()?;
                        bwd()
                    })?,
                );
                let var = |t: &candle_core::Tensor| Var::from_tensor(t);
                let (xv, wv) = (var(&inputs.x)?, inputs.w.as_ref().map(var).transpose()?);
                let bv = inputs.b.as_ref().map(var).transpose()?;
                let tracked = common::registry::Case {
                    x: xv.as_tensor().clone(),
                    w: wv.as_ref().map(|v| v.as_tensor().clone()),
                    b: bv.as_ref().map(|v| v.as_tensor().clone()),
                    ..inputs.clone()
                };
                put(
                    "ours autograd",
                    time(|| {
                        (tracked.forward(Impl::Ours)?.swap_remove(0) * &dy)?
                            .sum_all()?
                            .backward()
                            .map(|_| ())
                    })?,
                );
                put(
                    "candle autograd bookkeeping",
                    time(|| (xv.as_tensor() * &dy)?.sum_all()?.backward().map(|_| ()))?,
                );
            }
            if let Some(w) = &inputs.w {
                // RMSNorm has no bias, and candle-nn's takes none: any tensor fills the slot.
                let b = inputs.b.as_ref().unwrap_or(w);
                if row.candle_fused(&inputs.x, w, b).is_some() {
                    let f = || row.candle_fused(&inputs.x, w, b).map_or(Ok(()), |r| r.map(|_| ()));
                    put("candle-nn forward", time(f)?);
                }
            }
        }
    }
    match out {
        Some(path) => std::fs::write(path, csv)?,
        None => print!("{csv}"),
    }
    Ok(())
}
