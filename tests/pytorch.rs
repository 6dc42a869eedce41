//! PyTorch's norm layers built by `nn::pytorch` with every option PyTorch has, each from
//! a safetensors checkpoint written here under PyTorch's names and layout, against
//! PyTorch's definitions written out in f64 in this file: outputs and the gradients of
//! every input, the BatchNorm running statistics over several steps with momentum None,
//! `num_batches_tracked` saved and loaded as PyTorch's i64 scalar; on the fused backend
//! and on the generic one.
mod common;
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use candle_norm::nn::pytorch::{self, BatchNormConfig, GroupNormConfig, LayerNormConfig, RmsNormConfig};
use common::*;
use std::path::Path;

/// Writes `tensors` (f32 or i64) with the safetensors crate, as PyTorch's `save_file`
/// would.
fn write_checkpoint(path: &Path, tensors: &[(&str, &Tensor)]) {
    let data: Vec<(String, safetensors::Dtype, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            let flat = t.flatten_all().unwrap();
            let (dtype, bytes) = match t.dtype() {
                DType::F32 => (
                    safetensors::Dtype::F32,
                    flat.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                DType::I64 => (
                    safetensors::Dtype::I64,
                    flat.to_vec1::<i64>()
                        .unwrap()
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                ),
                dt => panic!("no checkpoint dtype for {dt:?}"),
            };
            (name.to_string(), dtype, bytes, t.dims().to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, dt, b, s)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn f64s(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

/// PyTorch's `layer_norm` (`center`) or `rms_norm` over the last `k` dimensions, in
/// f64, composed from candle ops (differentiable).
fn torch_row_norm(x: &Tensor, k: usize, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64, center: bool) -> Tensor {
    let dims = x.dims().to_vec();
    let flat = x.flatten_from(dims.len() - k).unwrap();
    let centered = if center {
        flat.broadcast_sub(&flat.mean_keepdim(D::Minus1).unwrap()).unwrap()
    } else {
        flat
    };
    let var = centered.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let mut y = centered
        .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
        .unwrap()
        .reshape(dims)
        .unwrap();
    if let Some(w) = w {
        y = y.broadcast_mul(w).unwrap();
    }
    if let Some(b) = b {
        y = y.broadcast_add(b).unwrap();
    }
    y
}

/// PyTorch's `group_norm` without affine parameters, in f64, composed.
fn torch_group_norm(x: &Tensor, g: usize, eps: f64) -> Tensor {
    let dims = x.dims().to_vec();
    let rows = x.reshape((dims[0], g, ())).unwrap();
    torch_row_norm(&rows, 1, None, None, eps, true).reshape(dims).unwrap()
}

/// Runs `module` on a variable of x, and L = Σ y·dy backward: (y, the gradient of x,
/// the gradients of `params`).
fn run(
    module: &dyn Fn(&Tensor) -> Tensor,
    x: &Tensor,
    dy: &Tensor,
    params: &[&Tensor],
) -> (Tensor, Tensor, Vec<Tensor>) {
    let xv = Var::from_tensor(x).unwrap();
    let y = module(&xv);
    let g = (&y * dy).unwrap().sum_all().unwrap().backward().unwrap();
    let dp = params
        .iter()
        .map(|p| g.get(p).expect("a parameter gradient").clone())
        .collect();
    (y, g.get(&xv).unwrap().clone(), dp)
}

/// `nn.LayerNorm([4, 8])` and `nn.RMSNorm([4, 8])` from a checkpoint, loaded into a
/// `VarMap` as a training run does: outputs and the gradients of x, weight and bias.
#[test]
fn layer_and_rms_norm_over_two_dimensions() {
    on_every_backend(|| {
        let mut rng = Rng::new(60);
        let (w, b, rw) = (
            rng.tensor(&[4, 8], DType::F32, 1.0, 0.5),
            rng.tensor(&[4, 8], DType::F32, 0.0, 0.5),
            rng.tensor(&[4, 8], DType::F32, 1.0, 0.5),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_checkpoint(&path, &[("ln.weight", &w), ("ln.bias", &b), ("rms.weight", &rw)]);
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ln = pytorch::layer_norm(&[4, 8], LayerNormConfig::default(), vb.pp("ln")).unwrap();
        let config = RmsNormConfig {
            eps: Some(1e-6),
            ..Default::default()
        };
        let rms = pytorch::rms_norm(&[4, 8], config, vb.pp("rms")).unwrap();
        varmap.load(&path).unwrap();
        assert_eq!(ln.normalized_shape(), [4, 8]);
        let x = rng.tensor(&[3, 4, 8], DType::F32, 0.5, 2.0);
        let dy = rng.tensor(&[3, 4, 8], DType::F32, 0.0, 1.0);
        let (lw, lb) = (ln.weight().unwrap(), ln.bias().unwrap());
        let (y, dx, dp) = run(&|x| ln.forward(x).unwrap(), &x, &dy, &[lw, lb]);
        let (xr, wr, br) = (
            Var::from_tensor(&f64s(&x)).unwrap(),
            Var::from_tensor(&f64s(&w)).unwrap(),
            Var::from_tensor(&f64s(&b)).unwrap(),
        );
        let yr = torch_row_norm(&xr, 2, Some(&wr), Some(&br), 1e-5, true);
        let gr = (&yr * f64s(&dy)).unwrap().sum_all().unwrap().backward().unwrap();
        let t = tol(DType::F32);
        assert_close("LayerNorm y", &y, &yr, t.fwd);
        assert_close_max("LayerNorm dx", &dx, gr.get(&xr).unwrap(), t.bwd);
        assert_close_max("LayerNorm dweight", &dp[0], gr.get(&wr).unwrap(), t.bwd);
        assert_close_max("LayerNorm dbias", &dp[1], gr.get(&br).unwrap(), t.bwd);

        let (y, dx, dp) = run(&|x| rms.forward(x).unwrap(), &x, &dy, &[rms.weight().unwrap()]);
        let rwr = Var::from_tensor(&f64s(&rw)).unwrap();
        let yr = torch_row_norm(&xr, 2, Some(&rwr), None, 1e-6, false);
        let gr = (&yr * f64s(&dy)).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close("RMSNorm y", &y, &yr, t.fwd);
        assert_close_max("RMSNorm dx", &dx, gr.get(&xr).unwrap(), t.bwd);
        assert_close_max("RMSNorm dweight", &dp[0], gr.get(&rwr).unwrap(), t.bwd);

        // The fused residual add over the same two dimensions.
        let r = rng.tensor(&[3, 4, 8], DType::F32, 0.0, 1.0);
        let (y, h) = ln.forward_with_residual(&x, &r).unwrap();
        let want = torch_row_norm(
            &f64s(&(&x + &r).unwrap()),
            2,
            Some(&f64s(&w)),
            Some(&f64s(&b)),
            1e-5,
            true,
        );
        assert_close("LayerNorm with residual", &y, &want, t.fwd);
        assert_eq!(bits(&h), bits(&(&x + &r).unwrap()));
    });
}

/// `nn.LayerNorm(..., elementwise_affine=False)`, `nn.RMSNorm(..., elementwise_affine=False)`
/// and `nn.GroupNorm(..., affine=False)` read no tensors and normalize as PyTorch does;
/// `eps=None` of RMSNorm is f32's machine epsilon for f32, f16 and bf16 inputs and f64's
/// for f64 (rows of mean square 1e-6 show the difference from any larger eps).
#[test]
fn layers_without_affine_parameters() {
    on_every_backend(|| {
        let mut rng = Rng::new(61);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let no_affine = LayerNormConfig {
            elementwise_affine: false,
            ..Default::default()
        };
        let ln = pytorch::layer_norm(&[16], no_affine, vb.pp("ln")).unwrap();
        let rms_config = RmsNormConfig {
            elementwise_affine: false,
            ..Default::default()
        };
        let rms = pytorch::rms_norm(&[16], rms_config, vb.pp("rms")).unwrap();
        let gn = pytorch::group_norm(
            2,
            6,
            GroupNormConfig {
                eps: 1e-5,
                affine: false,
            },
            vb.pp("gn"),
        )
        .unwrap();
        assert!(varmap.all_vars().is_empty(), "no parameters are created");
        assert!(ln.weight().is_none() && ln.bias().is_none() && rms.weight().is_none() && gn.weight().is_none());
        for dtype in DTYPES {
            let t = tol(dtype);
            let x = rng.tensor(&[5, 16], dtype, 0.3, 1.5);
            let dy = rng.tensor(&[5, 16], dtype, 0.0, 1.0);
            let (y, dx, _) = run(&|x| ln.forward(x).unwrap(), &x, &dy, &[]);
            let xr = Var::from_tensor(&f64s(&x)).unwrap();
            let yr = torch_row_norm(&xr, 1, None, None, 1e-5, true);
            let gr = (&yr * f64s(&dy)).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(&format!("LayerNorm {dtype:?}"), &y, &yr, t.fwd);
            assert_close_max(&format!("LayerNorm dx {dtype:?}"), &dx, gr.get(&xr).unwrap(), t.bwd);

            let small = (rng.tensor(&[5, 16], dtype, 0.0, 1e-3)).to_dtype(dtype).unwrap();
            let eps = if dtype == DType::F64 {
                f64::EPSILON
            } else {
                f32::EPSILON as f64
            };
            assert_eq!(rms.eps_for(dtype), eps);
            let (y, dx, _) = run(&|x| rms.forward(x).unwrap(), &small, &dy, &[]);
            let sr = Var::from_tensor(&f64s(&small)).unwrap();
            let yr = torch_row_norm(&sr, 1, None, None, eps, false);
            let gr = (&yr * f64s(&dy)).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(&format!("RMSNorm eps=None {dtype:?}"), &y, &yr, t.fwd);
            assert_close_max(
                &format!("RMSNorm eps=None dx {dtype:?}"),
                &dx,
                gr.get(&sr).unwrap(),
                t.bwd,
            );

            let xg = rng.tensor(&[2, 6, 3, 3], dtype, 0.0, 1.0);
            let dyg = rng.tensor(&[2, 6, 3, 3], dtype, 0.0, 1.0);
            let (y, dx, _) = run(&|x| gn.forward(x).unwrap(), &xg, &dyg, &[]);
            let gr64 = Var::from_tensor(&f64s(&xg)).unwrap();
            let yr = torch_group_norm(&gr64, 2, 1e-5);
            let g = (&yr * f64s(&dyg)).unwrap().sum_all().unwrap().backward().unwrap();
            assert_close(&format!("GroupNorm {dtype:?}"), &y, &yr, t.fwd);
            assert_close_max(&format!("GroupNorm dx {dtype:?}"), &dx, g.get(&gr64).unwrap(), t.bwd);
        }
    });
}

/// Per-channel mean and unbiased variance of x of shape [B, C, S], in f64.
fn channel_stats(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let (b, c, s) = x.dims3().unwrap();
    let v = to_f64(x);
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..b)
                .flat_map(|i| v[(i * c + ch) * s..(i * c + ch + 1) * s].to_vec())
                .collect();
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            (mean, vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0))
        })
        .unzip()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

/// `nn.BatchNorm1d(3, momentum=None)`: the running statistics are the cumulative
/// average of the batches' (m = 1/t at step t), `num_batches_tracked` counts the steps;
/// saved from the `VarMap`, `num_batches_tracked` is PyTorch's i64 scalar, and the
/// layer loaded from the file continues the average where it stopped.
#[test]
fn batch_norm_with_momentum_none_averages_every_batch() {
    on_every_backend(|| {
        let mut rng = Rng::new(62);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = BatchNormConfig {
            momentum: None,
            ..Default::default()
        };
        let bn = pytorch::batch_norm(3, config, vb.pp("bn")).unwrap();
        assert_eq!(bn.momentum(), None);
        let (mut mean, mut var) = (vec![0.0; 3], vec![1.0; 3]);
        let step = |bn: &candle_norm::BatchNorm, mean: &mut Vec<f64>, var: &mut Vec<f64>, t: f64, rng: &mut Rng| {
            let x = rng.tensor(&[4, 3, 5], DType::F32, 2.0, 3.0);
            bn.forward_t(&x, true).unwrap();
            let (bm, bv) = channel_stats(&x);
            for ch in 0..3 {
                mean[ch] += (bm[ch] - mean[ch]) / t;
                var[ch] += (bv[ch] - var[ch]) / t;
            }
        };
        for t in 1..=4 {
            step(&bn, &mut mean, &mut var, t as f64, &mut rng);
        }
        assert!(close(&to_f64(bn.running_mean().unwrap()), &mean), "running mean");
        assert!(close(&to_f64(bn.running_var().unwrap()), &var), "running var");
        assert_eq!(bn.num_batches_tracked().unwrap().to_scalar::<i64>().unwrap(), 4);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bn.safetensors");
        varmap.save(&path).unwrap();
        let saved = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let counter = &saved["bn.num_batches_tracked"];
        assert_eq!((counter.dtype(), counter.rank()), (DType::I64, 0));
        let vb =
            VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let loaded = pytorch::batch_norm(3, config, vb.pp("bn")).unwrap();
        assert_eq!(loaded.num_batches_tracked().unwrap().to_scalar::<i64>().unwrap(), 4);
        step(&loaded, &mut mean, &mut var, 5.0, &mut rng);
        assert!(
            close(&to_f64(loaded.running_mean().unwrap()), &mean),
            "running mean after loading"
        );
        assert!(
            close(&to_f64(loaded.running_var().unwrap()), &var),
            "running var after loading"
        );
        assert_eq!(loaded.num_batches_tracked().unwrap().to_scalar::<i64>().unwrap(), 5);
    });
}

/// A PyTorch `BatchNorm2d` state dict (weight, bias, running statistics and
/// `num_batches_tracked`) loads; training counts on from the saved count with a fixed
/// momentum too, and eval normalizes with the loaded statistics.
#[test]
fn batch_norm_loads_a_pytorch_state_dict() {
    on_every_backend(|| {
        let mut rng = Rng::new(63);
        let c = 4;
        let (w, b, rm) = (
            rng.tensor(&[c], DType::F32, 1.0, 0.5),
            rng.tensor(&[c], DType::F32, 0.0, 0.5),
            rng.tensor(&[c], DType::F32, 0.0, 1.0),
        );
        let rv = rng.tensor(&[c], DType::F32, 1.5, 0.25).abs().unwrap();
        let counter = Tensor::new(7i64, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bn.safetensors");
        let names = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map(|n| format!("bn.{n}"));
        let tensors: Vec<(&str, &Tensor)> = names
            .iter()
            .map(String::as_str)
            .zip([&w, &b, &rm, &rv, &counter])
            .collect();
        write_checkpoint(&path, &tensors);
        let vb =
            VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let bn = pytorch::batch_norm(c, BatchNormConfig::default(), vb.pp("bn")).unwrap();
        let x = rng.tensor(&[2, c, 3, 3], DType::F32, 0.0, 2.0);
        let want = ((f64s(&x).broadcast_sub(&f64s(&rm).reshape((c, 1, 1)).unwrap()).unwrap())
            .broadcast_div(&(f64s(&rv) + 1e-5).unwrap().sqrt().unwrap().reshape((c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_mul(&f64s(&w).reshape((c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&f64s(&b).reshape((c, 1, 1)).unwrap()))
        .unwrap();
        assert_close("eval", &bn.forward_t(&x, false).unwrap(), &want, tol(DType::F32).fwd);
        bn.forward_t(&x, true).unwrap();
        assert_eq!(bn.num_batches_tracked().unwrap().to_scalar::<i64>().unwrap(), 8);
        let (bm, _) = channel_stats(&x.reshape((2, c, 9)).unwrap());
        let expected: Vec<f64> = to_f64(&rm).iter().zip(&bm).map(|(r, m)| 0.9 * r + 0.1 * m).collect();
        assert!(close(&to_f64(bn.running_mean().unwrap()), &expected), "running mean");
    });
}

/// `nn.BatchNorm2d(track_running_stats=False)` reads and keeps no running statistics
/// and normalizes with the batch's statistics in eval as in training.
#[test]
fn batch_norm_without_running_statistics() {
    on_every_backend(|| {
        let mut rng = Rng::new(64);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = BatchNormConfig {
            track_running_stats: false,
            ..Default::default()
        };
        let bn = pytorch::batch_norm(3, config, vb.pp("bn")).unwrap();
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["bn.bias", "bn.weight"]);
        assert!(bn.running_mean().is_none() && bn.num_batches_tracked().is_none());
        let x = rng.tensor(&[4, 3, 2, 2], DType::F32, 1.0, 2.0);
        let eval = bn.forward_t(&x, false).unwrap();
        assert_eq!(bits(&eval), bits(&bn.forward_t(&x, true).unwrap()));
        let want = candle_norm::reference::batch_norm_train(&f64s(&x), None, None, 1e-5)
            .unwrap()
            .0;
        assert_close("batch statistics", &eval, &want, tol(DType::F32).fwd);
    });
}

/// Bad options and inputs are errors naming the layer, never panics.
#[test]
fn bad_input_is_a_clear_error() {
    on_every_backend(|| {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let e = pytorch::layer_norm(&[], LayerNormConfig::default(), vb.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("LayerNorm") && e.contains("normalized_shape"), "{e}");
        let ln = pytorch::layer_norm(&[4, 8], LayerNormConfig::default(), vb.clone()).unwrap();
        let x = Tensor::zeros((2, 8, 4), DType::F32, &Device::Cpu).unwrap();
        let e = ln.forward(&x).unwrap_err().to_string();
        assert!(
            e.contains("LayerNorm") && e.contains("[2, 8, 4]") && e.contains("[4, 8]"),
            "{e}"
        );
        let r = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::zeros((2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let e = ln.forward_with_residual(&x, &r).unwrap_err().to_string();
        assert!(e.contains("residual") && e.contains("[2, 32]"), "{e}");
        let config = BatchNormConfig {
            momentum: Some(1.5),
            ..Default::default()
        };
        let e = pytorch::batch_norm(3, config, vb.clone()).unwrap_err().to_string();
        assert!(e.contains("BatchNorm") && e.contains("momentum"), "{e}");
        let bn = candle_norm::BatchNorm::new(3, None, None, 1e-5, 0.1).unwrap();
        let e = bn
            .with_num_batches_tracked(Tensor::new(1i64, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_batches_tracked") && e.contains("running"), "{e}");
        let stats = (
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let bn = candle_norm::BatchNorm::new(3, Some(stats), None, 1e-5, 0.1).unwrap();
        let e = bn
            .with_num_batches_tracked(Tensor::new(1f32, &Device::Cpu).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_batches_tracked") && e.contains("i64"), "{e}");
    });
}
