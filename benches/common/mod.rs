//! The cases both benches measure, and the ops each case runs: this crate's forward and
//! standalone backward, candle-nn's fused forward where it has one, and the composed
//! reference (candle autograd's baseline); for the fused residual add + norm, the
//! fused op and the unfused pair (candle's add, then this crate's norm).

use candle_core::{DType, Device, Result, Tensor};

/// The norms and their ops, as the tests know them.
#[allow(dead_code)]
#[path = "../../tests/common/registry.rs"]
pub mod registry;
use registry::Impl;
pub use registry::Norm;

/// One benchmarked op on one shape.
#[derive(Clone, Debug)]
pub struct Case {
    pub norm: Norm,
    pub shape: Vec<usize>,
}

/// The grid of a device: on the CPU LLM-style rows of medium size, two diffusion-style
/// GroupNorm shapes and two channels-first LayerNorms of vision models; on a GPU rows of 2^27 elements from N = 256 to 262144, small M at
/// N = 4096, three GroupNorm shapes of a diffusion UNet and a large [8, 512, 64, 64], and
/// BatchNorm in training on two ResNet stages and one large activation (the CPU measures
/// BatchNorm against candle-nn's module in its own group). The GroupNorm shapes run
/// channels-first, and channels-last with the channels moved to the end.
pub fn cases(dev: &Device) -> Vec<Case> {
    let rows: Vec<Vec<usize>> = if dev.is_cpu() {
        vec![vec![4096, 768], vec![2048, 4096], vec![1024, 8192]]
    } else {
        let large = [256usize, 1024, 4096, 8192, 16384, 65536, 262144].map(|n| vec![(1 << 27) / n, n]);
        large.into_iter().chain([1, 16, 256].map(|m| vec![m, 4096])).collect()
    };
    let groups: &[[usize; 4]] = if dev.is_cpu() {
        &[[8, 128, 32, 32], [1, 320, 64, 64]]
    } else {
        &[[1, 320, 64, 64], [8, 128, 32, 32], [16, 512, 16, 16], [8, 512, 64, 64]]
    };
    let mut v = Vec::new();
    for norm in [Norm::Layer, Norm::Rms] {
        v.extend(rows.iter().map(|s| Case { norm, shape: s.clone() }));
    }
    for norm in [Norm::Group(32), Norm::GroupSilu(32)] {
        v.extend(groups.iter().map(|s| Case {
            norm,
            shape: s.to_vec(),
        }));
    }
    for norm in [Norm::GroupLast(32), Norm::GroupLastSilu(32)] {
        v.extend(groups.iter().map(|&[b, c, h, w]| Case {
            norm,
            shape: vec![b, h, w, c],
        }));
    }
    if dev.is_cpu() {
        // ConvNeXt-T's first stage at batch 8, and SAM's image-encoder neck.
        v.extend([[8usize, 96, 56, 56], [1, 256, 64, 64]].iter().map(|s| Case {
            norm: Norm::LayerFirst,
            shape: s.to_vec(),
        }));
    }
    if !dev.is_cpu() {
        let batch = [[32usize, 64, 56, 56], [256, 512, 7, 7], [8, 256, 128, 128]];
        v.extend(batch.iter().map(|s| Case {
            norm: Norm::Batch,
            shape: s.to_vec(),
        }));
    }
    v
}

/// The fused residual add + norm's grid: on the CPU the 4096 × 4096 rows of its speed
/// target, on a GPU rows of 2^27 elements from N = 1024 to 65536.
pub fn add_cases(dev: &Device) -> Vec<Case> {
    let rows: Vec<Vec<usize>> = if dev.is_cpu() {
        vec![vec![4096, 4096]]
    } else {
        [1024usize, 4096, 16384, 65536].map(|n| vec![(1 << 27) / n, n]).to_vec()
    };
    [Norm::AddLayer, Norm::AddRms]
        .into_iter()
        .flat_map(|norm| rows.iter().map(move |s| Case { norm, shape: s.clone() }))
        .collect()
}

/// The dtypes measured on a device (f16 behaves as bf16 on the CPU).
pub fn dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cpu() {
        vec![DType::F32, DType::BF16]
    } else {
        vec![DType::F32, DType::F16, DType::BF16]
    }
}

/// Standard normal values of `shape` in `dtype`.
pub fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    Tensor::randn(0f32, 1., shape, dev).unwrap().to_dtype(dtype).unwrap()
}

impl Case {
    /// The public function's name.
    pub fn name(&self) -> &'static str {
        self.norm.name()
    }

    /// Length of the weight and bias.
    pub fn params(&self) -> usize {
        self.norm.params(&self.shape)
    }

    /// The registry's case of these inputs (RMSNorm takes no bias; the fused residual
    /// add takes `r`).
    fn inputs(&self, x: &Tensor, w: &Tensor, b: &Tensor, r: Option<&Tensor>) -> registry::Case {
        registry::Case {
            norm: self.norm,
            x: x.clone(),
            w: Some(w.clone()),
            b: self.norm.has_bias().then(|| b.clone()),
            r: r.cloned(),
            running: None,
            eps: 1e-5,
            offset: 0.0,
        }
    }

    /// The registry's case of this norm and shape with random inputs in `dtype` on the
    /// CPU: x standard normal, a weight and a bias (as the norm takes them), a residual
    /// for the fused add, running statistics for BatchNorm's eval (the peer comparison's
    /// inputs; the other benches make their own).
    #[allow(dead_code)]
    pub fn random(&self, dtype: DType) -> registry::Case {
        let mut draw = |s: &[usize], offset: f64, scale: f64| {
            let t = Tensor::randn(offset as f32, scale as f32, s, &Device::Cpu).unwrap();
            t.to_dtype(dtype).unwrap()
        };
        registry::Case::from(&mut draw, self.norm, &self.shape, registry::Affine::WeightBias, 1e-5)
    }

    /// This crate's forward: y.
    pub fn ours(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.inputs(x, w, b, None).ours()
    }

    /// This crate's standalone fused backward; dx (dγ and dβ are computed too).
    pub fn backward(&self, x: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let grads = self.inputs(x, w, b, None).backward(dy).expect("a norm with a backward");
        Ok(grads?.dx)
    }

    /// This crate's fused residual add + norm: (y, h).
    pub fn ours_add(&self, x: &Tensor, r: &Tensor, w: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut out = self.inputs(x, w, b, Some(r)).forward(Impl::Ours)?;
        let h = out.pop().expect("y and h");
        Ok((out.pop().expect("y and h"), h))
    }

    /// The norm the fused residual add normalizes with.
    fn plain(&self) -> Case {
        Case {
            norm: self.norm.without_add(),
            shape: self.shape.clone(),
        }
    }

    /// The unfused pair: candle's add, then this crate's norm: (y, h).
    pub fn unfused_add(&self, x: &Tensor, r: &Tensor, w: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = (x + r)?;
        Ok((self.plain().ours(&h, w, b)?, h))
    }

    /// The fused residual add's standalone backward, with h used downstream: dx.
    pub fn add_backward(&self, h: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor, dh: &Tensor) -> Result<Tensor> {
        let g = match self.norm {
            Norm::AddLayer => candle_norm::add_layer_norm_backward(h, Some(w), Some(b), dy, Some(dh), 1e-5),
            _ => candle_norm::add_rms_norm_backward(h, Some(w), dy, Some(dh), 1e-5),
        }?;
        Ok(g.dx)
    }

    /// The unfused backward: this crate's norm backward, then candle's add of dh.
    pub fn unfused_add_backward(&self, h: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor, dh: &Tensor) -> Result<Tensor> {
        self.plain().backward(h, w, b, dy)? + dh
    }

    /// The composed reference, differentiable through candle autograd.
    pub fn composed(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.inputs(x, w, b, None).reference()
    }

    /// candle-nn's fused forward (no backward), for the norms it has one for.
    pub fn candle_fused(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Option<Result<Tensor>> {
        match self.norm {
            Norm::Layer => Some(candle_nn::ops::layer_norm(x, w, b, 1e-5)),
            Norm::Rms => Some(candle_nn::ops::rms_norm(x, w, 1e-5)),
            _ => None,
        }
    }
}
