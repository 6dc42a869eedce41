//! Criterion benches of every case in `common::cases`, on the CPU and, with
//! `--features cuda`, on the GPU:
//!
//! - `forward`: this crate against candle-nn's fused forward and a copy of the same
//!   tensor (the bandwidth reference), 2·M·N·b bytes (read x, write y);
//! - `backward`: this crate's standalone fused backward against the backward pass of
//!   the composed ops through candle autograd (its graph built once, outside the
//!   timing), 3·M·N·b bytes (read x and dy, write dx), with dy = 1 for both;
//! - `forward+backward`: `Tensor::backward` through this crate's op against the same
//!   through the composed ops, 5·M·N·b bytes;
//! - `add_*_norm/forward`: the fused residual add + norm against the unfused pair
//!   (candle's add, then this crate's norm) and a copy of a tensor twice x's size,
//!   4·M·N·b bytes (read x and residual, write y and h);
//! - `add_*_norm/backward`: its standalone backward, h used downstream, against this
//!   crate's norm backward followed by candle's add of dh, 4·M·N·b bytes (read h, dy and
//!   dh, write dx);
//! - `batch_norm/forward+backward` (CPU, f32): `Tensor::backward` through this crate's
//!   training BatchNorm against the same through candle-nn's `BatchNorm`, 5·M·N·b bytes;
//!   `batch_norm/eval forward`: the eval forward against a copy, 2·M·N·b bytes.
//!
//! Byte counts are those of docs/semantics.md. `cargo bench --bench norms -- cpu/`
//! runs the CPU groups alone.

mod common;

use candle_core::ModuleT;
use candle_core::{DType, Device, Tensor, Var};
use common::{add_cases, cases, dtypes, randn, Case};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

/// Waits for queued GPU work, so that a timing covers the kernels it launched.
fn sync(t: &Tensor) {
    t.device().synchronize().unwrap();
}

fn devices() -> Vec<(&'static str, Device)> {
    let mut v = vec![("cpu", Device::Cpu)];
    if let Ok(d) = Device::new_cuda(0) {
        v.push(("cuda", d));
    }
    v
}

fn run(c: &mut Criterion, dev_name: &str, dev: &Device, case: &Case, dtype: DType) {
    let elems: usize = case.shape.iter().product();
    let bytes = (elems * dtype.size_in_bytes()) as u64;
    let id = format!("{:?}", case.shape);
    let group = |what: &str| format!("{dev_name}/{}/{what}/{dtype:?}", case.name());
    let x = randn(&case.shape, dtype, dev);
    let w = (randn(&[case.params()], dtype, dev) + 1.0).unwrap();
    let b = randn(&[case.params()], dtype, dev);

    let mut g = c.benchmark_group(group("forward"));
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function(BenchmarkId::new("copy", &id), |bn| bn.iter(|| sync(&x.copy().unwrap())));
    g.bench_function(BenchmarkId::new("candle-norm", &id), |bn| {
        bn.iter(|| sync(&case.ours(&x, &w, &b).unwrap()))
    });
    if case.candle_fused(&x, &w, &b).is_some() {
        g.bench_function(BenchmarkId::new("candle-nn fused", &id), |bn| {
            bn.iter(|| sync(&case.candle_fused(&x, &w, &b).unwrap().unwrap()))
        });
    }
    g.finish();

    let (xv, wv, bv) = (
        Var::from_tensor(&x).unwrap(),
        Var::from_tensor(&w).unwrap(),
        Var::from_tensor(&b).unwrap(),
    );
    let mut g = c.benchmark_group(group("backward"));
    g.throughput(Throughput::Bytes(3 * bytes));
    let ones = x.ones_like().unwrap();
    g.bench_function(BenchmarkId::new("candle-norm", &id), |bn| {
        bn.iter(|| sync(&case.backward(&x, &w, &b, &ones).unwrap()))
    });
    let y = case.composed(&xv, &wv, &bv).unwrap();
    g.bench_function(BenchmarkId::new("candle autograd (composed)", &id), |bn| {
        bn.iter(|| sync(y.backward().unwrap().get(&xv).unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group(group("forward+backward"));
    g.throughput(Throughput::Bytes(5 * bytes));
    type Op = fn(&Case, &Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
    let ops: [(&str, Op); 2] = [
        ("candle-norm", Case::ours),
        ("candle autograd (composed)", Case::composed),
    ];
    for (label, f) in ops {
        g.bench_function(BenchmarkId::new(label, &id), |bn| {
            bn.iter(|| sync(f(case, &xv, &wv, &bv).unwrap().backward().unwrap().get(&xv).unwrap()))
        });
    }
    g.finish();
}

fn run_add(c: &mut Criterion, dev_name: &str, dev: &Device, case: &Case, dtype: DType) {
    let elems: usize = case.shape.iter().product();
    let bytes = (elems * dtype.size_in_bytes()) as u64;
    let id = format!("{:?}", case.shape);
    let group = |what: &str| format!("{dev_name}/{}/{what}/{dtype:?}", case.name());
    let [x, r, dy, dh] = [0; 4].map(|_| randn(&case.shape, dtype, dev));
    let w = (randn(&[case.params()], dtype, dev) + 1.0).unwrap();
    let b = randn(&[case.params()], dtype, dev);
    let both = Tensor::stack(&[&x, &r], 0).unwrap();

    let mut g = c.benchmark_group(group("forward"));
    g.throughput(Throughput::Bytes(4 * bytes));
    g.bench_function(BenchmarkId::new("copy", &id), |bn| {
        bn.iter(|| sync(&both.copy().unwrap()))
    });
    g.bench_function(BenchmarkId::new("candle-norm", &id), |bn| {
        bn.iter(|| sync(&case.ours_add(&x, &r, &w, &b).unwrap().0))
    });
    g.bench_function(BenchmarkId::new("unfused (candle add + candle-norm)", &id), |bn| {
        bn.iter(|| sync(&case.unfused_add(&x, &r, &w, &b).unwrap().0))
    });
    g.finish();

    let h = (&x + &r).unwrap();
    let mut g = c.benchmark_group(group("backward"));
    g.throughput(Throughput::Bytes(4 * bytes));
    g.bench_function(BenchmarkId::new("candle-norm", &id), |bn| {
        bn.iter(|| sync(&case.add_backward(&h, &w, &b, &dy, &dh).unwrap()))
    });
    g.bench_function(
        BenchmarkId::new("unfused (candle-norm backward + candle add)", &id),
        |bn| bn.iter(|| sync(&case.unfused_add_backward(&h, &w, &b, &dy, &dh).unwrap())),
    );
    g.finish();
}

/// BatchNorm on the CPU in f32: training forward + backward against candle-nn's
/// BatchNorm, and the eval forward against a copy.
fn run_batch(c: &mut Criterion, shape: &[usize]) {
    let dev = Device::Cpu;
    let ch = shape[1];
    let bytes = (shape.iter().product::<usize>() * 4) as u64;
    let id = format!("{shape:?}");
    let x = Var::from_tensor(&randn(shape, DType::F32, &dev)).unwrap();
    let (w, b) = (
        Var::ones(ch, DType::F32, &dev).unwrap(),
        Var::zeros(ch, DType::F32, &dev).unwrap(),
    );
    let stats = || {
        (
            Tensor::zeros(ch, DType::F32, &dev).unwrap(),
            Tensor::ones(ch, DType::F32, &dev).unwrap(),
        )
    };
    let affine = Some((w.as_tensor().clone(), b.as_tensor().clone()));
    let ours = candle_norm::BatchNorm::new(ch, Some(stats()), affine, 1e-5, 0.1).unwrap();
    let (m, v) = stats();
    let theirs = candle_nn::BatchNorm::new(ch, m, v, w.as_tensor().clone(), b.as_tensor().clone(), 1e-5).unwrap();

    let mut g = c.benchmark_group("cpu/batch_norm/forward+backward/F32");
    g.throughput(Throughput::Bytes(5 * bytes));
    let layers: [(&str, &dyn ModuleT); 2] = [("candle-norm", &ours), ("candle-nn BatchNorm", &theirs)];
    for (label, layer) in layers {
        g.bench_function(BenchmarkId::new(label, &id), |bn| {
            bn.iter(|| sync(layer.forward_t(&x, true).unwrap().backward().unwrap().get(&x).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cpu/batch_norm/eval forward/F32");
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function(BenchmarkId::new("copy", &id), |bn| bn.iter(|| sync(&x.copy().unwrap())));
    for (label, layer) in layers {
        g.bench_function(BenchmarkId::new(label, &id), |bn| {
            bn.iter(|| sync(&layer.forward_t(&x, false).unwrap()))
        });
    }
    g.finish();
}

fn norms(c: &mut Criterion) {
    // A ResNet stage at batch 32, and a late stage at batch 256.
    for shape in [[32, 64, 56, 56], [256, 512, 7, 7]] {
        run_batch(c, &shape);
    }
    for (dev_name, dev) in devices() {
        for dtype in dtypes(&dev) {
            for case in cases(&dev) {
                run(c, dev_name, &dev, &case, dtype);
            }
            for case in add_cases(&dev) {
                run_add(c, dev_name, &dev, &case, dtype);
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = norms
}
criterion_main!(benches);
