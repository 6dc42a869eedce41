//! The weight-side norms as layers: a layer whose weight is reparametrized on every
//! forward, its raw parameters stored under PyTorch's names.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// A 2-D convolution whose weight is standardized on every forward
/// ([`crate::weight_standardization`]): each output filter has mean 0 and variance 1
/// over its input channels and kernel window before the convolution, as in Qiao et
/// al.'s "Weight Standardization" (2019), which pairs it with GroupNorm for small
/// batches. The stored weight is the raw one, so checkpoints keep PyTorch's names and
/// shapes (`weight` `[out, in/groups, k, k]`, `bias` `[out]`), and gradients flow to it
/// through the standardization.
#[derive(Clone, Debug)]
pub struct WsConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    eps: f64,
}

impl WsConv2d {
    /// A convolution with raw weight `weight` (`[out, in/groups, kh, kw]`), an optional
    /// bias `[out]`, candle-nn's convolution settings and the standardization's eps.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig, eps: f64) -> Self {
        Self {
            weight,
            bias,
            config,
            eps,
        }
    }

    /// The raw (unstandardized) weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Padding, stride, dilation and groups.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// The eps added to each filter's variance inside the square root.
    pub fn eps(&self) -> f64 {
        self.eps
    }
}

impl Module for WsConv2d {
    /// Standardizes the weight, then convolves `x` (`[B, in, H, W]`) as
    /// `candle_nn::Conv2d` does. Errors as [`crate::weight_standardization`] and the
    /// convolution do.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = crate::weight_standardization(&self.weight, self.eps)?;
        candle_nn::Conv2d::new(w, self.bias.clone(), self.config).forward(x)
    }
}

/// Builds a [`WsConv2d`] from `vb` with the tensor names and initializations of
/// `candle_nn::conv2d` (`weight`, `bias`), and eps 1e-5.
///
/// # Errors
/// A tensor missing from a checkpoint or of another shape, or `groups` of 0.
pub fn ws_conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<WsConv2d> {
    if config.groups == 0 {
        candle_core::bail!("ws_conv2d: groups must be > 0")
    }
    let conv = candle_nn::conv2d(in_channels, out_channels, kernel_size, config, vb)?;
    Ok(WsConv2d::new(conv.weight().clone(), conv.bias().cloned(), config, 1e-5))
}

/// A layer with a weight that [`WeightNorm`] can reparametrize: candle-nn's `Linear` and
/// `Conv2d`.
pub trait WeightedLayer: Module {
    /// The layer's weight.
    fn weight(&self) -> &Tensor;
    /// The same layer (bias, configuration) with another weight of the same shape.
    fn with_weight(&self, weight: Tensor) -> Self;
}

impl WeightedLayer for candle_nn::Linear {
    fn weight(&self) -> &Tensor {
        candle_nn::Linear::weight(self)
    }

    fn with_weight(&self, weight: Tensor) -> Self {
        candle_nn::Linear::new(weight, self.bias().cloned())
    }
}

impl WeightedLayer for candle_nn::Conv2d {
    fn weight(&self) -> &Tensor {
        candle_nn::Conv2d::weight(self)
    }

    fn with_weight(&self, weight: Tensor) -> Self {
        candle_nn::Conv2d::new(weight, self.bias().cloned(), *self.config())
    }
}

/// Weight normalization of a layer's weight ([`crate::weight_norm`]): the layer's own
/// weight is the direction `v`, and every forward uses `w = g · v / ‖v‖`, so gradients
/// reach `g` and `v`. As PyTorch's `torch.nn.utils.weight_norm`, whose checkpoint names
/// the builders read ([`weight_norm_linear`], [`weight_norm_conv2d`]).
#[derive(Clone, Debug)]
pub struct WeightNorm<L> {
    layer: L,
    g: Tensor,
    dim: Option<usize>,
}

impl<L: WeightedLayer> WeightNorm<L> {
    /// Wraps `layer`, whose weight becomes `v`, with magnitude `g` (shape: see
    /// [`crate::weight_norm`]) and the axis `dim` that keeps one norm per slice
    /// (PyTorch's default is `Some(0)`: one per output unit).
    ///
    /// # Errors
    /// As [`crate::weight_norm`] for this `v`, `g` and `dim`.
    pub fn new(layer: L, g: Tensor, dim: Option<usize>) -> Result<Self> {
        crate::weight_norm(layer.weight(), &g, dim)?;
        Ok(Self { layer, g, dim })
    }

    /// The weight the layer runs with, `g · v / ‖v‖`.
    ///
    /// # Errors
    /// Those of the candle ops that compute it.
    pub fn weight(&self) -> Result<Tensor> {
        crate::weight_norm(self.layer.weight(), &self.g, self.dim)
    }

    /// The magnitude `g`.
    pub fn g(&self) -> &Tensor {
        &self.g
    }

    /// The direction `v` (the wrapped layer's stored weight).
    pub fn v(&self) -> &Tensor {
        self.layer.weight()
    }

    /// The axis with one norm per slice, or `None` for one norm of the whole weight.
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }
}

impl<L: WeightedLayer> Module for WeightNorm<L> {
    /// The wrapped layer's forward with the normalized weight.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.layer.with_weight(self.weight()?).forward(x)
    }
}

/// PyTorch's two checkpoint layouts of a weight-normalized weight, as (g, v) names:
/// `torch.nn.utils.weight_norm` and `torch.nn.utils.parametrizations.weight_norm`.
const WEIGHT_NORM_NAMES: [(&str, &str); 2] = [
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
];

/// `g` (of `[out, 1, ...]`, one norm per output unit) and `v` from `vb`, under whichever
/// of PyTorch's names it holds; created as `weight_g` (ones) and `weight_v` (candle-nn's
/// Kaiming-normal weight init) when it holds neither.
fn load_gv(v_shape: &[usize], vb: &VarBuilder) -> Result<(Tensor, Tensor)> {
    let (g_name, v_name) = WEIGHT_NORM_NAMES
        .into_iter()
        .find(|(g, v)| vb.contains_tensor(g) && vb.contains_tensor(v))
        .unwrap_or(WEIGHT_NORM_NAMES[0]);
    let mut g_shape = vec![1; v_shape.len()];
    g_shape[0] = v_shape[0];
    let v = vb.get_with_hints(v_shape, v_name, candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let g = vb.get_with_hints(g_shape, g_name, candle_nn::Init::Const(1.))?;
    Ok((g, v))
}

/// The bias `[out]` of a layer from `vb`, named and initialized as candle-nn's `linear`
/// and `conv2d` do (uniform in ±1/√fan_in).
fn bias(out: usize, fan_in: usize, vb: &VarBuilder) -> Result<Tensor> {
    let bound = 1. / (fan_in as f64).sqrt();
    vb.get_with_hints(out, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })
}

/// A weight-normalized `Linear` from `vb`: `weight_g` `[out, 1]` and `weight_v`
/// `[out, in]` (or their `parametrizations.weight.original0/1` names) and `bias`
/// `[out]`, `dim = Some(0)`. A new layer starts with `g` = 1, so each output unit's
/// weight has norm 1 (PyTorch instead sets `g` to the norm of the weight it wraps).
///
/// # Errors
/// A tensor missing from a checkpoint or of another shape.
pub fn weight_norm_linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<WeightNorm<candle_nn::Linear>> {
    let (g, v) = load_gv(&[out_dim, in_dim], &vb)?;
    let bias = bias(out_dim, in_dim, &vb)?;
    WeightNorm::new(candle_nn::Linear::new(v, Some(bias)), g, Some(0))
}

/// A weight-normalized `Conv2d` from `vb`, as [`weight_norm_linear`]: `weight_g`
/// `[out, 1, 1, 1]`, `weight_v` `[out, in/groups, k, k]`, `bias` `[out]`.
///
/// # Errors
/// A tensor missing from a checkpoint or of another shape, or `groups` of 0.
pub fn weight_norm_conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    config: Conv2dConfig,
    vb: VarBuilder,
) -> Result<WeightNorm<candle_nn::Conv2d>> {
    if config.groups == 0 {
        candle_core::bail!("weight_norm_conv2d: groups must be > 0")
    }
    let (g, v) = load_gv(
        &[out_channels, in_channels / config.groups, kernel_size, kernel_size],
        &vb,
    )?;
    let bias = bias(out_channels, in_channels, &vb)?;
    WeightNorm::new(candle_nn::Conv2d::new(v, Some(bias), config), g, Some(0))
}

/// `t / max(‖t‖, eps)`, as PyTorch's `F.normalize`.
fn normalize(t: &Tensor, eps: f64) -> Result<Tensor> {
    let norm = t.sqr()?.sum_all()?.sqrt()?.maximum(eps)?;
    t.broadcast_div(&norm)
}

/// Spectral normalization of a layer's weight (Miyato et al. 2018), as PyTorch's
/// `torch.nn.utils.spectral_norm` with `dim = 0`: the layer runs with `W / σ(W)`, σ the
/// largest singular value of `W` seen as `[out, rest]`, estimated by power iteration.
/// The vectors `u` (`[out]`) and `v` (`[rest]`) persist between calls: each training
/// forward ([`candle_core::ModuleT::forward_t`] with `train`) first runs `n_power_iterations` steps
/// `v = normalize(Wᵀu)`, `u = normalize(Wv)`; an eval forward uses them as they are.
/// σ = uᵀWv with `u` and `v` held constant, so the gradient reaches `W` through σ and
/// the division only. `u` and `v` are buffers, not variables: save them with
/// [`SpectralNorm::buffers`] next to the `VarMap`.
#[derive(Clone, Debug)]
pub struct SpectralNorm<L> {
    layer: L,
    uv: std::sync::Arc<std::sync::Mutex<(Tensor, Tensor)>>,
    n_power_iterations: usize,
    eps: f64,
}

impl<L: WeightedLayer> SpectralNorm<L> {
    /// Wraps `layer`, whose weight becomes `weight_orig`, with the power-iteration state
    /// `u` `[out]` and `v` `[rest]` (say, from a checkpoint, or random), the number of
    /// steps per training forward (PyTorch's default is 1) and the eps of the
    /// normalizations (PyTorch's default is 1e-12).
    ///
    /// # Errors
    /// `u` or `v` of the wrong length, dtype or device, or a weight of rank 0.
    pub fn new(layer: L, u: Tensor, v: Tensor, n_power_iterations: usize, eps: f64) -> Result<Self> {
        let w = layer.weight();
        let (out, rest) = w.flatten_from(1)?.dims2()?;
        for (name, t, n) in [("u", &u, out), ("v", &v, rest)] {
            if t.dims() != [n] {
                candle_core::bail!(
                    "spectral_norm: {name} has shape {:?}, expected [{n}] for a weight of shape {:?}",
                    t.dims(),
                    w.dims()
                )
            }
            crate::check::like("spectral_norm", t, name, w, "the weight")?;
        }
        Ok(Self {
            layer,
            uv: std::sync::Arc::new(std::sync::Mutex::new((u, v))),
            n_power_iterations,
            eps,
        })
    }

    /// The weight the layer runs with, `W / σ(W)`, after the power iterations of a
    /// training forward when `train`.
    ///
    /// # Errors
    /// Those of the candle ops that compute it.
    pub fn weight_t(&self, train: bool) -> Result<Tensor> {
        let w = self.layer.weight();
        let mat = w.flatten_from(1)?;
        let mut uv = self.uv.lock().unwrap_or_else(|e| e.into_inner());
        if train {
            let m = mat.detach();
            for _ in 0..self.n_power_iterations {
                let v = normalize(&m.t()?.matmul(&uv.0.unsqueeze(1)?)?.squeeze(1)?, self.eps)?;
                let u = normalize(&m.matmul(&v.unsqueeze(1)?)?.squeeze(1)?, self.eps)?;
                *uv = (u, v);
            }
        }
        let (u, v) = (uv.0.detach(), uv.1.detach());
        let sigma = u.unsqueeze(0)?.matmul(&mat.matmul(&v.unsqueeze(1)?)?)?.reshape(())?;
        w.broadcast_div(&sigma)
    }

    /// The unnormalized weight (`weight_orig`).
    pub fn weight_orig(&self) -> &Tensor {
        self.layer.weight()
    }

    /// The power-iteration state under PyTorch's names, `weight_u` and `weight_v`, for
    /// saving beside the variables.
    pub fn buffers(&self) -> [(&'static str, Tensor); 2] {
        let uv = self.uv.lock().unwrap_or_else(|e| e.into_inner());
        [("weight_u", uv.0.clone()), ("weight_v", uv.1.clone())]
    }
}

impl<L: WeightedLayer> candle_core::ModuleT for SpectralNorm<L> {
    /// The wrapped layer's forward with `W / σ(W)`; `train` runs the power iterations
    /// first.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.layer.with_weight(self.weight_t(train)?).forward(x)
    }
}

/// A spectrally normalized `Linear` from `vb`, with PyTorch's names: `weight_orig`
/// `[out, in]`, `bias` `[out]`, and the buffers `weight_u` `[out]` and `weight_v`
/// `[in]` (drawn at random and normalized when `vb` does not hold them), eps 1e-12.
///
/// # Errors
/// A tensor missing from a checkpoint or of another shape.
pub fn spectral_norm_linear(
    in_dim: usize,
    out_dim: usize,
    n_power_iterations: usize,
    vb: VarBuilder,
) -> Result<SpectralNorm<candle_nn::Linear>> {
    let eps = 1e-12;
    let w = vb.get_with_hints(
        (out_dim, in_dim),
        "weight_orig",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bias = bias(out_dim, in_dim, &vb)?;
    let randn = candle_nn::Init::Randn { mean: 0., stdev: 1. };
    let u = normalize(&vb.get_with_hints(out_dim, "weight_u", randn)?, eps)?;
    let v = normalize(&vb.get_with_hints(in_dim, "weight_v", randn)?, eps)?;
    SpectralNorm::new(candle_nn::Linear::new(w, Some(bias)), u, v, n_power_iterations, eps)
}
