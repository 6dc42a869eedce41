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
//! take about 20 ms, at least one), after two warm-up calls. Inputs are standard normal
//! (weights around 1, biases around 0), the same shapes and dtypes as the Python side.
//! Ours is timed three ways where it has a backward: forward, the standalone backward,
//! and forward + standalone backward; `ours autograd` is forward and backward through
//! candle autograd (a loss Σ y·dy), and `candle autograd bookkeeping` the same loss with
//! the norm left out, which is candle's share of that row.

use candle_core::{DType, Device, Result, Tensor, Var};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Seeded normal values, `offset + scale · N(0, 1)`, in `dtype`.
fn randn(seed: u64, shape: &[usize], dtype: DType, offset: f64, scale: f64) -> Result<Tensor> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - next(), next());
            (offset + scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

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

/// A row of the comparison: the norm (its function's name), the input's shape and the
/// parameters' length.
struct Norm {
    name: &'static str,
    shape: &'static [usize],
    /// The parameters' length.
    params: usize,
}

/// The rows, as `benches/peers/peers.py` lists them.
const NORMS: &[Norm] = &[
    Norm {
        name: "layer_norm",
        shape: &[4096, 768],
        params: 768,
    },
    Norm {
        name: "layer_norm",
        shape: &[2048, 4096],
        params: 4096,
    },
    Norm {
        name: "layer_norm",
        shape: &[1, 4096],
        params: 4096,
    },
    Norm {
        name: "rms_norm",
        shape: &[4096, 768],
        params: 768,
    },
    Norm {
        name: "rms_norm",
        shape: &[2048, 4096],
        params: 4096,
    },
    Norm {
        name: "rms_norm",
        shape: &[1, 4096],
        params: 4096,
    },
    Norm {
        name: "group_norm",
        shape: &[1, 320, 64, 64],
        params: 320,
    },
    Norm {
        name: "group_norm",
        shape: &[8, 128, 32, 32],
        params: 128,
    },
    Norm {
        name: "group_norm_channels_last",
        shape: &[1, 64, 64, 320],
        params: 320,
    },
    Norm {
        name: "group_norm_channels_last",
        shape: &[8, 32, 32, 128],
        params: 128,
    },
    Norm {
        name: "batch_norm",
        shape: &[32, 64, 56, 56],
        params: 64,
    },
    Norm {
        name: "batch_norm",
        shape: &[256, 512, 7, 7],
        params: 512,
    },
    Norm {
        name: "batch_norm_eval",
        shape: &[32, 64, 56, 56],
        params: 64,
    },
    Norm {
        name: "batch_norm_eval",
        shape: &[256, 512, 7, 7],
        params: 512,
    },
    Norm {
        name: "instance_norm",
        shape: &[8, 64, 64, 64],
        params: 64,
    },
    Norm {
        name: "add_layer_norm",
        shape: &[2048, 4096],
        params: 4096,
    },
];

const EPS: f64 = 1e-5;
const GROUPS: usize = 32;

/// The forward of `n` on the inputs: y.
fn forward(n: &Norm, x: &Tensor, w: &Tensor, b: &Tensor, extra: &[Tensor]) -> Result<Tensor> {
    match n.name {
        "layer_norm" => candle_norm::layer_norm(x, Some(w), Some(b), EPS),
        "rms_norm" => candle_norm::rms_norm(x, Some(w), EPS),
        "group_norm" => candle_norm::group_norm(x, GROUPS, Some(w), Some(b), EPS),
        "group_norm_channels_last" => candle_norm::group_norm_channels_last(x, GROUPS, Some(w), Some(b), EPS),
        "batch_norm" => candle_norm::batch_norm(x, Some(w), Some(b), EPS),
        "batch_norm_eval" => candle_norm::batch_norm_eval(x, &extra[0], &extra[1], Some(w), Some(b), EPS),
        "instance_norm" => candle_norm::instance_norm(x, Some(w), Some(b), EPS),
        _ => Ok(candle_norm::add_layer_norm(x, &extra[0], Some(w), Some(b), EPS)?.0),
    }
}

/// The standalone backward of `n` from dy, where it has one.
fn backward(n: &Norm, x: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor) -> Option<Result<()>> {
    let r = match n.name {
        "layer_norm" => candle_norm::layer_norm_backward(x, Some(w), Some(b), dy, EPS),
        "rms_norm" => candle_norm::rms_norm_backward(x, Some(w), dy, EPS),
        "group_norm" => candle_norm::group_norm_backward(x, GROUPS, Some(w), Some(b), dy, EPS),
        "group_norm_channels_last" => {
            candle_norm::group_norm_channels_last_backward(x, GROUPS, Some(w), Some(b), dy, EPS)
        }
        "batch_norm" => candle_norm::batch_norm_backward(x, Some(w), Some(b), dy, EPS),
        "instance_norm" => candle_norm::instance_norm_backward(x, Some(w), Some(b), dy, EPS),
        _ => return None,
    };
    Some(r.map(|_| ()))
}

/// candle-nn's forward of `n`, where it has one: its fused LayerNorm and RMSNorm.
fn candle_nn_forward(n: &Norm, x: &Tensor, w: &Tensor, b: &Tensor) -> Option<Result<Tensor>> {
    match n.name {
        "layer_norm" => Some(candle_nn::ops::layer_norm(x, w, b, EPS as f32)),
        "rms_norm" => Some(candle_nn::ops::rms_norm(x, w, EPS as f32)),
        _ => None,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (out, keep) = (args.first(), args.get(1).map_or("", String::as_str));
    let mut csv = String::from("case,dtype,impl,ms\n");
    for n in NORMS {
        for dtype in [DType::F32, DType::BF16] {
            let dims: Vec<String> = n.shape.iter().map(|d| d.to_string()).collect();
            let case = format!("{} {}", n.name, dims.join("x"));
            if !case.contains(keep) {
                continue;
            }
            let dt = if dtype == DType::F32 { "f32" } else { "bf16" };
            let x = randn(1, n.shape, dtype, 0.0, 1.0)?;
            let w = randn(2, &[n.params], dtype, 1.0, 0.1)?;
            let b = randn(3, &[n.params], dtype, 0.0, 0.1)?;
            let dy = randn(4, n.shape, dtype, 0.0, 1.0)?;
            let extra = match n.name {
                "batch_norm_eval" => vec![
                    randn(5, &[n.params], dtype, 0.0, 0.1)?,
                    randn(6, &[n.params], dtype, 1.0, 0.1)?.abs()?,
                ],
                "add_layer_norm" => vec![randn(5, n.shape, dtype, 0.0, 1.0)?],
                _ => Vec::new(),
            };
            let mut row = |what: &str, ms: f64| {
                let _ = writeln!(csv, "{case},{dt},{what},{ms:.4}");
                eprintln!("{case} {dt} {what}: {ms:.3} ms");
            };
            row("ours forward", time(|| forward(n, &x, &w, &b, &extra).map(|_| ()))?);
            if backward(n, &x, &w, &b, &dy).is_some() {
                let bwd = || backward(n, &x, &w, &b, &dy).unwrap_or(Ok(()));
                row("ours backward", time(bwd)?);
                row(
                    "ours forward+backward",
                    time(|| {
                        forward(n, &x, &w, &b, &extra)?;
                        bwd()
                    })?,
                );
                let (xv, wv, bv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?, Var::from_tensor(&b)?);
                row(
                    "ours autograd",
                    time(|| {
                        let y = forward(n, &xv, &wv, &bv, &extra)?;
                        (y * &dy)?.sum_all()?.backward().map(|_| ())
                    })?,
                );
                row(
                    "candle autograd bookkeeping",
                    time(|| (xv.as_tensor() * &dy)?.sum_all()?.backward().map(|_| ()))?,
                );
            }
            if candle_nn_forward(n, &x, &w, &b).is_some() {
                let f = || candle_nn_forward(n, &x, &w, &b).map_or(Ok(()), |r| r.map(|_| ()));
                row("candle-nn forward", time(f)?);
            }
        }
    }
    match out {
        Some(path) => std::fs::write(path, csv)?,
        None => print!("{csv}"),
    }
    Ok(())
}
