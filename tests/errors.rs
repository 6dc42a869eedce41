//! Bad input returns a clear error naming the op and what is wrong; empty input
//! returns an empty output; random cases never panic and agree with the reference.
mod common;
use candle_core::{DType, Device, Tensor};
use common::*;

fn err(r: candle_core::Result<Tensor>) -> String {
    r.expect_err("expected an error").to_string()
}

fn t(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(shape, dtype, &Device::Cpu).unwrap()
}

#[test]
fn bad_input_is_a_clear_error() {
    let x = t(&[2, 8], DType::F32);
    let e = err(candle_norm::layer_norm(&x, Some(&t(&[7], DType::F32)), None, 1e-5));
    assert!(
        e.contains("layer_norm") && e.contains("weight") && e.contains("[7]") && e.contains("[2, 8]"),
        "{e}"
    );
    let e = err(candle_norm::layer_norm(&x, None, Some(&t(&[2, 4], DType::F32)), 1e-5));
    assert!(
        e.contains("layer_norm") && e.contains("bias") && e.contains("[2, 4]"),
        "{e}"
    );
    let e = err(candle_norm::rms_norm(&x, Some(&t(&[8], DType::F16)), 1e-5));
    assert!(e.contains("rms_norm") && e.contains("F16") && e.contains("F32"), "{e}");
    let e = err(candle_norm::layer_norm(&t(&[], DType::F32), None, None, 1e-5));
    assert!(e.contains("layer_norm") && e.contains("rank"), "{e}");
    let e = err(candle_norm::rms_norm(&t(&[2, 3], DType::U32), None, 1e-5));
    assert!(e.contains("rms_norm") && e.contains("U32"), "{e}");
    let e = err(candle_norm::layer_norm(&x, None, None, -1.0));
    assert!(e.contains("eps"), "{e}");
    let e = err(candle_norm::layer_norm(&x, None, None, f64::NAN));
    assert!(e.contains("eps"), "{e}");

    let xg = t(&[2, 6, 4], DType::BF16);
    let e = err(candle_norm::group_norm(&xg, 4, None, None, 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("num_groups (4)") && e.contains("6 channels"),
        "{e}"
    );
    let e = err(candle_norm::group_norm(&xg, 0, None, None, 1e-5));
    assert!(e.contains("group_norm") && e.contains("num_groups (0)"), "{e}");
    let e = err(candle_norm::group_norm(&t(&[6], DType::F32), 1, None, None, 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("rank >= 2") && e.contains("[6]"),
        "{e}"
    );
    let e = err(candle_norm::group_norm(&xg, 2, Some(&t(&[4], DType::BF16)), None, 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("weight") && e.contains("[6]"),
        "{e}"
    );
    let e = err(candle_norm::group_norm(&xg, 2, None, Some(&t(&[6], DType::F32)), 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("bias") && e.contains("BF16"),
        "{e}"
    );
}

/// The standalone backward checks dy against x as well as the forward's arguments.
#[test]
fn bad_backward_input_is_a_clear_error() {
    let x = t(&[2, 8], DType::F32);
    let grads = |r: candle_core::Result<candle_norm::NormGrads>| err(r.map(|g| g.dx));
    let e = grads(candle_norm::layer_norm_backward(
        &x,
        None,
        None,
        &t(&[2, 7], DType::F32),
        1e-5,
    ));
    assert!(
        e.contains("layer_norm") && e.contains("dy") && e.contains("[2, 7]") && e.contains("[2, 8]"),
        "{e}"
    );
    let e = grads(candle_norm::rms_norm_backward(&x, None, &t(&[2, 8], DType::BF16), 1e-5));
    assert!(e.contains("rms_norm") && e.contains("dy") && e.contains("BF16"), "{e}");
    let e = grads(candle_norm::group_norm_backward(&x, 3, None, None, &x, 1e-5));
    assert!(e.contains("group_norm") && e.contains("num_groups (3)"), "{e}");
    let e = grads(candle_norm::layer_norm_backward(
        &x,
        Some(&t(&[7], DType::F32)),
        None,
        &x,
        1e-5,
    ));
    assert!(
        e.contains("layer_norm") && e.contains("weight") && e.contains("[7]"),
        "{e}"
    );
}

/// A weight on another device is rejected before any kernel runs.
#[cfg(feature = "cuda")]
#[test]
fn weight_on_another_device_is_an_error() {
    let Ok(gpu) = Device::new_cuda(0) else {
        eprintln!("skipped: no CUDA device");
        return;
    };
    let w = Tensor::ones(8, DType::F32, &gpu).unwrap();
    let e = err(candle_norm::layer_norm(&t(&[2, 8], DType::F32), Some(&w), None, 1e-5));
    assert!(
        e.contains("layer_norm") && e.contains("weight") && e.contains("Cuda"),
        "{e}"
    );
}

#[test]
fn zero_size_dimensions_give_empty_outputs_and_zero_gradients() {
    for (norm, shape) in [
        (Norm::Layer, &[0usize, 8][..]),
        (Norm::Layer, &[3, 0]),
        (Norm::Rms, &[2, 0, 5]),
        (Norm::Group(2), &[0, 4, 3]),
        (Norm::Group(2), &[2, 4, 0]),
        (Norm::Group(1), &[2, 0, 3]),
    ] {
        let mut rng = Rng::new(20);
        let case = Case::new(&mut rng, norm, shape, DType::F32, Affine::WeightBias, 1e-5);
        let y = case.ours().unwrap();
        assert_eq!(y.dims(), shape);
        let dy = Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
        let (dx, dw, _) = case.grads(&dy, |n, x, w, b, e| n.ours(x, w, b, e)).unwrap();
        assert_eq!(dx.dims(), shape);
        assert!(to_f64(&dw.unwrap()).iter().all(|&v| v == 0.0));
    }
}

/// Many random shapes, dtypes, affine sets and eps: never a panic, always the
/// reference's values (and wrong weight lengths always an error).
#[test]
fn random_cases_agree_with_reference() {
    let mut rng = Rng::new(21);
    for i in 0..300 {
        let dtype = DTYPES[rng.range(0, 3)];
        let affine = AFFINES[rng.range(0, 3)];
        let eps = [1e-12, 1e-6, 1e-5, 1e-2][rng.range(0, 3)];
        let (norm, shape) = match rng.range(0, 2) {
            0 | 1 => {
                let rank = rng.range(1, 4);
                let mut s: Vec<usize> = (0..rank).map(|_| rng.range(1, 5)).collect();
                *s.last_mut().unwrap() = rng.range(1, 3000);
                (if rng.range(0, 1) == 0 { Norm::Layer } else { Norm::Rms }, s)
            }
            _ => {
                let g = rng.range(1, 4);
                let c = g * rng.range(1, 4);
                let mut s = vec![rng.range(1, 3), c];
                s.extend((0..rng.range(0, 3)).map(|_| rng.range(1, 20)));
                (Norm::Group(g), s)
            }
        };
        let case = Case::new(&mut rng, norm, &shape, dtype, affine, eps);
        let what = format!("case {i}: {norm:?} {shape:?} {dtype:?} {affine:?} eps {eps}");
        assert_close(&what, &case.ours().unwrap(), &case.reference().unwrap(), tol(dtype).fwd);
        let bad = t(&[norm.params(&shape) + 1], dtype);
        assert!(
            norm.ours(&case.x, Some(&bad), None, eps).is_err(),
            "{what}: wrong weight length accepted"
        );
    }
}
