//! Forward-mode derivatives (`*_jvp`) of every norm that has them, on the fused backend
//! and on the generic one: y is the op's own, bit for bit; in f64 ẏ matches central
//! finite differences of the op and the adjoint identity ⟨J·v, u⟩ = ⟨v, Jᵀ·u⟩ with Jᵀ·u
//! from this crate's backward; in f32, f16 and bf16 ẏ matches the f64 ẏ of the same
//! values within the dtype's tolerance. Tangents of x, of the weight and of the bias,
//! alone and together; a tangent of an absent parameter, or of another shape, is an
//! error.
#[macro_use]
mod common;
use candle_core::{DType, Tensor};
use common::*;

/// Random tangents for `case`: of x, and of the weight and the bias it has.
fn tangents(rng: &mut Rng, case: &Case) -> [Option<Tensor>; 3] {
    let dtype = case.x.dtype();
    let like = |rng: &mut Rng, t: &Tensor| rng.tensor(t.dims(), t.dtype(), 0.0, 1.0);
    [
        Some(rng.tensor(case.x.dims(), dtype, 0.0, 1.0)),
        case.w.as_ref().map(|w| like(rng, w)),
        case.b.as_ref().map(|b| like(rng, b)),
    ]
}

/// The subsets of the tangents tried: each alone, and all together.
fn subsets(t: &[Option<Tensor>; 3]) -> Vec<[Option<&Tensor>; 3]> {
    let all = [t[0].as_ref(), t[1].as_ref(), t[2].as_ref()];
    let mut v: Vec<_> = (0..3)
        .filter(|&i| all[i].is_some())
        .map(|i| {
            let mut one = [None; 3];
            one[i] = all[i];
            one
        })
        .collect();
    v.push(all);
    v
}

/// The case moved along the tangents by `h`: x + h·ẋ, γ + h·γ̇, β + h·β̇.
fn moved(case: &Case, [tx, tw, tb]: [Option<&Tensor>; 3], h: f64) -> Case {
    let step = |p: &Tensor, t: Option<&Tensor>| t.map_or(p.clone(), |t| (p + (t * h).unwrap()).unwrap());
    Case {
        x: step(&case.x, tx),
        w: case.w.as_ref().map(|w| step(w, tw)),
        b: case.b.as_ref().map(|b| step(b, tb)),
        ..case.clone()
    }
}

/// Σ a·b in f64.
fn dot(a: &Tensor, b: &Tensor) -> f64 {
    to_f64(a).iter().zip(to_f64(b)).map(|(x, y)| x * y).sum()
}

fn jvp(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(80);
    let reference = cases_of(REFERENCE_CASES, norm);
    for (norm, shape) in cases_of(FINITE_DIFFERENCE_CASES, norm)
        .into_iter()
        .chain(reference.into_iter().take(3))
    {
        for affine in AFFINES {
            let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
            let t = tangents(&mut rng, &case);
            for sub in subsets(&t) {
                let what = format!("{} {backend:?} tangents {:?}", case.what(), sub.map(|t| t.is_some()));
                let (y, dy) = backend.run(|| case.jvp(sub).expect("a jvp")).unwrap();
                let want_y = backend.run(|| case.ours()).unwrap();
                assert_eq!(bits(&y), bits(&want_y), "{what}: y is the op's");
                assert_eq!((dy.dims(), dy.dtype()), (case.x.dims(), dtype), "{what}: ẏ");
                if dtype != DType::F64 {
                    let wide = case.to_dtype(DType::F64);
                    let sub64 = sub.map(|t| t.map(|t| t.to_dtype(DType::F64).unwrap()));
                    let (_, want) = wide
                        .jvp([sub64[0].as_ref(), sub64[1].as_ref(), sub64[2].as_ref()])
                        .unwrap()
                        .unwrap();
                    assert_close_max(&format!("{what} against f64"), &dy, &want, tol(dtype).fwd);
                    continue;
                }
                // Central finite differences of the op itself.
                let h = 1e-6;
                let (plus, minus) = (
                    backend.run(|| moved(&case, sub, h).ours()).unwrap(),
                    backend.run(|| moved(&case, sub, -h).ours()).unwrap(),
                );
                let fd = ((plus - minus).unwrap() / (2.0 * h)).unwrap();
                assert_close_max(&format!("{what} against finite differences"), &dy, &fd, 1e-6);
                // ⟨J·v, u⟩ = ⟨v, Jᵀ·u⟩, Jᵀ·u from the backward through autograd.
                let u = rng.tensor(shape, dtype, 0.0, 1.0);
                let g = backend.run(|| case.grads(&u, Impl::Ours)).unwrap();
                let mut vjtu = 0.0;
                for (v, gv) in sub.iter().zip([Some(&g.dx), g.dw.as_ref(), g.db.as_ref()]) {
                    if let (Some(v), Some(gv)) = (v, gv) {
                        vjtu += dot(v, gv);
                    }
                }
                let jvu = dot(&dy, &u);
                assert!(
                    (jvu - vjtu).abs() <= 1e-9 * (1.0 + jvu.abs()),
                    "{what}: <Jv, u> = {jvu}, <v, J^T u> = {vjtu}"
                );
            }
        }
    }
}

every_jvp_norm!(grid!(@every jvp, [f64 = F64, f32 = F32, f16 = F16, bf16 = BF16], [fused = Fused, generic = Generic]));

#[test]
fn tangents_are_checked() {
    let mut rng = Rng::new(81);
    let x = rng.tensor(&[4, 6], DType::F32, 0.0, 1.0);
    let w = rng.tensor(&[6], DType::F32, 1.0, 0.1);
    let t = |x, weight, bias| candle_norm::Tangents { x, weight, bias };
    let err = |r: candle_core::Result<(Tensor, Tensor)>| r.unwrap_err().to_string();
    let short = rng.tensor(&[4, 5], DType::F32, 0.0, 1.0);
    let e = err(candle_norm::layer_norm_jvp(
        &x,
        Some(&w),
        None,
        1e-5,
        t(Some(&short), None, None),
    ));
    assert!(
        e.contains("layer_norm_jvp") && e.contains("[4, 5]") && e.contains("[4, 6]"),
        "{e}"
    );
    let e = err(candle_norm::layer_norm_jvp(
        &x,
        None,
        None,
        1e-5,
        t(None, Some(&w), None),
    ));
    assert!(e.contains("layer_norm_jvp") && e.contains("without a weight"), "{e}");
    let e = err(candle_norm::rms_norm_jvp(&x, Some(&w), 1e-5, t(None, None, Some(&w))));
    assert!(e.contains("rms_norm_jvp") && e.contains("without a bias"), "{e}");
    let half = w.to_dtype(DType::F16).unwrap();
    let e = err(candle_norm::layer_norm_jvp(
        &x,
        Some(&w),
        None,
        1e-5,
        t(None, Some(&half), None),
    ));
    assert!(e.contains("tangent of the weight") && e.contains("F16"), "{e}");
    // The primal inputs' own checks come first.
    let e = err(candle_norm::group_norm_jvp(
        &x,
        4,
        None,
        None,
        1e-5,
        t(Some(&x), None, None),
    ));
    assert!(e.contains("group_norm"), "{e}");
}
