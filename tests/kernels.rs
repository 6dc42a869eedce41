//! The CUDA kernels against the CPU path on the same inputs: the forward, the
//! gradients of x, weight and bias through autograd and from the standalone backward
//! (and of the residual, for the fused residual add), every dtype, shapes that reach
//! every kernel path and its limits, misaligned inputs, and bitwise-deterministic
//! parameter gradients.
//!
//! Each test runs on every target this build has: a GPU (feature `cuda`, when one is
//! present) and the CPU emulator standing for an H100 (feature `cuda-emulator`), which
//! runs the same kernels with the same launches and checks every memory access. Shapes
//! of a million elements and more run on a GPU only; the emulator covers the same paths
//! with fewer rows. Without either feature there is nothing to test.
#![cfg(any(feature = "cuda", feature = "cuda-emulator"))]
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;

/// Where the kernels run.
#[derive(Clone, Debug)]
enum Target {
    #[cfg(feature = "cuda")]
    Gpu(Device),
    #[cfg(feature = "cuda-emulator")]
    Emulated(candle_norm::emulator::Gpu),
}

/// The targets of this build: the GPU when there is one, and the emulated H100.
fn targets() -> Vec<Target> {
    #[cfg(feature = "cuda")]
    let gpu = match Device::new_cuda(0) {
        Ok(d) => Some(Target::Gpu(d)),
        Err(e) => {
            eprintln!("no CUDA device, the GPU target is skipped ({e})");
            None
        }
    };
    #[cfg(not(feature = "cuda"))]
    let gpu = None;
    #[cfg(feature = "cuda-emulator")]
    let emulated = Some(Target::Emulated(candle_norm::emulator::Gpu::H100));
    #[cfg(not(feature = "cuda-emulator"))]
    let emulated = None;
    gpu.into_iter().chain(emulated).collect()
}

impl Target {
    /// The device the inputs live on.
    fn device(&self) -> Device {
        match self {
            #[cfg(feature = "cuda")]
            Target::Gpu(d) => d.clone(),
            #[cfg(feature = "cuda-emulator")]
            Target::Emulated(_) => Device::Cpu,
        }
    }

    /// Runs `f`, whose ops on this target's tensors then run the CUDA kernels.
    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            #[cfg(feature = "cuda")]
            Target::Gpu(_) => f(),
            #[cfg(feature = "cuda-emulator")]
            Target::Emulated(gpu) => candle_norm::emulator::run(*gpu, f),
        }
    }

    fn on(&self, t: &Tensor) -> Tensor {
        t.to_device(&self.device()).unwrap()
    }

    fn is_gpu(&self) -> bool {
        match self {
            #[cfg(feature = "cuda")]
            Target::Gpu(_) => true,
            #[cfg(feature = "cuda-emulator")]
            Target::Emulated(_) => false,
        }
    }
}

/// Shapes of this many elements and more run on a GPU only.
const HUGE: usize = 1 << 20;

/// Whether `shape` runs on target `t`.
fn runs_on(t: &Target, shape: &[usize]) -> bool {
    t.is_gpu() || shape.iter().product::<usize>() < HUGE
}

fn ours(n: Norm, x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f64) -> candle_core::Result<Tensor> {
    n.ours(x, w, b, eps)
}

/// Forward and backward (through autograd) of `case` on the target against the CPU.
fn check(t: &Target, case: &Case, rng: &mut Rng) {
    let dtype = case.x.dtype();
    let what = format!("{t:?} {:?} {:?} {dtype:?}", case.norm, case.x.dims());
    let g = case.to_device(&t.device());
    let tl = tol(dtype);
    assert_close(
        &format!("{what} forward"),
        &t.run(|| g.ours()).unwrap(),
        &case.ours().unwrap(),
        tl.fwd,
    );
    let dy = rng.tensor(case.x.dims(), dtype, 0.0, 1.0);
    let (cdx, cdw, cdb) = case.grads(&dy, ours).unwrap();
    let (gdx, gdw, gdb) = t.run(|| g.grads(&t.on(&dy), ours)).unwrap();
    assert_close_max(&format!("{what} dx"), &gdx, &cdx, tl.bwd);
    if let (Some(a), Some(b)) = (gdw, cdw) {
        assert_close_max(&format!("{what} dw"), &a, &b, tl.bwd);
    }
    if let (Some(a), Some(b)) = (gdb, cdb) {
        assert_close_max(&format!("{what} db"), &a, &b, tl.bwd);
    }
}

const GPU_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// N at and around every path limit: warp team (N <= 1024 forward, 512 backward), block
/// team in registers (16 384 forward, 8 192 backward), multi-pass above, up to 2^20;
/// odd N on the scalar paths around their own limits (warp N <= 384 forward, 256
/// backward; block 6 144 forward, 4 096 backward); M = 1, and odd element counts.
/// Where N is a multiple of every vector width, x is also tried misaligned, which takes
/// the scalar path at that N.
const ROW_SHAPES: &[&[usize]] = &[
    &[1, 1],
    &[3, 7],
    &[9, 255],
    &[9, 257],
    &[7, 383],
    &[7, 385],
    &[4, 4095],
    &[4, 4097],
    &[3, 6143],
    &[3, 6145],
    &[64, 512],
    &[65, 513],
    &[33, 1024],
    &[8, 1032],
    &[5, 4099],
    &[4, 8192],
    &[4, 8200],
    &[3, 16384],
    &[3, 16392],
    &[2, 65536],
    &[1, 1 << 20],
    &[2, 3, 4, 33],
    &[17],
];

#[test]
fn rows_match_cpu_on_every_path() {
    let mut rng = Rng::new(40);
    for t in targets() {
        for &shape in ROW_SHAPES.iter().filter(|s| runs_on(&t, s)) {
            for norm in [Norm::Layer, Norm::Rms] {
                for dtype in GPU_DTYPES {
                    for affine in AFFINES {
                        check(&t, &Case::new(&mut rng, norm, shape, dtype, affine, 1e-5), &mut rng);
                    }
                    if shape.last().is_some_and(|n| n % 8 == 0) {
                        let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
                        check_misaligned(&t, &case, &mut rng);
                    }
                }
            }
        }
    }
}

/// The persistent backward grid on small devices and an A100: each block adds many
/// rows into its partial row, on every path.
#[cfg(feature = "cuda-emulator")]
#[test]
fn rows_match_cpu_with_many_rows_a_block() {
    use candle_norm::emulator::Gpu;
    let mut rng = Rng::new(48);
    for gpu in [Gpu::H100.with_sm_count(1), Gpu::A100.with_sm_count(3), Gpu::A100] {
        let t = Target::Emulated(gpu);
        for shape in [&[300usize, 64][..], &[97, 257], &[40, 4096], &[21, 3001], &[9, 9000]] {
            for norm in [Norm::Layer, Norm::Rms] {
                for dtype in GPU_DTYPES {
                    check(
                        &t,
                        &Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5),
                        &mut rng,
                    );
                }
            }
        }
    }
}

#[test]
fn groups_match_cpu_from_tiny_to_huge() {
    let mut rng = Rng::new(41);
    let cases: &[(&[usize], usize)] = &[
        (&[2, 6], 3),
        (&[2, 6, 5], 2),
        (&[2, 8, 4, 4], 4),
        (&[1, 4, 3, 3, 3], 2),
        (&[64, 64, 2, 2], 64),
        (&[2, 64, 16, 16], 32),
        (&[1, 40, 64, 64], 4),
        (&[1, 2, 256, 256], 1),
        (&[8, 128, 32, 32], 32),
        (&[1, 320, 64, 64], 32),
        (&[1, 4, 512, 512], 1),
        (&[2, 6, 7, 7], 3),
    ];
    for t in targets() {
        for &(shape, g) in cases.iter().filter(|(s, _)| runs_on(&t, s)) {
            for dtype in GPU_DTYPES {
                for affine in AFFINES {
                    check(
                        &t,
                        &Case::new(&mut rng, Norm::Group(g), shape, dtype, affine, 1e-5),
                        &mut rng,
                    );
                }
            }
        }
    }
}

/// A tensor of `t`'s shape, dtype and device holding `t`'s elements shifted by one, in
/// memory that starts one element past an aligned address (a view of a fresh tensor).
fn misaligned(t: &Tensor) -> Tensor {
    let flat = t.flatten_all().unwrap();
    let padded = Tensor::cat(&[&flat, &flat], 0).unwrap();
    padded.narrow(0, 1, t.elem_count()).unwrap().reshape(t.dims()).unwrap()
}

/// `case` on the target with x misaligned (see [`misaligned`]) against the CPU on the
/// same values: the forward and the standalone backward's dx.
fn check_misaligned(t: &Target, case: &Case, rng: &mut Rng) {
    let mut on = case.to_device(&t.device());
    on.x = misaligned(&on.x);
    let mut want = case.clone();
    want.x = on.x.to_device(&Device::Cpu).unwrap();
    let (shape, dtype) = (case.x.dims(), case.x.dtype());
    let what = format!("{t:?} {:?} {shape:?} {dtype:?} misaligned", case.norm);
    assert_close(
        &what,
        &t.run(|| on.ours()).unwrap(),
        &want.ours().unwrap(),
        tol(dtype).fwd,
    );
    let dy = rng.tensor(shape, dtype, 0.0, 1.0);
    let got = t.run(|| on.backward(&t.on(&dy))).unwrap();
    let cpu = want.backward(&dy).unwrap();
    assert_close_max(&format!("{what} dx"), &got.dx, &cpu.dx, tol(dtype).bwd);
}

/// Channels-last GroupNorm: scalar and vector paths (C/G off and on the vector width),
/// B = 1 with a long group, 1×1 spatial, and an input that starts one element past an
/// aligned address.
#[test]
fn channels_last_groups_match_cpu() {
    let mut rng = Rng::new(46);
    let cases: &[(&[usize], usize)] = &[
        (&[2, 5, 6], 3),
        (&[2, 4, 4, 8], 4),
        (&[3, 1, 1, 8], 2),
        (&[2, 7, 7, 64], 8),
        (&[2, 16, 16, 128], 32),
        (&[1, 32, 32, 320], 32),
        (&[1, 256, 256, 4], 1),
        (&[8, 32, 32, 128], 32),
        (&[1, 64, 64, 320], 32),
        (&[16, 16, 16, 512], 32),
        (&[1, 512, 512, 4], 1),
        (&[2, 9999, 6], 3),
    ];
    for t in targets() {
        for &(shape, g) in cases.iter().filter(|(s, _)| runs_on(&t, s)) {
            for dtype in GPU_DTYPES {
                for affine in AFFINES {
                    let case = Case::new(&mut rng, Norm::GroupLast(g), shape, dtype, affine, 1e-5);
                    check(&t, &case, &mut rng);
                }
                let case = Case::new(&mut rng, Norm::GroupLast(g), shape, dtype, Affine::WeightBias, 1e-5);
                check_misaligned(&t, &case, &mut rng);
            }
        }
    }
}

#[test]
fn hard_data_and_non_contiguous_inputs_match_cpu() {
    let mut rng = Rng::new(42);
    for t in targets() {
        for norm in [Norm::Layer, Norm::Rms, Norm::Group(2)] {
            let shape: &[usize] = if norm == Norm::Group(2) {
                &[3, 4, 257]
            } else {
                &[9, 1023]
            };
            let mut case = Case::new(&mut rng, norm, shape, DType::F32, Affine::WeightBias, 1e-5);
            case.x = rng.tensor(shape, DType::F32, 1000.0, 0.1);
            let want = case.to_dtype(DType::F64).reference().unwrap();
            let allowed = tol(DType::F32).fwd + 8.0 * unit_roundoff(DType::F32) * 1000.0 / 0.1;
            let on = case.to_device(&t.device());
            assert_close(
                &format!("{t:?} {norm:?} offset"),
                &t.run(|| on.ours()).unwrap(),
                &want,
                allowed,
            );
        }
        let x = rng.tensor(&[40, 6], DType::BF16, 0.0, 1.0);
        let xt = t.on(&x).t().unwrap();
        let got = t.run(|| candle_norm::layer_norm(&xt, None, None, 1e-5)).unwrap();
        let want = candle_norm::layer_norm(&x.t().unwrap(), None, None, 1e-5).unwrap();
        assert_close(&format!("{t:?} transposed"), &got, &want, tol(DType::BF16).fwd);
    }
}

/// dγ/dβ come from per-block partials reduced in order, and BatchNorm's batch
/// statistics from per-slice partials merged in order: two runs agree bit for bit.
#[test]
fn parameter_gradients_are_bitwise_deterministic() {
    let mut rng = Rng::new(43);
    for t in targets() {
        let big = t.is_gpu();
        for (norm, shape) in [
            (Norm::Layer, if big { &[4096usize, 1024][..] } else { &[600, 256][..] }),
            (Norm::Rms, if big { &[512, 16384][..] } else { &[12, 16384][..] }),
            (
                Norm::Group(32),
                if big {
                    &[4, 320, 32, 32][..]
                } else {
                    &[2, 64, 16, 16][..]
                },
            ),
            (
                Norm::GroupLast(32),
                if big {
                    &[4, 32, 32, 320][..]
                } else {
                    &[2, 16, 16, 64][..]
                },
            ),
        ] {
            for dtype in GPU_DTYPES {
                let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5).to_device(&t.device());
                let dy = t.on(&rng.tensor(shape, dtype, 0.0, 1.0));
                let a = t.run(|| case.grads(&dy, ours)).unwrap();
                let b = t.run(|| case.grads(&dy, ours)).unwrap();
                assert_eq!(
                    to_f64(&a.1.unwrap()),
                    to_f64(&b.1.unwrap()),
                    "{t:?} {norm:?} {dtype:?} dw"
                );
                if let (Some(x), Some(y)) = (a.2, b.2) {
                    assert_eq!(to_f64(&x), to_f64(&y), "{t:?} {norm:?} {dtype:?} db");
                }
            }
        }
        for dtype in GPU_DTYPES {
            let shape: &[usize] = if big { &[32, 64, 56, 56] } else { &[8, 16, 28, 28] };
            let case =
                Case::new(&mut rng, Norm::Group(1), shape, dtype, Affine::WeightBias, 1e-5).to_device(&t.device());
            let dy = t.on(&rng.tensor(shape, dtype, 0.0, 1.0));
            let train = || {
                t.run(|| candle_norm::batch_norm_train(&case.x, case.w.as_ref(), case.b.as_ref(), case.eps))
                    .unwrap()
            };
            let back = || {
                t.run(|| candle_norm::batch_norm_backward(&case.x, case.w.as_ref(), case.b.as_ref(), &dy, case.eps))
                    .unwrap()
            };
            let ((_, m1, v1), (_, m2, v2)) = (train(), train());
            assert_eq!(to_f64(&m1), to_f64(&m2), "{t:?} BatchNorm {dtype:?} mean");
            assert_eq!(to_f64(&v1), to_f64(&v2), "{t:?} BatchNorm {dtype:?} var");
            let (a, b) = (back(), back());
            assert_eq!(
                to_f64(&a.dweight.unwrap()),
                to_f64(&b.dweight.unwrap()),
                "{t:?} BatchNorm {dtype:?} dw"
            );
            assert_eq!(
                to_f64(&a.dbias.unwrap()),
                to_f64(&b.dbias.unwrap()),
                "{t:?} BatchNorm {dtype:?} db"
            );
        }
    }
}

/// The fused residual add's outputs and the gradients of x, residual, weight and bias,
/// with both outputs used downstream.
fn add_run(case: &Case, r: &Tensor, dy: &Tensor, dh: &Tensor) -> Vec<Option<Tensor>> {
    use candle_core::Var;
    let var = |t: &Tensor| Var::from_tensor(t).unwrap();
    let (x, r) = (var(&case.x), var(r));
    let (w, b) = (case.w.as_ref().map(var), case.b.as_ref().map(var));
    let (y, h) = case
        .norm
        .ours_add(&x, &r, w.as_deref(), b.as_deref(), case.eps)
        .unwrap();
    let loss = ((&y * dy).unwrap().sum_all().unwrap() + (&h * dh).unwrap().sum_all().unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let get = |v: Option<&Var>| v.and_then(|v| g.get(v).cloned());
    vec![
        Some(y),
        Some(h.clone()),
        get(Some(&x)),
        get(Some(&r)),
        get(w.as_ref()),
        get(b.as_ref()),
    ]
}

/// The fused residual add on every row path, and with h misaligned (an odd element
/// count, as [3, 7], puts h off a 16-byte boundary), against the CPU: h bit for bit (both are the
/// correctly rounded sums), y and the gradients of all four inputs within the table;
/// and the standalone backward without dh.
#[test]
fn residual_add_matches_cpu_on_every_path() {
    let mut rng = Rng::new(44);
    for t in targets() {
        for &shape in ROW_SHAPES.iter().filter(|s| runs_on(&t, s)) {
            for norm in [Norm::Layer, Norm::Rms] {
                for dtype in GPU_DTYPES {
                    for affine in AFFINES {
                        let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5);
                        let [r, dy, dh] = [0; 3].map(|_| rng.tensor(shape, dtype, 0.0, 1.0));
                        let cpu = add_run(&case, &r, &dy, &dh);
                        let on = case.to_device(&t.device());
                        let got = t.run(|| add_run(&on, &t.on(&r), &t.on(&dy), &t.on(&dh)));
                        let what = format!("{t:?} {norm:?} {shape:?} {dtype:?} {affine:?}");
                        let (h_cpu, h_got) = (cpu[1].as_ref().unwrap(), got[1].as_ref().unwrap());
                        assert_eq!(to_f64(h_got), to_f64(h_cpu), "{what} h");
                        let tl = tol(dtype);
                        let names = ["y", "h", "dx", "dresidual", "dw", "db"];
                        for ((name, c), g) in names.iter().zip(&cpu).zip(&got) {
                            assert_eq!(c.is_some(), g.is_some(), "{what} {name}");
                            if let (Some(c), Some(g)) = (c, g) {
                                let tol = if *name == "y" { tl.fwd } else { tl.bwd };
                                assert_close_max(&format!("{what} {name}"), g, c, tol);
                            }
                        }
                        let (w, b) = (case.w.as_ref(), case.b.as_ref());
                        let want = norm.add_backward(h_cpu, w, b, &dy, None, case.eps).unwrap();
                        let got = t
                            .run(|| norm.add_backward(h_got, on.w.as_ref(), on.b.as_ref(), &t.on(&dy), None, case.eps))
                            .unwrap();
                        assert_close_max(&format!("{what} standalone dx"), &got.dx, &want.dx, tl.bwd);
                    }
                }
            }
        }
    }
}

/// InstanceNorm is GroupNorm's kernels with a group per channel: forward and the
/// standalone backward on the target against the CPU.
#[test]
fn instance_norm_matches_cpu() {
    let mut rng = Rng::new(45);
    for t in targets() {
        for shape in [
            &[2usize, 3, 5, 7][..],
            &[1, 320, 64, 64],
            &[1, 32, 32, 32],
            &[4, 64, 1000],
        ] {
            if !runs_on(&t, shape) {
                continue;
            }
            for dtype in GPU_DTYPES {
                let case = Case::new(&mut rng, Norm::Group(shape[1]), shape, dtype, Affine::WeightBias, 1e-5);
                let g = case.to_device(&t.device());
                let what = format!("{t:?} {shape:?} {dtype:?}");
                let run = |c: &Case| candle_norm::instance_norm(&c.x, c.w.as_ref(), c.b.as_ref(), c.eps).unwrap();
                assert_close(
                    &format!("{what} forward"),
                    &t.run(|| run(&g)),
                    &run(&case),
                    tol(dtype).fwd,
                );
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let back = |c: &Case, dy: &Tensor| {
                    candle_norm::instance_norm_backward(&c.x, c.w.as_ref(), c.b.as_ref(), dy, c.eps).unwrap()
                };
                let (got, want) = (t.run(|| back(&g, &t.on(&dy))), back(&case, &dy));
                assert_close_max(&format!("{what} dx"), &got.dx, &want.dx, tol(dtype).bwd);
                assert_close_max(
                    &format!("{what} dw"),
                    &got.dweight.unwrap(),
                    &want.dweight.unwrap(),
                    tol(dtype).bwd,
                );
            }
        }
    }
}

/// y of `f` on the case, then the gradients of x, weight and bias through autograd.
fn y_and_grads(
    c: &Case,
    dy: &Tensor,
    f: impl Fn(Norm, &Tensor, Option<&Tensor>, Option<&Tensor>, f64) -> candle_core::Result<Tensor> + Copy,
) -> Vec<Option<Tensor>> {
    let (dx, dw, db) = c.grads(dy, f).unwrap();
    let y = f(c.norm, &c.x, c.w.as_ref(), c.b.as_ref(), c.eps).unwrap();
    vec![Some(y), Some(dx), dw, db]
}

/// BatchNorm's training op through autograd: y, then the gradients of x, weight and
/// bias.
fn batch_train(c: &Case, dy: &Tensor) -> Vec<Option<Tensor>> {
    y_and_grads(c, dy, |_, x, w, b, eps| candle_norm::batch_norm(x, w, b, eps))
}

/// BatchNorm's eval op with running statistics `m`, `v` through autograd: y, then the
/// gradients of x, weight and bias.
fn batch_eval(c: &Case, m: &Tensor, v: &Tensor, dy: &Tensor) -> Vec<Option<Tensor>> {
    y_and_grads(c, dy, |_, x, w, b, eps| {
        candle_norm::batch_norm_eval(x, m, v, w, b, eps)
    })
}

/// BatchNorm's standalone training backward, laid out as [`batch_train`] without y.
fn batch_backward(c: &Case, dy: &Tensor) -> Vec<Option<Tensor>> {
    let g = candle_norm::batch_norm_backward(&c.x, c.w.as_ref(), c.b.as_ref(), dy, c.eps).unwrap();
    vec![None, Some(g.dx), g.dweight, g.dbias]
}

/// `got` against `want`, element by element: the first (y) within the forward's
/// tolerance, the gradients within the backward's.
fn assert_outputs(what: &str, got: &[Option<Tensor>], want: &[Option<Tensor>], dtype: DType) {
    let t = tol(dtype);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let name = ["y", "dx", "dw", "db"][i];
        assert_eq!(g.is_some(), w.is_some(), "{what} {name}");
        if let (Some(g), Some(w)) = (g, w) {
            let tol = if i == 0 { t.fwd } else { t.bwd };
            assert_close_max(&format!("{what} {name}"), g, w, tol);
        }
    }
}

/// BatchNorm's kernels against the CPU: training (y, the batch statistics, the
/// gradients through autograd and the standalone backward) and eval (y and the
/// gradients with running statistics), every affine, on the scalar path (S off the
/// vector width, S = 1), the vector path, B = 1, C = 1, a channel of 2^20 values split
/// over many blocks (a GPU's; the emulator's has 2^17), and an input one element past
/// an aligned address.
#[test]
fn batch_norm_matches_cpu() {
    let mut rng = Rng::new(47);
    let shapes: &[&[usize]] = &[
        &[8, 16, 9, 9],
        &[64, 32],
        &[4, 8, 16, 16],
        &[1, 3, 5, 5],
        &[5, 1, 7],
        &[2, 2, 256, 256],
        &[16, 2, 256, 256],
    ];
    for t in targets() {
        for &shape in shapes.iter().filter(|s| runs_on(&t, s)) {
            for dtype in GPU_DTYPES {
                for affine in AFFINES {
                    let case = Case::new(&mut rng, Norm::Group(1), shape, dtype, affine, 1e-5);
                    let g = case.to_device(&t.device());
                    let what = format!("{t:?} {shape:?} {dtype:?} {affine:?}");
                    let tl = tol(dtype);
                    let train =
                        |c: &Case| candle_norm::batch_norm_train(&c.x, c.w.as_ref(), c.b.as_ref(), c.eps).unwrap();
                    let ((_, gm, gv), (_, cm, cv)) = (t.run(|| train(&g)), train(&case));
                    assert_close(&format!("{what} mean"), &gm, &cm, tl.fwd);
                    assert_close(&format!("{what} var"), &gv, &cv, tl.fwd);
                    let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                    assert_outputs(
                        &what,
                        &t.run(|| batch_train(&g, &t.on(&dy))),
                        &batch_train(&case, &dy),
                        dtype,
                    );
                    let (got, want) = (t.run(|| batch_backward(&g, &t.on(&dy))), batch_backward(&case, &dy));
                    assert_outputs(&format!("{what} standalone"), &got, &want, dtype);
                    let (m, v) = (
                        rng.tensor(&[shape[1]], dtype, 0.0, 1.0),
                        rng.tensor(&[shape[1]], dtype, 1.0, 0.25).abs().unwrap(),
                    );
                    let got = t.run(|| batch_eval(&g, &t.on(&m), &t.on(&v), &t.on(&dy)));
                    assert_outputs(&format!("{what} eval"), &got, &batch_eval(&case, &m, &v, &dy), dtype);
                }
                let case = Case::new(&mut rng, Norm::Group(1), shape, dtype, Affine::WeightBias, 1e-5);
                let mut g = case.to_device(&t.device());
                g.x = misaligned(&g.x);
                let mut want = case.clone();
                want.x = g.x.to_device(&Device::Cpu).unwrap();
                let dy = rng.tensor(shape, dtype, 0.0, 1.0);
                let what = format!("{t:?} {shape:?} {dtype:?} misaligned");
                assert_outputs(
                    &what,
                    &t.run(|| batch_train(&g, &t.on(&dy))),
                    &batch_train(&want, &dy),
                    dtype,
                );
                // Autograd copies x into a fresh Var: the standalone backward reads offset views.
                let dy_on = misaligned(&t.on(&dy));
                let got = t.run(|| batch_backward(&g, &dy_on));
                let cpu = batch_backward(&want, &dy_on.to_device(&Device::Cpu).unwrap());
                assert_outputs(&format!("{what} standalone"), &got, &cpu, dtype);
            }
        }
    }
}

#[test]
fn f64_is_a_clear_error() {
    for t in targets() {
        let x = Tensor::zeros((2, 8), DType::F64, &t.device()).unwrap();
        let e = t
            .run(|| candle_norm::layer_norm(&x, None, None, 1e-5))
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer_norm") && e.contains("F64"), "{t:?}: {e}");
    }
}
