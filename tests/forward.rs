//! Forward against candle's composed references, per dtype, over shapes and data that
//! break naive code.
mod common;
use candle_core::{DType, Tensor};
use common::*;

/// LayerNorm/RMSNorm shapes: M = 1, N = 1, odd N, N off every vector width, N = 131072,
/// rank 1 and rank 4, rows long enough (or few enough) to be cut into chunks, and
/// outputs of one collected piece of 4096 elements and one element either side.
const ROW_SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 1],
    &[1, 8],
    &[7, 13],
    &[5, 1000],
    &[2, 4099],
    &[17],
    &[2, 3, 4, 33],
    &[33, 768],
    &[2, 20000],
    &[1, 131072],
    &[3, 70001],
    &[1, 4095],
    &[4, 1024],
    &[4097, 1],
];

/// GroupNorm shapes and groups: 0–3 spatial dims, G = 1 and G = C, one group larger
/// than a chunk with channels that straddle chunk boundaries.
const GROUP_SHAPES: &[(&[usize], usize)] = &[
    (&[2, 6], 3),
    (&[2, 6, 5], 2),
    (&[2, 8, 4, 4], 4),
    (&[1, 4, 3, 3, 3], 2),
    (&[2, 4, 5, 5], 1),
    (&[2, 4, 3, 3], 4),
    (&[3, 1, 7], 1),
    (&[1, 4, 100, 100], 1),
    (&[1, 64, 16, 16], 32),
    (&[2, 6, 9999], 3),
];

/// Channels-last GroupNorm shapes ([B, *spatial, C]) and groups: no spatial dimension,
/// 1×1, B = 1, C = 1, G = 1 and G = C, more channels than a block, and spatial sizes
/// that leave a short last tile.
const GROUP_LAST_SHAPES: &[(&[usize], usize)] = &[
    (&[2, 6], 3),
    (&[2, 5, 6], 2),
    (&[2, 4, 4, 8], 4),
    (&[1, 3, 3, 3, 4], 2),
    (&[4, 1, 1, 8], 2),
    (&[2, 3, 3, 4], 4),
    (&[3, 7, 1], 1),
    (&[1, 100, 100, 4], 1),
    (&[1, 16, 16, 64], 32),
    (&[2, 9999, 6], 3),
    (&[2, 7, 1000], 10),
];

fn cases() -> Vec<(Norm, &'static [usize])> {
    let mut v = vec![];
    for &s in ROW_SHAPES {
        v.push((Norm::Layer, s));
        v.push((Norm::Rms, s));
    }
    for &(s, g) in GROUP_SHAPES {
        v.push((Norm::Group(g), s));
    }
    for &(s, g) in GROUP_LAST_SHAPES {
        v.push((Norm::GroupLast(g), s));
    }
    v
}

#[test]
fn matches_reference_every_dtype_shape_and_affine() {
    let mut rng = Rng::new(1);
    for (norm, shape) in cases() {
        for dtype in DTYPES {
            for affine in AFFINES {
                let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
                let y = case.ours().unwrap();
                assert_eq!(y.dtype(), dtype);
                let what = format!("{norm:?} {shape:?} {dtype:?} {affine:?}");
                assert_close(&what, &y, &case.reference().unwrap(), tol(dtype).fwd);
            }
        }
    }
}

/// Data that breaks one-pass variance, checked against the reference evaluated in f64
/// on the same (rounded) inputs. The mean itself is rounded to f32, so x − mean
/// carries an error of about u·|offset| (u: f32 unit roundoff) and x̂ one of
/// u·|offset|/spread: that conditioning bound, not a looser table entry, is allowed on
/// top of the table. E[x²] − mean² would be off by about u·offset²/spread² instead
/// (over 100 % here in f32).
#[test]
fn hard_data_normalizes_correctly() {
    let mut rng = Rng::new(2);
    for (norm, shape) in HARD_CASES {
        // All three accumulate in f32; f64 accuracy is covered by the main test.
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (name, offset, scale) in HARD_DATA {
                let mut case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
                case.x = rng.tensor(shape, dtype, offset, scale);
                let want = case.to_dtype(DType::F64).reference().unwrap();
                let allowed = tol(dtype).fwd + 8.0 * unit_roundoff(DType::F32) * offset.abs() / scale;
                assert_close(
                    &format!("{norm:?} {dtype:?} {name}"),
                    &case.ours().unwrap(),
                    &want,
                    allowed,
                );
            }
        }
    }
}

/// f16 values whose variance f16 cannot hold (1.0001, 1.0002, ...): the f32
/// accumulation keeps it.
#[test]
fn half_precision_accumulates_in_f32() {
    let v: Vec<f32> = (0..64).map(|i| 1.0 + (i % 4) as f32 * 1e-3).collect();
    for dtype in [DType::F16, DType::BF16] {
        let x = Tensor::from_vec(v.clone(), (1, 64), &candle_core::Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let want = candle_norm::reference::layer_norm(&x.to_dtype(DType::F64).unwrap(), None, None, 1e-12).unwrap();
        let got = candle_norm::layer_norm(&x, None, None, 1e-12).unwrap();
        assert_close(&format!("{dtype:?}"), &got, &want, tol(dtype).fwd);
    }
}

#[test]
fn identical_rows_give_finite_output() {
    for dtype in DTYPES {
        for eps in [1e-12, 1e-6, 1e-2] {
            let x = Tensor::full(3.25f32, (4, 300), &candle_core::Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .contiguous()
                .unwrap();
            let b = Tensor::full(0.5f32, 300, &candle_core::Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let y = candle_norm::layer_norm(&x, None, Some(&b), eps).unwrap();
            assert_close(
                &format!("layer {dtype:?} {eps}"),
                &y,
                &b.broadcast_as((4, 300)).unwrap().contiguous().unwrap(),
                0.0,
            );
            let xg = x.reshape((4, 6, 50)).unwrap();
            let y = candle_norm::group_norm(&xg, 3, None, None, eps).unwrap();
            assert_close(&format!("group {dtype:?} {eps}"), &y, &xg.zeros_like().unwrap(), 0.0);
            let y = candle_norm::rms_norm(&x.zeros_like().unwrap(), None, eps).unwrap();
            assert_close(&format!("rms zeros {dtype:?} {eps}"), &y, &x.zeros_like().unwrap(), 0.0);
        }
    }
}

#[test]
fn eps_from_1e_12_to_1e_2() {
    let mut rng = Rng::new(3);
    for eps in [1e-12, 1e-9, 1e-5, 1e-2] {
        for norm in [Norm::Layer, Norm::Rms, Norm::Group(4)] {
            for dtype in DTYPES {
                let shape: &[usize] = if let Norm::Group(_) = norm {
                    &[2, 8, 33]
                } else {
                    &[6, 257]
                };
                let mut case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, eps);
                // Small spread, so eps matters.
                case.x = rng.tensor(shape, dtype, 0.0, 1e-2);
                let want = case.reference().unwrap();
                assert_close(
                    &format!("{norm:?} {dtype:?} eps {eps}"),
                    &case.ours().unwrap(),
                    &want,
                    tol(dtype).fwd,
                );
            }
        }
    }
}

#[test]
fn non_contiguous_input_and_parameters() {
    let mut rng = Rng::new(4);
    for dtype in DTYPES {
        let x = rng.tensor(&[40, 6], dtype, 0.0, 1.0).t().unwrap();
        let w = rng
            .tensor(&[40, 2], dtype, 1.0, 0.5)
            .narrow(1, 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        assert!(!x.is_contiguous() && !w.is_contiguous());
        let got = candle_norm::layer_norm(&x, Some(&w), None, 1e-5).unwrap();
        assert!(got.is_contiguous());
        let want =
            candle_norm::layer_norm(&x.contiguous().unwrap(), Some(&w.contiguous().unwrap()), None, 1e-5).unwrap();
        assert_close(&format!("{dtype:?}"), &got, &want, 0.0);
        let xg = rng
            .tensor(&[6, 4, 2, 5], dtype, 0.0, 1.0)
            .permute((3, 1, 2, 0))
            .unwrap();
        let got = candle_norm::group_norm(&xg, 2, None, None, 1e-5).unwrap();
        let want = Norm::Group(2)
            .reference(&xg.contiguous().unwrap(), None, None, 1e-5)
            .unwrap();
        assert_close(&format!("group {dtype:?}"), &got, &want, tol(dtype).fwd);
    }
}

#[test]
fn results_are_identical_from_run_to_run() {
    let mut rng = Rng::new(5);
    for (norm, shape) in [
        (Norm::Layer, &[64usize, 4099][..]),
        (Norm::Group(1), &[1, 8, 128, 64][..]),
    ] {
        let case = Case::new(&mut rng, norm, shape, DType::F32, Affine::WeightBias, 1e-5);
        assert_eq!(to_f64(&case.ours().unwrap()), to_f64(&case.ours().unwrap()));
    }
}
