//! Mixed precision: f32 parameters (weight, bias, running statistics) with f16 or bf16
//! x, as mixed-precision and GGUF checkpoints keep them. Every norm, on the fused
//! backend and on the generic one: y and dx in x's dtype, dγ, dβ and BatchNorm's batch
//! statistics in f32; with f32 parameters that hold x's dtype exactly, the same bits
//! as with parameters of x's dtype (dγ, dβ and the statistics rounded to it); with any
//! f32 parameters, within the table of the reference evaluated in f64; the standalone
//! backward as autograd.
#[macro_use]
mod common;
use candle_core::{DType, Tensor};
use common::*;

/// The gradients as autograd hands them out (candle adds each to a zero tensor, which
/// turns an exact -0 into +0), rounded to `dtype`.
fn rounded(g: &Grads, dtype: DType) -> Grads {
    let r = |t: &Tensor| (t.zeros_like().unwrap() + t).unwrap().to_dtype(dtype).unwrap();
    Grads {
        dx: r(&g.dx),
        dw: g.dw.as_ref().map(r),
        db: g.db.as_ref().map(r),
        dr: g.dr.as_ref().map(r),
    }
}

fn mixed(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(70);
    let reference = cases_of(REFERENCE_CASES, norm);
    for (norm, shape) in cases_of(FINITE_DIFFERENCE_CASES, norm)
        .into_iter()
        .chain(reference.into_iter().take(5))
    {
        for affine in AFFINES {
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            // Parameters of x's dtype, and the same values in f32.
            let same = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
            let exact = same.with_params_dtype(DType::F32);
            let what = format!("{} {backend:?}", exact.what());
            let (ys, ym) = (
                backend.run(|| same.forward(Impl::Ours)).unwrap(),
                backend.run(|| exact.forward(Impl::Ours)).unwrap(),
            );
            for (i, (s, m)) in ys.iter().zip(&ym).enumerate() {
                // BatchNorm's batch statistics (outputs 1 and 2) come in the
                // parameters' dtype, the same values rounded once.
                let stats = norm == Norm::Batch && i > 0 && affine != Affine::None;
                assert_eq!(m.dtype(), if stats { DType::F32 } else { dtype }, "{what}: output {i}");
                assert_eq!(bits(s), bits(&m.to_dtype(dtype).unwrap()), "{what}: output {i}");
            }
            let (gs, gm) = (
                backend.run(|| same.grads(&dy, Impl::Ours)).unwrap(),
                backend.run(|| exact.grads(&dy, Impl::Ours)).unwrap(),
            );
            for (name, g, _) in gm.named(&gm) {
                let want = if matches!(name, "dw" | "db") { DType::F32 } else { dtype };
                assert_eq!(g.map(Tensor::dtype).unwrap_or(want), want, "{what}: {name}");
            }
            assert_grads_equal(
                &format!("{what} against x's dtype"),
                &rounded(&gm, dtype),
                &rounded(&gs, dtype),
            );
            if let Some(standalone) = backend.run(|| exact.backward(&dy)) {
                let standalone = standalone.unwrap();
                match backend {
                    Backend::Fused => assert_grads_equal(
                        &format!("{what} standalone"),
                        &rounded(&standalone, DType::F32),
                        &rounded(&gm, DType::F32),
                    ),
                    Backend::Generic => {
                        assert_grads_close(&format!("{what} standalone"), &standalone, &gm, tol(dtype).bwd)
                    }
                }
            }

            // Any f32 parameters: against the reference in f64.
            let case = Case::mixed(&mut rng, norm, shape, dtype, affine, 1e-5);
            let what = format!("{} {backend:?}", case.what());
            let got = backend.run(|| case.forward(Impl::Ours)).unwrap();
            let want = case.widened(DType::F64).forward(Impl::Reference).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{what} output {i}"), g, w, tol(dtype).fwd);
            }
            let got = backend.run(|| case.grads(&dy, Impl::Ours)).unwrap();
            let want = case.widened(DType::F64).grads(&dy, Impl::Reference).unwrap();
            for (name, g, w) in got.named(&want) {
                let t = if matches!(name, "dw" | "db") {
                    tol(DType::F32)
                } else {
                    tol(dtype)
                };
                assert_eq!(g.is_some(), w.is_some(), "{what}: {name}");
                if let (Some(g), Some(w)) = (g, w) {
                    assert_close_max(&format!("{what} {name}"), g, w, t.bwd);
                }
            }
        }
    }
}

grid!(mixed: every norm x [f16 = F16, bf16 = BF16] x [fused = Fused, generic = Generic]);
