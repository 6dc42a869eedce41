//! Bad input returns a clear error naming the op and what is wrong, the same on the
//! fused backend and on the generic one: the checks run before either.
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
    for backend in BACKENDS {
        backend.run(bad_input);
    }
}

fn bad_input() {
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
    let e = err(candle_norm::group_norm(&xg, 2, None, Some(&t(&[6], DType::F64)), 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("bias") && e.contains("F64") && e.contains("BF16"),
        "{e}"
    );
    // f32 parameters with half-precision x (mixed precision), but all of one dtype.
    let (w32, b16) = (t(&[6], DType::F32), t(&[6], DType::BF16));
    let e = err(candle_norm::group_norm(&xg, 2, Some(&w32), Some(&b16), 1e-5));
    assert!(
        e.contains("group_norm") && e.contains("weight") && e.contains("bias") && e.contains("F32"),
        "{e}"
    );
    let e = err(candle_norm::layer_norm(
        &t(&[2, 8], DType::F32),
        Some(&t(&[8], DType::F16)),
        None,
        1e-5,
    ));
    assert!(
        e.contains("layer_norm") && e.contains("F16") && e.contains("F32"),
        "{e}"
    );
    let (m, v) = (t(&[6], DType::F32), t(&[6], DType::BF16));
    let e = err(candle_norm::batch_norm_eval(&xg, &m, &v, None, None, 1e-5));
    assert!(e.contains("running_mean") && e.contains("running_var"), "{e}");
}

/// The standalone backward checks dy against x as well as the forward's arguments.
#[test]
fn bad_backward_input_is_a_clear_error() {
    for backend in BACKENDS {
        backend.run(bad_backward_input);
    }
}

fn bad_backward_input() {
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
