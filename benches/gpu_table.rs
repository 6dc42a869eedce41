//! The GPU bandwidth table: every op × dtype over a grid of shapes, forward and backward
//! timed on their own, printed as a markdown table (docs/benchmarks.md holds its last
//! run). Built only with the `cuda` feature:
//!
//! ```text
//! cargo bench --features cuda --bench gpu_table [-- FILTER]
//! ```
//!
//! FILTER keeps the rows whose op name contains it. With `GPU_TABLE_CSV=path` set, both
//! tables are also written to that file as one CSV, a line per row (columns in
//! [`CSV_HEADER`]; `shape` quoted as `[M, N]`, the `_pct` columns in percent of the copy,
//! a column a table does not have left empty). Freed device memory stays in
//! CUDA's memory pool for the whole run (see [`keep_freed_memory`]). Each time is the median of 21
//! batches, after a warm-up; a batch launches enough calls back to back to take about a
//! millisecond and is timed on the host between two synchronizations, so the time of a
//! call is what it costs inside a stream of work. Inputs rotate through enough copies
//! to span 200 MB, so that a tensor smaller than L2 is not served from it. Bandwidth
//! counts the bytes of docs/semantics.md (forward 2·M·N·b, backward 3·M·N·b) and is
//! compared with a device-to-device copy of the same input timed in the same run. A
//! second table does the same for the fused residual add + norm (4·M·N·b bytes each
//! way) against the unfused pair: candle's add then this crate's norm forward, this
//! crate's norm backward then candle's add of dh backward.

mod common;

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::{DType, Device, Tensor, Var};
use common::{add_cases, cases, dtypes, randn, Case};
use std::fmt::Write as _;
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
    let keep = |name: &str| filter.as_ref().is_none_or(|f| name.contains(f.as_str()));
    let mut csv = format!("{}\n", CSV_HEADER.join(","));
    for case in cases(&dev).into_iter().filter(|c| keep(c.name())) {
        for dtype in dtypes(&dev) {
            measure(&dev, &case, dtype, &mut csv);
        }
    }
    println!();
    println!(
        "| op | dtype | shape | copy GB/s | fwd µs | fwd GB/s | fwd/copy | unfused fwd µs | fwd speed-up | bwd µs | bwd GB/s | bwd/copy | unfused bwd µs | bwd speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for case in add_cases(&dev).into_iter().filter(|c| keep(c.name())) {
        for dtype in dtypes(&dev) {
            measure_add(&dev, &case, dtype, &mut csv);
        }
    }
    if let Ok(path) = std::env::var("GPU_TABLE_CSV") {
        std::fs::write(&path, csv).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}

/// The CSV's columns: the row's op, dtype and shape, then its numbers. The first table
/// fills `candle_nn_fwd_us` (where candle-nn has a fused forward) and the autograd
/// columns, the fused residual add's table the `unfused_` ones.
const CSV_HEADER: [&str; 15] = [
    "op",
    "dtype",
    "shape",
    "copy_gbs",
    "fwd_us",
    "fwd_gbs",
    "fwd_pct",
    "bwd_us",
    "bwd_gbs",
    "bwd_pct",
    "candle_nn_fwd_us",
    "autograd_us",
    "composed_autograd_us",
    "unfused_fwd_us",
    "unfused_bwd_us",
];

/// Appends one table row to the CSV: `values` names the numeric columns it fills.
fn csv_row(csv: &mut String, op: &str, dtype: DType, shape: &[usize], values: &[(&str, f64)]) {
    let shape = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    let mut line = format!("{op},{dtype:?},\"[{shape}]\"");
    for col in &CSV_HEADER[3..] {
        line.push(',');
        if let Some((_, v)) = values.iter().find(|(q, _)| q == col) {
            let _ = write!(line, "{v:.3}");
        }
    }
    let _ = writeln!(csv, "{line}");
}

fn measure(dev: &Device, case: &Case, dtype: DType, csv: &mut String) {
    let elems: usize = case.shape.iter().product();
    let bytes = (elems * dtype.size_in_bytes()) as f64;
    let sets_n = ((200e6 / bytes).ceil() as usize).clamp(1, 256);
    let sets: Vec<Set> = (0..sets_n)
        .map(|_| Set {
            x: randn(&case.shape, dtype, dev),
            dy: randn(&case.shape, dtype, dev),
        })
        .collect();
    let p = case.params();
    let w = (randn(&[p], dtype, dev) + 1.0).unwrap();
    let b = randn(&[p], dtype, dev);

    let copy = time(dev, sets_n, |i| drop(sets[i].x.copy().unwrap()));
    let fwd = time(dev, sets_n, |i| drop(case.ours(&sets[i].x, &w, &b).unwrap()));
    let fused = case.candle_fused(&sets[0].x, &w, &b).map(|_| {
        time(dev, sets_n, |i| {
            drop(case.candle_fused(&sets[i].x, &w, &b).unwrap().unwrap())
        })
    });
    let bwd = time(dev, sets_n, |i| {
        drop(case.backward(&sets[i].x, &w, &b, &sets[i].dy).unwrap())
    });

    // Forward and backward through autograd, from Vars; `backward` on y seeds dy = 1.
    let vars: Vec<Var> = sets.iter().map(|s| Var::from_tensor(&s.x).unwrap()).collect();
    let (wv, bv) = (Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
    let step = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>, i: usize| {
        drop(f(&vars[i], &wv, &bv).unwrap().backward().unwrap());
    };
    let train = time(dev, sets_n, |i| step(&|x, w, b| case.ours(x, w, b), i));
    let composed = time(dev, sets_n, |i| step(&|x, w, b| case.composed(x, w, b), i));

    let gbs = |n: f64, t: f64| n * bytes / t / 1e9;
    let us = |t: f64| format!("{:.1}", t * 1e6);
    let copy_gbs = gbs(2.0, copy);
    let (fwd_pct, bwd_pct) = (100.0 * gbs(2.0, fwd) / copy_gbs, 100.0 * gbs(3.0, bwd) / copy_gbs);
    println!(
        "| {} | {:?} | {:?} | {:.0} | {} | {:.0} | {:.0}% | {} | {} | {:.0} | {:.0}% | {} | {} | {:.1}× |",
        case.name(),
        dtype,
        case.shape,
        copy_gbs,
        us(fwd),
        gbs(2.0, fwd),
        fwd_pct,
        fused.map_or("—".to_string(), us),
        us(bwd),
        gbs(3.0, bwd),
        bwd_pct,
        us(train),
        us(composed),
        composed / train,
    );
    let mut values = vec![
        ("copy_gbs", copy_gbs),
        ("fwd_us", fwd * 1e6),
        ("fwd_gbs", gbs(2.0, fwd)),
        ("fwd_pct", fwd_pct),
    ];
    values.extend(fused.map(|t| ("candle_nn_fwd_us", t * 1e6)));
    values.extend([
        ("bwd_us", bwd * 1e6),
        ("bwd_gbs", gbs(3.0, bwd)),
        ("bwd_pct", bwd_pct),
        ("autograd_us", train * 1e6),
        ("composed_autograd_us", composed * 1e6),
    ]);
    csv_row(csv, case.name(), dtype, &case.shape, &values);
}

/// One row of the fused residual add's table.
fn measure_add(dev: &Device, case: &Case, dtype: DType, csv: &mut String) {
    let elems: usize = case.shape.iter().product();
    let bytes = (elems * dtype.size_in_bytes()) as f64;
    let sets_n = ((200e6 / (2.0 * bytes)).ceil() as usize).clamp(1, 256);
    let sets: Vec<[Tensor; 4]> = (0..sets_n)
        .map(|_| [0; 4].map(|_| randn(&case.shape, dtype, dev)))
        .collect();
    let p = case.params();
    let w = (randn(&[p], dtype, dev) + 1.0).unwrap();
    let b = randn(&[p], dtype, dev);

    let copy = time(dev, sets_n, |i| drop(sets[i][0].copy().unwrap()));
    let fwd = time(dev, sets_n, |i| {
        drop(case.ours_add(&sets[i][0], &sets[i][1], &w, &b).unwrap())
    });
    let unfused = time(dev, sets_n, |i| {
        drop(case.unfused_add(&sets[i][0], &sets[i][1], &w, &b).unwrap())
    });
    // The backward reads h: x stands in for it (the time does not depend on values).
    let bwd = time(dev, sets_n, |i| {
        let [h, _, dy, dh] = &sets[i];
        drop(case.add_backward(h, &w, &b, dy, dh).unwrap())
    });
    let unfused_bwd = time(dev, sets_n, |i| {
        let [h, _, dy, dh] = &sets[i];
        drop(case.unfused_add_backward(h, &w, &b, dy, dh).unwrap())
    });

    let gbs = |t: f64| 4.0 * bytes / t / 1e9;
    let us = |t: f64| format!("{:.1}", t * 1e6);
    let copy_gbs = 2.0 * bytes / copy / 1e9;
    let (fwd_pct, bwd_pct) = (100.0 * gbs(fwd) / copy_gbs, 100.0 * gbs(bwd) / copy_gbs);
    println!(
        "| {} | {:?} | {:?} | {:.0} | {} | {:.0} | {:.0}% | {} | {:.2}× | {} | {:.0} | {:.0}% | {} | {:.2}× |",
        case.name(),
        dtype,
        case.shape,
        copy_gbs,
        us(fwd),
        gbs(fwd),
        fwd_pct,
        us(unfused),
        unfused / fwd,
        us(bwd),
        gbs(bwd),
        bwd_pct,
        us(unfused_bwd),
        unfused_bwd / bwd,
    );
    let values = [
        ("copy_gbs", copy_gbs),
        ("fwd_us", fwd * 1e6),
        ("fwd_gbs", gbs(fwd)),
        ("fwd_pct", fwd_pct),
        ("unfused_fwd_us", unfused * 1e6),
        ("bwd_us", bwd * 1e6),
        ("bwd_gbs", gbs(bwd)),
        ("bwd_pct", bwd_pct),
        ("unfused_bwd_us", unfused_bwd * 1e6),
    ];
    csv_row(csv, case.name(), dtype, &case.shape, &values);
}
