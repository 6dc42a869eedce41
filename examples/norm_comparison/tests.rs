//! The example's tests, run by `cargo test` without the data package: the IDX loader on
//! small files the test writes; a few training steps of every norm of the CNN and of
//! the MLPs, checking that the loss falls and that every norm's parameters move; and
//! the two MLP experiments end to end on a few synthetic images written as IDX files.

use crate::data::{self, Data, Split, SIDE};
use crate::experiments::{self, Budget};
use crate::mlp::{Act, Mlp, MlpNorm};
use crate::model::{Net, Variant};
use crate::train::{self, Classifier};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap, SGD};
use flate2::write::GzEncoder;
use std::io::Write;

/// Writes a gzip-compressed IDX file of bytes.
fn write_idx(path: &std::path::Path, dims: &[usize], bytes: &[u8]) {
    let mut raw = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        raw.extend((d as u32).to_be_bytes());
    }
    raw.extend(bytes);
    let mut gz = GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap();
}

/// `n` images whose class is drawn in them: a bright band at a row set by the label.
fn synthetic(n: usize, seed: u64) -> Split {
    let mut rng = crate::common::Rng::new(seed);
    let labels: Vec<u8> = (0..n).map(|_| (rng.next_u64() % 10) as u8).collect();
    let images = labels
        .iter()
        .flat_map(|&l| {
            let noise: Vec<u8> = (0..SIDE * SIDE).map(|_| (rng.next_u64() % 60) as u8).collect();
            noise
                .into_iter()
                .enumerate()
                .map(move |(i, p)| if i / SIDE / 2 == usize::from(l) + 2 { 220 } else { p })
        })
        .collect();
    Split { images, labels }
}

#[test]
fn loader_reads_idx_files_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (synthetic(20, 1), synthetic(10, 2));
    write_data(dir.path(), &train, &test);
    let data = data::load(dir.path()).unwrap();
    assert_eq!(
        (data.train.images.clone(), data.train.labels.clone()),
        (train.images, train.labels)
    );
    assert_eq!(data.test.len(), 10);
    let (x, y) = data.train.batch(&[3, 0], &Device::Cpu).unwrap();
    assert_eq!((x.dims(), y.dims()), (&[2, 1, SIDE, SIDE][..], &[2][..]));

    let bad = dir.path().join("bad.gz");
    write_idx(&bad, &[3, 2], &[0; 5]);
    assert!(data::read_idx(&bad).unwrap_err().contains("size"));
    let missing = data::load(&dir.path().join("nowhere")).err().unwrap();
    assert!(missing.contains("scripts/fashion-mnist.sh"), "{missing}");
}

/// Writes the splits as the four IDX files of Fashion-MNIST into `dir`.
fn write_data(dir: &std::path::Path, train: &Split, test: &Split) {
    for (prefix, s) in [("train", train), ("t10k", test)] {
        let n = s.len();
        write_idx(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            &[n, SIDE, SIDE],
            &s.images,
        );
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[n], &s.labels);
    }
}

#[test]
fn every_norm_trains() {
    let dev = Device::Cpu;
    let data = Data {
        train: synthetic(64, 3),
        test: synthetic(16, 4),
    };
    let (x, y) = data.train.batch(&(0..32).collect::<Vec<_>>(), &dev).unwrap();
    for variant in Variant::ALL {
        let varmap = VarMap::new();
        let net = Net::new(variant, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        train::init(&varmap, 0).unwrap();
        let norm_params: Vec<(String, Tensor)> = {
            let vars = varmap.data().lock().unwrap();
            let mut v: Vec<_> = vars
                .iter()
                .filter(|(n, _)| (n.starts_with("norm") && !n.contains("running")) || n.ends_with("weight_g"))
                .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let expect_params = !matches!(variant, Variant::None);
        assert_eq!(!norm_params.is_empty(), expect_params, "{variant:?}");
        let params = ParamsAdamW {
            lr: 3e-3,
            ..Default::default()
        };
        let mut opt = AdamW::new(varmap.all_vars(), params).unwrap();
        let loss = |net: &Net| candle_nn::loss::cross_entropy(&net.forward_t(&x, true).unwrap(), &y).unwrap();
        let first = loss(&net).to_scalar::<f32>().unwrap();
        for _ in 0..15 {
            opt.backward_step(&loss(&net)).unwrap();
        }
        let last = loss(&net).to_scalar::<f32>().unwrap();
        assert!(last < 0.8 * first, "{variant:?}: loss {first} -> {last}");
        let vars = varmap.data().lock().unwrap();
        for (name, before) in &norm_params {
            let now = vars[name].as_tensor();
            let moved = (now - before)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(moved > 0.0, "{variant:?}: {name} did not move");
        }
        let acc = train::accuracy(&net, &data.test, 16, 8, false, &dev).unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
}

/// The names and values of a varmap's norm parameters (not the running statistics).
fn norm_params(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let vars = varmap.data().lock().unwrap();
    let mut v: Vec<_> = vars
        .iter()
        .filter(|(n, _)| n.starts_with("norm") && !n.contains("running"))
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_mlp_norm_trains() {
    let dev = Device::Cpu;
    let split = synthetic(32, 5);
    let (x, y) = split.batch(&(0..32).collect::<Vec<_>>(), &dev).unwrap();
    let norms = [
        MlpNorm::None,
        MlpNorm::Batch,
        MlpNorm::Layer,
        MlpNorm::Rms,
        MlpNorm::Group,
    ];
    for (act, sizes, lr) in [
        (Act::Sigmoid, &[784, 32, 32, 10][..], 0.5),
        (Act::Relu, &[784, 32, 16, 10], 0.1),
    ] {
        for norm in norms {
            let varmap = VarMap::new();
            let net = Mlp::new(sizes, act, norm, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
            train::init(&varmap, 0).unwrap();
            let before = norm_params(&varmap);
            assert_eq!(before.is_empty(), norm == MlpNorm::None, "{norm:?}");
            let mut opt = SGD::new(varmap.all_vars(), lr).unwrap();
            let loss = |net: &Mlp| candle_nn::loss::cross_entropy(&net.forward_t(&x, true).unwrap(), &y).unwrap();
            let first = loss(&net).to_scalar::<f32>().unwrap();
            for _ in 0..40 {
                opt.backward_step(&loss(&net)).unwrap();
            }
            let last = loss(&net).to_scalar::<f32>().unwrap();
            assert!(last < 0.8 * first, "{act:?} {norm:?}: loss {first} -> {last}");
            let vars = varmap.data().lock().unwrap();
            for (name, was) in &before {
                let moved = (vars[name].as_tensor() - was)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert!(
                    moved.to_scalar::<f32>().unwrap() > 0.0,
                    "{act:?} {norm:?}: {name} did not move"
                );
            }
        }
    }
}

#[test]
fn mlp_experiments_run_on_idx_files() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), &synthetic(64, 6), &synthetic(24, 7));
    let data = data::load(dir.path()).unwrap();
    let budget = Budget {
        sigmoid_epochs: 2,
        sigmoid_images: 64,
        mlp_epochs: (2, 1),
        seed: 0,
    };
    let mut quiet = |_: &str, _: usize| -> Box<dyn FnMut(usize)> { Box::new(|_| {}) };
    let out = dir.path();
    let tables = experiments::deep_sigmoid(&budget, &data, &Device::Cpu, out, &mut quiet).unwrap();
    assert!(
        tables.contains("| 2 |") && tables.contains("after training"),
        "{tables}"
    );
    let table = experiments::mlp(&budget, &data, &Device::Cpu, out, &mut quiet).unwrap();
    assert_eq!(table.lines().count(), 2 + 5 + 4, "{table}");
    for f in [
        "deep-sigmoid.csv",
        "deep-sigmoid-accuracy.svg",
        "deep-sigmoid-activations.svg",
        "mlp.csv",
        "mlp-accuracy.svg",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 0, "{f}");
    }
}
