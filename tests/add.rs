//! The fused residual add + norm: against the unfused pair (candle's add, then this
//! crate's norm) bit for bit, against the slow reference, through autograd with h used
//! and unused downstream, against f64 finite differences for all four inputs, and its
//! errors.
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;

/// Shapes from M = 1 and N = 1 to rows split across tasks (N > 65536, and N > 16384
/// with few rows), odd N and rank 1 and 3.
const SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 1],
    &[7, 13],
    &[17],
    &[2, 3, 33],
    &[40, 1000],
    &[2, 4099],
    &[2, 20000],
    &[2, 70001],
];

const NORMS: [Norm; 2] = [Norm::Layer, Norm::Rms];

/// Which outputs the loss reads: L = Σ y·dy, Σ h·dh, or both.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Uses {
    Y,
    H,
    Both,
}

const USES: [Uses; 3] = [Uses::Y, Uses::H, Uses::Both];

/// One case: the norm's inputs, the residual, and the upstream gradients of y and h.
struct AddCase {
    case: Case,
    r: Tensor,
    dy: Tensor,
    dh: Tensor,
}

impl AddCase {
    fn new(rng: &mut Rng, norm: Norm, shape: &[usize], dtype: DType, affine: Affine) -> Self {
        Self {
            case: Case::new(rng, norm, shape, dtype, affine, 1e-5),
            r: rng.tensor(shape, dtype, 0.0, 1.0),
            dy: rng.tensor(shape, dtype, 0.0, 1.0),
            dh: rng.tensor(shape, dtype, 0.0, 1.0),
        }
    }

    fn fused(&self) -> (Tensor, Tensor) {
        let c = &self.case;
        c.norm
            .ours_add(&c.x, &self.r, c.w.as_ref(), c.b.as_ref(), c.eps)
            .unwrap()
    }

    fn what(&self, uses: Uses) -> String {
        let c = &self.case;
        let affine = (c.w.is_some(), c.b.is_some());
        format!(
            "{:?} {:?} {:?} (w, b) = {affine:?} {uses:?}",
            c.norm,
            c.x.dims(),
            c.x.dtype()
        )
    }

    /// The loss that `uses` reads, from y and h.
    fn loss(&self, y: &Tensor, h: &Tensor, uses: Uses) -> Tensor {
        let part = |t: &Tensor, g: &Tensor| (t * g.to_dtype(t.dtype()).unwrap()).unwrap().sum_all().unwrap();
        match uses {
            Uses::Y => part(y, &self.dy),
            Uses::H => part(h, &self.dh),
            Uses::Both => (part(y, &self.dy) + part(h, &self.dh)).unwrap(),
        }
    }

    /// Gradients [x, residual, weight, bias] through autograd: of the fused op, or of
    /// candle's add followed by this crate's norm.
    fn grads(&self, uses: Uses, fused: bool) -> [Option<Tensor>; 4] {
        let c = &self.case;
        let x = Var::from_tensor(&c.x).unwrap();
        let r = Var::from_tensor(&self.r).unwrap();
        let w = c.w.as_ref().map(|t| Var::from_tensor(t).unwrap());
        let b = c.b.as_ref().map(|t| Var::from_tensor(t).unwrap());
        let (y, h) = if fused {
            c.norm.ours_add(&x, &r, w.as_deref(), b.as_deref(), c.eps).unwrap()
        } else {
            let h = (x.as_tensor() + r.as_tensor()).unwrap();
            (c.norm.ours(&h, w.as_deref(), b.as_deref(), c.eps).unwrap(), h)
        };
        let g = self.loss(&y, &h, uses).backward().unwrap();
        let get = |v: Option<&Var>| v.and_then(|v| g.get(v).cloned());
        [get(Some(&x)), get(Some(&r)), get(w.as_ref()), get(b.as_ref())]
    }

    /// Reference gradients [h, weight, bias] in `dtype` (f32 for f16/bf16 inputs),
    /// through the slow reference norm of h = x + r rounded to the input dtype, as
    /// the contract defines it.
    fn reference_grads(&self, uses: Uses) -> [Option<Tensor>; 3] {
        let c = &self.case;
        let dtype = if c.x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let h_rounded = (&c.x + &self.r).unwrap().to_dtype(dtype).unwrap();
        let h = Var::from_tensor(&h_rounded).unwrap();
        let to = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
        let (w, b) = (c.w.as_ref().map(to), c.b.as_ref().map(to));
        let y = c.norm.reference(&h, w.as_deref(), b.as_deref(), c.eps).unwrap();
        let g = self.loss(&y, &h, uses).backward().unwrap();
        let get = |v: Option<&Var>| v.and_then(|v| g.get(v).cloned());
        [get(Some(&h)), get(w.as_ref()), get(b.as_ref())]
    }
}

fn cases(rng: &mut Rng) -> Vec<AddCase> {
    let mut out = Vec::new();
    for norm in NORMS {
        for &shape in SHAPES {
            for dtype in DTYPES {
                for affine in AFFINES {
                    if norm == Norm::Rms && matches!(affine, Affine::WeightBias | Affine::Bias) {
                        continue;
                    }
                    out.push(AddCase::new(rng, norm, shape, dtype, affine));
                }
            }
        }
    }
    out
}

fn bits(t: &Tensor) -> Vec<u64> {
    to_f64(t).iter().map(|v| v.to_bits()).collect()
}

/// h is exactly candle's `x + residual`, and y exactly this crate's norm of that h,
/// in every dtype; y is also within the table of the slow reference.
#[test]
fn forward_is_the_unfused_pair_bit_for_bit() {
    let mut rng = Rng::new(60);
    for a in cases(&mut rng) {
        let c = &a.case;
        let what = a.what(Uses::Both);
        let (y, h) = a.fused();
        let h_unfused = (&c.x + &a.r).unwrap();
        assert_eq!((y.dims(), y.dtype()), (c.x.dims(), c.x.dtype()), "{what}: y");
        assert_eq!(bits(&h), bits(&h_unfused), "{what}: h");
        let y_unfused = c.norm.ours(&h_unfused, c.w.as_ref(), c.b.as_ref(), c.eps).unwrap();
        assert_eq!(bits(&y), bits(&y_unfused), "{what}: y");
        let y_ref = c.norm.reference(&h_unfused, c.w.as_ref(), c.b.as_ref(), c.eps).unwrap();
        assert_close(
            &format!("{what}: y against the reference"),
            &y,
            &y_ref,
            tol(c.x.dtype()).fwd,
        );
    }
}

/// Gradients of all four inputs whether the loss reads y, h or both: within the table
/// of the reference (the gradient of h through the slow norm, plus dh), and, in f32
/// and f64, where the unfused pair rounds as the fused backward does, equal to the
/// unfused pair's bit for bit.
#[test]
fn gradients_reach_every_input_through_y_and_h() {
    let mut rng = Rng::new(61);
    for a in cases(&mut rng) {
        let dtype = a.case.x.dtype();
        let t = tol(dtype).bwd;
        for uses in USES {
            let what = a.what(uses);
            let [dx, dr, dw, db] = a.grads(uses, true);
            let (dx, dr) = (dx.unwrap(), dr.unwrap());
            let [rdh, rdw, rdb] = a.reference_grads(uses);
            assert_eq!(dx.dtype(), dtype, "{what}");
            assert_close_max(&format!("{what} dx"), &dx, rdh.as_ref().unwrap(), t);
            assert_eq!(bits(&dx), bits(&dr), "{what}: dx and dresidual");
            for (name, got, want) in [("dw", &dw, &rdw), ("db", &db, &rdb)] {
                match (got, want) {
                    (Some(g), Some(w)) => assert_close_max(&format!("{what} {name}"), g, w, t),
                    // y unused: the parameters get zero gradients, or none.
                    (Some(g), None) => assert!(to_f64(g).iter().all(|&v| v == 0.0), "{what} {name}"),
                    (None, w) => assert!(w.is_none(), "{what}: {name} dropped"),
                }
            }
            if matches!(dtype, DType::F32 | DType::F64) {
                let unfused = a.grads(uses, false);
                for (i, (got, want)) in [Some(dx), Some(dr), dw, db].iter().zip(&unfused).enumerate() {
                    if let (Some(g), Some(w)) = (got, want) {
                        assert_eq!(bits(g), bits(w), "{what}: input {i} against the unfused pair");
                    }
                }
            }
        }
    }
}

/// The standalone backward runs the kernel autograd runs: the same gradients bit for
/// bit, with dh given (h used downstream) or not.
#[test]
fn standalone_backward_equals_autograd() {
    let mut rng = Rng::new(62);
    for a in cases(&mut rng) {
        let c = &a.case;
        let (_, h) = a.fused();
        for uses in [Uses::Y, Uses::Both] {
            let what = a.what(uses);
            let dh = (uses == Uses::Both).then_some(&a.dh);
            let g = c
                .norm
                .add_backward(&h, c.w.as_ref(), c.b.as_ref(), &a.dy, dh, c.eps)
                .unwrap();
            let [dx, dr, dw, db] = a.grads(uses, true);
            assert_eq!(bits(&g.dx), bits(&dx.unwrap()), "{what} dx");
            assert_eq!(bits(&g.dresidual), bits(&dr.unwrap()), "{what} dresidual");
            for (name, got, want) in [("dw", &g.dweight, &dw), ("db", &g.dbias, &db)] {
                assert_eq!(got.is_some(), want.is_some(), "{what} {name}");
                if let (Some(g), Some(w)) = (got, want) {
                    assert_eq!(bits(g), bits(w), "{what} {name}");
                }
            }
        }
    }
}

/// Central differences in f64 of the loss, for every element of x, residual, weight
/// and bias, with h used downstream and not.
#[test]
fn matches_finite_differences_in_f64() {
    let mut rng = Rng::new(63);
    for norm in NORMS {
        for shape in [&[3usize, 7][..], &[1, 1], &[2, 2, 5]] {
            let a = AddCase::new(&mut rng, norm, shape, DType::F64, Affine::WeightBias);
            for uses in [Uses::Y, Uses::Both] {
                let grads = a.grads(uses, true);
                let inputs = [Some(&a.case.x), Some(&a.r), a.case.w.as_ref(), a.case.b.as_ref()];
                for (which, (g, base)) in grads.iter().zip(inputs).enumerate() {
                    let (Some(g), Some(base)) = (g, base) else { continue };
                    let v = to_f64(base);
                    let fd: Vec<f64> = (0..v.len())
                        .map(|i| {
                            let at = |d: f64| {
                                let mut p = v.clone();
                                p[i] += d;
                                let t = Tensor::from_vec(p, base.shape(), &Device::Cpu).unwrap();
                                let mut ins = [a.case.x.clone(), a.r.clone()];
                                let (mut w, mut b) = (a.case.w.clone(), a.case.b.clone());
                                match which {
                                    0 | 1 => ins[which] = t,
                                    2 => w = Some(t),
                                    _ => b = Some(t),
                                }
                                let (y, h) = norm
                                    .ours_add(&ins[0], &ins[1], w.as_ref(), b.as_ref(), a.case.eps)
                                    .unwrap();
                                a.loss(&y, &h, uses).to_scalar::<f64>().unwrap()
                            };
                            (at(1e-6) - at(-1e-6)) / 2e-6
                        })
                        .collect();
                    let fd = Tensor::from_vec(fd, g.shape(), &Device::Cpu).unwrap();
                    assert_close_max(&format!("{} input {which}", a.what(uses)), g, &fd, 1e-6);
                }
            }
        }
    }
}

/// dγ, dβ and dx of the fused backward are the same bit for bit from run to run, on
/// rows held whole and on split rows.
#[test]
fn gradients_are_deterministic() {
    let mut rng = Rng::new(64);
    for shape in [&[300usize, 2048][..], &[4, 100_000]] {
        let a = AddCase::new(&mut rng, Norm::Layer, shape, DType::F32, Affine::WeightBias);
        let first = a.grads(Uses::Both, true);
        let second = a.grads(Uses::Both, true);
        for (g1, g2) in first.iter().zip(&second) {
            assert_eq!(bits(g1.as_ref().unwrap()), bits(g2.as_ref().unwrap()), "{shape:?}");
        }
    }
}

fn err<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Bad inputs are errors naming the op and the shapes, dtypes or devices, never panics.
#[test]
fn bad_input_is_a_clear_error() {
    let t = |shape: &[usize], dtype: DType| Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
    let (x, w) = (t(&[2, 8], DType::F32), t(&[8], DType::F32));
    let e = err(candle_norm::add_layer_norm(
        &x,
        &t(&[2, 9], DType::F32),
        Some(&w),
        None,
        1e-5,
    ));
    assert!(
        e.contains("add_layer_norm") && e.contains("residual") && e.contains("[2, 9]"),
        "{e}"
    );
    let e = err(candle_norm::add_rms_norm(&x, &t(&[2, 8], DType::F16), Some(&w), 1e-5));
    assert!(
        e.contains("add_rms_norm") && e.contains("residual") && e.contains("F16"),
        "{e}"
    );
    let e = err(candle_norm::add_rms_norm(&x, &x, Some(&t(&[9], DType::F32)), 1e-5));
    assert!(
        e.contains("add_rms_norm") && e.contains("weight") && e.contains("[9]"),
        "{e}"
    );
    let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
    let e = err(candle_norm::add_layer_norm(&scalar, &scalar, None, None, 1e-5));
    assert!(e.contains("add_layer_norm") && e.contains("rank"), "{e}");
    let e = err(candle_norm::add_layer_norm(&x, &x, None, None, -1.0));
    assert!(e.contains("add_layer_norm") && e.contains("eps"), "{e}");
    let e = err(candle_norm::add_layer_norm(
        &t(&[2, 8], DType::U32),
        &t(&[2, 8], DType::U32),
        None,
        None,
        1e-5,
    ));
    assert!(e.contains("add_layer_norm") && e.contains("dtype"), "{e}");
    let e = err(candle_norm::add_layer_norm_backward(
        &x,
        Some(&w),
        None,
        &t(&[2, 7], DType::F32),
        None,
        1e-5,
    ));
    assert!(
        e.contains("add_layer_norm") && e.contains("dy") && e.contains("[2, 7]"),
        "{e}"
    );
    let e = err(candle_norm::add_rms_norm_backward(
        &x,
        Some(&w),
        &x,
        Some(&t(&[2, 8], DType::BF16)),
        1e-5,
    ));
    assert!(
        e.contains("add_rms_norm") && e.contains("dh") && e.contains("BF16"),
        "{e}"
    );
}

/// Empty inputs give empty outputs and zero parameter gradients.
#[test]
fn empty_inputs_give_empty_outputs() {
    let x = Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
    let (y, h) = candle_norm::add_rms_norm(&x, &x, Some(&w), 1e-5).unwrap();
    assert_eq!((y.dims(), h.dims()), (&[0, 8][..], &[0, 8][..]));
    let g = candle_norm::add_rms_norm_backward(&h, Some(&w), &x, Some(&x), 1e-5).unwrap();
    assert_eq!(g.dx.dims(), &[0, 8]);
    assert_eq!(to_f64(&g.dweight.unwrap()), vec![0.0; 8]);
}
