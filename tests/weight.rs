//! The weight-side norms. Weight standardization and the convolution that applies it:
//! against a composed f64 reference, gradients against autograd through that reference
//! and against f64 finite differences, the module against candle-nn's convolution on the
//! standardized weight, the builder's tensor names. Weight normalization: each unit's
//! norm equals g, gradients of v and g against f64 finite differences, PyTorch's two
//! checkpoint layouts, a round trip through safetensors. Spectral normalization: σ of the
//! normalized weight is 1 against an exact eigen-decomposition in f64, the power
//! iteration runs in training only, gradients against finite differences, PyTorch's
//! names and a round trip. Bad input for all three. Weight standardization runs
//! LayerNorm: its tests run on the fused backend and on the generic one.

mod common;

use candle_core::ModuleT;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use candle_norm::nn::{
    spectral_norm_linear, weight_norm_conv2d, weight_norm_linear, ws_conv2d, SpectralNorm, WsConv2d,
};
use candle_norm::{weight_norm, weight_standardization};
use common::*;
use std::collections::HashMap;

/// `(w − mean) / sqrt(var + eps)` per output unit, composed from candle ops.
fn reference(w: &Tensor, eps: f64) -> Tensor {
    let flat = w.flatten_from(1).unwrap();
    let mean = flat.mean_keepdim(D::Minus1).unwrap();
    let centered = flat.broadcast_sub(&mean).unwrap();
    let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let rstd = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
    centered.broadcast_mul(&rstd).unwrap().reshape(w.shape()).unwrap()
}

/// The gradients of Σy².
fn square_loss_grads(y: &Tensor) -> candle_core::backprop::GradStore {
    y.sqr().unwrap().sum_all().unwrap().backward().unwrap()
}

const SHAPES: [&[usize]; 5] = [&[1, 1], &[7, 3], &[16, 3, 3, 3], &[5, 2, 1, 1], &[3, 1025]];

#[test]
fn standardizes_each_output_unit() {
    on_every_backend(|| {
        let mut rng = Rng::new(3);
        for shape in SHAPES {
            for dtype in DTYPES {
                let w = rng.tensor(shape, dtype, 0.3, 2.0);
                let got = weight_standardization(&w, 1e-5).unwrap();
                assert_eq!(got.dims(), shape);
                let want = reference(&w.to_dtype(DType::F64).unwrap(), 1e-5);
                assert_close(&format!("{shape:?} {dtype:?}"), &got, &want, tol(dtype).fwd);
            }
        }
    });
}

/// Checks `grad`, the gradient of `f` at `t`, against central differences of `f` at
/// the given elements of `t` (f64).
fn check_finite_differences(what: &str, t: &Tensor, grad: &Tensor, elements: &[usize], f: impl Fn(&Tensor) -> f64) {
    let base: Vec<f64> = t.flatten_all().unwrap().to_vec1().unwrap();
    let analytic: Vec<f64> = grad.flatten_all().unwrap().to_vec1().unwrap();
    for &i in elements {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            f(&Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap())
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!(
            (fd - analytic[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
            "{what}[{i}]: {fd} vs {}",
            analytic[i]
        );
    }
}

#[test]
fn gradient_matches_autograd_and_finite_differences() {
    on_every_backend(|| {
        let mut rng = Rng::new(4);
        for shape in SHAPES {
            let w = Var::from_tensor(&rng.tensor(shape, DType::F64, 0.0, 1.0)).unwrap();
            let probe = rng.tensor(shape, DType::F64, 0.0, 1.0);
            let loss = |t: &Tensor| (t * &probe).unwrap().sum_all().unwrap();
            let ours = loss(&weight_standardization(&w, 1e-5).unwrap()).backward().unwrap();
            let theirs = loss(&reference(&w, 1e-5)).backward().unwrap();
            let (g, r) = (ours.get(&w).unwrap(), theirs.get(&w).unwrap());
            assert_close_max(&format!("{shape:?} autograd"), g, r, tol(DType::F64).bwd);
            let n = w.elem_count();
            check_finite_differences(&format!("{shape:?}"), &w, g, &[0, n / 2, n - 1], |t| {
                loss(&weight_standardization(t, 1e-5).unwrap()).to_scalar().unwrap()
            });
        }
    });
}

#[test]
fn ws_conv2d_convolves_with_the_standardized_weight() {
    on_every_backend(|| {
        let mut rng = Rng::new(5);
        let config = Conv2dConfig {
            padding: 1,
            stride: 1,
            dilation: 1,
            groups: 2,
            cudnn_fwd_algo: None,
        };
        let w = rng.tensor(&[6, 2, 3, 3], DType::F32, 0.5, 1.0);
        let b = rng.tensor(&[6], DType::F32, 0.0, 1.0);
        let x = rng.tensor(&[2, 4, 5, 5], DType::F32, 0.0, 1.0);
        let conv = WsConv2d::new(w.clone(), Some(b.clone()), config, 1e-5);
        let want = candle_nn::Conv2d::new(reference(&w, 1e-5), Some(b), config)
            .forward(&x)
            .unwrap();
        assert_close("ws_conv2d", &conv.forward(&x).unwrap(), &want, tol(DType::F32).fwd);

        // The builder reads and creates candle-nn's names, and training reaches the raw weight.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let conv = ws_conv2d(4, 6, 3, config, vb.pp("conv")).unwrap();
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(
            names.contains(&"conv.weight".into()) && names.contains(&"conv.bias".into()),
            "{names:?}"
        );
        assert_eq!(conv.weight().dims(), [6, 2, 3, 3]);
        let grads = square_loss_grads(&conv.forward(&x).unwrap());
        let var = varmap.data().lock().unwrap()["conv.weight"].clone();
        let g = grads.get(&var).expect("the raw weight gets a gradient");
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    });
}

#[test]
fn bad_input_is_a_clear_error() {
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(weight_standardization(
        &Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap(),
        1e-5,
    ));
    assert!(
        e.contains("weight_standardization") && e.contains("rank >= 2") && e.contains("[5]"),
        "{e}"
    );
    let e = err(weight_standardization(
        &Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap(),
        1e-5,
    ));
    assert!(e.contains("weight_standardization") && e.contains("[3, 0]"), "{e}");
    let e = err(weight_standardization(
        &Tensor::zeros((3, 2), DType::U8, &Device::Cpu).unwrap(),
        1e-5,
    ));
    assert!(e.contains("weight_standardization") && e.contains("U8"), "{e}");
    let e = err(weight_standardization(
        &Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
        -1.0,
    ));
    assert!(e.contains("weight_standardization") && e.contains("eps"), "{e}");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = Conv2dConfig {
        groups: 0,
        ..Default::default()
    };
    let e = ws_conv2d(4, 6, 3, config, vb).unwrap_err().to_string();
    assert!(e.contains("ws_conv2d") && e.contains("groups"), "{e}");
}

/// The 2-norm of every slice of `w` along `dim` (of all of `w` for `None`), in f64.
fn slice_norms(w: &Tensor, dim: Option<usize>) -> Vec<f64> {
    let w = w.to_dtype(DType::F64).unwrap();
    let w = match dim {
        Some(d) => w.transpose(0, d).unwrap().flatten_from(1).unwrap(),
        None => w.flatten_all().unwrap().unsqueeze(0).unwrap(),
    };
    w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap()
}

#[test]
fn weight_norm_gives_each_slice_the_norm_g() {
    let mut rng = Rng::new(6);
    let cases: [(&[usize], Option<usize>); 5] = [
        (&[6, 4], Some(0)),
        (&[5, 3, 3, 3], Some(0)),
        (&[4, 7], Some(1)),
        (&[3, 2, 2], None),
        (&[1, 1], Some(0)),
    ];
    for (shape, dim) in cases {
        for dtype in DTYPES {
            let v = rng.tensor(shape, dtype, 0.0, 1.0);
            let keep: Vec<usize> = (0..shape.len())
                .map(|a| if Some(a) == dim { shape[a] } else { 1 })
                .collect();
            let g = rng.tensor(&keep, dtype, 1.5, 0.5);
            let w = weight_norm(&v, &g, dim).unwrap();
            assert_eq!(w.dims(), shape);
            let gv: Vec<f64> = g
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, (n, g)) in slice_norms(&w, dim).iter().zip(&gv).enumerate() {
                let tol = 4.0 * tol(dtype).fwd * (1.0 + g.abs());
                assert!(
                    (n.abs() - g.abs()).abs() <= tol,
                    "{shape:?} {dim:?} {dtype:?} slice {i}: norm {n}, g {g}"
                );
            }
        }
    }
}

#[test]
fn weight_norm_gradients_match_finite_differences() {
    let mut rng = Rng::new(7);
    let v = rng.tensor(&[3, 4], DType::F64, 0.0, 1.0);
    let g = rng.tensor(&[3, 1], DType::F64, 1.0, 0.5);
    let probe = rng.tensor(&[3, 4], DType::F64, 0.0, 1.0);
    let loss = |v: &Tensor, g: &Tensor| {
        (weight_norm(v, g, Some(0)).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let (vv, gv) = (Var::from_tensor(&v).unwrap(), Var::from_tensor(&g).unwrap());
    let grads = loss(&vv, &gv).backward().unwrap();
    check_finite_differences("dv", &v, grads.get(&vv).unwrap(), &(0..12).collect::<Vec<_>>(), |p| {
        loss(p, &g).to_scalar().unwrap()
    });
    check_finite_differences("dg", &g, grads.get(&gv).unwrap(), &[0, 1, 2], |p| {
        loss(&v, p).to_scalar().unwrap()
    });
}

#[test]
fn weight_norm_layers_load_both_pytorch_layouts_and_round_trip() {
    let mut rng = Rng::new(8);
    let dir = tempfile::tempdir().unwrap();
    let (g, v, b) = (
        rng.tensor(&[5, 1], DType::F32, 1.0, 0.3),
        rng.tensor(&[5, 3], DType::F32, 0.0, 1.0),
        rng.tensor(&[5], DType::F32, 0.0, 0.5),
    );
    let x = rng.tensor(&[2, 3], DType::F32, 0.0, 1.0);
    let want = candle_nn::Linear::new(weight_norm(&v, &g, Some(0)).unwrap(), Some(b.clone()))
        .forward(&x)
        .unwrap();
    for (gn, vn) in [
        ("weight_g", "weight_v"),
        ("parametrizations.weight.original0", "parametrizations.weight.original1"),
    ] {
        let path = dir.path().join("wn.safetensors");
        let tensors: HashMap<String, Tensor> = [(gn, &g), (vn, &v), ("bias", &b)]
            .into_iter()
            .map(|(n, t)| (format!("fc.{n}"), t.clone()))
            .collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let vb =
            VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let layer = weight_norm_linear(3, 5, vb.pp("fc")).unwrap();
        assert_close(gn, &layer.forward(&x).unwrap(), &want, 0.0);
    }

    // A new layer saved and loaded again gives the same outputs; its weight trains.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let conv = weight_norm_conv2d(2, 4, 3, cfg, vb.pp("conv")).unwrap();
    assert_eq!(
        (conv.g().dims(), conv.v().dims()),
        (&[4, 1, 1, 1][..], &[4, 2, 3, 3][..])
    );
    let xc = rng.tensor(&[1, 2, 5, 5], DType::F32, 0.0, 1.0);
    let path = dir.path().join("new.safetensors");
    varmap.save(&path).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let again = weight_norm_conv2d(2, 4, 3, cfg, vb.pp("conv")).unwrap();
    assert_close(
        "round trip",
        &again.forward(&xc).unwrap(),
        &conv.forward(&xc).unwrap(),
        0.0,
    );
    let grads = square_loss_grads(&conv.forward(&xc).unwrap());
    let data = varmap.data().lock().unwrap();
    for name in ["conv.weight_g", "conv.weight_v", "conv.bias"] {
        let g = grads
            .get(&data[name])
            .unwrap_or_else(|| panic!("{name} gets no gradient"));
        assert!(
            g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0,
            "{name}"
        );
    }
}

#[test]
fn weight_norm_bad_input_is_a_clear_error() {
    let t = |s: &[usize], d: DType| Tensor::ones(s, d, &Device::Cpu).unwrap();
    let err = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let e = err(weight_norm(&t(&[4, 3], DType::F32), &t(&[4], DType::F32), Some(0)));
    assert!(
        e.contains("weight_norm") && e.contains("[4]") && e.contains("[4, 1]"),
        "{e}"
    );
    let e = err(weight_norm(&t(&[4, 3], DType::F32), &t(&[4, 1], DType::F32), Some(2)));
    assert!(e.contains("weight_norm") && e.contains("dim 2"), "{e}");
    let e = err(weight_norm(&t(&[4, 3], DType::F32), &t(&[4, 1], DType::F16), Some(0)));
    assert!(e.contains("weight_norm") && e.contains("F16"), "{e}");
    let e = err(weight_norm(&t(&[], DType::F32), &t(&[], DType::F32), None));
    assert!(e.contains("weight_norm") && e.contains("rank"), "{e}");
}

/// The largest singular value of a matrix, exactly: the square root of the largest
/// eigenvalue of `AᵀA`, by cyclic Jacobi rotations in f64.
fn largest_singular_value(a: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let ata: Vec<Vec<f64>> = a.t().unwrap().matmul(&a).unwrap().to_vec2().unwrap();
    let n = ata.len();
    let mut m = ata;
    for _ in 0..100 {
        for p in 0..n {
            for q in p + 1..n {
                if m[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (m[q][q] - m[p][p]) / (2.0 * m[p][q]);
                let t = theta.signum().max(0.0).mul_add(2.0, -1.0) / (theta.abs() + (theta * theta + 1.0).sqrt());
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                for row in m.iter_mut() {
                    let (mkp, mkq) = (row[p], row[q]);
                    row[p] = c * mkp - s * mkq;
                    row[q] = s * mkp + c * mkq;
                }
                let (mp, mq) = (m[p].clone(), m[q].clone());
                for (k, (a, b)) in mp.iter().zip(&mq).enumerate() {
                    m[p][k] = c * a - s * b;
                    m[q][k] = s * a + c * b;
                }
            }
        }
    }
    (0..n).map(|i| m[i][i]).fold(f64::MIN, f64::max).sqrt()
}

fn spectral(w: &Tensor, rng: &mut Rng, iterations: usize) -> SpectralNorm<candle_nn::Linear> {
    let (out, rest) = w.dims2().unwrap();
    let u = rng.tensor(&[out], w.dtype(), 0.0, 1.0);
    let v = rng.tensor(&[rest], w.dtype(), 0.0, 1.0);
    SpectralNorm::new(candle_nn::Linear::new(w.clone(), None), u, v, iterations, 1e-12).unwrap()
}

#[test]
fn spectral_norm_divides_by_the_largest_singular_value() {
    let mut rng = Rng::new(9);
    for shape in [[6, 4], [3, 7], [1, 5], [5, 1]] {
        let w = rng.tensor(&shape, DType::F64, 0.0, 1.0);
        let sn = spectral(&w, &mut rng, 1);
        // Training steps converge; eval uses the state as it is.
        for _ in 0..200 {
            sn.weight_t(true).unwrap();
        }
        let (u, v) = (sn.buffers()[0].1.clone(), sn.buffers()[1].1.clone());
        let w_sn = sn.weight_t(false).unwrap();
        assert_eq!(sn.buffers()[0].1.to_vec1::<f64>().unwrap(), u.to_vec1::<f64>().unwrap());
        assert_eq!(sn.buffers()[1].1.to_vec1::<f64>().unwrap(), v.to_vec1::<f64>().unwrap());
        let exact = largest_singular_value(&w);
        let after = largest_singular_value(&w_sn);
        assert!(
            (after - 1.0).abs() < 1e-9,
            "{shape:?}: σ(W_sn) = {after} (σ(W) = {exact})"
        );
        let scale: f64 = (&w / &w_sn).unwrap().mean_all().unwrap().to_scalar().unwrap();
        assert!(
            (scale - exact).abs() < 1e-9 * exact,
            "{shape:?}: σ estimate {scale}, exact {exact}"
        );
    }
    // One step from a random start moves u; an eval forward does not.
    let w = rng.tensor(&[4, 3], DType::F32, 0.0, 1.0);
    let sn = spectral(&w, &mut rng, 1);
    let x = rng.tensor(&[2, 3], DType::F32, 0.0, 1.0);
    let before = sn.buffers()[0].1.to_vec1::<f32>().unwrap();
    sn.forward_t(&x, false).unwrap();
    assert_eq!(sn.buffers()[0].1.to_vec1::<f32>().unwrap(), before);
    sn.forward_t(&x, true).unwrap();
    assert_ne!(sn.buffers()[0].1.to_vec1::<f32>().unwrap(), before);
}

#[test]
fn spectral_norm_gradient_matches_finite_differences() {
    let mut rng = Rng::new(10);
    let w = rng.tensor(&[3, 4], DType::F64, 0.0, 1.0);
    let (u, v) = (
        rng.tensor(&[3], DType::F64, 0.0, 1.0),
        rng.tensor(&[4], DType::F64, 0.0, 1.0),
    );
    let probe = rng.tensor(&[3, 4], DType::F64, 0.0, 1.0);
    let loss = |w: &Tensor| {
        let sn = SpectralNorm::new(candle_nn::Linear::new(w.clone(), None), u.clone(), v.clone(), 1, 1e-12).unwrap();
        (sn.weight_t(false).unwrap() * &probe).unwrap().sum_all().unwrap()
    };
    let wv = Var::from_tensor(&w).unwrap();
    let grads = loss(&wv).backward().unwrap();
    check_finite_differences("dW", &w, grads.get(&wv).unwrap(), &(0..12).collect::<Vec<_>>(), |p| {
        loss(p).to_scalar().unwrap()
    });
}

#[test]
fn spectral_norm_loads_pytorch_names_and_round_trips() {
    let mut rng = Rng::new(11);
    let dir = tempfile::tempdir().unwrap();
    let (w, b) = (
        rng.tensor(&[4, 3], DType::F32, 0.0, 1.0),
        rng.tensor(&[4], DType::F32, 0.0, 0.5),
    );
    let (u, v) = (
        normalized(&rng.tensor(&[4], DType::F32, 0.0, 1.0)),
        normalized(&rng.tensor(&[3], DType::F32, 0.0, 1.0)),
    );
    let x = rng.tensor(&[2, 3], DType::F32, 0.0, 1.0);
    let path = dir.path().join("sn.safetensors");
    let tensors: HashMap<String, Tensor> = [("weight_orig", &w), ("weight_u", &u), ("weight_v", &v), ("bias", &b)]
        .into_iter()
        .map(|(n, t)| (format!("fc.{n}"), t.clone()))
        .collect();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let sn = spectral_norm_linear(3, 4, 1, vb.pp("fc")).unwrap();
    let sigma: f32 = u
        .unsqueeze(0)
        .unwrap()
        .matmul(&w.matmul(&v.unsqueeze(1).unwrap()).unwrap())
        .unwrap()
        .reshape(())
        .unwrap()
        .to_scalar()
        .unwrap();
    let want = candle_nn::Linear::new((&w / sigma as f64).unwrap(), Some(b.clone()))
        .forward(&x)
        .unwrap();
    assert_close("eval after loading", &sn.forward_t(&x, false).unwrap(), &want, 1e-6);

    // Train a step, save the variables and the buffers, load again: same eval output.
    let varmap = VarMap::new();
    let fresh = spectral_norm_linear(
        3,
        4,
        2,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).pp("fc"),
    )
    .unwrap();
    fresh.forward_t(&x, true).unwrap();
    let mut all: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, var)| (n.clone(), var.as_tensor().clone()))
        .collect();
    for (n, t) in fresh.buffers() {
        all.insert(format!("fc.{n}"), t);
    }
    let path = dir.path().join("round.safetensors");
    candle_core::safetensors::save(&all, &path).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let again = spectral_norm_linear(3, 4, 2, vb.pp("fc")).unwrap();
    assert_close(
        "round trip",
        &again.forward_t(&x, false).unwrap(),
        &fresh.forward_t(&x, false).unwrap(),
        1e-6,
    );

    let e = SpectralNorm::new(candle_nn::Linear::new(w.clone(), None), v.clone(), u.clone(), 1, 1e-12)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spectral_norm") && e.contains("[4]"), "{e}");
}

fn normalized(t: &Tensor) -> Tensor {
    let n: f32 = t.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar().unwrap();
    (t / n as f64).unwrap()
}
