//! Every vector-instruction level this CPU has gives the bits of the baseline (up to
//! the subnormal bf16 results that AVX-512 BF16 flushes to zero), for every norm and
//! dtype, with f32 parameters for f16 and bf16 and with a weight offset for the row
//! norms: forward outputs and gradients, on shapes that take every CPU path. The level
//! cap is process-wide, so the cells of this binary take turns.
#[macro_use]
mod common;

use candle_core::{DType, Tensor};
use candle_norm::{cpu_level, detected_cpu_level, set_cpu_level_limit, CpuLevel};
use common::*;
use std::sync::Mutex;

const LEVELS: [CpuLevel; 4] = [
    CpuLevel::Baseline,
    CpuLevel::Avx2,
    CpuLevel::Avx512,
    CpuLevel::Avx512Bf16,
];

/// Held while a cell changes the process-wide level cap.
static LEVEL_CAP: Mutex<()> = Mutex::new(());

/// The bits of an f32 (widened to u64) with a subnormal value replaced by a zero of its sign.
fn flush_subnormal(b: u64) -> u64 {
    let v = f64::from_bits(b) as f32;
    if v.is_subnormal() {
        (-0.0f64).to_bits() & b
    } else {
        b
    }
}

/// Every output and gradient of every case, as bits: the standalone backward where
/// the norm has one, else autograd.
fn run(cases: &[Case], dys: &[Tensor]) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for (case, dy) in cases.iter().zip(dys) {
        out.extend(case.forward(Impl::Ours).unwrap().iter().map(bits));
        let g = match case.backward(dy) {
            Some(g) => g.unwrap(),
            None => case.grads(dy, Impl::Ours).unwrap(),
        };
        out.extend(
            [Some(&g.dx), g.dw.as_ref(), g.db.as_ref(), g.dr.as_ref()]
                .into_iter()
                .flatten()
                .map(bits),
        );
    }
    out
}

fn cpu_levels(norm: Norm, dtype: DType, _: Backend) {
    let _cap = LEVEL_CAP.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(5);
    let (mut cases, mut dys) = (Vec::new(), Vec::new());
    for (norm, shape) in cases_of(CPU_LEVEL_CASES, norm) {
        for affine in AFFINES {
            let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            // Mixed precision (f32 parameters) and the row norms' weight offset take
            // their own code paths too.
            if matches!(dtype, DType::F16 | DType::BF16) {
                cases.push(case.with_params_dtype(DType::F32));
                dys.push(dy.clone());
            }
            let row = matches!(norm, Norm::Layer | Norm::Rms | Norm::AddLayer | Norm::AddRms);
            if row && case.w.is_some() {
                cases.push(case.with_offset(1.0));
                dys.push(dy.clone());
            }
            cases.push(case);
            dys.push(dy);
        }
    }
    let detected = detected_cpu_level();
    if detected == CpuLevel::Baseline {
        eprintln!("skipped: this CPU has no level above the baseline to compare");
    }
    set_cpu_level_limit(Some(CpuLevel::Baseline));
    assert_eq!(cpu_level(), CpuLevel::Baseline);
    let want = run(&cases, &dys);
    for level in LEVELS.into_iter().filter(|&l| l > CpuLevel::Baseline && l <= detected) {
        set_cpu_level_limit(Some(level));
        assert_eq!(cpu_level(), level);
        let got = run(&cases, &dys);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // vcvtneps2bf16 flushes subnormal results to zero (see CpuLevel::Avx512Bf16).
            let flushed: Vec<u64> = w.iter().map(|&b| flush_subnormal(b)).collect();
            let expected = if level == CpuLevel::Avx512Bf16 && dtype == DType::BF16 {
                &flushed
            } else {
                w
            };
            assert!(
                g == expected,
                "{norm:?} {dtype:?} {level:?}: output {i} differs from the baseline's"
            );
        }
    }
    set_cpu_level_limit(None);
    assert_eq!(cpu_level(), detected);
}

grid!(cpu_levels: every norm x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused]);
