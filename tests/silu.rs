//! GroupNorm + SiLU beyond the grid of every norm (which checks it against the
//! reference GroupNorm followed by candle's silu, by finite differences, on hard data,
//! for determinism and on every CPU level): against the composition of this crate's
//! own GroupNorm and candle's silu, forward and gradients, on the diffusion shapes; the
//! module option; errors naming the op.
mod common;
use candle_core::{DType, Device, Module, Tensor, Var};
use common::*;

/// y and the gradients of x, γ and β (L = Σ y·dy) of `f` through autograd.
fn value_and_grads(
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    (x, w, b): (&Tensor, &Tensor, &Tensor),
    dy: &Tensor,
) -> (Tensor, [Tensor; 3]) {
    let vars = [x, w, b].map(|t| Var::from_tensor(t).unwrap());
    let y = f(&vars[0], &vars[1], &vars[2]).unwrap();
    let g = (&y * dy).unwrap().sum_all().unwrap().backward().unwrap();
    (y, vars.map(|v| g.get(&v).expect("a gradient").clone()))
}

#[test]
fn fused_equals_group_norm_then_silu() {
    for backend in BACKENDS {
        let mut rng = Rng::new(90);
        for dtype in DTYPES {
            for (last, shape, groups) in [
                (false, &[1, 320, 16, 16][..], 32),
                (false, &[2, 64, 7, 9], 8),
                (true, &[1, 16, 16, 320], 32),
                (true, &[2, 9, 7, 64], 8),
            ] {
                let what = format!("{backend:?} {dtype:?} {shape:?} channels-last {last}");
                let c = if last { shape[3] } else { shape[1] };
                let x = rng.tensor(shape, dtype, 0.0, 1.0);
                let (w, b) = (rng.tensor(&[c], dtype, 1.0, 0.5), rng.tensor(&[c], dtype, 0.0, 0.5));
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let fused = |x: &Tensor, w: &Tensor, b: &Tensor| match last {
                    false => candle_norm::group_norm_silu(x, groups, Some(w), Some(b), 1e-5),
                    true => candle_norm::group_norm_channels_last_silu(x, groups, Some(w), Some(b), 1e-5),
                };
                // The composition in f32 (f64 for f64), rounded once, as the fused op.
                let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
                let composed = |x: &Tensor, w: &Tensor, b: &Tensor| {
                    let (x, w, b) = (x.to_dtype(wide)?, w.to_dtype(wide)?, b.to_dtype(wide)?);
                    let y = match last {
                        false => candle_norm::group_norm(&x, groups, Some(&w), Some(&b), 1e-5)?,
                        true => candle_norm::group_norm_channels_last(&x, groups, Some(&w), Some(&b), 1e-5)?,
                    };
                    y.silu()?.to_dtype(dtype)
                };
                let (got, got_g) = backend.run(|| value_and_grads(fused, (&x, &w, &b), &dy));
                let (want, want_g) = backend.run(|| value_and_grads(composed, (&x, &w, &b), &dy));
                let t = tol(dtype);
                assert_close(&what, &got, &want, t.fwd);
                for (i, name) in ["dx", "dweight", "dbias"].into_iter().enumerate() {
                    assert_close_max(&format!("{what} {name}"), &got_g[i], &want_g[i], t.bwd);
                }
                let standalone = backend
                    .run(|| match last {
                        false => candle_norm::group_norm_silu_backward(&x, groups, Some(&w), Some(&b), &dy, 1e-5),
                        true => candle_norm::group_norm_channels_last_silu_backward(
                            &x,
                            groups,
                            Some(&w),
                            Some(&b),
                            &dy,
                            1e-5,
                        ),
                    })
                    .unwrap();
                let parts = [
                    Some(&standalone.dx),
                    standalone.dweight.as_ref(),
                    standalone.dbias.as_ref(),
                ];
                for (i, part) in parts.into_iter().enumerate() {
                    assert_close_max(&format!("{what} standalone {i}"), part.unwrap(), &got_g[i], t.bwd);
                }
            }
        }
    }
}

/// `GroupNorm::with_silu` runs the fused op, bit for bit, in both layouts; without it
/// the layer is plain GroupNorm.
#[test]
fn module_option_is_the_fused_op() {
    on_every_backend(|| {
        let mut rng = Rng::new(91);
        for last in [false, true] {
            let shape: &[usize] = if last { &[2, 4, 4, 64] } else { &[2, 64, 4, 4] };
            let x = rng.tensor(shape, DType::F32, 0.0, 1.0);
            let (w, b) = (
                rng.tensor(&[64], DType::F32, 1.0, 0.5),
                rng.tensor(&[64], DType::F32, 0.0, 0.5),
            );
            let gn = candle_norm::nn::GroupNorm::new(w.clone(), b.clone(), 64, 8, 1e-5)
                .unwrap()
                .with_channels_last(last);
            assert!(!gn.silu());
            let with = gn.clone().with_silu(true);
            assert!(with.silu());
            let op = match last {
                false => candle_norm::group_norm_silu(&x, 8, Some(&w), Some(&b), 1e-5).unwrap(),
                true => candle_norm::group_norm_channels_last_silu(&x, 8, Some(&w), Some(&b), 1e-5).unwrap(),
            };
            assert!(bits(&with.forward(&x).unwrap()) == bits(&op), "channels-last {last}");
            let plain = match last {
                false => candle_norm::group_norm(&x, 8, Some(&w), Some(&b), 1e-5).unwrap(),
                true => candle_norm::group_norm_channels_last(&x, 8, Some(&w), Some(&b), 1e-5).unwrap(),
            };
            assert!(bits(&gn.forward(&x).unwrap()) == bits(&plain), "channels-last {last}");
        }
    });
}

/// Bad input is an error naming the fused op, on both backends.
#[test]
fn bad_input_names_the_op() {
    on_every_backend(|| {
        let x = Tensor::zeros((2, 6, 4), DType::F32, &Device::Cpu).unwrap();
        let e = candle_norm::group_norm_silu(&x, 4, None, None, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("group_norm_silu") && e.contains("num_groups (4)"), "{e}");
        let w = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
        let e = candle_norm::group_norm_channels_last_silu(&x, 2, Some(&w), None, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("group_norm_channels_last_silu") && e.contains("weight"),
            "{e}"
        );
        let dy = Tensor::zeros((2, 6, 5), DType::F32, &Device::Cpu).unwrap();
        let e = candle_norm::group_norm_silu_backward(&x, 2, None, None, &dy, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("group_norm_silu") && e.contains("dy"), "{e}");
    });
}
