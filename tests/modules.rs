//! The drop-in modules: weights from a PyTorch-style safetensors checkpoint through a
//! VarBuilder, agreement with the functional ops, and training through an optimizer; on
//! the fused backend and on the generic one.
mod common;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use candle_norm::nn;
use common::*;

/// Writes a checkpoint with the safetensors crate, as PyTorch's `save_file` would.
fn write_checkpoint(path: &std::path::Path, tensors: &[(&str, &Tensor)]) {
    let data: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            (
                n.to_string(),
                v.iter().flat_map(|f| f.to_le_bytes()).collect(),
                t.dims().to_vec(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn modules_load_checkpoint_and_match_functional_ops() {
    on_every_backend(|| {
        let mut rng = Rng::new(30);
        let (lw, lb) = (
            rng.tensor(&[16], DType::F32, 1.0, 0.5),
            rng.tensor(&[16], DType::F32, 0.0, 0.5),
        );
        let rw = rng.tensor(&[16], DType::F32, 1.0, 0.5);
        let (gw, gb) = (
            rng.tensor(&[8], DType::F32, 1.0, 0.5),
            rng.tensor(&[8], DType::F32, 0.0, 0.5),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_checkpoint(
            &path,
            &[
                ("ln.weight", &lw),
                ("ln.bias", &lb),
                ("rms.weight", &rw),
                ("gn.weight", &gw),
                ("gn.bias", &gb),
            ],
        );
        for dtype in DTYPES {
            let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), dtype, &Device::Cpu).unwrap();
            let ln = nn::layer_norm(16, 1e-5, vb.pp("ln")).unwrap();
            let rms = nn::rms_norm(16, 1e-6, vb.pp("rms")).unwrap();
            let gn = nn::group_norm(4, 8, 1e-5, vb.pp("gn")).unwrap();
            let cv = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let x = rng.tensor(&[3, 5, 16], dtype, 0.0, 1.0);
            let want = candle_norm::layer_norm(&x, Some(&cv(&lw)), Some(&cv(&lb)), 1e-5).unwrap();
            assert_close(&format!("ln {dtype:?}"), &ln.forward(&x).unwrap(), &want, 0.0);
            let want = candle_norm::rms_norm(&x, Some(&cv(&rw)), 1e-6).unwrap();
            assert_close(&format!("rms {dtype:?}"), &rms.forward(&x).unwrap(), &want, 0.0);
            let r = rng.tensor(&[3, 5, 16], dtype, 0.0, 1.0);
            let h = (&x + &r).unwrap();
            for (name, (y, hf), module_y) in [
                ("ln", ln.forward_with_residual(&x, &r).unwrap(), ln.forward(&h).unwrap()),
                (
                    "rms",
                    rms.forward_with_residual(&x, &r).unwrap(),
                    rms.forward(&h).unwrap(),
                ),
            ] {
                assert_close(&format!("{name} with residual {dtype:?}: h"), &hf, &h, 0.0);
                assert_close(&format!("{name} with residual {dtype:?}: y"), &y, &module_y, 0.0);
            }
            let xg = rng.tensor(&[2, 8, 3, 3], dtype, 0.0, 1.0);
            let want = candle_norm::group_norm(&xg, 4, Some(&cv(&gw)), Some(&cv(&gb)), 1e-5).unwrap();
            assert_close(&format!("gn {dtype:?}"), &gn.forward(&xg).unwrap(), &want, 0.0);
        }
        // A checkpoint missing a tensor is an error, not a panic.
        let vb =
            VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
        assert!(nn::layer_norm(16, 1e-5, vb.pp("missing")).is_err());
        assert!(nn::group_norm(4, 16, 1e-5, vb.pp("gn")).is_err());
    });
}

#[test]
fn module_constructors_mirror_candle_nn() {
    on_every_backend(|| {
        let w = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
        let ln = nn::LayerNorm::new(w.clone(), b.clone(), 1e-5);
        assert!(ln.remove_mean() && ln.bias().is_some() && ln.eps() == 1e-5);
        assert!(nn::LayerNorm::new_no_bias(w.clone(), 1e-5).bias().is_none());
        let rms = nn::RmsNorm::new(w.clone(), 1e-6);
        assert!(!rms.clone().into_inner().remove_mean() && rms.weight().unwrap().dims() == [6]);
        assert!(nn::GroupNorm::new(w.clone(), b.clone(), 6, 4, 1e-5).is_err());
        let gn = nn::GroupNorm::new(w, b, 6, 3, 1e-5).unwrap();
        let e = gn
            .forward(&Tensor::zeros((2, 4, 3), DType::F32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 channels"), "{e}");
    });
}

/// One AdamW step through each module changes every norm parameter: no gradient is dropped.
#[test]
fn optimizer_trains_through_modules() {
    on_every_backend(|| {
        let mut rng = Rng::new(31);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ln = nn::layer_norm(16, 1e-5, vb.pp("ln")).unwrap();
        let rms = nn::rms_norm(16, 1e-5, vb.pp("rms")).unwrap();
        let gn = nn::group_norm(2, 4, 1e-5, vb.pp("gn")).unwrap();
        let before: Vec<(String, Vec<f64>)> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), to_f64(v.as_tensor())))
            .collect();
        let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2).unwrap();
        let x = rng.tensor(&[8, 16], DType::F32, 0.0, 1.0);
        let target = rng.tensor(&[8, 16], DType::F32, 0.0, 1.0);
        let y = rms.forward(&ln.forward(&x).unwrap()).unwrap();
        let yg = gn
            .forward(&y.reshape((2, 4, 16)).unwrap())
            .unwrap()
            .reshape((8, 16))
            .unwrap();
        let loss = (yg - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(before.len(), 5);
        for (name, old) in before {
            assert_ne!(old, to_f64(data[&name].as_tensor()), "{name} did not change");
        }
    });
}
