//! The row norms' weight offset (`RowNorm::with_weight_offset`, the modules'
//! `with_weight_offset`): y = x̂·(offset + γ) (+ β) in one fused op, on the fused backend
//! and on the generic one. Forward and the gradients of every input against the
//! reference with γ + offset evaluated in f64, the standalone backward as autograd, the
//! same in mixed precision; Gemma's offset of 1 on a zero weight is no weight at all;
//! the modules; errors.
#[macro_use]
mod common;
use candle_core::{DType, Device, Module, Tensor};
use common::*;

fn offset(norm: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(71);
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    for (norm, shape) in cases_of(REFERENCE_CASES, norm).into_iter().take(6) {
        for affine in [Affine::Weight, Affine::WeightBias] {
            for offset in [1.0, -0.5] {
                let plain = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
                let mut cases = vec![plain.with_offset(offset)];
                if matches!(dtype, DType::F16 | DType::BF16) {
                    cases.push(cases[0].with_params_dtype(DType::F32));
                }
                for case in cases {
                    let what = format!("{} {backend:?}", case.what());
                    let t = tol(dtype);
                    let got = backend.run(|| case.forward(Impl::Ours)).unwrap();
                    let want = case.widened(DType::F64).forward(Impl::Reference).unwrap();
                    assert_eq!(got.len(), want.len(), "{what}: outputs");
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_close(&format!("{what} output {i}"), g, w, t.fwd);
                    }
                    let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                    let got = backend.run(|| case.grads(&dy, Impl::Ours)).unwrap();
                    let want = case.widened(wide).grads(&dy, Impl::Reference).unwrap();
                    assert_grads_close(&what, &got, &want, t.bwd);
                    let standalone = backend.run(|| case.backward(&dy)).unwrap().unwrap();
                    assert_grads_close(&format!("{what} standalone"), &standalone, &got, t.bwd);
                }
            }
        }
    }
}

grid!(offset: [layer = Norm::Layer, rms = Norm::Rms, add_layer = Norm::AddLayer, add_rms = Norm::AddRms]
    x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused, generic = Generic]);

/// Gemma's RMSNorm: the weight stored as γ − 1 with an offset of 1. A zero weight is then
/// no weight at all (bit for bit on the fused backend; the generic one may run
/// candle-nn's forward without a weight); the module with the offset is the op with it.
#[test]
fn gemma_offset_of_one() {
    for backend in BACKENDS {
        let mut rng = Rng::new(72);
        backend.run(|| {
            for dtype in DTYPES {
                let what = format!("{dtype:?} {backend:?}");
                let x = rng.tensor(&[5, 96], dtype, 0.0, 1.0);
                let zeros = Tensor::zeros(96, dtype, &Device::Cpu).unwrap();
                let y = candle_norm::RowNorm::rms(Some(&zeros), 1e-6)
                    .with_weight_offset(1.0)
                    .forward(&x)
                    .unwrap();
                let plain = candle_norm::rms_norm(&x, None, 1e-6).unwrap();
                match backend {
                    Backend::Fused => assert!(bits(&y) == bits(&plain), "{what}"),
                    Backend::Generic => assert_close(&what, &y, &plain, tol(dtype).fwd),
                }
                let w = rng.tensor(&[96], dtype, 0.0, 0.1);
                let module = candle_norm::nn::RmsNorm::new(w.clone(), 1e-6).with_weight_offset(1.0);
                assert_eq!(module.weight_offset(), 1.0);
                let op = candle_norm::RowNorm::rms(Some(&w), 1e-6).with_weight_offset(1.0);
                assert!(
                    bits(&module.forward(&x).unwrap()) == bits(&op.forward(&x).unwrap()),
                    "{what}"
                );
                let r = rng.tensor(&[5, 96], dtype, 0.0, 1.0);
                let (ym, hm) = module.forward_with_residual(&x, &r).unwrap();
                let (yo, ho) = op.forward_add(&x, &r).unwrap();
                assert!((bits(&ym), bits(&hm)) == (bits(&yo), bits(&ho)), "{what} with residual");
            }
        });
    }
}

/// An offset without a weight, or not finite, and a bias on RMSNorm are errors naming
/// the op.
#[test]
fn bad_input_is_a_clear_error() {
    on_every_backend(|| {
        let x = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros(8, DType::F32, &Device::Cpu).unwrap();
        let e = candle_norm::RowNorm::layer(None, None, 1e-5)
            .with_weight_offset(1.0)
            .forward(&x)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layer_norm") && e.contains("weight_offset") && e.contains("weight"),
            "{e}"
        );
        let e = candle_norm::RowNorm::rms(Some(&w), 1e-5)
            .with_weight_offset(f64::NAN)
            .forward(&x)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rms_norm") && e.contains("finite"), "{e}");
        let op = candle_norm::RowNorm {
            bias: Some(&w),
            ..candle_norm::RowNorm::rms(Some(&w), 1e-5)
        };
        let e = op.forward(&x).unwrap_err().to_string();
        assert!(e.contains("rms_norm") && e.contains("bias"), "{e}");
        let r = Tensor::zeros((2, 8), DType::F32, &Device::Cpu).unwrap();
        let e = candle_norm::RowNorm::rms(None, 1e-5)
            .with_weight_offset(1.0)
            .forward_add(&x, &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("add_rms_norm") && e.contains("weight_offset"), "{e}");
    });
}
