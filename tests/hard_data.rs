//! Data that breaks naive code (a large offset against a small spread, large
//! magnitudes): every norm's forward and gradients against the reference evaluated in
//! f64 on the same rounded inputs (BatchNorm in eval computes no statistics: for it the
//! data checks the rounding of large values). The mean is rounded to f32, so x − mean carries an error of about u·|offset|
//! (u: f32 unit roundoff) and x̂ one of u·|offset|/spread: that conditioning bound, not
//! a looser table entry, is allowed on top of the table. E[x²] − mean² would be off by
//! about u·offset²/spread² instead (over 100 % here in f32). All three dtypes
//! accumulate in f32; f64 is covered by the reference grid.
#[macro_use]
mod common;
use candle_core::DType;
use common::*;

fn hard_data(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(2);
    for (norm, shape) in cases_of(HARD_CASES, norm) {
        for (name, offset, scale) in HARD_DATA {
            let mut case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
            case.x = rng.tensor(shape, dtype, offset, scale);
            let what = format!("{} {backend:?} {name}", case.what());
            let wide = case.widened(DType::F64);
            let allowed = |t: f64| t + 8.0 * unit_roundoff(DType::F32) * offset.abs() / scale;
            let got = backend.run(|| case.ours()).unwrap();
            assert_close(
                &format!("{what} y"),
                &got,
                &wide.reference().unwrap(),
                allowed(tol(dtype).fwd),
            );
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            let got = backend.run(|| case.grads(&dy, Impl::Ours)).unwrap();
            let want = wide.grads(&dy, Impl::Reference).unwrap();
            assert_grads_close(&what, &got, &want, allowed(tol(dtype).bwd));
        }
    }
}

grid!(hard_data: every norm x [f32 = F32, f16 = F16, bf16 = BF16] x [fused = Fused, generic = Generic]);
