//! BatchNorm beyond the grid of every norm (reference, finite differences, hard data,
//! determinism): the module against candle-nn's BatchNorm, the running statistics
//! against PyTorch's update computed by hand, `batch_norm` against `batch_norm_train`,
//! a checkpoint round trip, and errors; each on the fused backend and on the generic
//! one.
mod common;
use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
use common::*;

/// `batch_norm` is the y of `batch_norm_train`, bit for bit.
#[test]
fn batch_norm_is_batch_norm_train_without_the_statistics() {
    let mut rng = Rng::new(80);
    for backend in BACKENDS {
        for dtype in DTYPES {
            for affine in AFFINES {
                let case = Case::new(&mut rng, Norm::Batch, &[3, 4, 5], dtype, affine, 1e-5);
                let (w, b) = (case.w.as_ref(), case.b.as_ref());
                let (y, _, _) = backend
                    .run(|| candle_norm::batch_norm_train(&case.x, w, b, 1e-5))
                    .unwrap();
                let plain = backend.run(|| candle_norm::batch_norm(&case.x, w, b, 1e-5)).unwrap();
                assert_eq!(bits(&plain), bits(&y), "{} {backend:?}", case.what());
            }
        }
    }
}

/// The module against candle-nn's BatchNorm from the same state: training output, the
/// running statistics it leaves, and the eval output after it.
#[test]
fn module_matches_candle_nn() {
    on_every_backend(|| {
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
    });
}

/// Running statistics after several steps equal the sequence computed by hand in f64
/// (PyTorch's update, unbiased variance); eval then normalizes with them, and training
/// with the batch's own.
#[test]
fn running_statistics_follow_pytorchs_update() {
    on_every_backend(|| {
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
    });
}

/// A trained module's state saved under PyTorch's names (with a `num_batches_tracked`
/// beside them) loads into a new module that gives the same eval output.
#[test]
fn checkpoint_round_trips() {
    on_every_backend(|| {
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
        let vb =
            VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
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
    });
}

fn err<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Bad inputs are errors naming the op and the shapes, never panics.
#[test]
fn bad_input_is_a_clear_error() {
    on_every_backend(bad_input);
}

fn bad_input() {
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
