//! What the norms promise beyond matching the reference, on both backends: statistics
//! in f32 for half precision, a constant row normalizes to the bias (finite, whatever
//! eps), eps from 1e-12 to 1e-2, any input layout (non-contiguous inputs and their
//! gradients), empty inputs, and random shapes, dtypes and options that never panic.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;

/// f16 values whose variance f16 cannot hold (1.0001, 1.0002, ...): the f32
/// accumulation keeps it.
#[test]
fn half_precision_accumulates_in_f32() {
    let v: Vec<f32> = (0..64).map(|i| 1.0 + (i % 4) as f32 * 1e-3).collect();
    for backend in BACKENDS {
        for dtype in [DType::F16, DType::BF16] {
            let x = Tensor::from_vec(v.clone(), (1, 64), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = candle_norm::reference::layer_norm(&x.to_dtype(DType::F64).unwrap(), None, None, 1e-12).unwrap();
            let got = backend.run(|| candle_norm::layer_norm(&x, None, None, 1e-12)).unwrap();
            assert_close(&format!("{dtype:?} {backend:?}"), &got, &want, tol(dtype).fwd);
        }
    }
}

#[test]
fn identical_rows_give_finite_output() {
    for backend in BACKENDS {
        for dtype in DTYPES {
            for eps in [1e-12, 1e-6, 1e-2] {
                let x = Tensor::full(3.25f32, (4, 300), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                let b = Tensor::full(0.5f32, 300, &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let what = format!("{dtype:?} {eps} {backend:?}");
                let y = backend
                    .run(|| candle_norm::layer_norm(&x, None, Some(&b), eps))
                    .unwrap();
                let want = b.broadcast_as((4, 300)).unwrap().contiguous().unwrap();
                assert_close(&format!("layer {what}"), &y, &want, 0.0);
                let xg = x.reshape((4, 6, 50)).unwrap();
                let y = backend
                    .run(|| candle_norm::group_norm(&xg, 3, None, None, eps))
                    .unwrap();
                assert_close(&format!("group {what}"), &y, &xg.zeros_like().unwrap(), 0.0);
                let zeros = x.zeros_like().unwrap();
                let y = backend.run(|| candle_norm::rms_norm(&zeros, None, eps)).unwrap();
                assert_close(&format!("rms zeros {what}"), &y, &zeros, 0.0);
            }
        }
    }
}

#[test]
fn eps_from_1e_12_to_1e_2() {
    let mut rng = Rng::new(3);
    for backend in BACKENDS {
        for eps in [1e-12, 1e-9, 1e-5, 1e-2] {
            for (norm, shape) in [
                (Norm::Layer, &[6usize, 257][..]),
                (Norm::Rms, &[6, 257]),
                (Norm::Group(4), &[2, 8, 33]),
                (Norm::Batch, &[6, 4, 33]),
            ] {
                for dtype in DTYPES {
                    let mut case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, eps);
                    // Small spread, so eps matters.
                    case.x = rng.tensor(shape, dtype, 0.0, 1e-2);
                    let want = case.reference().unwrap();
                    let got = backend.run(|| case.ours()).unwrap();
                    assert_close(
                        &format!("{} eps {eps} {backend:?}", case.what()),
                        &got,
                        &want,
                        tol(dtype).fwd,
                    );
                }
            }
        }
    }
}

#[test]
fn non_contiguous_input_and_parameters() {
    let mut rng = Rng::new(4);
    for backend in BACKENDS {
        for dtype in DTYPES {
            let x = rng.tensor(&[40, 6], dtype, 0.0, 1.0).t().unwrap();
            let w = rng
                .tensor(&[40, 2], dtype, 1.0, 0.5)
                .narrow(1, 1, 1)
                .unwrap()
                .squeeze(1)
                .unwrap();
            assert!(!x.is_contiguous() && !w.is_contiguous());
            let got = backend
                .run(|| candle_norm::layer_norm(&x, Some(&w), None, 1e-5))
                .unwrap();
            assert!(got.is_contiguous());
            let (xc, wc) = (x.contiguous().unwrap(), w.contiguous().unwrap());
            let want = backend
                .run(|| candle_norm::layer_norm(&xc, Some(&wc), None, 1e-5))
                .unwrap();
            assert_close(&format!("{dtype:?} {backend:?}"), &got, &want, 0.0);
            let got = backend.run(|| candle_norm::rms_norm(&x, Some(&w), 1e-5)).unwrap();
            assert!(got.is_contiguous());
            let want = backend.run(|| candle_norm::rms_norm(&xc, Some(&wc), 1e-5)).unwrap();
            assert_close(&format!("rms {dtype:?} {backend:?}"), &got, &want, 0.0);
            let xg = rng
                .tensor(&[6, 4, 2, 5], dtype, 0.0, 1.0)
                .permute((3, 1, 2, 0))
                .unwrap();
            let got = backend
                .run(|| candle_norm::group_norm(&xg, 2, None, None, 1e-5))
                .unwrap();
            let want = candle_norm::reference::group_norm(&xg.contiguous().unwrap(), 2, None, None, 1e-5).unwrap();
            assert_close(&format!("group {dtype:?} {backend:?}"), &got, &want, tol(dtype).fwd);
        }
    }
}

/// A gradient through a non-contiguous input reaches the original layout.
#[test]
fn non_contiguous_input_gets_its_gradient() {
    let mut rng = Rng::new(13);
    let base = rng.tensor(&[12, 5], DType::F32, 0.0, 1.0);
    let dy = rng.tensor(&[5, 12], DType::F32, 0.0, 1.0);
    let xr = Var::from_tensor(&base).unwrap();
    let yr = candle_norm::reference::layer_norm(&xr.t().unwrap(), None, None, 1e-5).unwrap();
    let gr = (yr * &dy).unwrap().sum_all().unwrap().backward().unwrap();
    for backend in BACKENDS {
        let x = Var::from_tensor(&base).unwrap();
        let y = backend
            .run(|| candle_norm::layer_norm(&x.t().unwrap(), None, None, 1e-5))
            .unwrap();
        let g = backend
            .run(|| (y * &dy).unwrap().sum_all().unwrap().backward())
            .unwrap();
        let what = format!("transposed {backend:?}");
        assert_close_max(&what, g.get(&x).unwrap(), gr.get(&xr).unwrap(), tol(DType::F32).bwd);
    }
}

/// An empty input gives an empty output and gradients of its shape; the fused backend
/// gives zero parameter gradients. candle's composed ops, on an empty tensor, record no
/// gradient for the parameters they broadcast against it, so through autograd on the
/// generic backend the parameters' gradients are absent or zero (x's is checked
/// without parameters); its standalone backward gives zeros.
#[test]
fn zero_size_dimensions_give_empty_outputs_and_zero_gradients() {
    for backend in BACKENDS {
        for (norm, shape) in [
            (Norm::Layer, &[0usize, 8][..]),
            (Norm::Layer, &[3, 0]),
            (Norm::Rms, &[2, 0, 5]),
            (Norm::Rms, &[3, 0]),
            (Norm::Group(2), &[0, 4, 3]),
            (Norm::Group(2), &[2, 4, 0]),
            (Norm::Group(1), &[2, 0, 3]),
            (Norm::AddLayer, &[0, 8]),
        ] {
            let mut rng = Rng::new(20);
            let case = Case::new(&mut rng, norm, shape, DType::F32, Affine::WeightBias, 1e-5);
            let what = format!("{} {backend:?}", case.what());
            let y = backend.run(|| case.ours()).unwrap();
            assert_eq!(y.dims(), shape, "{what}");
            let dy = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
            match (backend, backend.run(|| case.grads(&dy, Impl::Ours))) {
                (_, Ok(g)) => {
                    assert_eq!(g.dx.dims(), shape, "{what}");
                    assert!(g.dw.iter().flat_map(to_f64).all(|v| v == 0.0), "{what}");
                }
                (Backend::Generic, Err(e)) if e.to_string().contains("gradient dropped") => {
                    let x = Var::from_tensor(&case.x).unwrap();
                    let bare = Case {
                        x: x.as_tensor().clone(),
                        w: None,
                        b: None,
                        ..case.clone()
                    };
                    let y = backend.run(|| bare.ours()).unwrap();
                    let g = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx = g.get(&x).map(|t| t.dims().to_vec());
                    assert_eq!(dx.as_deref(), Some(shape), "{what} without parameters");
                }
                (_, Err(e)) => panic!("{what}: {e}"),
            }
            if let Some(s) = backend.run(|| case.backward(&dy)) {
                let s = s.unwrap();
                assert_eq!(s.dx.dims(), shape, "{what}");
                assert!(s.dw.iter().flat_map(to_f64).all(|v| v == 0.0), "{what}");
            }
        }
    }
}

/// Many random shapes, dtypes, affine sets and eps: never a panic, always the
/// reference's values (and wrong weight lengths always an error).
#[test]
fn random_cases_agree_with_reference() {
    let mut rng = Rng::new(21);
    for backend in BACKENDS {
        for i in 0..150 {
            let dtype = DTYPES[rng.range(0, 3)];
            let affine = AFFINES[rng.range(0, 3)];
            let eps = [1e-12, 1e-6, 1e-5, 1e-2][rng.range(0, 3)];
            let (norm, shape) = match rng.range(0, 2) {
                0 | 1 => {
                    let rank = rng.range(1, 4);
                    let mut s: Vec<usize> = (0..rank).map(|_| rng.range(1, 5)).collect();
                    *s.last_mut().unwrap() = rng.range(1, 3000);
                    (if rng.range(0, 1) == 0 { Norm::Layer } else { Norm::Rms }, s)
                }
                _ => {
                    let g = rng.range(1, 4);
                    let c = g * rng.range(1, 4);
                    let mut s = vec![rng.range(1, 3), c];
                    s.extend((0..rng.range(0, 3)).map(|_| rng.range(1, 20)));
                    (Norm::Group(g), s)
                }
            };
            let case = Case::new(&mut rng, norm, &shape, dtype, affine, eps);
            let what = format!("case {i}: {} eps {eps} {backend:?}", case.what());
            let got = backend.run(|| case.ours()).unwrap();
            assert_close(&what, &got, &case.reference().unwrap(), tol(dtype).fwd);
            let mut bad = case.clone();
            bad.w = Some(Tensor::zeros(norm.params(&shape) + 1, dtype, &Device::Cpu).unwrap());
            assert!(
                backend.run(|| bad.ours()).is_err(),
                "{what}: wrong weight length accepted"
            );
        }
    }
}
