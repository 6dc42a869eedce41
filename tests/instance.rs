//! InstanceNorm beyond the grid of every norm: GroupNorm with one group per channel bit
//! for bit, its module, and PyTorch's errors; each on the fused backend and on the
//! generic one.
#[macro_use]
mod common;
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use candle_norm::nn::{instance_norm, InstanceNormConfig};
use common::*;

/// B = 1, C = 1, odd sizes, one and three spatial axes, and 2^20 elements per instance.
const SHAPES: &[&[usize]] = &[
    &[2, 3, 5],
    &[1, 4, 3, 3],
    &[3, 1, 7],
    &[2, 5, 1, 9],
    &[1, 2, 2, 3, 3],
    &[1, 2, 1024, 1024],
];

/// The forward and the standalone backward equal those of `group_norm` with C groups,
/// bit for bit (the 2^20-element instances forward only).
fn group_per_channel(_: Norm, dtype: DType, backend: Backend) {
    let mut rng = Rng::new(70);
    for &shape in SHAPES {
        for affine in AFFINES {
            let case = Case::new(&mut rng, Norm::Instance, shape, dtype, affine, 1e-5);
            let mut group = case.clone();
            group.norm = Norm::Group(shape[1]);
            let what = format!("{} {backend:?}", case.what());
            let y = backend.run(|| case.ours()).unwrap();
            assert_eq!(bits(&y), bits(&backend.run(|| group.ours()).unwrap()), "{what}");
            if shape.iter().product::<usize>() > 1 << 16 {
                continue;
            }
            let dy = rng.tensor(shape, dtype, 0.0, 1.0);
            let got = backend.run(|| case.backward(&dy)).unwrap().unwrap();
            let want = backend.run(|| group.backward(&dy)).unwrap().unwrap();
            assert_grads_equal(&what, &got, &want);
        }
    }
}

grid!(group_per_channel: [instance = Norm::Instance] x [f32 = F32, f16 = F16, bf16 = BF16, f64 = F64] x [fused = Fused, generic = Generic]);

fn err(r: candle_core::Result<Tensor>) -> String {
    r.expect_err("expected an error").to_string()
}

/// PyTorch's rule (more than one element per instance) and the usual checks, each an
/// error naming `instance_norm` and the shapes.
#[test]
fn bad_input_is_a_clear_error() {
    on_every_backend(bad_input);
}

fn bad_input() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    for shape in [&[4, 3][..], &[2, 3, 1, 1]] {
        let e = err(candle_norm::instance_norm(&t(shape), None, None, 1e-5));
        assert!(
            e.contains("instance_norm") && e.contains("spatial") && e.contains(&format!("{shape:?}")),
            "{e}"
        );
    }
    let e = err(candle_norm::instance_norm(&t(&[2, 3, 4]), Some(&t(&[4])), None, 1e-5));
    assert!(
        e.contains("instance_norm") && e.contains("weight") && e.contains("[4]"),
        "{e}"
    );
    let e = err(candle_norm::instance_norm(&t(&[3]), None, None, 1e-5));
    assert!(e.contains("instance_norm") && e.contains("rank"), "{e}");
    let e = err(candle_norm::instance_norm(&t(&[2, 3, 4]), None, None, f64::NAN));
    assert!(e.contains("instance_norm") && e.contains("eps"), "{e}");
    let module = candle_norm::InstanceNorm::new(4, None, 1e-5);
    let e = err(module.forward(&t(&[2, 3, 4])));
    assert!(
        e.contains("InstanceNorm") && e.contains("4") && e.contains("[2, 3, 4]"),
        "{e}"
    );
    let empty = candle_norm::instance_norm(&t(&[0, 3, 4]), None, None, 1e-5).unwrap();
    assert_eq!(empty.dims(), &[0, 3, 4]);
}

/// The module, built from a `VarMap` with and without affine, matches the functional op;
/// the affine one trains its weight and bias.
#[test]
fn module_matches_functional_op_and_trains() {
    on_every_backend(|| {
        let mut rng = Rng::new(71);
        let x = rng.tensor(&[2, 3, 4, 5], DType::F32, 0.0, 1.0);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let plain = instance_norm(3, 1e-5, vb.pp("plain")).unwrap();
        assert!(plain.weight().is_none() && plain.bias().is_none());
        let want = candle_norm::instance_norm(&x, None, None, 1e-5).unwrap();
        assert_eq!(bits(&plain.forward(&x).unwrap()), bits(&want));
        let config = InstanceNormConfig {
            eps: 1e-3,
            affine: true,
        };
        let affine = instance_norm(3, config, vb.pp("affine")).unwrap();
        assert_eq!(varmap.all_vars().len(), 2);
        let xv = Var::from_tensor(&x).unwrap();
        let y = affine.forward(&xv).unwrap();
        let (w, b) = (affine.weight().unwrap(), affine.bias().unwrap());
        assert_eq!(
            bits(&y),
            bits(&candle_norm::instance_norm(&x, Some(w), Some(b), 1e-3).unwrap())
        );
        let grads = (y * &x).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(w).is_some() && grads.get(b).is_some() && grads.get(&xv).is_some());
    });
}
