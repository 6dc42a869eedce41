//! The registry of this crate's norms, shared by the tests and the benches (which
//! include this file): each norm's inputs, its ops (this crate's, the composed
//! reference, the standalone backward, autograd through either), and the shapes each
//! property of the tests runs it at. A new norm is one more variant here, its cases in
//! the lists, and its entry in [`every_norm!`] (and in [`every_jvp_norm!`] with a
//! forward-mode derivative, [`every_kernel_norm!`] once it has CUDA kernels).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_norm::reference;

/// One of this crate's norms, with its group count for GroupNorm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    Layer,
    /// LayerNorm over the channels of `[B, C, *spatial]`.
    LayerFirst,
    Rms,
    /// GroupNorm over `[B, C, *spatial]`.
    Group(usize),
    /// GroupNorm over `[B, *spatial, C]`.
    GroupLast(usize),
    /// GroupNorm followed by SiLU, channels-first.
    GroupSilu(usize),
    /// GroupNorm followed by SiLU, channels-last.
    GroupLastSilu(usize),
    /// InstanceNorm: a group per channel.
    Instance,
    /// BatchNorm in training, with the batch's statistics.
    Batch,
    /// BatchNorm in eval, with running statistics.
    BatchEval,
    /// The residual add fused with LayerNorm: y of h = x + residual.
    AddLayer,
    /// The residual add fused with RMSNorm.
    AddRms,
}

impl Norm {
    /// The public function's name.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Layer => "layer_norm",
            Norm::LayerFirst => "layer_norm_channels_first",
            Norm::Rms => "rms_norm",
            Norm::Group(_) => "group_norm",
            Norm::GroupLast(_) => "group_norm_channels_last",
            Norm::GroupSilu(_) => "group_norm_silu",
            Norm::GroupLastSilu(_) => "group_norm_channels_last_silu",
            Norm::Instance => "instance_norm",
            Norm::Batch => "batch_norm",
            Norm::BatchEval => "batch_norm_eval",
            Norm::AddLayer => "add_layer_norm",
            Norm::AddRms => "add_rms_norm",
        }
    }

    /// Whether `other` is the same norm, whatever its group count.
    pub fn is(self, other: Norm) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }

    /// Length of the affine parameters for an input of `shape`: the last dimension, or
    /// the channels of channels-first input.
    pub fn params(self, shape: &[usize]) -> usize {
        match self {
            Norm::LayerFirst | Norm::Group(_) | Norm::GroupSilu(_) | Norm::Instance | Norm::Batch | Norm::BatchEval => {
                shape[1]
            }
            _ => *shape.last().unwrap(),
        }
    }

    /// Whether the norm takes a bias (RMSNorm has none).
    pub fn has_bias(self) -> bool {
        !matches!(self, Norm::Rms | Norm::AddRms)
    }

    /// The GroupNorm a norm with SiLU after it runs first.
    pub fn without_silu(self) -> Norm {
        match self {
            Norm::GroupSilu(g) => Norm::Group(g),
            Norm::GroupLastSilu(g) => Norm::GroupLast(g),
            n => n,
        }
    }

    /// The plain norm a fused residual add normalizes h with.
    pub fn without_add(self) -> Norm {
        match self {
            Norm::AddLayer => Norm::Layer,
            Norm::AddRms => Norm::Rms,
            n => n,
        }
    }
}

/// Which affine parameters a case has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Affine {
    None,
    Weight,
    WeightBias,
    Bias,
}

pub const AFFINES: [Affine; 4] = [Affine::None, Affine::Weight, Affine::WeightBias, Affine::Bias];

/// Which implementation runs a case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Impl {
    /// This crate's op.
    Ours,
    /// The composed reference (`candle_norm::reference`).
    Reference,
}

/// A case: a norm's inputs and options.
#[derive(Clone, Debug)]
pub struct Case {
    pub norm: Norm,
    pub x: Tensor,
    pub w: Option<Tensor>,
    pub b: Option<Tensor>,
    /// The fused residual add's second input.
    pub r: Option<Tensor>,
    /// BatchNorm eval's running mean and variance.
    pub running: Option<[Tensor; 2]>,
    pub eps: f64,
    /// The row norms' weight offset (`RowNorm::with_weight_offset`): y = x̂·(offset + w).
    pub offset: f64,
}

/// Gradients of a case's inputs.
#[derive(Clone, Debug)]
pub struct Grads {
    pub dx: Tensor,
    pub dw: Option<Tensor>,
    pub db: Option<Tensor>,
    /// Of the fused residual add's residual.
    pub dr: Option<Tensor>,
}

impl Grads {
    /// Each gradient beside the same of `other`, with its name.
    pub fn named<'a>(&'a self, other: &'a Grads) -> [(&'static str, Option<&'a Tensor>, Option<&'a Tensor>); 4] {
        [
            ("dx", Some(&self.dx), Some(&other.dx)),
            ("dw", self.dw.as_ref(), other.dw.as_ref()),
            ("db", self.db.as_ref(), other.db.as_ref()),
            ("dresidual", self.dr.as_ref(), other.dr.as_ref()),
        ]
    }
}

/// A tensor of `offset + scale · N(0, 1)` values.
type Draw<'a> = &'a mut dyn FnMut(&[usize], f64, f64) -> Tensor;

impl Case {
    /// Random inputs: x ~ N(0, 1), a weight around 1 and a bias around 0 as `affine`
    /// asks (no bias for RMSNorm), a residual for the fused add, running statistics
    /// for BatchNorm's eval.
    pub fn from(draw: Draw, norm: Norm, shape: &[usize], affine: Affine, eps: f64) -> Self {
        let x = draw(shape, 0.0, 1.0);
        let p = norm.params(shape);
        let w = matches!(affine, Affine::Weight | Affine::WeightBias).then(|| draw(&[p], 1.0, 0.5));
        let b = (norm.has_bias() && matches!(affine, Affine::WeightBias | Affine::Bias)).then(|| draw(&[p], 0.0, 0.5));
        let r = matches!(norm, Norm::AddLayer | Norm::AddRms).then(|| draw(shape, 0.0, 1.0));
        let running = (norm == Norm::BatchEval).then(|| [draw(&[p], 0.0, 1.0), draw(&[p], 1.0, 0.25).abs().unwrap()]);
        // candle-nn's references take eps as f32: give both sides the same value.
        Self {
            norm,
            x,
            w,
            b,
            r,
            running,
            eps: eps as f32 as f64,
            offset: 0.0,
        }
    }

    /// The same case with weight offset `offset` (row norms with a weight).
    pub fn with_offset(&self, offset: f64) -> Self {
        Self { offset, ..self.clone() }
    }

    /// The same case with its parameters (weight, bias, running statistics) in `dtype`:
    /// f32 parameters with half-precision x are mixed precision.
    pub fn with_params_dtype(&self, dtype: DType) -> Self {
        let cv = |t: &Tensor| t.to_dtype(dtype).unwrap();
        Self {
            w: self.w.as_ref().map(cv),
            b: self.b.as_ref().map(cv),
            running: self.running.as_ref().map(|[m, v]| [cv(m), cv(v)]),
            ..self.clone()
        }
    }

    /// This crate's row norm (LayerNorm or RMSNorm, of x or of the fused add's h) with
    /// the case's weight offset.
    fn row<'a>(&self, w: Option<&'a Tensor>, b: Option<&'a Tensor>) -> candle_norm::RowNorm<'a> {
        let op = match self.norm.without_add() {
            Norm::Layer => candle_norm::RowNorm::layer(w, b, self.eps),
            _ => candle_norm::RowNorm::rms(w, self.eps),
        };
        op.with_weight_offset(self.offset)
    }

    /// The case's output tensors: y; then h for the fused add; the batch mean and
    /// variance for BatchNorm in training.
    pub fn forward(&self, imp: Impl) -> Result<Vec<Tensor>> {
        self.forward_of(imp, &self.x, self.w.as_ref(), self.b.as_ref(), self.r.as_ref())
    }

    /// y alone, of this crate's op.
    pub fn ours(&self) -> Result<Tensor> {
        Ok(self.forward(Impl::Ours)?.swap_remove(0))
    }

    /// y alone, of the reference.
    pub fn reference(&self) -> Result<Tensor> {
        Ok(self.forward(Impl::Reference)?.swap_remove(0))
    }

    fn forward_of(
        &self,
        imp: Impl,
        x: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        r: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let eps = self.eps;
        let running = self.running.as_ref();
        let c = x.dims().get(1).copied().unwrap_or(1);
        if self.offset != 0.0 {
            return match imp {
                Impl::Ours => match self.norm {
                    Norm::AddLayer | Norm::AddRms => {
                        let (y, h) = self.row(w, b).forward_add(x, r.expect("residual"))?;
                        Ok(vec![y, h])
                    }
                    _ => Ok(vec![self.row(w, b).forward(x)?]),
                },
                // The reference of γ + offset.
                Impl::Reference => {
                    let plain = Case {
                        offset: 0.0,
                        ..self.clone()
                    };
                    let w = w.map(|w| w + self.offset).transpose()?;
                    plain.forward_of(imp, x, w.as_ref(), b, r)
                }
            };
        }
        Ok(match (imp, self.norm) {
            (Impl::Ours, Norm::Layer) => vec![candle_norm::layer_norm(x, w, b, eps)?],
            (Impl::Ours, Norm::LayerFirst) => vec![candle_norm::layer_norm_channels_first(x, w, b, eps)?],
            (Impl::Ours, Norm::Rms) => vec![candle_norm::rms_norm(x, w, eps)?],
            (Impl::Ours, Norm::Group(g)) => vec![candle_norm::group_norm(x, g, w, b, eps)?],
            (Impl::Ours, Norm::GroupLast(g)) => vec![candle_norm::group_norm_channels_last(x, g, w, b, eps)?],
            (Impl::Ours, Norm::GroupSilu(g)) => vec![candle_norm::group_norm_silu(x, g, w, b, eps)?],
            (Impl::Ours, Norm::GroupLastSilu(g)) => vec![candle_norm::group_norm_channels_last_silu(x, g, w, b, eps)?],
            (Impl::Ours, Norm::Instance) => vec![candle_norm::instance_norm(x, w, b, eps)?],
            (Impl::Ours, Norm::Batch) => {
                let (y, m, v) = candle_norm::batch_norm_train(x, w, b, eps)?;
                vec![y, m, v]
            }
            (Impl::Ours, Norm::BatchEval) => {
                let [m, v] = running.expect("running statistics");
                vec![candle_norm::batch_norm_eval(x, m, v, w, b, eps)?]
            }
            (Impl::Ours, Norm::AddLayer) => {
                let (y, h) = candle_norm::add_layer_norm(x, r.expect("residual"), w, b, eps)?;
                vec![y, h]
            }
            (Impl::Ours, Norm::AddRms) => {
                let (y, h) = candle_norm::add_rms_norm(x, r.expect("residual"), w, eps)?;
                vec![y, h]
            }
            (Impl::Reference, Norm::Layer) => vec![reference::layer_norm(x, w, b, eps)?],
            // The reference LayerNorm of x with its channels moved last, moved back.
            (Impl::Reference, Norm::LayerFirst) => {
                let r = x.rank();
                let last: Vec<usize> = [0].into_iter().chain(2..r).chain([1]).collect();
                let back: Vec<usize> = [0, r - 1].into_iter().chain(1..r - 1).collect();
                let y = reference::layer_norm(&x.permute(last)?.contiguous()?, w, b, eps)?;
                vec![y.permute(back)?.contiguous()?]
            }
            (Impl::Reference, Norm::Rms) => vec![reference::rms_norm(x, w, eps)?],
            (Impl::Reference, Norm::Group(g)) => vec![reference::group_norm(x, g, w, b, eps)?],
            (Impl::Reference, Norm::GroupLast(g)) => vec![reference::group_norm_channels_last(x, g, w, b, eps)?],
            // candle's silu after the reference GroupNorm.
            (Impl::Reference, Norm::GroupSilu(_) | Norm::GroupLastSilu(_)) => {
                let plain = Case {
                    norm: self.norm.without_silu(),
                    ..self.clone()
                };
                vec![plain.forward_of(imp, x, w, b, r)?.swap_remove(0).silu()?]
            }
            (Impl::Reference, Norm::Instance) => vec![reference::group_norm(x, c, w, b, eps)?],
            (Impl::Reference, Norm::Batch) => {
                let (y, m, v) = reference::batch_norm_train(x, w, b, eps)?;
                vec![y, m, v]
            }
            (Impl::Reference, Norm::BatchEval) => {
                let [m, v] = running.expect("running statistics");
                vec![reference::batch_norm_eval(x, m, v, w, b, eps)?]
            }
            (Impl::Reference, Norm::AddLayer | Norm::AddRms) => {
                // h rounded to x's dtype, as the contract defines it.
                let h = (x + r.expect("residual").to_dtype(x.dtype())?)?;
                let y = match self.norm {
                    Norm::AddLayer => reference::layer_norm(&h, w, b, eps)?,
                    _ => reference::rms_norm(&h, w, eps)?,
                };
                vec![y, h]
            }
        })
    }

    /// `(y, ẏ)` of this crate's `*_jvp` along the tangents `[ẋ, γ̇, β̇]` (absent: zero),
    /// or None for a norm without one (the fused residual adds, a weight offset).
    pub fn jvp(&self, [tx, tw, tb]: [Option<&Tensor>; 3]) -> Option<Result<(Tensor, Tensor)>> {
        let t = candle_norm::Tangents {
            x: tx,
            weight: tw,
            bias: tb,
        };
        let (x, w, b, eps) = (&self.x, self.w.as_ref(), self.b.as_ref(), self.eps);
        if self.offset != 0.0 {
            return None;
        }
        Some(match self.norm {
            Norm::Layer => candle_norm::layer_norm_jvp(x, w, b, eps, t),
            Norm::LayerFirst => candle_norm::layer_norm_channels_first_jvp(x, w, b, eps, t),
            Norm::Rms => candle_norm::rms_norm_jvp(x, w, eps, t),
            Norm::Group(g) => candle_norm::group_norm_jvp(x, g, w, b, eps, t),
            Norm::GroupLast(g) => candle_norm::group_norm_channels_last_jvp(x, g, w, b, eps, t),
            Norm::Instance => candle_norm::instance_norm_jvp(x, w, b, eps, t),
            Norm::Batch => candle_norm::batch_norm_jvp(x, w, b, eps, t),
            Norm::BatchEval => {
                let [m, v] = self.running.as_ref().expect("running statistics");
                candle_norm::batch_norm_eval_jvp(x, m, v, w, b, eps, t)
            }
            Norm::AddLayer | Norm::AddRms | Norm::GroupSilu(_) | Norm::GroupLastSilu(_) => return None,
        })
    }

    /// Gradients of L = Σ y·dy through autograd of `imp`, in the case's dtype (dy is
    /// converted to it).
    pub fn grads(&self, dy: &Tensor, imp: Impl) -> Result<Grads> {
        let var = |t: &Tensor| Var::from_tensor(t);
        let x = var(&self.x)?;
        let w = self.w.as_ref().map(var).transpose()?;
        let b = self.b.as_ref().map(var).transpose()?;
        let r = self.r.as_ref().map(var).transpose()?;
        let out = self.forward_of(imp, &x, w.as_deref(), b.as_deref(), r.as_deref())?;
        let y = &out[0];
        let g = (y * dy.to_dtype(y.dtype())?)?.sum_all()?.backward()?;
        let get = |v: &Var| {
            g.get(v)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{:?}: gradient dropped", self.norm)))
        };
        Ok(Grads {
            dx: get(&x)?,
            dw: w.as_ref().map(get).transpose()?,
            db: b.as_ref().map(get).transpose()?,
            dr: r.as_ref().map(get).transpose()?,
        })
    }

    /// This crate's standalone backward, outside autograd; `None` for BatchNorm in
    /// eval, which has none.
    pub fn backward(&self, dy: &Tensor) -> Option<Result<Grads>> {
        let (x, w, b, eps) = (&self.x, self.w.as_ref(), self.b.as_ref(), self.eps);
        let plain = |g: candle_norm::NormGrads| Grads {
            dx: g.dx,
            dw: g.dweight,
            db: g.dbias,
            dr: None,
        };
        let add = |g: candle_norm::AddNormGrads| Grads {
            dx: g.dx,
            dw: g.dweight,
            db: g.dbias,
            dr: Some(g.dresidual),
        };
        let h = || x + self.r.as_ref().expect("residual");
        if self.offset != 0.0 {
            return Some(match self.norm {
                Norm::AddLayer | Norm::AddRms => h().and_then(|h| self.row(w, b).backward_add(&h, dy, None).map(add)),
                _ => self.row(w, b).backward(x, dy).map(plain),
            });
        }
        Some(match self.norm {
            Norm::Layer => candle_norm::layer_norm_backward(x, w, b, dy, eps).map(plain),
            Norm::LayerFirst => candle_norm::layer_norm_channels_first_backward(x, w, b, dy, eps).map(plain),
            Norm::Rms => candle_norm::rms_norm_backward(x, w, dy, eps).map(plain),
            Norm::Group(g) => candle_norm::group_norm_backward(x, g, w, b, dy, eps).map(plain),
            Norm::GroupLast(g) => candle_norm::group_norm_channels_last_backward(x, g, w, b, dy, eps).map(plain),
            Norm::GroupSilu(g) => candle_norm::group_norm_silu_backward(x, g, w, b, dy, eps).map(plain),
            Norm::GroupLastSilu(g) => {
                candle_norm::group_norm_channels_last_silu_backward(x, g, w, b, dy, eps).map(plain)
            }
            Norm::Instance => candle_norm::instance_norm_backward(x, w, b, dy, eps).map(plain),
            Norm::Batch => candle_norm::batch_norm_backward(x, w, b, dy, eps).map(plain),
            Norm::BatchEval => return None,
            Norm::AddLayer => h().and_then(|h| candle_norm::add_layer_norm_backward(&h, w, b, dy, None, eps).map(add)),
            Norm::AddRms => h().and_then(|h| candle_norm::add_rms_norm_backward(&h, w, dy, None, eps).map(add)),
        })
    }

    /// The same case with `f` applied to every tensor.
    pub fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        Self {
            norm: self.norm,
            x: f(&self.x),
            w: self.w.as_ref().map(&f),
            b: self.b.as_ref().map(&f),
            r: self.r.as_ref().map(&f),
            running: self.running.as_ref().map(|[m, v]| [f(m), f(v)]),
            eps: self.eps,
            offset: self.offset,
        }
    }

    /// The same case with every tensor converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Self {
        self.map(|t| t.to_dtype(dtype).unwrap())
    }

    /// The same case in a wider `dtype`, for a reference: for the fused residual add,
    /// x is replaced by h = x + residual rounded to the case's dtype, as the contract
    /// defines it, and the residual by zeros (the gradients of x and the residual are
    /// both the gradient of h).
    pub fn widened(&self, dtype: DType) -> Self {
        let mut c = self.clone();
        if let Some(r) = &self.r {
            c.x = (&self.x + r).unwrap();
            c.r = Some(r.zeros_like().unwrap());
        }
        c.to_dtype(dtype)
    }

    /// The same case with every tensor moved to `dev`.
    pub fn to_device(&self, dev: &Device) -> Self {
        self.map(|t| t.to_device(dev).unwrap())
    }

    /// A short description: norm, shape, dtype, which parameters are given (and their
    /// dtype when it is not x's), and a weight offset.
    pub fn what(&self) -> String {
        let params = [&self.w, &self.b].into_iter().flatten().next().map(Tensor::dtype);
        let mixed = match params {
            Some(p) if p != self.x.dtype() => format!(" with {p:?} parameters"),
            _ => String::new(),
        };
        let offset = if self.offset != 0.0 {
            format!(" weight offset {}", self.offset)
        } else {
            String::new()
        };
        format!(
            "{:?} {:?} {:?} (weight, bias) = ({}, {}){mixed}{offset}",
            self.norm,
            self.x.dims(),
            self.x.dtype(),
            self.w.is_some(),
            self.b.is_some()
        )
    }
}

/// The shapes each norm is checked at against the reference, forward and backward:
/// rows from M = 1 and N = 1 to N = 131072 (cut into chunks), odd N and N off every
/// vector width, rank 1 to 4; groups with 0 to 3 spatial dimensions, G = 1 and G = C,
/// a group larger than a chunk; channels-last without spatial dimensions, 1×1, C = 1
/// and many channels; BatchNorm with B = 1, C = 1 and 2^20 values a channel.
pub const REFERENCE_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[1, 1]),
    (Norm::Layer, &[3, 1]),
    (Norm::Layer, &[1, 8]),
    (Norm::Layer, &[7, 13]),
    (Norm::Layer, &[5, 1000]),
    (Norm::Layer, &[2, 4099]),
    (Norm::Layer, &[17]),
    (Norm::Layer, &[2, 3, 4, 33]),
    (Norm::Layer, &[33, 768]),
    (Norm::Layer, &[2, 20000]),
    (Norm::Layer, &[1, 131072]),
    (Norm::Layer, &[3, 70001]),
    (Norm::Layer, &[1, 4095]),
    (Norm::Layer, &[4097, 1]),
    (Norm::LayerFirst, &[1, 1]),
    (Norm::LayerFirst, &[2, 3]),
    (Norm::LayerFirst, &[3, 1, 9]),
    (Norm::LayerFirst, &[2, 5, 7]),
    (Norm::LayerFirst, &[2, 4, 3, 3, 3]),
    (Norm::LayerFirst, &[2, 32, 9, 9]),
    (Norm::LayerFirst, &[2, 64, 40, 40]),
    (Norm::LayerFirst, &[1, 600, 5]),
    (Norm::LayerFirst, &[1, 2000, 17]),
    (Norm::LayerFirst, &[2, 96, 56, 56]),
    (Norm::Rms, &[1, 1]),
    (Norm::Rms, &[3, 1]),
    (Norm::Rms, &[7, 13]),
    (Norm::Rms, &[2, 4099]),
    (Norm::Rms, &[17]),
    (Norm::Rms, &[2, 3, 4, 33]),
    (Norm::Rms, &[40, 1000]),
    (Norm::Rms, &[1, 131072]),
    (Norm::Rms, &[3, 70001]),
    (Norm::Rms, &[4097, 1]),
    (Norm::Group(3), &[2, 6]),
    (Norm::Group(2), &[2, 6, 5]),
    (Norm::Group(4), &[2, 8, 4, 4]),
    (Norm::Group(2), &[1, 4, 3, 3, 3]),
    (Norm::Group(1), &[2, 4, 5, 5]),
    (Norm::Group(4), &[2, 4, 3, 3]),
    (Norm::Group(1), &[3, 1, 7]),
    (Norm::Group(1), &[1, 4, 100, 100]),
    (Norm::Group(32), &[2, 64, 8, 8]),
    (Norm::Group(3), &[2, 6, 9999]),
    (Norm::GroupLast(3), &[2, 6]),
    (Norm::GroupLast(2), &[2, 5, 6]),
    (Norm::GroupLast(4), &[2, 4, 4, 8]),
    (Norm::GroupLast(2), &[1, 3, 3, 3, 4]),
    (Norm::GroupLast(2), &[4, 1, 1, 8]),
    (Norm::GroupLast(1), &[3, 7, 1]),
    (Norm::GroupLast(1), &[1, 100, 100, 4]),
    (Norm::GroupLast(32), &[1, 16, 16, 64]),
    (Norm::GroupLast(3), &[2, 9999, 6]),
    (Norm::GroupLast(10), &[2, 7, 1000]),
    (Norm::GroupSilu(3), &[2, 6]),
    (Norm::GroupSilu(2), &[2, 6, 5]),
    (Norm::GroupSilu(4), &[2, 8, 4, 4]),
    (Norm::GroupSilu(1), &[1, 4, 100, 100]),
    (Norm::GroupSilu(32), &[2, 64, 8, 8]),
    (Norm::GroupSilu(3), &[2, 6, 9999]),
    (Norm::GroupLastSilu(3), &[2, 6]),
    (Norm::GroupLastSilu(2), &[2, 5, 6]),
    (Norm::GroupLastSilu(1), &[1, 100, 100, 4]),
    (Norm::GroupLastSilu(32), &[1, 16, 16, 64]),
    (Norm::GroupLastSilu(10), &[2, 7, 1000]),
    (Norm::Instance, &[2, 3, 5, 7]),
    (Norm::Instance, &[1, 1, 9]),
    (Norm::Instance, &[3, 4, 2, 2, 2]),
    (Norm::Instance, &[1, 8, 100, 100]),
    (Norm::Batch, &[1, 3, 4, 4]),
    (Norm::Batch, &[5, 4, 1, 1]),
    (Norm::Batch, &[3, 7, 5]),
    (Norm::Batch, &[6, 1, 3, 3]),
    (Norm::Batch, &[8, 3]),
    (Norm::Batch, &[2, 5, 3, 4, 2]),
    (Norm::Batch, &[4, 2, 512, 512]),
    // Rows of 49 gathered 41 samples to a piece (two pieces a channel, the second of 23
    // samples), and rows of 2500, a piece each.
    (Norm::Batch, &[64, 3, 7, 7]),
    (Norm::Batch, &[3, 2, 50, 50]),
    (Norm::BatchEval, &[1, 3, 4, 4]),
    (Norm::BatchEval, &[1, 1]),
    (Norm::BatchEval, &[3, 7, 5]),
    (Norm::BatchEval, &[8, 3]),
    (Norm::BatchEval, &[2, 5, 3, 4, 2]),
    (Norm::BatchEval, &[64, 3, 7, 7]),
    (Norm::AddLayer, &[1, 1]),
    (Norm::AddLayer, &[3, 1]),
    (Norm::AddLayer, &[7, 13]),
    (Norm::AddLayer, &[17]),
    (Norm::AddLayer, &[2, 3, 33]),
    (Norm::AddLayer, &[40, 1000]),
    (Norm::AddLayer, &[2, 4099]),
    (Norm::AddLayer, &[2, 20000]),
    (Norm::AddLayer, &[2, 70001]),
    (Norm::AddRms, &[1, 1]),
    (Norm::AddRms, &[7, 13]),
    (Norm::AddRms, &[2, 3, 33]),
    (Norm::AddRms, &[40, 1000]),
    (Norm::AddRms, &[2, 20000]),
    (Norm::AddRms, &[2, 70001]),
];

/// Small shapes for f64 finite differences, one input element at a time.
pub const FINITE_DIFFERENCE_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[3, 7]),
    (Norm::Layer, &[1, 1]),
    (Norm::Layer, &[2, 2, 5]),
    (Norm::LayerFirst, &[2, 3, 4]),
    (Norm::LayerFirst, &[1, 2, 2, 2]),
    (Norm::LayerFirst, &[3, 5]),
    (Norm::Rms, &[3, 7]),
    (Norm::Rms, &[1, 1]),
    (Norm::Group(2), &[2, 4, 3]),
    (Norm::Group(1), &[1, 2, 2, 2]),
    (Norm::Group(3), &[2, 3]),
    (Norm::GroupLast(2), &[2, 3, 4]),
    (Norm::GroupLast(1), &[1, 2, 2, 2]),
    (Norm::GroupLast(3), &[2, 3]),
    (Norm::GroupSilu(2), &[2, 4, 3]),
    (Norm::GroupSilu(3), &[2, 3]),
    (Norm::GroupLastSilu(2), &[2, 3, 4]),
    (Norm::GroupLastSilu(1), &[1, 2, 2, 2]),
    (Norm::Instance, &[2, 3, 4]),
    (Norm::Batch, &[3, 2, 4]),
    (Norm::Batch, &[2, 3]),
    (Norm::BatchEval, &[3, 2, 4]),
    (Norm::AddLayer, &[3, 7]),
    (Norm::AddRms, &[2, 5]),
];

/// Shapes whose data breaks naive code (large offset against small spread, large
/// magnitudes): long rows and groups. BatchNorm in eval computes no statistics; for it
/// the data checks the rounding of large values, over few enough of them that dγ
/// (Σdy·x̂ with x̂ near 1e4) stays within f16's range.
pub const HARD_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[9, 1023]),
    (Norm::LayerFirst, &[3, 257, 9]),
    (Norm::LayerFirst, &[2, 4, 257]),
    (Norm::Rms, &[9, 1023]),
    (Norm::Group(2), &[3, 4, 257]),
    (Norm::GroupLast(2), &[3, 257, 4]),
    (Norm::GroupSilu(2), &[3, 4, 257]),
    (Norm::GroupLastSilu(2), &[3, 257, 4]),
    (Norm::Instance, &[3, 4, 257]),
    (Norm::Batch, &[9, 3, 257]),
    (Norm::BatchEval, &[1, 3, 2]),
    (Norm::AddLayer, &[9, 1023]),
    (Norm::AddRms, &[9, 1023]),
];

/// Data that breaks naive code, as (name, offset, spread).
pub const HARD_DATA: [(&str, f64, f64); 3] = [
    ("offset 1000, spread 0.1", 1000.0, 0.1),
    ("magnitude 1e4", 0.0, 1e4),
    ("offset 1e4, spread 1e-2", 1e4, 1e-2),
];

/// Shapes for bitwise repeatability: enough rows and channels to split the work over
/// every task and chunk (channels-last: many tiles a sample).
pub const DETERMINISM_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[300, 2048]),
    (Norm::Layer, &[4, 100000]),
    (Norm::LayerFirst, &[4, 96, 56, 56]),
    (Norm::Rms, &[64, 4099]),
    (Norm::Group(1), &[2, 8, 128, 64]),
    (Norm::GroupLast(4), &[2, 128, 64, 8]),
    (Norm::GroupLast(8), &[4, 96, 96, 64]),
    (Norm::GroupSilu(1), &[2, 8, 128, 64]),
    (Norm::GroupLastSilu(8), &[4, 96, 96, 64]),
    (Norm::Instance, &[2, 8, 64, 64]),
    (Norm::Batch, &[8, 16, 32, 32]),
    (Norm::BatchEval, &[8, 16, 32, 32]),
    (Norm::AddLayer, &[64, 4099]),
    (Norm::AddRms, &[300, 2048]),
];

/// Shapes for the CPU's instruction levels: short and long rows, rows split into
/// chunks, GroupNorm segments, lengths that leave a tail in every vector width.
pub const CPU_LEVEL_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[7, 1]),
    (Norm::Layer, &[5, 37]),
    (Norm::Layer, &[3, 4099]),
    (Norm::Layer, &[1, 40_000]),
    (Norm::LayerFirst, &[3, 37, 4, 5]),
    (Norm::LayerFirst, &[2, 300, 33]),
    (Norm::Rms, &[9, 1023]),
    (Norm::Rms, &[2, 70_001]),
    (Norm::Group(2), &[3, 4, 257]),
    (Norm::Group(4), &[2, 8, 5, 5]),
    (Norm::GroupLast(2), &[3, 37, 4]),
    (Norm::GroupLast(4), &[2, 5, 5, 1000]),
    (Norm::GroupSilu(2), &[3, 4, 257]),
    (Norm::GroupSilu(1), &[1, 4, 100, 100]),
    (Norm::GroupLastSilu(2), &[3, 37, 4]),
    (Norm::GroupLastSilu(4), &[2, 5, 5, 1000]),
    (Norm::Instance, &[2, 4, 5, 5]),
    (Norm::Batch, &[3, 4, 257]),
    (Norm::Batch, &[2, 8, 5, 5]),
    (Norm::BatchEval, &[3, 4, 257]),
    (Norm::AddLayer, &[5, 37]),
    (Norm::AddLayer, &[3, 4099]),
    (Norm::AddRms, &[9, 1023]),
    (Norm::AddRms, &[2, 70_001]),
];

/// The cases of `list` for the norm `norm` (of any group count); a list with none is a
/// mistake in the list, not a pass.
pub fn cases_of(list: &'static [(Norm, &'static [usize])], norm: Norm) -> Vec<(Norm, &'static [usize])> {
    let cases: Vec<_> = list.iter().copied().filter(|(n, _)| n.is(norm)).collect();
    assert!(!cases.is_empty(), "no case of {norm:?} in this list");
    cases
}

/// Every norm, as the `name = Norm` pairs of a test grid (`grid!(property: every norm
/// x ...)`): calls `$m!($($args)* [layer = Norm::Layer, ...])`. Group counts of 0 stand
/// for any (`Norm::is`).
#[allow(unused_macros)]
macro_rules! every_norm {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)* [
            layer = Norm::Layer, layer_first = Norm::LayerFirst, rms = Norm::Rms, group = Norm::Group(0),
            group_last = Norm::GroupLast(0), group_silu = Norm::GroupSilu(0), group_last_silu = Norm::GroupLastSilu(0),
            instance = Norm::Instance, batch = Norm::Batch, batch_eval = Norm::BatchEval,
            add_layer = Norm::AddLayer, add_rms = Norm::AddRms,
        ]);
    };
}

/// Every norm with a forward-mode derivative (`*_jvp`), as the `name = Norm` pairs of
/// a grid: all but the fused residual adds and GroupNorm + SiLU.
#[allow(unused_macros)]
macro_rules! every_jvp_norm {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)* [
            layer = Norm::Layer, layer_first = Norm::LayerFirst, rms = Norm::Rms, group = Norm::Group(2),
            group_last = Norm::GroupLast(2), instance = Norm::Instance, batch = Norm::Batch, batch_eval = Norm::BatchEval,
        ]);
    };
}

/// Every norm the CUDA kernels take, as the `name = Norm` pairs of a grid: all but
/// channels-first LayerNorm, which has no kernels (on CUDA it runs the generic backend).
#[allow(unused_macros)]
macro_rules! every_kernel_norm {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)* [
            layer = Norm::Layer, rms = Norm::Rms, group = Norm::Group(0), group_last = Norm::GroupLast(0),
            group_silu = Norm::GroupSilu(0), group_last_silu = Norm::GroupLastSilu(0),
            instance = Norm::Instance, batch = Norm::Batch, batch_eval = Norm::BatchEval,
            add_layer = Norm::AddLayer, add_rms = Norm::AddRms,
        ]);
    };
}
