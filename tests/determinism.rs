//! Every norm gives the same bits from run to run (forward, and the gradients through
//! autograd: dγ/dβ are reduced in a fixed order), and its standalone backward gives the
//! gradients autograd gives: on the fused backend bit for bit (both run one fused
//! kernel) once autograd's accumulation is applied to it, on the generic one within the
//! table (autograd differentiates the composed forward; the standalone backward is the
//! written-out formula).
#[macro_use]
mod common;
use candle_core::{DType, Tensor};
use common::*;

/// The gradients as autograd hands them out: candle adds each to a zero tensor, which
/// turns an exact -0 into +0.
fn accumulated(g: &Grads) -> Grads {
    let add = |t: &Tensor| (t.zeros_like().unwrap() + t).unwrap();
    Grads {
        dx: add(&g.dx),
        dw: g.dw.as_ref().map(add),
        db: g.db.as_ref().map(add),
        dr: g.dr.as_ref().map(add),
    }
}

fn determinism(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(5);
    for (norm, shape) in cases_of(DETERMINISM_CASES, norm) {
        let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
        let what = format!("{} {backend:?}", case.what());
        let dy = rng.tensor(shape, dtype, 0.0, 1.0);
        let run = || backend.run(|| (case.forward(Impl::Ours).unwrap(), case.grads(&dy, Impl::Ours).unwrap()));
        let ((ya, ga), (yb, gb)) = (run(), run());
        for (i, (a, b)) in ya.iter().zip(&yb).enumerate() {
            assert_eq!(bits(a), bits(b), "{what}: output {i}");
        }
        assert_grads_equal(&what, &ga, &gb);
        let Some(standalone) = backend.run(|| case.backward(&dy)) else {
            continue;
        };
        let standalone = standalone.unwrap();
        match backend {
            Backend::Fused => assert_grads_equal(&format!("{what} standalone"), &accumulated(&standalone), &ga),
            Backend::Generic => assert_grads_close(&format!("{what} standalone"), &standalone, &ga, tol(dtype).bwd),
        }
    }
}

grid!(determinism: every norm x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused, generic = Generic]);
