//! Every norm against its composed reference (`candle_norm::reference`): the forward
//! (and the fused add's h, BatchNorm's batch statistics) within the table, and the
//! gradients of every input through autograd against autograd through the reference,
//! for every shape of the registry and every affine case; on the fused backend and on
//! the generic one.
#[macro_use]
mod common;
use candle_core::DType;
use common::*;

fn reference(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(1);
    // Half-precision gradients against the reference run in f32 on the same values:
    // candle's composed half-precision backward reduces in half precision.
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    for (norm, shape) in cases_of(REFERENCE_CASES, norm) {
        for affine in AFFINES {
            let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
            let what = format!("{} {backend:?}", case.what());
            let t = tol(dtype);
            let got = backend.run(|| case.forward(Impl::Ours)).unwrap();
            let want = case.widened(DType::F64).forward(Impl::Reference).unwrap();
            assert_eq!((got[0].dims(), got[0].dtype()), (shape, dtype), "{what}");
            assert_eq!(got.len(), want.len(), "{what}: outputs");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{what} output {i}"), g, w, t.fwd);
            }
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            let got = backend.run(|| case.grads(&dy, Impl::Ours)).unwrap();
            assert_eq!(got.dx.dtype(), dtype, "{what}");
            let want = case.widened(wide).grads(&dy, Impl::Reference).unwrap();
            assert_grads_close(&what, &got, &want, t.bwd);
        }
    }
}

grid!(reference: every norm x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused, generic = Generic]);
