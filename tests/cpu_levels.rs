//! Every vector-instruction level this CPU has gives the same bits as the baseline (up
//! to the subnormal bf16 results that AVX-512 BF16 flushes to zero), forward and
//! backward, with and without the fused residual add, and BatchNorm, for every dtype
//! and for the paths that shapes select: short and long rows, split rows, GroupNorm
//! segments, lengths that leave a tail in every vector width. One test in its own
//! binary, because the level cap it sets is process-wide.

mod common;

use candle_core::{DType, Tensor};
use candle_norm::{cpu_level, detected_cpu_level, set_cpu_level_limit, CpuLevel};
use common::*;

const LEVELS: [CpuLevel; 4] = [
    CpuLevel::Baseline,
    CpuLevel::Avx2,
    CpuLevel::Avx512,
    CpuLevel::Avx512Bf16,
];

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F64 => t.to_vec1::<f64>().unwrap().iter().map(|v| v.to_bits()).collect(),
        _ => t
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
    }
}

/// The bits of an f32 (widened to u64) with a subnormal value replaced by a zero of its sign.
fn flush_subnormal_f32(b: u64) -> u64 {
    let v = f32::from_bits(b as u32);
    if v.is_subnormal() {
        b & 0x8000_0000
    } else {
        b
    }
}

/// Whether output `i` of [`run`] belongs to a bf16 case.
fn is_bf16(cases: &[Case], i: usize) -> bool {
    let mut at = 0;
    for case in cases {
        let n = 2 + usize::from(case.w.is_some()) + usize::from(case.b.is_some());
        if i < at + n {
            return case.x.dtype() == DType::BF16;
        }
        at += n;
    }
    false
}

/// Forward output and the three gradients of every case, of the fused residual add for
/// LayerNorm and RMSNorm, and of BatchNorm on the GroupNorm inputs, as bits.
fn run(cases: &[Case], dys: &[Tensor]) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for (case, dy) in cases.iter().zip(dys) {
        out.push(bits(&case.ours().unwrap()));
        let g = case.backward(dy).unwrap();
        out.push(bits(&g.dx));
        out.extend(g.dweight.iter().chain(&g.dbias).map(bits));
        if let Norm::Group(_) = case.norm {
            // BatchNorm on the same input: statistics per channel across the batch.
            let (w, b) = (case.w.as_ref(), case.b.as_ref());
            let (y, mean, var) = candle_norm::batch_norm_train(&case.x, w, b, case.eps).unwrap();
            let g = candle_norm::batch_norm_backward(&case.x, w, b, dy, case.eps).unwrap();
            out.extend(
                [&y, &mean, &var, &g.dx]
                    .into_iter()
                    .chain(&g.dweight)
                    .chain(&g.dbias)
                    .map(bits),
            );
        }
        if matches!(case.norm, Norm::Layer | Norm::Rms) {
            // The fused residual add, with dy as the residual and x as dh.
            let (w, b) = (case.w.as_ref(), case.b.as_ref());
            let (y, h) = case.norm.ours_add(&case.x, dy, w, b, case.eps).unwrap();
            let g = case.norm.add_backward(&h, w, b, dy, Some(&case.x), case.eps).unwrap();
            out.extend([&y, &h, &g.dx].into_iter().chain(&g.dweight).chain(&g.dbias).map(bits));
        }
    }
    out
}

#[test]
fn every_level_gives_the_bits_of_the_baseline() {
    let mut rng = Rng::new(5);
    let shapes: &[(Norm, &[usize])] = &[
        (Norm::Layer, &[7, 1]),
        (Norm::Layer, &[5, 37]),
        (Norm::Rms, &[9, 1023]),
        (Norm::Layer, &[3, 4099]),
        (Norm::Rms, &[2, 70_001]),
        (Norm::Layer, &[1, 40_000]),
        (Norm::Group(2), &[3, 4, 257]),
        (Norm::Group(4), &[2, 8, 5, 5]),
        (Norm::GroupLast(2), &[3, 37, 4]),
        (Norm::GroupLast(4), &[2, 5, 5, 1000]),
    ];
    let mut cases = Vec::new();
    let mut dys = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        for &(norm, shape) in shapes {
            for affine in AFFINES {
                cases.push(Case::new(&mut rng, norm, shape, dtype, affine, 1e-5));
                dys.push(rng.tensor(shape, dtype, 0.0, 1.0));
            }
        }
    }
    let detected = detected_cpu_level();
    set_cpu_level_limit(Some(CpuLevel::Baseline));
    assert_eq!(cpu_level(), CpuLevel::Baseline);
    let want = run(&cases, &dys);
    for level in LEVELS.into_iter().filter(|&l| l > CpuLevel::Baseline) {
        if level > detected {
            println!("{level:?}: not on this CPU ({detected:?}), not run");
            continue;
        }
        set_cpu_level_limit(Some(level));
        assert_eq!(cpu_level(), level);
        let got = run(&cases, &dys);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // vcvtneps2bf16 flushes subnormal results to zero (see CpuLevel::Avx512Bf16).
            let flushed: Vec<u64> = w.iter().map(|&b| flush_subnormal_f32(b)).collect();
            let expected = if level == CpuLevel::Avx512Bf16 && is_bf16(&cases, i) {
                &flushed
            } else {
                w
            };
            assert!(g == expected, "{level:?}: output {i} differs from the baseline's");
        }
        println!("{level:?}: {} outputs identical to the baseline's", got.len());
    }
    set_cpu_level_limit(None);
    assert_eq!(cpu_level(), detected);
}
