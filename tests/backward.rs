//! Backward: against candle autograd through the composed references, and against
//! central finite differences in f64, for x, weight and bias of every op.
mod common;
use candle_core::{DType, Tensor};
use common::*;

const CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[1, 1]),
    (Norm::Layer, &[3, 1]),
    (Norm::Layer, &[7, 13]),
    (Norm::Layer, &[2, 4099]),
    (Norm::Layer, &[17]),
    (Norm::Layer, &[2, 3, 4, 33]),
    (Norm::Layer, &[40, 1000]),
    (Norm::Layer, &[2, 20000]),
    (Norm::Layer, &[1, 131072]),
    (Norm::Rms, &[1, 1]),
    (Norm::Rms, &[7, 13]),
    (Norm::Rms, &[2, 4099]),
    (Norm::Rms, &[2, 3, 4, 33]),
    (Norm::Rms, &[40, 1000]),
    (Norm::Rms, &[3, 70001]),
    (Norm::Group(3), &[2, 6]),
    (Norm::Group(2), &[2, 6, 5]),
    (Norm::Group(4), &[2, 8, 4, 4]),
    (Norm::Group(2), &[1, 4, 3, 3, 3]),
    (Norm::Group(1), &[2, 4, 5, 5]),
    (Norm::Group(4), &[2, 4, 3, 3]),
    (Norm::Group(1), &[1, 4, 100, 100]),
    (Norm::Group(32), &[2, 64, 8, 8]),
    (Norm::Group(3), &[2, 6, 9999]),
    (Norm::GroupLast(3), &[2, 6]),
    (Norm::GroupLast(2), &[2, 5, 6]),
    (Norm::GroupLast(4), &[2, 4, 4, 8]),
    (Norm::GroupLast(2), &[1, 3, 3, 3, 4]),
    (Norm::GroupLast(2), &[4, 1, 1, 8]),
    (Norm::GroupLast(1), &[3, 7, 1]),
    (Norm::GroupLast(1), &[1, 100, 100, 4]),
    (Norm::GroupLast(32), &[2, 8, 8, 64]),
    (Norm::GroupLast(3), &[2, 9999, 6]),
    (Norm::GroupLast(10), &[2, 7, 1000]),
];

fn ours(n: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> candle_core::Result<Tensor> {
    n.ours(x, w, b, eps)
}

fn reference(n: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> candle_core::Result<Tensor> {
    n.reference(x, w, b, eps)
}

/// f16/bf16 gradients are checked against the reference run in f32 on the same values:
/// candle's composed half-precision backward reduces in half precision and would
/// measure its own rounding rather than ours.
#[test]
fn matches_autograd_through_reference() {
    let mut rng = Rng::new(10);
    for &(norm, shape) in CASES {
        for dtype in DTYPES {
            for affine in AFFINES {
                let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let (dx, dw, db) = case.grads(&dy, ours).unwrap();
                let ref_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
                let (rdx, rdw, rdb) = case.to_dtype(ref_dtype).grads(&dy, reference).unwrap();
                let what = format!("{norm:?} {shape:?} {dtype:?} {affine:?}");
                let t = tol(dtype).bwd;
                assert_eq!(dx.dtype(), dtype);
                assert_close_max(&format!("{what} dx"), &dx, &rdx, t);
                if let (Some(dw), Some(rdw)) = (&dw, &rdw) {
                    assert_eq!(dw.dtype(), dtype);
                    assert_close_max(&format!("{what} dw"), dw, rdw, t);
                }
                if let (Some(db), Some(rdb)) = (&db, &rdb) {
                    assert_close_max(&format!("{what} db"), db, rdb, t);
                }
                assert_eq!(
                    (dw.is_some(), db.is_some()),
                    (rdw.is_some(), rdb.is_some()),
                    "{what}: gradient set"
                );
            }
        }
    }
}

/// The standalone backward functions run the kernel that autograd runs: the same
/// gradients bit for bit, and the same set of them.
#[test]
fn standalone_backward_equals_autograd() {
    let mut rng = Rng::new(14);
    for &(norm, shape) in CASES {
        for dtype in [DType::F32, DType::BF16] {
            for affine in AFFINES {
                let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let (dx, dw, db) = case.grads(&dy, ours).unwrap();
                let g = case.backward(&dy).unwrap();
                let what = format!("{norm:?} {shape:?} {dtype:?} {affine:?}");
                assert_eq!(g.dx.dims(), shape, "{what}");
                assert_eq!(to_f64(&g.dx), to_f64(&dx), "{what} dx");
                assert_eq!(g.dweight.as_ref().map(to_f64), dw.as_ref().map(to_f64), "{what} dw");
                assert_eq!(g.dbias.as_ref().map(to_f64), db.as_ref().map(to_f64), "{what} db");
            }
        }
    }
}

/// Data that breaks naive code (as in forward.rs's hard-data test), for the backward:
/// gradients against the reference in f64 on the same rounded inputs, with the
/// conditioning bound of x̂, u·|offset|/spread (u: f32 unit roundoff), allowed on top
/// of the table.
#[test]
fn hard_data_has_correct_gradients() {
    let mut rng = Rng::new(15);
    for (norm, shape) in HARD_CASES {
        for dtype in [DType::F32, DType::BF16] {
            for (name, offset, scale) in HARD_DATA {
                let mut case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
                case.x = rng.tensor(shape, dtype, offset, scale);
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let (dx, dw, db) = case.grads(&dy, ours).unwrap();
                let (rdx, rdw, rdb) = case.to_dtype(DType::F64).grads(&dy, reference).unwrap();
                let allowed = tol(dtype).bwd + 8.0 * unit_roundoff(DType::F32) * offset.abs() / scale;
                let what = format!("{norm:?} {dtype:?} {name}");
                assert_close_max(&format!("{what} dx"), &dx, &rdx, allowed);
                assert_close_max(&format!("{what} dw"), &dw.unwrap(), &rdw.unwrap(), allowed);
                if let (Some(db), Some(rdb)) = (db, rdb) {
                    assert_close_max(&format!("{what} db"), &db, &rdb, allowed);
                }
            }
        }
    }
}

/// Central differences of L = Σ y·dy in f64, one input element at a time.
fn finite_diff(case: &Case, dy: &Tensor, which: usize) -> Vec<f64> {
    let h = 1e-6;
    let loss = |c: &Case| {
        (c.ours().unwrap() * dy)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let base = [Some(&case.x), case.w.as_ref(), case.b.as_ref()][which].unwrap();
    let v = to_f64(base);
    (0..v.len())
        .map(|i| {
            let at = |d: f64| {
                let mut p = v.clone();
                p[i] += d;
                let t = Tensor::from_vec(p, base.shape(), base.device()).unwrap();
                let mut c = case.clone();
                match which {
                    0 => c.x = t,
                    1 => c.w = Some(t),
                    _ => c.b = Some(t),
                }
                loss(&c)
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn matches_finite_differences_in_f64() {
    let mut rng = Rng::new(11);
    let cases: &[(Norm, &[usize])] = &[
        (Norm::Layer, &[3, 7]),
        (Norm::Layer, &[1, 1]),
        (Norm::Layer, &[2, 2, 5]),
        (Norm::Rms, &[3, 7]),
        (Norm::Rms, &[1, 1]),
        (Norm::Group(2), &[2, 4, 3]),
        (Norm::Group(1), &[1, 2, 2, 2]),
        (Norm::Group(3), &[2, 3]),
        (Norm::GroupLast(2), &[2, 3, 4]),
        (Norm::GroupLast(1), &[1, 2, 2, 2]),
        (Norm::GroupLast(3), &[2, 3]),
    ];
    for &(norm, shape) in cases {
        let case = Case::new(&mut rng, norm, shape, DType::F64, Affine::WeightBias, 1e-5);
        let dy = rng.tensor(shape, DType::F64, 0.0, 1.0);
        let (dx, dw, db) = case.grads(&dy, ours).unwrap();
        let grads = [Some(dx), dw, db];
        for (which, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let fd = Tensor::from_vec(finite_diff(&case, &dy, which), g.shape(), g.device()).unwrap();
            assert_close_max(&format!("{norm:?} {shape:?} input {which}"), g, &fd, 1e-6);
        }
    }
}

/// dγ/dβ are reduced in a fixed order: two runs agree bit for bit.
#[test]
fn parameter_gradients_are_deterministic() {
    let mut rng = Rng::new(12);
    for &(norm, shape) in &[
        (Norm::Layer, &[300usize, 2048][..]),
        (Norm::Group(1), &[2, 8, 128, 64][..]),
        (Norm::GroupLast(4), &[2, 128, 64, 8][..]),
        (Norm::Layer, &[4, 100000][..]),
    ] {
        let case = Case::new(&mut rng, norm, shape, DType::F32, Affine::WeightBias, 1e-5);
        let dy = rng.tensor(shape, DType::F32, 0.0, 1.0);
        let a = case.grads(&dy, ours).unwrap();
        let b = case.grads(&dy, ours).unwrap();
        assert_eq!(to_f64(&a.1.unwrap()), to_f64(&b.1.unwrap()));
        assert_eq!(to_f64(&a.2.unwrap()), to_f64(&b.2.unwrap()));
        assert_eq!(to_f64(&a.0), to_f64(&b.0));
    }
}

/// A gradient through a non-contiguous input reaches the original layout.
#[test]
fn non_contiguous_input_gets_its_gradient() {
    let mut rng = Rng::new(13);
    let base = rng.tensor(&[12, 5], DType::F32, 0.0, 1.0);
    let x = candle_core::Var::from_tensor(&base).unwrap();
    let y = candle_norm::layer_norm(&x.t().unwrap(), None, None, 1e-5).unwrap();
    let dy = rng.tensor(&[5, 12], DType::F32, 0.0, 1.0);
    let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    let got = g.get(&x).unwrap();
    let xr = candle_core::Var::from_tensor(&base).unwrap();
    let yr = candle_norm::reference::layer_norm(&xr.t().unwrap(), None, None, 1e-5).unwrap();
    let gr = (yr * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close_max("transposed", got, gr.get(&xr).unwrap(), tol(DType::F32).bwd);
}
