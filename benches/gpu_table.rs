//! The GPU bandwidth table: every op × dtype over a grid of shapes, forward and backward
//! timed on their own, printed as a markdown table (docs/benchmarks.md holds its last
//! run). Built only with the `cuda` feature:
//!
//! ```text
//! cargo bench --features cuda --bench gpu_table [-- FILTER]
//! ```
//!
//! FILTER keeps the rows whose op name contains it. Freed device memory stays in
//! CUDA's memory pool for the whole run (see [`keep_freed_memory`]). Each time is the median of 21
//! batches, after a warm-up; a batch launches enough calls back to back to take about a
//! millisecond and is timed on the host between two synchronizations, so the time of a
//! call is what it costs inside a stream of work. Inputs rotate through enough copies
//! to span 200 MB, so that a tensor smaller than L2 is not served from it. Bandwidth
//! counts the bytes of ../shared/NORMS.md (forward 2·M·N·b, backward 3·M·N·b) and is
//! compared with a device-to-device copy of the same input timed in the same run.

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{DType, Device, Tensor, Var};
use std::time::{Duration, Instant};

/// candle allocates from the device's default CUDA memory pool, whose release threshold
/// is 0: at each synchronization freed memory goes back to the driver, and the next
/// large allocation maps fresh pages. A first run of this table measured that (even a
/// copy reached only a quarter of the card's bandwidth). Raising the threshold keeps
/// freed memory in the pool, as PyTorch's caching allocator does, so the kernels are
/// what is timed.
fn keep_freed_memory(dev: &Device) {
    let Device::Cuda(d) = dev else { return };
    let cu_device = d.cuda_stream().context().cu_device();
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: `pool` is a valid out-pointer for the device's default pool, which the
    // driver owns; the release-threshold attribute takes a pointer to a u64.
    let r = unsafe {
        match sys::cuDeviceGetDefaultMemPool(&mut pool, cu_device) {
            sys::CUresult::CUDA_SUCCESS => sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            ),
            e => e,
        }
    };
    assert_eq!(
        r,
        sys::CUresult::CUDA_SUCCESS,
        "setting the memory pool's release threshold"
    );
}

/// A tensor's worth of inputs for one timed call.
struct Set {
    x: Tensor,
    dy: Tensor,
}

struct Row {
    name: &'static str,
    shape: Vec<usize>,
    groups: usize,
}

impl Row {
    fn params(&self) -> usize {
        if self.name == "group_norm" {
            self.shape[1]
        } else {
            *self.shape.last().unwrap()
        }
    }

    fn ours(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self.name {
            "layer_norm" => candle_norm::layer_norm(x, Some(w), Some(b), 1e-5),
            "rms_norm" => candle_norm::rms_norm(x, Some(w), 1e-5),
            _ => candle_norm::group_norm(x, self.groups, Some(w), Some(b), 1e-5),
        }
    }

    fn backward(&self, s: &Set, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        let g = match self.name {
            "layer_norm" => candle_norm::layer_norm_backward(&s.x, Some(w), Some(b), &s.dy, 1e-5),
            "rms_norm" => candle_norm::rms_norm_backward(&s.x, Some(w), &s.dy, 1e-5),
            _ => candle_norm::group_norm_backward(&s.x, self.groups, Some(w), Some(b), &s.dy, 1e-5),
        }?;
        Ok(g.dx)
    }

    fn composed(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        use candle_norm::reference as r;
        match self.name {
            "layer_norm" => r::layer_norm(x, Some(w), Some(b), 1e-5),
            "rms_norm" => r::rms_norm(x, Some(w), 1e-5),
            _ => r::group_norm(x, self.groups, Some(w), Some(b), 1e-5),
        }
    }

    fn candle_fused(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Option<candle_core::Result<Tensor>> {
        match self.name {
            "layer_norm" => Some(candle_nn::ops::layer_norm(x, w, b, 1e-5)),
            "rms_norm" => Some(candle_nn::ops::rms_norm(x, w, 1e-5)),
            _ => None,
        }
    }
}

fn rows() -> Vec<Row> {
    let mut v = Vec::new();
    for name in ["layer_norm", "rms_norm"] {
        for n in [256usize, 1024, 4096, 8192, 16384, 65536, 262144] {
            v.push(Row {
                name,
                shape: vec![(1 << 27) / n, n],
                groups: 1,
            });
        }
        for m in [1, 16, 256] {
            v.push(Row {
                name,
                shape: vec![m, 4096],
                groups: 1,
            });
        }
    }
    for shape in [[1, 320, 64, 64], [8, 128, 32, 32], [16, 512, 16, 16]] {
        v.push(Row {
            name: "group_norm",
            shape: shape.to_vec(),
            groups: 32,
        });
    }
    v
}

/// Median seconds per call of `f(set index)`, as the module docs describe.
fn time(dev: &Device, sets: usize, mut f: impl FnMut(usize)) -> f64 {
    let sync = || dev.synchronize().unwrap();
    for i in 0..sets.max(3) {
        f(i % sets);
    }
    sync();
    let t = Instant::now();
    f(0);
    sync();
    let one = t.elapsed().max(Duration::from_nanos(100));
    let batch = (Duration::from_millis(1).as_secs_f64() / one.as_secs_f64()).clamp(1.0, 2000.0) as usize;
    let mut samples: Vec<f64> = (0..21)
        .map(|r| {
            let t = Instant::now();
            for i in 0..batch {
                f((r * batch + i) % sets);
            }
            sync();
            t.elapsed().as_secs_f64() / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1., shape, dev).unwrap().to_dtype(dtype).unwrap()
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let dev = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("gpu_table: no CUDA device ({e}); nothing to measure");
            return;
        }
    };
    keep_freed_memory(&dev);
    println!(
        "| op | dtype | shape | copy GB/s | fwd µs | fwd GB/s | fwd/copy | candle-nn fwd µs | bwd µs | bwd GB/s | bwd/copy | autograd fwd+bwd µs | composed autograd µs | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows() {
        if filter.as_ref().is_some_and(|f| !row.name.contains(f.as_str())) {
            continue;
        }
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            measure(&dev, &row, dtype);
        }
    }
}

fn measure(dev: &Device, row: &Row, dtype: DType) {
    let elems: usize = row.shape.iter().product();
    let bytes = (elems * dtype.size_in_bytes()) as f64;
    let sets_n = ((200e6 / bytes).ceil() as usize).clamp(1, 256);
    let sets: Vec<Set> = (0..sets_n)
        .map(|_| Set {
            x: randn(&row.shape, dtype, dev),
            dy: randn(&row.shape, dtype, dev),
        })
        .collect();
    let p = row.params();
    let w = (randn(&[p], dtype, dev) + 1.0).unwrap();
    let b = randn(&[p], dtype, dev);

    let copy = time(dev, sets_n, |i| drop(sets[i].x.copy().unwrap()));
    let fwd = time(dev, sets_n, |i| drop(row.ours(&sets[i].x, &w, &b).unwrap()));
    let fused = row.candle_fused(&sets[0].x, &w, &b).map(|_| {
        time(dev, sets_n, |i| {
            drop(row.candle_fused(&sets[i].x, &w, &b).unwrap().unwrap())
        })
    });
    let bwd = time(dev, sets_n, |i| drop(row.backward(&sets[i], &w, &b).unwrap()));

    // Forward and backward through autograd, from Vars; `backward` on y seeds dy = 1.
    let vars: Vec<Var> = sets.iter().map(|s| Var::from_tensor(&s.x).unwrap()).collect();
    let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    let step = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>, i: usize| {
        drop(f(&vars[i], &wv, &bv).unwrap().backward().unwrap());
    };
    let train = time(dev, sets_n, |i| step(&|x, w, b| row.ours(x, w, b), i));
    let composed = time(dev, sets_n, |i| step(&|x, w, b| row.composed(x, w, b), i));

    let gbs = |n: f64, t: f64| n * bytes / t / 1e9;
    let us = |t: f64| format!("{:.1}", t * 1e6);
    let copy_gbs = gbs(2.0, copy);
    println!(
        "| {} | {:?} | {:?} | {:.0} | {} | {:.0} | {:.0}% | {} | {} | {:.0} | {:.0}% | {} | {} | {:.1}× |",
        row.name,
        dtype,
        row.shape,
        copy_gbs,
        us(fwd),
        gbs(2.0, fwd),
        100.0 * gbs(2.0, fwd) / copy_gbs,
        fused.map_or("—".to_string(), us),
        us(bwd),
        gbs(3.0, bwd),
        100.0 * gbs(3.0, bwd) / copy_gbs,
        us(train),
        us(composed),
        composed / train,
    );
}
