//! The CUDA kernels against the CPU path on the same inputs, one test per (norm, dtype):
//! every output (y, the fused add's h bit for bit, BatchNorm's batch statistics), the
//! gradients of every input through autograd and from the standalone backward, every
//! affine case, shapes that reach every kernel path and its limits, inputs that start
//! one element past an aligned address, and gradients that repeat bit for bit.
//!
//! Each test runs on every target this build has: a GPU (feature `cuda`, when one is
//! present) and the CPU emulator standing for an H100 (feature `cuda-emulator`), which
//! runs the same kernels with the same launches and checks every memory access; the
//! row norms also on emulated GPUs small enough that each block of the persistent
//! backward adds many rows, one with an L2 small enough that the split path runs its
//! kernels on batches of a few rows. Shapes of a million elements and more run on a GPU only;
//! the emulator covers the same paths with fewer rows.
#![cfg(any(feature = "cuda", feature = "cuda-emulator"))]
#[macro_use]
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

/// Emulated GPUs whose persistent backward grids are small: one SM of an H100, three
/// of an A100 with 1 MiB of L2 (the split rows' kernels then run on batches of a few
/// rows), and a whole A100.
fn small_targets() -> Vec<Target> {
    #[cfg(feature = "cuda-emulator")]
    {
        use candle_norm::emulator::Gpu;
        [
            Gpu::H100.with_sm_count(1),
            Gpu::A100.with_sm_count(3).with_l2_bytes(1 << 20),
            Gpu::A100,
        ]
        .map(Target::Emulated)
        .to_vec()
    }
    #[cfg(not(feature = "cuda-emulator"))]
    Vec::new()
}

/// An emulated A100 of 3 SMs and 96 KiB of L2, where GroupNorm's split path runs on
/// batches of one to five samples, and BatchNorm on batches of one to five channels.
fn small_l2_targets() -> Vec<Target> {
    #[cfg(feature = "cuda-emulator")]
    {
        vec![Target::Emulated(
            candle_norm::emulator::Gpu::A100
                .with_sm_count(3)
                .with_l2_bytes(96 << 10),
        )]
    }
    #[cfg(not(feature = "cuda-emulator"))]
    Vec::new()
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

/// The kernels' shapes. Rows: N at and around every path limit, the warp team (N <=
/// 1024 forward, 512 backward), the block team in registers (16 384 forward, 8 192
/// backward), the split path above, up to 2^20; odd N on the scalar paths around
/// their own limits (warp N <= 384 forward, 256 backward; block 6 144 forward, 4 096
/// backward); M = 1, and odd element counts. Groups from tiny to a diffusion UNet's,
/// on the group path (one block a group: 16 384 elements forward, 8 192 backward, at
/// and past both) and the split path; channels-last with C/G off and on the vector
/// width, and (C/G)/V from 1 to 32 lanes and past it, C/G = 4 (8-byte vectors of
/// f16/bf16 on the group path) at and past both limits, and C/G = 12; BatchNorm on the scalar path (S
/// off the vector width, S = 1) and the vector path, B = 1, C = 1, and a channel split
/// over many blocks.
const KERNEL_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[1, 1]),
    (Norm::Layer, &[3, 7]),
    (Norm::Layer, &[9, 255]),
    (Norm::Layer, &[9, 257]),
    (Norm::Layer, &[7, 383]),
    (Norm::Layer, &[7, 385]),
    (Norm::Layer, &[4, 4095]),
    (Norm::Layer, &[4, 4097]),
    (Norm::Layer, &[3, 6143]),
    (Norm::Layer, &[3, 6145]),
    (Norm::Layer, &[64, 512]),
    (Norm::Layer, &[65, 513]),
    (Norm::Layer, &[33, 1024]),
    (Norm::Layer, &[8, 1032]),
    (Norm::Layer, &[5, 4099]),
    (Norm::Layer, &[4, 8192]),
    (Norm::Layer, &[4, 8200]),
    (Norm::Layer, &[3, 16384]),
    (Norm::Layer, &[3, 16392]),
    (Norm::Layer, &[2, 65536]),
    (Norm::Layer, &[1, 1 << 20]),
    (Norm::Layer, &[2, 3, 4, 33]),
    (Norm::Layer, &[17]),
    (Norm::Group(3), &[2, 6]),
    (Norm::Group(2), &[2, 6, 5]),
    (Norm::Group(4), &[2, 8, 4, 4]),
    (Norm::Group(2), &[1, 4, 3, 3, 3]),
    (Norm::Group(64), &[64, 64, 2, 2]),
    (Norm::Group(32), &[2, 64, 16, 16]),
    (Norm::Group(4), &[1, 40, 64, 64]),
    (Norm::Group(1), &[1, 2, 256, 256]),
    (Norm::Group(32), &[8, 128, 32, 32]),
    (Norm::Group(32), &[1, 320, 64, 64]),
    (Norm::Group(1), &[1, 4, 512, 512]),
    (Norm::Group(3), &[2, 6, 7, 7]),
    (Norm::Group(2), &[1, 4, 64, 64]),
    (Norm::Group(2), &[1, 4, 64, 72]),
    (Norm::Group(1), &[1, 4, 64, 64]),
    (Norm::Group(1), &[1, 4, 64, 66]),
    (Norm::GroupLast(3), &[2, 5, 6]),
    (Norm::GroupLast(4), &[2, 4, 4, 8]),
    (Norm::GroupLast(2), &[3, 1, 1, 8]),
    (Norm::GroupLast(8), &[2, 7, 7, 64]),
    (Norm::GroupLast(32), &[2, 16, 16, 128]),
    (Norm::GroupLast(32), &[1, 32, 32, 320]),
    (Norm::GroupLast(1), &[1, 256, 256, 4]),
    (Norm::GroupLast(32), &[8, 32, 32, 128]),
    (Norm::GroupLast(32), &[1, 64, 64, 320]),
    (Norm::GroupLast(32), &[16, 16, 16, 512]),
    (Norm::GroupLast(1), &[1, 512, 512, 4]),
    (Norm::GroupLast(3), &[2, 9999, 6]),
    (Norm::GroupLast(2), &[2, 8, 8, 64]),
    (Norm::GroupLast(1), &[2, 4, 4, 128]),
    (Norm::GroupLast(1), &[1, 2, 2, 256]),
    (Norm::GroupLast(4), &[1, 32, 32, 32]),
    (Norm::GroupLast(4), &[1, 33, 32, 32]),
    (Norm::GroupLast(16), &[1, 64, 32, 64]),
    (Norm::GroupLast(16), &[1, 65, 32, 64]),
    (Norm::GroupLast(8), &[1, 128, 32, 32]),
    (Norm::GroupLast(8), &[1, 129, 32, 32]),
    (Norm::GroupLast(4), &[2, 8, 8, 48]),
    (Norm::Instance, &[2, 3, 5, 7]),
    (Norm::Instance, &[1, 32, 32, 32]),
    (Norm::Instance, &[1, 320, 64, 64]),
    (Norm::Instance, &[4, 64, 1000]),
    (Norm::Batch, &[8, 16, 9, 9]),
    (Norm::Batch, &[64, 32]),
    (Norm::Batch, &[4, 8, 16, 16]),
    (Norm::Batch, &[1, 3, 5, 5]),
    (Norm::Batch, &[5, 1, 7]),
    (Norm::Batch, &[2, 2, 256, 256]),
    (Norm::Batch, &[16, 2, 256, 256]),
];

/// GroupNorm's split path and BatchNorm batch by batch ([`small_l2_targets`]):
/// GroupNorm channels-first and channels-last, scalar (S, or C/G, off the vector
/// width) and vector (groups past the group path's 16 384 elements); BatchNorm scalar
/// and vector; the last batch smaller than the others.
const SMALL_L2_CASES: &[(Norm, &[usize])] = &[
    (Norm::Group(2), &[5, 4, 33, 33]),
    (Norm::Group(1), &[3, 4, 64, 66]),
    (Norm::GroupLast(2), &[5, 33, 33, 4]),
    (Norm::GroupLast(1), &[3, 64, 66, 4]),
    (Norm::Batch, &[2, 5, 64, 64]),
    (Norm::Batch, &[3, 5, 33, 33]),
];

/// Mixed precision's shapes: each path and width of every kernel that reads parameters
/// once. Rows: warp, block and split, scalar (odd N) and vector, forward and
/// backward; GroupNorm and BatchNorm on the scalar and the vector path, channels-last
/// GroupNorm by 8- and 16-byte vectors.
const MIXED_CASES: &[(Norm, &[usize])] = &[
    (Norm::Layer, &[3, 7]),
    (Norm::Layer, &[64, 512]),
    (Norm::Layer, &[7, 385]),
    (Norm::Layer, &[8, 1032]),
    (Norm::Layer, &[4, 4097]),
    (Norm::Layer, &[3, 6145]),
    (Norm::Layer, &[4, 8200]),
    (Norm::Layer, &[3, 16392]),
    (Norm::Group(2), &[2, 6, 5]),
    (Norm::Group(4), &[2, 8, 4, 4]),
    (Norm::GroupLast(3), &[2, 5, 6]),
    (Norm::GroupLast(8), &[2, 7, 7, 64]),
    (Norm::GroupLast(32), &[2, 4, 4, 128]),
    (Norm::Instance, &[2, 3, 5, 7]),
    (Norm::Instance, &[1, 32, 32, 32]),
    (Norm::Batch, &[8, 16, 9, 9]),
    (Norm::Batch, &[4, 8, 16, 16]),
];

/// The kernel shapes of `norm`: the row norms and their fused adds share the rows'.
fn kernel_cases(norm: Norm) -> Vec<(Norm, &'static [usize])> {
    shapes_of(KERNEL_CASES, norm)
}

/// The shapes of `norm` in `list`: the row norms and their fused adds share
/// LayerNorm's, BatchNorm's eval its training's, GroupNorm + SiLU GroupNorm's (with
/// their group counts).
fn shapes_of(list: &'static [(Norm, &'static [usize])], norm: Norm) -> Vec<(Norm, &'static [usize])> {
    let row = matches!(norm, Norm::Rms | Norm::AddLayer | Norm::AddRms);
    let batch = norm == Norm::BatchEval;
    let key = if row {
        Norm::Layer
    } else if batch {
        Norm::Batch
    } else {
        norm.without_silu()
    };
    let like = |n: Norm| match (norm, n) {
        _ if row || batch => norm,
        (Norm::GroupSilu(_), Norm::Group(g)) => Norm::GroupSilu(g),
        (Norm::GroupLastSilu(_), Norm::GroupLast(g)) => Norm::GroupLastSilu(g),
        _ => n,
    };
    cases_of(list, key).into_iter().map(|(n, s)| (like(n), s)).collect()
}

/// Forward outputs and gradients (autograd and standalone) of `case` on the target
/// against the CPU; the fused add's h bit for bit.
fn check(t: &Target, case: &Case, rng: &mut Rng) {
    let dtype = case.x.dtype();
    let what = format!("{t:?} {}", case.what());
    let on = case.to_device(&t.device());
    let tl = tol(dtype);
    let (got, want) = (
        t.run(|| on.forward(Impl::Ours)).unwrap(),
        case.forward(Impl::Ours).unwrap(),
    );
    assert_eq!(got.len(), want.len(), "{what}: outputs");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        if matches!(case.norm, Norm::AddLayer | Norm::AddRms) && i == 1 {
            // h is the correctly rounded sum on both.
            assert_eq!(bits(g), bits(w), "{what} h");
        } else {
            assert_close(&format!("{what} output {i}"), g, w, tl.fwd);
        }
    }
    let dy = rng.tensor(case.x.dims(), dtype, 0.0, 1.0);
    let want = case.grads(&dy, Impl::Ours).unwrap();
    let got = t.run(|| on.grads(&t.on(&dy), Impl::Ours)).unwrap();
    assert_grads_close(&what, &got, &want, tl.bwd);
    if let Some(want) = case.backward(&dy) {
        let got = t.run(|| on.backward(&t.on(&dy))).unwrap().unwrap();
        assert_grads_close(&format!("{what} standalone"), &got, &want.unwrap(), tl.bwd);
    }
}

/// A tensor of `t`'s shape, dtype and device holding `t`'s elements rotated by one, in
/// memory that starts one element past an aligned address (a view of a fresh tensor).
fn misaligned(t: &Tensor) -> Tensor {
    let flat = t.flatten_all().unwrap();
    let padded = Tensor::cat(&[&flat, &flat], 0).unwrap();
    padded.narrow(0, 1, t.elem_count()).unwrap().reshape(t.dims()).unwrap()
}

/// `case` on the target with x misaligned (see [`misaligned`]), or its weight and bias
/// alone (`params`), against the CPU on the same values: the forward outputs, and the
/// standalone backward with dy misaligned too (with x), which take the scalar paths.
fn check_misaligned(t: &Target, case: &Case, rng: &mut Rng, params: bool) {
    let mut on = case.to_device(&t.device());
    if params {
        on.w = on.w.as_ref().map(misaligned);
        on.b = on.b.as_ref().map(misaligned);
    } else {
        on.x = misaligned(&on.x);
    }
    // The same values on the CPU (misaligned views hold the elements rotated by one).
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let want = Case {
        x: cpu(&on.x),
        w: on.w.as_ref().map(cpu),
        b: on.b.as_ref().map(cpu),
        ..case.clone()
    };
    let dtype = case.x.dtype();
    let what = format!("{t:?} {} misaligned", case.what());
    let got = t.run(|| on.forward(Impl::Ours)).unwrap();
    for (i, (g, w)) in got.iter().zip(&want.forward(Impl::Ours).unwrap()).enumerate() {
        assert_close(&format!("{what} output {i}"), g, w, tol(dtype).fwd);
    }
    let dy = t.on(&rng.tensor(case.x.dims(), dtype, 0.0, 1.0));
    let dy = if params { dy } else { misaligned(&dy) };
    if let Some(cpu) = want.backward(&dy.to_device(&Device::Cpu).unwrap()) {
        let got = t.run(|| on.backward(&dy)).unwrap().unwrap();
        assert_grads_close(&format!("{what} standalone"), &got, &cpu.unwrap(), tol(dtype).bwd);
    }
}

/// Whether `case`'s x is tried misaligned: rows whose N is a multiple of every vector
/// width (else they take the scalar path anyway), and every GroupNorm and BatchNorm.
fn misalign(norm: Norm, shape: &[usize]) -> bool {
    match norm {
        Norm::Layer | Norm::Rms | Norm::AddLayer | Norm::AddRms => shape.last().is_some_and(|n| n % 8 == 0),
        _ => true,
    }
}

/// Shapes whose parameter gradients must repeat bit for bit: many rows or groups per
/// block, BatchNorm channels over many blocks (a GPU's larger than the emulator's).
fn determinism_shape(norm: Norm, gpu: bool) -> &'static [usize] {
    match (norm, gpu) {
        (Norm::Layer | Norm::AddLayer, true) => &[4096, 1024],
        (Norm::Layer | Norm::AddLayer, false) => &[600, 256],
        (Norm::Rms | Norm::AddRms, true) => &[512, 16384],
        (Norm::Rms | Norm::AddRms, false) => &[12, 16384],
        (Norm::Group(_) | Norm::GroupSilu(_) | Norm::Instance, true) => &[4, 320, 32, 32],
        (Norm::Group(_) | Norm::GroupSilu(_) | Norm::Instance, false) => &[2, 64, 16, 16],
        (Norm::GroupLast(_) | Norm::GroupLastSilu(_), true) => &[4, 32, 32, 320],
        (Norm::GroupLast(_) | Norm::GroupLastSilu(_), false) => &[2, 16, 16, 64],
        (_, true) => &[32, 64, 56, 56],
        (_, false) => &[8, 16, 28, 28],
    }
}

fn kernels(norm: Norm, dtype: DType, _: Backend) {
    let mut rng = Rng::new(40);
    for t in targets() {
        for (norm, shape) in kernel_cases(norm) {
            if !(t.is_gpu() || shape.iter().product::<usize>() < HUGE) {
                continue;
            }
            for affine in AFFINES {
                check(&t, &Case::new(&mut rng, norm, shape, dtype, affine, 1e-5), &mut rng);
            }
            if misalign(norm, shape) {
                check_misaligned(
                    &t,
                    &Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5),
                    &mut rng,
                    false,
                );
            }
        }
        let shape = determinism_shape(norm, t.is_gpu());
        let norm = match norm {
            Norm::Group(_) => Norm::Group(32),
            Norm::GroupLast(_) => Norm::GroupLast(32),
            Norm::GroupSilu(_) => Norm::GroupSilu(32),
            Norm::GroupLastSilu(_) => Norm::GroupLastSilu(32),
            n => n,
        };
        let case = Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5).to_device(&t.device());
        let dy = t.on(&rng.tensor(shape, dtype, 0.0, 1.0));
        let run = || t.run(|| (case.forward(Impl::Ours).unwrap(), case.grads(&dy, Impl::Ours).unwrap()));
        let ((ya, ga), (yb, gb)) = (run(), run());
        for (i, (a, b)) in ya.iter().zip(&yb).enumerate() {
            assert_eq!(bits(a), bits(b), "{t:?} {}: output {i} repeats", case.what());
        }
        assert_grads_equal(&format!("{t:?} {} repeats", case.what()), &ga, &gb);
    }
    if matches!(norm, Norm::Layer | Norm::Rms | Norm::AddLayer | Norm::AddRms) {
        for t in small_targets() {
            for shape in [
                &[300usize, 64][..],
                &[97, 257],
                &[40, 4096],
                &[21, 3001],
                &[9, 9000],
                &[7, 16420],
            ] {
                check(
                    &t,
                    &Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5),
                    &mut rng,
                );
            }
        }
    }
    let batched = matches!(
        norm.without_silu(),
        Norm::Group(_) | Norm::GroupLast(_) | Norm::Batch | Norm::BatchEval
    );
    for t in small_l2_targets().into_iter().filter(|_| batched) {
        for (norm, shape) in shapes_of(SMALL_L2_CASES, norm) {
            check(
                &t,
                &Case::new(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5),
                &mut rng,
            );
        }
    }
}

every_kernel_norm!(grid!(@every kernels, [f32 = F32, f16 = F16, bf16 = BF16], [cuda = Fused]));

/// Mixed precision, f32 parameters with f16 or bf16 x: each path and width of every
/// kernel that reads the parameters (MIXED_CASES), every affine case, against the
/// CPU's mixed path; f32 parameters one element past an aligned address, with x
/// aligned, take the scalar paths.
fn mixed(norm: Norm, dtype: DType, _: Backend) {
    let mut rng = Rng::new(44);
    for t in targets() {
        for (norm, shape) in shapes_of(MIXED_CASES, norm) {
            for affine in AFFINES {
                check(&t, &Case::mixed(&mut rng, norm, shape, dtype, affine, 1e-5), &mut rng);
            }
            let case = Case::mixed(&mut rng, norm, shape, dtype, Affine::WeightBias, 1e-5);
            check_misaligned(&t, &case, &mut rng, true);
        }
    }
}

every_kernel_norm!(grid!(@every mixed, [f16 = F16, bf16 = BF16], [cuda = Fused]));

/// The weight offset (`RowNorm::with_weight_offset`: γ' = offset + γ in f32, then the
/// kernels with f32 parameters, mixed beside f16 and bf16 x): each path and width of
/// the row kernels, with and without a bias, against the CPU.
fn offset(norm: Norm, dtype: DType, _: Backend) {
    let mut rng = Rng::new(45);
    for t in targets() {
        for (norm, shape) in shapes_of(MIXED_CASES, norm) {
            for affine in [Affine::Weight, Affine::WeightBias] {
                let case = Case::new(&mut rng, norm, shape, dtype, affine, 1e-5).with_offset(1.0);
                check(&t, &case, &mut rng);
            }
        }
    }
}

grid!(offset: [
    layer = Norm::Layer,
    rms = Norm::Rms,
    add_layer = Norm::AddLayer,
    add_rms = Norm::AddRms,
] x [f32 = F32, f16 = F16, bf16 = BF16] x [cuda = Fused]);

#[test]
fn hard_data_and_non_contiguous_inputs_match_cpu() {
    let mut rng = Rng::new(42);
    for t in targets() {
        for (norm, shape) in [
            (Norm::Layer, &[9usize, 1023][..]),
            (Norm::Rms, &[9, 1023][..]),
            (Norm::Group(2), &[3, 4, 257][..]),
        ] {
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

/// The CUDA kernels have no f64: f64 tensors run the generic backend, forward and
/// through autograd, every norm of the registry.
#[test]
fn f64_runs_the_generic_backend() {
    let mut rng = Rng::new(43);
    for t in targets() {
        for &(norm, shape) in FINITE_DIFFERENCE_CASES {
            let case = Case::new(&mut rng, norm, shape, DType::F64, Affine::WeightBias, 1e-5);
            let on = case.to_device(&t.device());
            let what = format!("{t:?} {}", case.what());
            let got = t.run(|| on.forward(Impl::Ours)).unwrap();
            let want = case.widened(DType::F64).forward(Impl::Reference).unwrap();
            assert_eq!(got.len(), want.len(), "{what}: outputs");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_close(&format!("{what} output {i}"), g, w, tol(DType::F64).fwd);
            }
            let dy = rng.tensor(shape, DType::F64, 0.0, 1.0);
            let dy_on = dy.to_device(&t.device()).unwrap();
            let got = t.run(|| on.grads(&dy_on, Impl::Ours)).unwrap();
            let want = case.widened(DType::F64).grads(&dy, Impl::Reference).unwrap();
            assert_grads_close(&what, &got, &want, tol(DType::F64).bwd);
        }
    }
}
