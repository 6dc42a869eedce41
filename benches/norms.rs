//! Forward and forward+backward of the three norms against candle-nn's fused forward,
//! candle autograd through the composed ops, and a plain copy of the same tensor (the
//! bandwidth reference), on the CPU and, with `--features cuda`, on the GPU.
//!
//! Throughput counts the bytes a memory-bound kernel must move: 2·M·N·b for a forward
//! (read x, write y) and a copy, 5·M·N·b for forward+backward (the backward reads x
//! and dy and writes dx).

use candle_core::{DType, Device, Tensor, Var};
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

fn dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cpu() {
        vec![DType::F32, DType::BF16]
    } else {
        vec![DType::F32, DType::F16, DType::BF16]
    }
}

/// (rows, hidden) of LLM-style activations.
fn row_shapes(dev: &Device) -> Vec<(usize, usize)> {
    if dev.is_cpu() {
        vec![(4096, 768), (2048, 4096), (1024, 8192)]
    } else {
        vec![(4096, 768), (16384, 4096), (8192, 8192), (2048, 65536), (256, 4096)]
    }
}

const GROUP_SHAPES: [([usize; 4], usize); 2] = [([8, 128, 32, 32], 32), ([1, 320, 64, 64], 32)];

type Op = fn(&Tensor, Option<&Tensor>, Option<&Tensor>) -> candle_core::Result<Tensor>;

struct Bench<'a> {
    name: String,
    shape: Vec<usize>,
    params: usize,
    dtype: DType,
    dev: &'a Device,
    ours: Op,
    composed: Op,
    candle_fused: Option<Op>,
}

fn input(shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1., shape, dev).unwrap().to_dtype(dtype).unwrap()
}

fn run(c: &mut Criterion, b: Bench) {
    let elems: usize = b.shape.iter().product();
    let bytes = (elems * b.dtype.size_in_bytes()) as u64;
    let id = format!("{:?}", b.shape);
    let x = input(&b.shape, b.dtype, b.dev);
    let w = (input(&[b.params], b.dtype, b.dev) + 1.0).unwrap();
    let bias = input(&[b.params], b.dtype, b.dev);

    let mut g = c.benchmark_group(format!("{}/forward/{:?}", b.name, b.dtype));
    g.throughput(Throughput::Bytes(2 * bytes));
    g.bench_function(BenchmarkId::new("copy", &id), |bn| bn.iter(|| sync(&x.copy().unwrap())));
    g.bench_function(BenchmarkId::new("candle-norm", &id), |bn| {
        bn.iter(|| sync(&(b.ours)(&x, Some(&w), Some(&bias)).unwrap()))
    });
    if let Some(f) = b.candle_fused {
        g.bench_function(BenchmarkId::new("candle-nn fused", &id), |bn| {
            bn.iter(|| sync(&f(&x, Some(&w), Some(&bias)).unwrap()))
        });
    }
    g.finish();

    let xv = Var::from_tensor(&x).unwrap();
    let wv = Var::from_tensor(&w).unwrap();
    let bv = Var::from_tensor(&bias).unwrap();
    let mut g = c.benchmark_group(format!("{}/forward+backward/{:?}", b.name, b.dtype));
    g.throughput(Throughput::Bytes(5 * bytes));
    for (label, f) in [("candle-norm", b.ours), ("candle autograd (composed)", b.composed)] {
        g.bench_function(BenchmarkId::new(label, &id), |bn| {
            bn.iter(|| {
                let grads = f(&xv, Some(&wv), Some(&bv)).unwrap().backward().unwrap();
                sync(grads.get(&xv).unwrap())
            })
        });
    }
    g.finish();
}

fn norms(c: &mut Criterion) {
    for (dev_name, dev) in devices() {
        for dtype in dtypes(&dev) {
            for (m, n) in row_shapes(&dev) {
                run(
                    c,
                    Bench {
                        name: format!("{dev_name}/layer_norm"),
                        shape: vec![m, n],
                        params: n,
                        dtype,
                        dev: &dev,
                        ours: |x, w, b| candle_norm::layer_norm(x, w, b, 1e-5),
                        composed: |x, w, b| candle_norm::reference::layer_norm(x, w, b, 1e-5),
                        candle_fused: Some(|x, w, b| candle_nn::ops::layer_norm(x, w.unwrap(), b.unwrap(), 1e-5)),
                    },
                );
                run(
                    c,
                    Bench {
                        name: format!("{dev_name}/rms_norm"),
                        shape: vec![m, n],
                        params: n,
                        dtype,
                        dev: &dev,
                        ours: |x, w, _| candle_norm::rms_norm(x, w, 1e-5),
                        composed: |x, w, _| candle_norm::reference::rms_norm(x, w, 1e-5),
                        candle_fused: Some(|x, w, _| candle_nn::ops::rms_norm(x, w.unwrap(), 1e-5)),
                    },
                );
            }
            for (shape, groups) in GROUP_SHAPES {
                let bench = Bench {
                    name: format!("{dev_name}/group_norm/{groups}g"),
                    shape: shape.to_vec(),
                    params: shape[1],
                    dtype,
                    dev: &dev,
                    ours: |x, w, b| candle_norm::group_norm(x, 32, w, b, 1e-5),
                    composed: |x, w, b| candle_norm::reference::group_norm(x, 32, w, b, 1e-5),
                    candle_fused: None,
                };
                run(c, bench);
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
