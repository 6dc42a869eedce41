//! The fused residual add + norm, beyond the grid's properties (which read y alone):
//! against the unfused pair (candle's add, then this crate's norm) bit for bit, through
//! autograd and the standalone backward with h used and unused downstream, against
//! f64 finite differences with h used, and its errors; on both backends.
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

const NORMS: [Norm; 2] = [Norm::AddLayer, Norm::AddRms];

/// Which outputs the loss reads: L = Σ y·dy, Σ h·dh, or both.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Uses {
    Y,
    H,
    Both,
}

const USES: [Uses; 3] = [Uses::Y, Uses::H, Uses::Both];

/// One case: the fused op's inputs (its residual among them), and the upstream
/// gradients of y and h.
struct AddCase {
    case: Case,
    dy: Tensor,
    dh: Tensor,
}

impl AddCase {
    fn new(rng: &mut Rng, norm: Norm, shape: &[usize], dtype: DType, affine: Affine) -> Self {
        Self {
            case: Case::new(rng, norm, shape, dtype, affine, 1e-5),
            dy: rng.tensor(shape, dtype, 0.0, 1.0),
            dh: rng.tensor(shape, dtype, 0.0, 1.0),
        }
    }

    fn r(&self) -> &Tensor {
        self.case.r.as_ref().unwrap()
    }

    /// (y, h) of the fused op.
    fn fused(&self) -> (Tensor, Tensor) {
        let mut out = self.case.forward(Impl::Ours).unwrap();
        let h = out.pop().unwrap();
        (out.pop().unwrap(), h)
    }

    /// The plain norm of `h` with this case's parameters.
    fn plain(&self, h: &Tensor) -> Case {
        Case {
            norm: self.case.norm.without_add(),
            x: h.clone(),
            r: None,
            ..self.case.clone()
        }
    }

    fn what(&self, uses: Uses, backend: Backend) -> String {
        format!("{} {uses:?} {backend:?}", self.case.what())
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
        let r = Var::from_tensor(self.r()).unwrap();
        let w = c.w.as_ref().map(|t| Var::from_tensor(t).unwrap());
        let b = c.b.as_ref().map(|t| Var::from_tensor(t).unwrap());
        let (y, h) = if fused {
            let with = Case {
                x: x.as_tensor().clone(),
                r: Some(r.as_tensor().clone()),
                w: w.as_ref().map(|v| v.as_tensor().clone()),
                b: b.as_ref().map(|v| v.as_tensor().clone()),
                ..c.clone()
            };
            let mut out = with.forward(Impl::Ours).unwrap();
            let h = out.pop().unwrap();
            (out.pop().unwrap(), h)
        } else {
            let h = (x.as_tensor() + r.as_tensor()).unwrap();
            let mut plain = self.plain(&h);
            plain.w = w.as_ref().map(|v| v.as_tensor().clone());
            plain.b = b.as_ref().map(|v| v.as_tensor().clone());
            (plain.ours().unwrap(), h)
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
        let h_rounded = (&c.x + self.r()).unwrap().to_dtype(dtype).unwrap();
        let h = Var::from_tensor(&h_rounded).unwrap();
        let to = |t: &Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
        let (w, b) = (c.w.as_ref().map(to), c.b.as_ref().map(to));
        let mut plain = self.plain(h.as_tensor());
        plain.w = w.as_ref().map(|v| v.as_tensor().clone());
        plain.b = b.as_ref().map(|v| v.as_tensor().clone());
        let y = plain.reference().unwrap();
        let g = self.loss(&y, &h, uses).backward().unwrap();
        let get = |v: Option<&Var>| v.and_then(|v| g.get(v).cloned());
        [get(Some(&h)), get(w.as_ref()), get(b.as_ref())]
    }

    /// The standalone backward from h, with dh when the loss reads h.
    fn standalone(&self, h: &Tensor, uses: Uses) -> candle_norm::AddNormGrads {
        let c = &self.case;
        let dh = (uses != Uses::Y).then_some(&self.dh);
        match c.norm {
            Norm::AddLayer => candle_norm::add_layer_norm_backward(h, c.w.as_ref(), c.b.as_ref(), &self.dy, dh, c.eps),
            _ => candle_norm::add_rms_norm_backward(h, c.w.as_ref(), &self.dy, dh, c.eps),
        }
        .unwrap()
    }
}

fn cases(rng: &mut Rng) -> Vec<AddCase> {
    let mut out = Vec::new();
    for norm in NORMS {
        for &shape in SHAPES {
            for dtype in DTYPES {
                for affine in AFFINES {
                    if norm == Norm::AddRms && matches!(affine, Affine::WeightBias | Affine::Bias) {
                        continue;
                    }
                    out.push(AddCase::new(rng, norm, shape, dtype, affine));
                }
            }
        }
    }
    out
}

/// h is exactly candle's `x + residual`, and y exactly this crate's norm of that h,
/// in every dtype; y is also within the table of the slow reference.
#[test]
fn forward_is_the_unfused_pair_bit_for_bit() {
    let mut rng = Rng::new(60);
    let cases = cases(&mut rng);
    for backend in BACKENDS {
        for a in &cases {
            let c = &a.case;
            let what = a.what(Uses::Both, backend);
            let (y, h) = backend.run(|| a.fused());
            let h_unfused = (&c.x + a.r()).unwrap();
            assert_eq!((y.dims(), y.dtype()), (c.x.dims(), c.x.dtype()), "{what}: y");
            assert_eq!(bits(&h), bits(&h_unfused), "{what}: h");
            let plain = a.plain(&h_unfused);
            let y_unfused = backend.run(|| plain.ours()).unwrap();
            assert_eq!(bits(&y), bits(&y_unfused), "{what}: y");
            assert_close(
                &format!("{what}: y against the reference"),
                &y,
                &plain.reference().unwrap(),
                tol(c.x.dtype()).fwd,
            );
        }
    }
}

/// Gradients of all four inputs whether the loss reads y, h or both: within the table
/// of the reference (the gradient of h through the slow norm, plus dh), and, in f32
/// and f64, where the unfused pair rounds as the fused backward does, equal to the
/// unfused pair's bit for bit.
#[test]
fn gradients_reach_every_input_through_y_and_h() {
    let mut rng = Rng::new(61);
    let cases = cases(&mut rng);
    for backend in BACKENDS {
        for a in &cases {
            let dtype = a.case.x.dtype();
            let t = tol(dtype).bwd;
            let (_, h) = backend.run(|| a.fused());
            for uses in USES {
                let what = a.what(uses, backend);
                let [dx, dr, dw, db] = backend.run(|| a.grads(uses, true));
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
                    let unfused = backend.run(|| a.grads(uses, false));
                    for (i, (got, want)) in [Some(&dx), Some(&dr), dw.as_ref(), db.as_ref()]
                        .iter()
                        .zip(&unfused)
                        .enumerate()
                    {
                        if let (Some(g), Some(w)) = (got, want) {
                            assert_eq!(bits(g), bits(w), "{what}: input {i} against the unfused pair");
                        }
                    }
                }
                if uses == Uses::H {
                    continue;
                }
                // The standalone backward from h, with dh: autograd's bits on the
                // fused backend, within the table on the generic one.
                let g = backend.run(|| a.standalone(&h, uses));
                let pairs = [
                    ("dx", Some(&g.dx), Some(&dx)),
                    ("dresidual", Some(&g.dresidual), Some(&dr)),
                ];
                let params = [
                    ("dw", g.dweight.as_ref(), dw.as_ref()),
                    ("db", g.dbias.as_ref(), db.as_ref()),
                ];
                for (name, got, want) in pairs.into_iter().chain(params) {
                    assert_eq!(got.is_some(), want.is_some(), "{what} standalone {name}");
                    let (Some(got), Some(want)) = (got, want) else { continue };
                    match backend {
                        Backend::Fused => assert_eq!(bits(got), bits(want), "{what} standalone {name}"),
                        Backend::Generic => assert_close_max(&format!("{what} standalone {name}"), got, want, t),
                    }
                }
            }
        }
    }
}

/// Central differences in f64 of the loss with h used downstream, for every element of
/// x, residual, weight and bias (the grid's finite differences read y alone).
#[test]
fn matches_finite_differences_in_f64_with_h_used() {
    let mut rng = Rng::new(63);
    for backend in BACKENDS {
        for norm in NORMS {
            for shape in [&[3usize, 7][..], &[1, 1], &[2, 2, 5]] {
                let a = AddCase::new(&mut rng, norm, shape, DType::F64, Affine::WeightBias);
                let grads = backend.run(|| a.grads(Uses::Both, true));
                let c = &a.case;
                let inputs = [Some(&c.x), c.r.as_ref(), c.w.as_ref(), c.b.as_ref()];
                for (which, (g, base)) in grads.iter().zip(inputs).enumerate() {
                    let (Some(g), Some(base)) = (g, base) else { continue };
                    let v = to_f64(base);
                    let fd: Vec<f64> = (0..v.len())
                        .map(|i| {
                            let at = |d: f64| {
                                let mut p = v.clone();
                                p[i] += d;
                                let t = Tensor::from_vec(p, base.shape(), &Device::Cpu).unwrap();
                                let mut moved = AddCase {
                                    case: c.clone(),
                                    dy: a.dy.clone(),
                                    dh: a.dh.clone(),
                                };
                                match which {
                                    0 => moved.case.x = t,
                                    1 => moved.case.r = Some(t),
                                    2 => moved.case.w = Some(t),
                                    _ => moved.case.b = Some(t),
                                }
                                let (y, h) = backend.run(|| moved.fused());
                                a.loss(&y, &h, Uses::Both).to_scalar::<f64>().unwrap()
                            };
                            (at(1e-6) - at(-1e-6)) / 2e-6
                        })
                        .collect();
                    let fd = Tensor::from_vec(fd, g.shape(), &Device::Cpu).unwrap();
                    assert_close_max(&format!("{} input {which}", a.what(Uses::Both, backend)), g, &fd, 1e-6);
                }
            }
        }
    }
}

fn err<T: std::fmt::Debug>(r: candle_core::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Bad inputs are errors naming the op and the shapes, dtypes or devices, never panics,
/// on either backend.
#[test]
fn bad_input_is_a_clear_error() {
    for backend in BACKENDS {
        backend.run(bad_input);
    }
}

fn bad_input() {
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

/// Empty inputs give empty outputs and zero parameter gradients from the standalone
/// backward, on either backend.
#[test]
fn empty_inputs_give_empty_outputs() {
    let x = Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::ones(8, DType::F32, &Device::Cpu).unwrap();
    for backend in BACKENDS {
        let (y, h) = backend
            .run(|| candle_norm::add_rms_norm(&x, &x, Some(&w), 1e-5))
            .unwrap();
        assert_eq!((y.dims(), h.dims()), (&[0, 8][..], &[0, 8][..]), "{backend:?}");
        let g = backend
            .run(|| candle_norm::add_rms_norm_backward(&h, Some(&w), &x, Some(&x), 1e-5))
            .unwrap();
        assert_eq!(g.dx.dims(), &[0, 8], "{backend:?}");
        assert_eq!(to_f64(&g.dweight.unwrap()), vec![0.0; 8], "{backend:?}");
    }
}
