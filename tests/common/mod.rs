//! Shared test helpers: a seeded generator, the three ops (and the fused residual add)
//! behind one enum, the reference gradients, and the tolerance table.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};

/// Comparison tolerances for one dtype: the only place tolerances live.
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    /// Forward: |ours − ref| <= fwd · (1 + |ref|), element-wise.
    pub fwd: f64,
    /// Backward: max |ours − ref| <= bwd · max(1, max |ref|), per gradient.
    pub bwd: f64,
}

/// The tolerance table. f16/bf16: a few units of their last place (2^-11, 2^-8), as the
/// reference rounds two or three times and we round once; f32 and f64: summation-order
/// differences over rows of up to 131072 elements.
pub fn tol(dtype: DType) -> Tol {
    match dtype {
        DType::F64 => Tol { fwd: 1e-9, bwd: 1e-9 },
        DType::F32 => Tol { fwd: 1e-4, bwd: 1e-4 },
        DType::F16 => Tol { fwd: 4e-3, bwd: 4e-3 },
        DType::BF16 => Tol { fwd: 3e-2, bwd: 3e-2 },
        dt => panic!("no tolerance for {dt:?}"),
    }
}

/// Unit roundoff of a dtype (half an ulp of 1).
pub fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F32 => f32::EPSILON as f64 / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        dt => panic!("no roundoff for {dt:?}"),
    }
}

pub const DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F64];

/// Data that breaks naive code, as (name, offset, spread): large offset with small
/// spread, large magnitudes.
pub const HARD_DATA: [(&str, f64, f64); 3] = [
    ("offset 1000, spread 0.1", 1000.0, 0.1),
    ("magnitude 1e4", 0.0, 1e4),
    ("offset 1e4, spread 1e-2", 1e4, 1e-2),
];

/// The norms the hard-data tests run, each with its shape.
pub const HARD_CASES: [(Norm, &[usize]); 4] = [
    (Norm::Layer, &[9, 1023]),
    (Norm::Rms, &[9, 1023]),
    (Norm::Group(2), &[3, 4, 257]),
    (Norm::GroupLast(2), &[3, 257, 4]),
];

/// SplitMix64: reproducible data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// A tensor of `offset + scale · N(0, 1)` values in `dtype`.
    pub fn tensor(&mut self, shape: &[usize], dtype: DType, offset: f64, scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| offset + scale * self.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
}

/// One of the norms, with its group count for GroupNorm (channels-first, and
/// channels-last: x of shape `[B, *spatial, C]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    Layer,
    Rms,
    Group(usize),
    GroupLast(usize),
}

impl Norm {
    /// Length of the affine parameters for input `x`.
    pub fn params(self, shape: &[usize]) -> usize {
        match self {
            Norm::Group(_) => shape[1],
            _ => *shape.last().unwrap(),
        }
    }

    pub fn has_bias(self) -> bool {
        self != Norm::Rms
    }

    /// This crate's fused op.
    pub fn ours(self, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        match self {
            Norm::Layer => candle_norm::layer_norm(x, w, b, eps),
            Norm::Rms => candle_norm::rms_norm(x, w, eps),
            Norm::Group(g) => candle_norm::group_norm(x, g, w, b, eps),
            Norm::GroupLast(g) => candle_norm::group_norm_channels_last(x, g, w, b, eps),
        }
    }

    /// This crate's fused residual add + norm, (y, h) (LayerNorm and RMSNorm only).
    pub fn ours_add(
        self,
        x: &Tensor,
        r: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor)> {
        match self {
            Norm::Layer => candle_norm::add_layer_norm(x, r, w, b, eps),
            Norm::Rms => candle_norm::add_rms_norm(x, r, w, eps),
            Norm::Group(_) | Norm::GroupLast(_) => panic!("GroupNorm has no residual add"),
        }
    }

    /// The standalone backward of [`Norm::ours_add`], from h.
    pub fn add_backward(
        self,
        h: &Tensor,
        w: Option<&Tensor>,
        b: Option<&Tensor>,
        dy: &Tensor,
        dh: Option<&Tensor>,
        eps: f64,
    ) -> Result<candle_norm::AddNormGrads> {
        match self {
            Norm::Layer => candle_norm::add_layer_norm_backward(h, w, b, dy, dh, eps),
            Norm::Rms => candle_norm::add_rms_norm_backward(h, w, dy, dh, eps),
            Norm::Group(_) | Norm::GroupLast(_) => panic!("GroupNorm has no residual add"),
        }
    }

    /// The composed-op reference.
    pub fn reference(self, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> Result<Tensor> {
        use candle_norm::reference as r;
        match self {
            Norm::Layer => r::layer_norm(x, w, b, eps),
            Norm::Rms => r::rms_norm(x, w, eps),
            Norm::Group(g) => r::group_norm(x, g, w, b, eps),
            Norm::GroupLast(g) => r::group_norm_channels_last(x, g, w, b, eps),
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

/// A full test case: inputs and options.
#[derive(Clone)]
pub struct Case {
    pub norm: Norm,
    pub x: Tensor,
    pub w: Option<Tensor>,
    pub b: Option<Tensor>,
    pub eps: f64,
}

impl Case {
    /// Random x (N(0,1)), weight around 1 and bias around 0, as the affine asks.
    pub fn new(rng: &mut Rng, norm: Norm, shape: &[usize], dtype: DType, affine: Affine, eps: f64) -> Self {
        let x = rng.tensor(shape, dtype, 0.0, 1.0);
        let p = norm.params(shape);
        let w = matches!(affine, Affine::Weight | Affine::WeightBias).then(|| rng.tensor(&[p], dtype, 1.0, 0.5));
        let b = (norm.has_bias() && matches!(affine, Affine::WeightBias | Affine::Bias))
            .then(|| rng.tensor(&[p], dtype, 0.0, 0.5));
        // candle-nn's references take eps as f32: give both sides the same value.
        Self {
            norm,
            x,
            w,
            b,
            eps: eps as f32 as f64,
        }
    }

    pub fn ours(&self) -> Result<Tensor> {
        self.norm.ours(&self.x, self.w.as_ref(), self.b.as_ref(), self.eps)
    }

    pub fn reference(&self) -> Result<Tensor> {
        self.norm.reference(&self.x, self.w.as_ref(), self.b.as_ref(), self.eps)
    }

    /// This crate's standalone backward, outside autograd.
    pub fn backward(&self, dy: &Tensor) -> Result<candle_norm::NormGrads> {
        let (x, w, b) = (&self.x, self.w.as_ref(), self.b.as_ref());
        match self.norm {
            Norm::Layer => candle_norm::layer_norm_backward(x, w, b, dy, self.eps),
            Norm::Rms => candle_norm::rms_norm_backward(x, w, dy, self.eps),
            Norm::Group(g) => candle_norm::group_norm_backward(x, g, w, b, dy, self.eps),
            Norm::GroupLast(g) => candle_norm::group_norm_channels_last_backward(x, g, w, b, dy, self.eps),
        }
    }

    /// The same case with `f` applied to every tensor.
    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Self {
        Self {
            norm: self.norm,
            x: f(&self.x),
            w: self.w.as_ref().map(&f),
            b: self.b.as_ref().map(&f),
            eps: self.eps,
        }
    }

    /// The same case with every tensor converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Self {
        self.map(|t| t.to_dtype(dtype).unwrap())
    }

    /// The same case with every tensor moved to `dev`.
    pub fn to_device(&self, dev: &Device) -> Self {
        self.map(|t| t.to_device(dev).unwrap())
    }

    /// Gradients (dx, dw, db) of sum(f(x, w, b) · dy) through candle autograd.
    pub fn grads(
        &self,
        dy: &Tensor,
        f: impl Fn(Norm, &Tensor, Option<&Tensor>, Option<&Tensor>, f64) -> Result<Tensor>,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let x = Var::from_tensor(&self.x)?;
        let w = self.w.as_ref().map(Var::from_tensor).transpose()?;
        let b = self.b.as_ref().map(Var::from_tensor).transpose()?;
        let y = f(self.norm, x.as_tensor(), w.as_deref(), b.as_deref(), self.eps)?;
        let g = (y * dy.to_dtype(self.x.dtype())?)?.sum_all()?.backward()?;
        let get = |v: &Var| {
            g.get(v)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("gradient dropped".into()))
        };
        Ok((
            get(&x)?,
            w.as_ref().map(get).transpose()?,
            b.as_ref().map(get).transpose()?,
        ))
    }
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Element-wise: |got − want| <= tol · (1 + |want|); both must be finite.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (to_f64(got), to_f64(want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: got {a}, want {b} (tol {tol})"
        );
    }
}

/// Norm-wise: max |got − want| <= tol · max(1, max |want|); both must be finite.
pub fn assert_close_max(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (to_f64(got), to_f64(want));
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        if (a - b).abs() > worst {
            (worst, at) = ((a - b).abs(), i);
        }
    }
    assert!(
        worst <= tol * scale,
        "{what}: max error {worst} at {at} (got {}, want {}), allowed {}",
        g[at],
        w[at],
        tol * scale
    );
}
