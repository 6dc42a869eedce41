//! Shared test helpers: the registry of norms (`registry.rs`, shared with the benches),
//! a seeded generator, the tolerance table, the comparisons, the two backends every
//! property runs on, and [`grid!`], which makes one `#[test]` per (norm, dtype,
//! backend) cell of a property.
#![allow(dead_code, unused_macros)]

#[macro_use]
pub mod registry;
pub use registry::*;

use candle_core::{DType, Device, Tensor};

/// Comparison tolerances for one dtype: the only place the tolerances of comparisons
/// between implementations live (finite differences, whose error is the step's, allow
/// their own 1e-6).
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

/// Where this crate's ops run in a test: the fused kernels of the device (the CPU
/// path), or the generic backend of devices without them (composed candle ops, as on
/// Metal), forced on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Fused,
    Generic,
}

pub const BACKENDS: [Backend; 2] = [Backend::Fused, Backend::Generic];

impl Backend {
    /// Runs `f` with this crate's ops on this backend.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        match self {
            Backend::Fused => f(),
            Backend::Generic => candle_norm::testing::with_generic_backend(f),
        }
    }
}

/// One `#[test]` per cell of a property `fn property(norm: Norm, dtype: DType,
/// backend: Backend)` defined in the test file, named `property::backend::norm::dtype`
/// (`reference::generic::layer::f32`), so that a failure names its cell:
///
/// ```ignore
/// grid!(reference: [layer = Norm::Layer, rms = Norm::Rms] x [f32 = F32, bf16 = BF16] x [fused = Fused]);
/// grid!(reference: every norm x [f32 = F32] x [fused = Fused, generic = Generic]);
/// ```
macro_rules! grid {
    ($property:ident: every norm x $dtypes:tt x $backends:tt) => {
        every_norm!(grid!(@every $property, $dtypes, $backends));
    };
    (@every $property:ident, $dtypes:tt, $backends:tt $norms:tt) => {
        grid!($property: $norms x $dtypes x $backends);
    };
    ($property:ident: $norms:tt x $dtypes:tt x [$($backend:ident = $b:ident),+ $(,)?]) => {
        mod $property {
            $( grid!(@backend $property, $backend, $b, $norms, $dtypes); )+
        }
    };
    (@backend $property:ident, $backend:ident, $b:ident, [$($norm:ident = $n:expr),+ $(,)?], $dtypes:tt) => {
        mod $backend {
            $( grid!(@norm $property, $b, $norm, $n, $dtypes); )+
        }
    };
    (@norm $property:ident, $b:ident, $norm:ident, $n:expr, [$($dt:ident = $d:ident),+ $(,)?]) => {
        mod $norm {
            #[allow(unused_imports)]
            use crate::common::*;
            $(
                #[test]
                fn $dt() {
                    crate::$property($n, candle_core::DType::$d, Backend::$b)
                }
            )+
        }
    };
}

impl Case {
    /// A random case of `dtype` (see [`Case::from`]).
    pub fn new(rng: &mut Rng, norm: Norm, shape: &[usize], dtype: DType, affine: Affine, eps: f64) -> Self {
        Case::from(&mut |s, o, sc| rng.tensor(s, dtype, o, sc), norm, shape, affine, eps)
    }

    /// Mixed precision: random f32 parameters (any f32 values, not only those of
    /// `dtype`) with x and the residual in `dtype`.
    pub fn mixed(rng: &mut Rng, norm: Norm, shape: &[usize], dtype: DType, affine: Affine, eps: f64) -> Self {
        let wide = Case::new(rng, norm, shape, DType::F32, affine, eps);
        Case {
            x: wide.x.to_dtype(dtype).unwrap(),
            r: wide.r.as_ref().map(|r| r.to_dtype(dtype).unwrap()),
            ..wide
        }
    }
}

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

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The values' bits, widened to f64 (exact for every float dtype).
pub fn bits(t: &Tensor) -> Vec<u64> {
    to_f64(t).iter().map(|v| v.to_bits()).collect()
}

/// Element-wise: |got − want| <= tol · (1 + |want|); both must be finite.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (to_f64(got), to_f64(want));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(a.is_finite(), "{what}: element {i} is {a}");
        assert!(b.is_finite(), "{what}: the expected element {i} is {b}");
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
        assert!(b.is_finite(), "{what}: the expected element {i} is {b}");
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

/// Each gradient of `got` within `tol` of `want`'s (norm-wise), and the same set of them.
pub fn assert_grads_close(what: &str, got: &Grads, want: &Grads, tol: f64) {
    for (name, g, w) in got.named(want) {
        assert_eq!(
            g.is_some(),
            w.is_some(),
            "{what}: {name} present in one and not the other"
        );
        if let (Some(g), Some(w)) = (g, w) {
            assert_close_max(&format!("{what} {name}"), g, w, tol);
        }
    }
}

/// The same gradients, bit for bit.
pub fn assert_grads_equal(what: &str, got: &Grads, want: &Grads) {
    for (name, g, w) in got.named(want) {
        assert_eq!(g.map(bits), w.map(bits), "{what}: {name}");
    }
}

/// Runs `f` on each backend in turn, saying on stderr which (shown if `f` fails).
pub fn on_every_backend(f: impl Fn()) {
    for backend in BACKENDS {
        eprintln!("on the {backend:?} backend");
        backend.run(&f);
    }
}
