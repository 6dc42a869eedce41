//! `normalize` over any set of axes, on the fused backend and on the generic one: over
//! the last axis with a `[N]` weight and bias it is `layer_norm`, bit for bit; over
//! other axes, with parameters along the axes (fused into the op) and with parameters
//! that broadcast along other dimensions (applied after it), its output and the
//! gradients of x, the weight and the bias match a composed f64 reference within the
//! dtype's tolerance; InstanceNorm and BatchNorm's training are special cases; bad
//! axes and parameters are errors naming the op and the shapes.
#[macro_use]
mod common;
use candle_core::{DType, Result, Tensor, Var};
use common::*;

/// The definition, in the inputs' dtype with candle's ops: mean and biased variance
/// over `axes`, then the affine.
fn composed(x: &Tensor, axes: &[usize], w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let mean = axes.iter().try_fold(x.clone(), |t, &a| t.mean_keepdim(a))?;
    let c = x.broadcast_sub(&mean)?;
    let var = axes.iter().try_fold(c.sqr()?, |t, &a| t.mean_keepdim(a))?;
    let mut y = c.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(w) = w {
        y = y.broadcast_mul(w)?;
    }
    if let Some(b) = b {
        y = y.broadcast_add(b)?;
    }
    Ok(y)
}

/// (shape, axes, parameter shape): parameters along the axes (the fused path) and
/// across other dimensions (applied after it).
const CASES: &[(&[usize], &[usize], &[usize])] = &[
    (&[4, 6], &[1], &[6]),
    (&[2, 3, 4, 5], &[2, 3], &[4, 5]),
    (&[2, 3, 4, 5], &[2, 3], &[5]),
    (&[2, 3, 4, 5], &[1, 3], &[3, 1, 5]),
    (&[2, 3, 4, 5], &[0, 2, 3], &[3, 1, 1]),
    (&[2, 3, 4, 5], &[2, 3], &[3, 1, 1]),
    (&[2, 3, 4, 5], &[0, 1, 2, 3], &[1]),
    (&[3, 7, 9], &[0], &[7, 9]),
    (&[6, 1, 300], &[0, 2], &[1, 1]),
];

fn normalize(_: (), dtype: DType, backend: Backend) {
    let mut rng = Rng::new(90);
    let tl = tol(dtype);
    for &(shape, axes, pshape) in CASES {
        for affine in AFFINES {
            let x = rng.tensor(shape, dtype, 0.5, 2.0);
            let has = |a| {
                matches!(
                    (affine, a),
                    (Affine::WeightBias, _) | (Affine::Weight, 0) | (Affine::Bias, 1)
                )
            };
            let w = has(0).then(|| rng.tensor(pshape, dtype, 1.0, 0.5));
            let b = has(1).then(|| rng.tensor(pshape, dtype, 0.0, 0.5));
            let what = format!("{shape:?} axes {axes:?} params {pshape:?} {affine:?} {dtype:?} {backend:?}");
            let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let (xw, ww, bw) = (wide(&x), w.as_ref().map(wide), b.as_ref().map(wide));

            let got = backend
                .run(|| candle_norm::normalize(&x, axes, w.as_ref(), b.as_ref(), 1e-5))
                .unwrap();
            assert_eq!((got.dims(), got.dtype()), (shape, dtype), "{what}");
            assert!(got.is_contiguous(), "{what}: contiguous");
            let want = composed(&xw, axes, ww.as_ref(), bw.as_ref(), 1e-5).unwrap();
            assert_close(&format!("{what} output"), &got, &want, tl.fwd);

            // Gradients of Σ y·dy, through autograd of ours and of the definition in f64.
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            let grads = |x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, ours: bool| {
                let var = |t: &Tensor| Var::from_tensor(t).unwrap();
                let (xv, wv, bv) = (var(x), w.map(var), b.map(var));
                let y = if ours {
                    candle_norm::normalize(&xv, axes, wv.as_deref(), bv.as_deref(), 1e-5)
                } else {
                    composed(&xv, axes, wv.as_deref(), bv.as_deref(), 1e-5)
                }
                .unwrap();
                let loss = (y.to_dtype(DType::F64).unwrap() * dy.to_dtype(DType::F64).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let g = loss.backward().unwrap();
                let of = |v: Option<&Var>| v.map(|v| g.get(v).expect("a gradient").clone());
                [of(Some(&xv)), of(wv.as_ref()), of(bv.as_ref())]
            };
            let got = backend.run(|| grads(&x, w.as_ref(), b.as_ref(), true));
            let want = grads(&xw, ww.as_ref(), bw.as_ref(), false);
            for (name, g, w) in ["dx", "dweight", "dbias"]
                .iter()
                .zip(&got)
                .zip(&want)
                .map(|((n, g), w)| (n, g, w))
            {
                assert_eq!(g.is_some(), w.is_some(), "{what}: {name}");
                if let (Some(g), Some(w)) = (g, w) {
                    assert_close_max(&format!("{what} {name}"), g, w, tl.bwd);
                }
            }
        }
    }
    // The last axis with [N] parameters is layer_norm itself.
    let x = rng.tensor(&[5, 33], dtype, 0.0, 1.0);
    let (w, b) = (rng.tensor(&[33], dtype, 1.0, 0.5), rng.tensor(&[33], dtype, 0.0, 0.5));
    let (got, want) = backend.run(|| {
        (
            candle_norm::normalize(&x, &[1], Some(&w), Some(&b), 1e-5).unwrap(),
            candle_norm::layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap(),
        )
    });
    assert_eq!(
        bits(&got),
        bits(&want),
        "{dtype:?} {backend:?}: normalize over the last axis"
    );
    // InstanceNorm and BatchNorm's training statistics.
    let x = rng.tensor(&[3, 4, 5, 6], dtype, 0.0, 1.0);
    let (w, b) = (rng.tensor(&[4], dtype, 1.0, 0.5), rng.tensor(&[4], dtype, 0.0, 0.5));
    let (wc, bc) = (w.reshape((4, 1, 1)).unwrap(), b.reshape((4, 1, 1)).unwrap());
    for (axes, want) in [
        (
            &[2usize, 3][..],
            backend.run(|| candle_norm::instance_norm(&x, Some(&w), Some(&b), 1e-5)),
        ),
        (
            &[0, 2, 3][..],
            backend.run(|| candle_norm::batch_norm(&x, Some(&w), Some(&b), 1e-5)),
        ),
    ] {
        let got = backend
            .run(|| candle_norm::normalize(&x, axes, Some(&wc), Some(&bc), 1e-5))
            .unwrap();
        assert_close(
            &format!("{dtype:?} {backend:?} axes {axes:?}"),
            &got,
            &want.unwrap(),
            tl.fwd,
        );
    }
}

grid!(normalize: [normalize = ()] x [f64 = F64, f32 = F32, f16 = F16, bf16 = BF16] x [fused = Fused, generic = Generic]);

#[test]
fn bad_axes_and_parameters_are_errors() {
    let mut rng = Rng::new(91);
    let x = rng.tensor(&[2, 3, 4], DType::F32, 0.0, 1.0);
    let err =
        |axes: &[usize], w: Option<&Tensor>| candle_norm::normalize(&x, axes, w, None, 1e-5).unwrap_err().to_string();
    for axes in [&[][..], &[3], &[1, 1]] {
        let e = err(axes, None);
        assert!(e.starts_with("normalize:") && e.contains("[2, 3, 4]"), "{axes:?}: {e}");
    }
    let w = rng.tensor(&[3], DType::F32, 1.0, 0.1);
    let e = err(&[2], Some(&w));
    assert!(e.contains("weight of shape [3]") && e.contains("[2, 3, 4]"), "{e}");
    let w = rng.tensor(&[4], DType::F16, 1.0, 0.1);
    let e = err(&[2], Some(&w));
    assert!(e.contains("weight has dtype F16"), "{e}");
    let e = candle_norm::normalize(&x, &[2], None, None, -1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("eps"), "{e}");
}
