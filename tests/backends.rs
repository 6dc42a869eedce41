//! The generic backend (what Metal, CUDA without the `cuda` feature and f64 on CUDA
//! run) against the fused CPU path on the same inputs, directly: every output, the
//! gradients of every input through autograd, and the standalone backward, within the
//! dtype's tolerance, for every norm and shape of the reference grid. A user who moves
//! a model between devices gets the same numbers from both.
#[macro_use]
mod common;
use candle_core::DType;
use common::*;

fn backends_agree(norm: Norm, dtype: DType, _: Backend) {
    let mut rng = Rng::new(7);
    let t = tol(dtype);
    for (norm, shape) in cases_of(REFERENCE_CASES, norm) {
        let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
        let what = case.what();
        let fused = case.forward(Impl::Ours).unwrap();
        let generic = Backend::Generic.run(|| case.forward(Impl::Ours)).unwrap();
        assert_eq!(fused.len(), generic.len(), "{what}: outputs");
        for (i, (g, f)) in generic.iter().zip(&fused).enumerate() {
            assert_close(&format!("{what} output {i}"), g, f, t.fwd);
        }
        let dy = rng.tensor(shape, dtype, 0.0, 1.0);
        let fused = case.grads(&dy, Impl::Ours).unwrap();
        let generic = Backend::Generic.run(|| case.grads(&dy, Impl::Ours)).unwrap();
        assert_grads_close(&format!("{what} autograd"), &generic, &fused, t.bwd);
        if let Some(fused) = case.backward(&dy) {
            let generic = Backend::Generic.run(|| case.backward(&dy)).unwrap();
            assert_grads_close(&format!("{what} standalone"), &generic.unwrap(), &fused.unwrap(), t.bwd);
        }
    }
}

grid!(backends_agree: every norm x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [generic = Generic]);
