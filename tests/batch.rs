//! BatchNorm: training and eval forward against candle-nn's BatchNorm and the
//! composed reference in f64, gradients against autograd through the reference and f64
//! finite differences, the running statistics against a hand-computed sequence, a
//! checkpoint round trip, determinism, and errors.
mod common;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
use candle_norm::reference;
use common::*;

/// B = 1, spatial 1×1, odd sizes, C = 1, rank 2 and 5, and 2^20 values per channel.
const SHAPES: &[&[usize]] = &[
    &[1, 3, 4, 4],
    &[5, 4, 1, 1],
    &[3, 7, 5],
    &[6, 1, 3, 3],
    &[8, 3],
    &[2, 5, 3, 4, 2],
    &[4, 2, 512, 512],
];

/// Random inputs of one case: x, and a weight and bias as `affine` asks.
fn inputs(rng: &mut Rng, shape: &[usize], dtype: DType, affine: Affine) -> (Tensor, Option<Tensor>, Option<Tensor>) {
    let case = Case::new(rng, Norm::Group(1), shape, dtype, affine, 1e-5);
    (case.x, case.w, case.b)
}

fn bits(t: &Tensor) -> Vec<u64> {
    to_f64(t).iter().map(|v| v.to_bits()).collect()
}

fn f64s(t: &Option<Tensor>) -> Option<Tensor> {
    t.as_ref().map(|t| t.to_dtype(DType::F64).unwrap())
}

/// Training forward and batch statistics within the table of the composed reference in
/// f64, for every dtype, shape and affine case.
#[test]
fn training_forward_matches_the_reference() {
    let mut rng = Rng::new(80);
    for &shape in SHAPES {
        for dtype in DTYPES {
            for affine in AFFINES {
                let (x, w, b) = inputs(&mut rng, shape, dtype, affine);
                let what = format!("{shape:?} {dtype:?} {affine:?}");
                let (y, mean, var) = candle_norm::batch_norm_train(&x, w.as_ref(), b.as_ref(), 1e-5).unwrap();
                let x64 = x.to_dtype(DType::F64).unwrap();
                let (ry, rmean, rvar) =
                    reference::batch_norm_train(&x64, f64s(&w).as_ref(), f64s(&b).as_ref(), 1e-5).unwrap();
                let t = tol(dtype).fwd;
                assert_eq!((y.dims(), y.dtype()), (x.dims(), dtype), "{what}");
                assert_close(&format!("{what} y"), &y, &ry, t);
                assert_close(&format!("{what} mean"), &mean, &rmean, t);
                assert_close(&format!("{what} var"), &var, &rvar, t);
                let plain = candle_norm::batch_norm(&x, w.as_ref(), b.as_ref(), 1e-5).unwrap();
                assert_eq!(bits(&plain), bits(&y), "{what}: batch_norm and batch_norm_train");
            }
        }
    }
}

/// Eval forward within the table of the reference with the same running statistics.
#[test]
fn eval_forward_matches_the_reference() {
    let mut rng = Rng::new(81);
    for &shape in &SHAPES[..6] {
        for dtype in DTYPES {
            for affine in AFFINES {
                let (x, w, b) = inputs(&mut rng, shape, dtype, affine);
                let c = shape[1];
                let (rm, rv) = (
                    rng.tensor(&[c], dtype, 0.0, 1.0),
                    rng.tensor(&[c], dtype, 1.5, 0.5).abs().unwrap(),
                );
                let what = format!("{shape:?} {dtype:?} {affine:?}");
                let y = candle_norm::batch_norm_eval(&x, &rm, &rv, w.as_ref(), b.as_ref(), 1e-5).unwrap();
                let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
                let want =
                    reference::batch_norm_eval(&f(&x), &f(&rm), &f(&rv), f64s(&w).as_ref(), f64s(&b).as_ref(), 1e-5)
                        .unwrap();
                assert_close(&what, &y, &want, tol(dtype).fwd);
            }
        }
    }
}

/// The module against candle-nn's BatchNorm from the same state: training output, the
/// running statistics it leaves, and the eval output after it.
#[test]
fn module_matches_candle_nn() {
    let mut rng = Rng::new(82);
    for dtype in [DType::F32, DType::F64] {
        for shape in [&[4usize, 3, 5, 5][..], &[16, 6]] {
            let c = shape[1];
            let (ours_map, theirs_map) = (VarMap::new(), VarMap::new());
            let config = BatchNormConfig {
                momentum: 0.3,
                ..Default::default()
            };
            let vb = |m: &VarMap| VarBuilder::from_varmap(m, dtype, &Device::Cpu);
            let ours = candle_norm::nn::batch_norm(c, config, vb(&ours_map)).unwrap();
            let theirs = candle_nn::batch_norm(c, config, vb(&theirs_map)).unwrap();
            for step in 0..3 {
                let x = rng.tensor(shape, dtype, 0.5, 2.0);
                let what = format!("{dtype:?} {shape:?} step {step}");
                let (a, b) = (ours.forward_t(&x, true).unwrap(), theirs.forward_t(&x, true).unwrap());
                assert_close(&format!("{what} train"), &a, &b, tol(dtype).fwd);
                let (om, ov) = (ours.running_mean().unwrap(), ours.running_var().unwrap());
                assert_close(
                    &format!("{what} running mean"),
                    om,
                    theirs.running_mean(),
                    tol(dtype).fwd,
                );
                assert_close(&format!("{what} running var"), ov, theirs.running_var(), tol(dtype).fwd);
                let (a, b) = (ours.forward_t(&x, false).unwrap(), theirs.forward_t(&x, false).unwrap());
                assert_close(&format!("{what} eval"), &a, &b, tol(dtype).fwd);
            }
        }
    }
}

/// Running statistics after several steps equal the sequence computed by hand in f64
/// (PyTorch's update, unbiased variance); eval then normalizes with them, and training
/// with the batch's own.
#[test]
fn running_statistics_follow_pytorchs_update() {
    let mut rng = Rng::new(83);
    let (c, m) = (2, 0.1);
    let bn = candle_norm::BatchNorm::new(
        c,
        Some((
            Tensor::zeros(c, DType::F64, &Device::Cpu).unwrap(),
            Tensor::ones(c, DType::F64, &Device::Cpu).unwrap(),
        )),
        None,
        1e-5,
        m,
    )
    .unwrap();
    let (mut mean, mut var) = (vec![0.0; c], vec![1.0; c]);
    let mut last = None;
    for _ in 0..4 {
        let x = rng.tensor(&[3, c, 4], DType::F64, 1.0, 3.0);
        let v = to_f64(&x);
        for ch in 0..c {
            let vals: Vec<f64> = (0..3)
                .flat_map(|b| v[(b * c + ch) * 4..(b * c + ch + 1) * 4].to_vec())
                .collect();
            let n = vals.len() as f64;
            let mu = vals.iter().sum::<f64>() / n;
            let s2 = vals.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0);
            mean[ch] = (1.0 - m) * mean[ch] + m * mu;
            var[ch] = (1.0 - m) * var[ch] + m * s2;
        }
        bn.forward_t(&x, true).unwrap();
        last = Some(x);
    }
    let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12);
    assert!(
        close(&to_f64(bn.running_mean().unwrap()), &mean),
        "{:?} {mean:?}",
        to_f64(bn.running_mean().unwrap())
    );
    assert!(close(&to_f64(bn.running_var().unwrap()), &var));
    let x = last.unwrap();
    let eval = to_f64(&bn.forward_t(&x, false).unwrap());
    let xs = to_f64(&x);
    for (i, (&y, &xv)) in eval.iter().zip(&xs).enumerate() {
        let ch = (i / 4) % c;
        assert!(
            (y - (xv - mean[ch]) / (var[ch] + 1e-5).sqrt()).abs() < 1e-12,
            "eval element {i}"
        );
    }
    let train = bn.forward_t(&x, true).unwrap();
    let batch = candle_norm::batch_norm(&x, None, None, 1e-5).unwrap();
    assert_eq!(bits(&train), bits(&batch), "training uses the batch statistics");
}

/// The gradients of x, weight and bias through autograd, training and eval, within the
/// table of autograd through the composed reference (in f32 for f16/bf16); the
/// standalone backward equals autograd bit for bit.
#[test]
fn gradients_match_autograd_through_the_reference() {
    let mut rng = Rng::new(84);
    for &shape in &SHAPES[..6] {
        for dtype in DTYPES {
            for affine in AFFINES {
                let case = Case::new(&mut rng, Norm::Group(1), shape, dtype, affine, 1e-5);
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let c = shape[1];
                let (rm, rv) = (
                    rng.tensor(&[c], dtype, 0.0, 1.0),
                    rng.tensor(&[c], dtype, 1.5, 0.5).abs().unwrap(),
                );
                let ref_dtype = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
                let what = format!("{shape:?} {dtype:?} {affine:?}");
                let train = |_: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64| {
                    candle_norm::batch_norm(x, w, b, eps)
                };
                let train_ref = |_: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64| {
                    Ok(reference::batch_norm_train(x, w, b, eps)?.0)
                };
                let (rmr, rvr) = (rm.to_dtype(ref_dtype).unwrap(), rv.to_dtype(ref_dtype).unwrap());
                let eval = |_: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64| {
                    candle_norm::batch_norm_eval(x, &rm, &rv, w, b, eps)
                };
                let eval_ref = |_: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64| {
                    reference::batch_norm_eval(x, &rmr, &rvr, w, b, eps)
                };
                let t = tol(dtype).bwd;
                let refcase = case.to_dtype(ref_dtype);
                for (mode, got, want) in [
                    (
                        "train",
                        case.grads(&dy, train).unwrap(),
                        refcase.grads(&dy, train_ref).unwrap(),
                    ),
                    (
                        "eval",
                        case.grads(&dy, eval).unwrap(),
                        refcase.grads(&dy, eval_ref).unwrap(),
                    ),
                ] {
                    assert_close_max(&format!("{what} {mode} dx"), &got.0, &want.0, t);
                    for (name, g, w) in [("dw", &got.1, &want.1), ("db", &got.2, &want.2)] {
                        assert_eq!(g.is_some(), w.is_some(), "{what} {mode} {name}");
                        if let (Some(g), Some(w)) = (g, w) {
                            assert_close_max(&format!("{what} {mode} {name}"), g, w, t);
                        }
                    }
                }
                let (dx, dw, db) = case.grads(&dy, train).unwrap();
                let g =
                    candle_norm::batch_norm_backward(&case.x, case.w.as_ref(), case.b.as_ref(), &dy, case.eps).unwrap();
                assert_eq!(bits(&g.dx), bits(&dx), "{what} standalone dx");
                assert_eq!(
                    g.dweight.as_ref().map(bits),
                    dw.as_ref().map(bits),
                    "{what} standalone dw"
                );
                assert_eq!(
                    g.dbias.as_ref().map(bits),
                    db.as_ref().map(bits),
                    "{what} standalone db"
                );
            }
        }
    }
}

/// The training gradients at 2^20 values per channel (chunked rows), f32 against the
/// reference in f64.
#[test]
fn gradients_hold_at_a_million_values_per_channel() {
    let mut rng = Rng::new(88);
    let shape = SHAPES[SHAPES.len() - 1];
    let case = Case::new(&mut rng, Norm::Group(1), shape, DType::F32, Affine::WeightBias, 1e-5);
    let dy = rng.tensor(shape, DType::F32, 0.0, 1.0);
    let got = case
        .grads(&dy, |_, x, w, b, eps| candle_norm::batch_norm(x, w, b, eps))
        .unwrap();
    let want = case
        .to_dtype(DType::F64)
        .grads(&dy, |_, x, w, b, eps| Ok(reference::batch_norm_train(x, w, b, eps)?.0))
        .unwrap();
    let t = tol(DType::F32).bwd;
    assert_close_max("dx", &got.0, &want.0, t);
    assert_close_max("dw", &got.1.unwrap(), &want.1.unwrap(), t);
    assert_close_max("db", &got.2.unwrap(), &want.2.unwrap(), t);
}

/// Central differences in f64 of Σ y·dy for every element of x, weight and bias, in
/// training (the statistics depend on x) and in eval.
#[test]
fn matches_finite_differences_in_f64() {
    let mut rng = Rng::new(85);
    for shape in [&[3usize, 2, 3][..], &[4, 3], &[2, 2, 2, 2]] {
        let (x, w, b) = inputs(&mut rng, shape, DType::F64, Affine::WeightBias);
        let (w, b) = (w.unwrap(), b.unwrap());
        let dy = rng.tensor(shape, DType::F64, 0.0, 1.0);
        let c = shape[1];
        let (rm, rv) = (
            rng.tensor(&[c], DType::F64, 0.0, 1.0),
            rng.tensor(&[c], DType::F64, 1.5, 0.5).abs().unwrap(),
        );
        for eval in [false, true] {
            let f = |x: &Tensor, w: &Tensor, b: &Tensor| {
                if eval {
                    candle_norm::batch_norm_eval(x, &rm, &rv, Some(w), Some(b), 1e-5)
                } else {
                    candle_norm::batch_norm(x, Some(w), Some(b), 1e-5)
                }
                .unwrap()
            };
            let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
            let y = f(&vars[0], &vars[1], &vars[2]);
            let grads = (y * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            for (which, var) in vars.iter().enumerate() {
                let v = to_f64(var);
                let fd: Vec<f64> = (0..v.len())
                    .map(|i| {
                        let at = |d: f64| {
                            let mut p = v.clone();
                            p[i] += d;
                            let t = Tensor::from_vec(p, var.shape(), &Device::Cpu).unwrap();
                            let mut ins = [x.clone(), w.clone(), b.clone()];
                            ins[which] = t;
                            (f(&ins[0], &ins[1], &ins[2]) * &dy)
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .to_scalar::<f64>()
                                .unwrap()
                        };
                        (at(1e-6) - at(-1e-6)) / 2e-6
                    })
                    .collect();
                let fd = Tensor::from_vec(fd, var.shape(), &Device::Cpu).unwrap();
                let what = format!("{shape:?} eval {eval} input {which}");
                assert_close_max(&what, grads.get(var).unwrap(), &fd, 1e-6);
            }
        }
    }
}

/// A trained module's state saved under PyTorch's names (with a `num_batches_tracked`
/// beside them) loads into a new module that gives the same eval output.
#[test]
fn checkpoint_round_trips() {
    let mut rng = Rng::new(86);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bn.safetensors");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = candle_norm::nn::batch_norm(4, 1e-5, vb.pp("bn")).unwrap();
    for _ in 0..3 {
        bn.forward_t(&rng.tensor(&[8, 4, 3, 3], DType::F32, 2.0, 3.0), true)
            .unwrap();
    }
    let mut tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.insert(
        "bn.num_batches_tracked".into(),
        Tensor::new(3i64, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let loaded = candle_norm::nn::batch_norm(4, 1e-5, vb.pp("bn")).unwrap();
    assert_eq!(
        to_f64(loaded.running_mean().unwrap()),
        to_f64(bn.running_mean().unwrap())
    );
    assert!(to_f64(bn.running_mean().unwrap()).iter().all(|&m| m != 0.0));
    let x = rng.tensor(&[2, 4, 3, 3], DType::F32, 0.0, 1.0);
    assert_eq!(
        bits(&loaded.forward_t(&x, false).unwrap()),
        bits(&bn.forward_t(&x, false).unwrap())
    );
}

/// The batch statistics, dγ and dβ are the same bit for bit from run to run.
#[test]
fn statistics_and_parameter_gradients_are_deterministic() {
    let mut rng = Rng::new(87);
    for shape in [&[32usize, 16, 28, 28][..], &[2, 3, 300, 300]] {
        let case = Case::new(&mut rng, Norm::Group(1), shape, DType::F32, Affine::WeightBias, 1e-5);
        let (w, b) = (case.w.as_ref(), case.b.as_ref());
        let dy = rng.tensor(shape, DType::F32, 0.0, 1.0);
        let run = || {
            let (_, m, v) = candle_norm::batch_norm_train(&case.x, w, b, 1e-5).unwrap();
            let g = candle_norm::batch_norm_backward(&case.x, w, b, &dy, 1e-5).unwrap();
            [m, v, g.dweight.unwrap(), g.dbias.unwrap()].map(|t| bits(&t))
        };
        assert_eq!(run(), run(), "{shape:?}");
    }
}

fn err<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Bad inputs are errors naming the op and the shapes, never panics.
#[test]
fn bad_input_is_a_clear_error() {
    let t = |shape: &[usize], dtype: DType| Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
    let e = err(candle_norm::batch_norm(&t(&[3], DType::F32), None, None, 1e-5));
    assert!(
        e.contains("batch_norm") && e.contains("rank") && e.contains("[3]"),
        "{e}"
    );
    for shape in [&[1, 3][..], &[1, 3, 1, 1]] {
        let e = err(candle_norm::batch_norm(&t(shape, DType::F32), None, None, 1e-5));
        assert!(
            e.contains("batch_norm") && e.contains("more than 1 value") && e.contains(&format!("{shape:?}")),
            "{e}"
        );
    }
    let x = t(&[2, 3, 4], DType::F32);
    let e = err(candle_norm::batch_norm(&x, Some(&t(&[4], DType::F32)), None, 1e-5));
    assert!(
        e.contains("batch_norm") && e.contains("weight") && e.contains("[4]"),
        "{e}"
    );
    let e = err(candle_norm::batch_norm(&x, None, Some(&t(&[3], DType::F16)), 1e-5));
    assert!(
        e.contains("batch_norm") && e.contains("bias") && e.contains("F16"),
        "{e}"
    );
    let e = err(candle_norm::batch_norm(&x, None, None, -1.0));
    assert!(e.contains("batch_norm") && e.contains("eps"), "{e}");
    let (m, v) = (t(&[3], DType::F32), t(&[3], DType::F64));
    let e = err(candle_norm::batch_norm_eval(&x, &m, &v, None, None, 1e-5));
    assert!(
        e.contains("batch_norm") && e.contains("running_var") && e.contains("F64"),
        "{e}"
    );
    let e = err(candle_norm::batch_norm_eval(
        &x,
        &t(&[2], DType::F32),
        &m,
        None,
        None,
        1e-5,
    ));
    assert!(e.contains("running_mean") && e.contains("[2]"), "{e}");
    let e = err(candle_norm::batch_norm_backward(
        &x,
        None,
        None,
        &t(&[2, 3, 5], DType::F32),
        1e-5,
    ));
    assert!(
        e.contains("batch_norm") && e.contains("dy") && e.contains("[2, 3, 5]"),
        "{e}"
    );
    let stats = Some((t(&[3], DType::F32), t(&[3], DType::F32)));
    let e = err(candle_norm::BatchNorm::new(3, stats.clone(), None, 1e-5, -0.1));
    assert!(e.contains("BatchNorm") && e.contains("momentum"), "{e}");
    let e = err(candle_norm::BatchNorm::new(3, stats.clone(), None, -1e-5, 0.1));
    assert!(e.contains("BatchNorm") && e.contains("eps"), "{e}");
    let e = err(candle_norm::BatchNorm::new(4, stats, None, 1e-5, 0.1));
    assert!(e.contains("running_mean") && e.contains("[4]"), "{e}");
    let bn = candle_norm::BatchNorm::new(4, None, None, 1e-5, 0.1).unwrap();
    let e = err(bn.forward_t(&x, true));
    assert!(e.contains("BatchNorm") && e.contains("[2, 3, 4]"), "{e}");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = BatchNormConfig {
        remove_mean: false,
        ..Default::default()
    };
    let e = err(candle_norm::nn::batch_norm(3, config, vb));
    assert!(e.contains("remove_mean"), "{e}");
}
