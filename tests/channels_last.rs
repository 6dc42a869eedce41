//! Channels-last GroupNorm beyond the grid of every norm: the channels-first GroupNorm
//! of the same input moved to `[B, C, *spatial]`, forward and standalone backward; the
//! module option; errors naming the op and the shapes; each on the fused backend and on
//! the generic one.
#[macro_use]
mod common;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_norm::nn::group_norm;
use common::*;

/// [B, *spatial, C] and groups: B = 1, 1×1 spatial, odd sizes, C = 1, a group of over
/// 10^6 elements, and rows long enough that an f16/bf16 tile is converted a few rows at
/// a time (320 channels: in parts of 3 rows and a last one of 2; 1030: a row at a time).
const SHAPES: &[(&[usize], usize)] = &[
    (&[2, 5, 6], 3),
    (&[1, 3, 5, 4], 2),
    (&[3, 1, 1, 8], 4),
    (&[2, 7, 1], 1),
    (&[2, 9, 7, 10], 5),
    (&[1, 1024, 1024, 2], 1),
    (&[1, 4, 5, 320], 32),
    (&[2, 3, 1, 1030], 10),
];

/// `[B, *spatial, C]` to `[B, C, *spatial]`, and back.
fn to_first(t: &Tensor) -> Tensor {
    let r = t.rank();
    let mut dims: Vec<usize> = (0..r - 1).collect();
    dims.insert(1, r - 1);
    t.permute(dims).unwrap().contiguous().unwrap()
}

fn to_last(t: &Tensor) -> Tensor {
    let r = t.rank();
    let mut dims: Vec<usize> = (0..r).filter(|&d| d != 1).collect();
    dims.push(1);
    t.permute(dims).unwrap().contiguous().unwrap()
}

/// Forward and standalone backward against `group_norm` of the moved input, within the
/// table (the statistics are gathered in another order). The group of 10^6+ elements
/// runs with weight and bias only.
fn channels_first(_: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(90);
    for &(shape, g) in SHAPES {
        let large = shape.iter().product::<usize>() > 1 << 16;
        for affine in AFFINES.into_iter().filter(|&a| !large || a == Affine::WeightBias) {
            let case = Case::new(&mut rng, Norm::GroupLast(g), shape, dtype, affine, 1e-5);
            let (w, b) = (case.w.as_ref(), case.b.as_ref());
            let what = format!("{} {backend:?}", case.what());
            let t = tol(dtype);
            let y = backend.run(|| case.ours()).unwrap();
            let first = backend
                .run(|| candle_norm::group_norm(&to_first(&case.x), g, w, b, case.eps))
                .unwrap();
            assert_close(&what, &y, &to_last(&first), t.fwd);
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            let ours = backend.run(|| case.backward(&dy)).unwrap().unwrap();
            let mut moved = case.clone();
            moved.norm = Norm::Group(g);
            moved.x = to_first(&case.x);
            let first = backend.run(|| moved.backward(&to_first(&dy))).unwrap().unwrap();
            let first = Grads {
                dx: to_last(&first.dx),
                ..first
            };
            assert_grads_close(&what, &ours, &first, t.bwd);
        }
    }
}

grid!(channels_first: [group_last = Norm::GroupLast(0)] x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused, generic = Generic]);

fn err(r: candle_core::Result<Tensor>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Bad inputs are errors naming `group_norm_channels_last` and the shapes.
#[test]
fn bad_input_is_a_clear_error() {
    on_every_backend(bad_input);
}

fn bad_input() {
    let t = |shape: &[usize], dtype| Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
    let f32 = |shape: &[usize]| t(shape, DType::F32);
    let op = "group_norm_channels_last";
    let e = err(candle_norm::group_norm_channels_last(&f32(&[6]), 2, None, None, 1e-5));
    assert!(e.contains(op) && e.contains("rank") && e.contains("[6]"), "{e}");
    // The groups divide the last dimension, not the second.
    let e = err(candle_norm::group_norm_channels_last(
        &f32(&[2, 4, 6]),
        4,
        None,
        None,
        1e-5,
    ));
    assert!(
        e.contains(op) && e.contains("num_groups (4)") && e.contains("[2, 4, 6]"),
        "{e}"
    );
    let e = err(candle_norm::group_norm_channels_last(
        &f32(&[2, 4, 6]),
        0,
        None,
        None,
        1e-5,
    ));
    assert!(e.contains(op) && e.contains("num_groups (0)"), "{e}");
    let e = err(candle_norm::group_norm_channels_last(
        &f32(&[2, 4, 6]),
        2,
        Some(&f32(&[4])),
        None,
        1e-5,
    ));
    assert!(e.contains(op) && e.contains("weight") && e.contains("[6]"), "{e}");
    let bias = t(&[6], DType::F64);
    let e = err(candle_norm::group_norm_channels_last(
        &f32(&[2, 4, 6]),
        2,
        None,
        Some(&bias),
        1e-5,
    ));
    assert!(e.contains(op) && e.contains("bias") && e.contains("F64"), "{e}");
    let e = err(candle_norm::group_norm_channels_last(
        &f32(&[2, 4, 6]),
        2,
        None,
        None,
        -1.0,
    ));
    assert!(e.contains(op) && e.contains("eps"), "{e}");
    let e = err(candle_norm::group_norm_channels_last(
        &t(&[2, 6], DType::U8),
        2,
        None,
        None,
        1e-5,
    ));
    assert!(e.contains(op) && e.contains("dtype"), "{e}");
    let e = candle_norm::group_norm_channels_last_backward(&f32(&[2, 4, 6]), 2, None, None, &f32(&[2, 6, 4]), 1e-5)
        .expect_err("expected an error")
        .to_string();
    assert!(e.contains(op) && e.contains("dy") && e.contains("[2, 6, 4]"), "{e}");
    let empty = candle_norm::group_norm_channels_last(&f32(&[0, 4, 6]), 2, None, None, 1e-5).unwrap();
    assert_eq!(empty.dims(), &[0, 4, 6]);
    let g = candle_norm::group_norm_channels_last_backward(
        &f32(&[2, 0, 6]),
        2,
        Some(&f32(&[6])),
        None,
        &f32(&[2, 0, 6]),
        1e-5,
    )
    .unwrap();
    assert_eq!(bits(&g.dweight.unwrap()), vec![0; 6]);
    let module = group_norm(2, 6, 1e-5, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .unwrap()
        .with_channels_last(true);
    let e = err(module.forward(&f32(&[2, 6, 4])));
    assert!(
        e.contains("GroupNorm") && e.contains("dimension 2") && e.contains("[2, 6, 4]"),
        "{e}"
    );
}

/// With the channels-last option, the module runs `group_norm_channels_last` on its
/// weight and bias, and trains them.
#[test]
fn module_option_runs_channels_last() {
    on_every_backend(|| {
        let mut rng = Rng::new(92);
        let x = rng.tensor(&[2, 5, 5, 8], DType::F32, 0.0, 1.0);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let gn = group_norm(4, 8, 1e-5, vb).unwrap();
        assert!(!gn.channels_last());
        let gn = gn.with_channels_last(true);
        assert!(gn.channels_last());
        let y = gn.forward(&x).unwrap();
        let want = candle_norm::group_norm_channels_last(&x, 4, gn.weight(), gn.bias(), 1e-5).unwrap();
        assert_eq!(bits(&y), bits(&want));
        let grads = (y * &x).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(gn.weight().unwrap()).is_some() && grads.get(gn.bias().unwrap()).is_some());
    });
}
