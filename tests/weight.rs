//! Weight standardization and the convolution that applies it: against a composed f64
//! reference, gradients against autograd through that reference and against f64 finite
//! differences, the module against candle-nn's convolution on the standardized weight,
//! the builder's tensor names, and bad input.

mod common;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use candle_norm::nn::{ws_conv2d, WsConv2d};
use candle_norm::weight_standardization;
use common::*;

/// `(w − mean) / sqrt(var + eps)` per output unit, composed from candle ops.
fn reference(w: &Tensor, eps: f64) -> Tensor {
    let flat = w.flatten_from(1).unwrap();
    let mean = flat.mean_keepdim(D::Minus1).unwrap();
    let centered = flat.broadcast_sub(&mean).unwrap();
    let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let rstd = (var + eps).unwrap().sqrt().unwrap().recip().unwrap();
    centered.broadcast_mul(&rstd).unwrap().reshape(w.shape()).unwrap()
}

const SHAPES: [&[usize]; 5] = [&[1, 1], &[7, 3], &[16, 3, 3, 3], &[5, 2, 1, 1], &[3, 1025]];

#[test]
fn standardizes_each_output_unit() {
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
}

#[test]
fn gradient_matches_autograd_and_finite_differences() {
    let mut rng = Rng::new(4);
    for shape in SHAPES {
        let w = Var::from_tensor(&rng.tensor(shape, DType::F64, 0.0, 1.0)).unwrap();
        let probe = rng.tensor(shape, DType::F64, 0.0, 1.0);
        let loss = |t: &Tensor| (t * &probe).unwrap().sum_all().unwrap();
        let ours = loss(&weight_standardization(&w, 1e-5).unwrap()).backward().unwrap();
        let theirs = loss(&reference(&w, 1e-5)).backward().unwrap();
        let (g, r) = (ours.get(&w).unwrap(), theirs.get(&w).unwrap());
        assert_close_max(&format!("{shape:?} autograd"), g, r, tol(DType::F64).bwd);
        // Central differences on a few elements.
        let base: Vec<f64> = w.flatten_all().unwrap().to_vec1().unwrap();
        let gv: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
        for i in [0, base.len() / 2, base.len() - 1] {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
                loss(&weight_standardization(&t, 1e-5).unwrap())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let h = 1e-6;
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - gv[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{shape:?}[{i}]: {fd} vs {}",
                gv[i]
            );
        }
    }
}

#[test]
fn ws_conv2d_convolves_with_the_standardized_weight() {
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
    let grads = conv
        .forward(&x)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let var = varmap.data().lock().unwrap()["conv.weight"].clone();
    let g = grads.get(&var).expect("the raw weight gets a gradient");
    assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
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
