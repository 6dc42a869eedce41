//! Every norm's gradients through autograd against central finite differences of
//! L = Σ y·dy in f64, for every input (x, weight, bias, the fused add's residual), one
//! element at a time; on the fused backend and on the generic one.
#[macro_use]
mod common;
use candle_core::{DType, Tensor};
use common::*;

/// The derivative of Σ y·dy with respect to each element of input `which` (0 x, 1
/// weight, 2 bias, 3 residual), by central differences.
fn finite_diff(case: &Case, dy: &Tensor, which: usize, backend: Backend) -> Vec<f64> {
    let h = 1e-6;
    let loss = |c: &Case| {
        let y = backend.run(|| c.ours()).unwrap();
        (y * dy).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
    };
    let base = [Some(&case.x), case.w.as_ref(), case.b.as_ref(), case.r.as_ref()][which].unwrap();
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
                    2 => c.b = Some(t),
                    _ => c.r = Some(t),
                }
                loss(&c)
            };
            (at(h) - at(-h)) / (2.0 * h)
        })
        .collect()
}

fn finite_differences(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(11);
    for (norm, shape) in cases_of(FINITE_DIFFERENCE_CASES, norm) {
        let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
        let dy = rng.tensor(shape, dtype, 0.0, 1.0);
        let g = backend.run(|| case.grads(&dy, Impl::Ours)).unwrap();
        for (which, got) in [Some(&g.dx), g.dw.as_ref(), g.db.as_ref(), g.dr.as_ref()]
            .iter()
            .enumerate()
        {
            let Some(got) = got else { continue };
            let fd = Tensor::from_vec(finite_diff(&case, &dy, which, backend), got.shape(), got.device()).unwrap();
            assert_close_max(&format!("{} {backend:?} input {which}", case.what()), got, &fd, 1e-6);
        }
    }
}

grid!(finite_differences: every norm x [f64 = F64] x [fused = Fused, generic = Generic]);
