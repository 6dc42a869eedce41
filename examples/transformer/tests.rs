//! The example's training loop on the CPU with a tiny configuration: the loss falls,
//! the norm weights train in both placements, warm-up scales the first steps, the
//! report files are written, a checkpoint reloads to the same outputs, and the
//! gradient sweep measures every block of every depth. Run by `cargo test` (the example is declared
//! with `test = true`).

use super::{data, report, train};
use crate::model::{Init, ModelConfig, NormKind, Placement};
use candle_core::{DType, Device, Tensor};

fn config(placement: Placement, norm: NormKind, vocab: usize, steps: usize) -> train::TrainConfig {
    train::TrainConfig {
        model: ModelConfig {
            vocab,
            layers: 2,
            d_model: 32,
            heads: 4,
            seq_len: 16,
            norm,
            placement,
        },
        steps,
        lr: 3e-3,
        warmup: 0,
        batch: 8,
        seed: 7,
        dtype: DType::F32,
        eval_every: steps,
        eval_batches: 4,
    }
}

fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// One AdamW step moves every norm weight and bias by about the learning rate, which only
/// a non-zero gradient does (weight decay alone moves a weight of 1 by lr·0.01 and a bias
/// of 0 not at all): the gradients reach them through the fused backward, for both
/// placements and both norms.
#[test]
fn one_step_changes_every_norm_parameter() {
    let corpus = data::Corpus::new(&data::TEXT[..20_000]);
    for placement in [Placement::Pre, Placement::Post] {
        for norm in [NormKind::Layer, NormKind::Rms] {
            let cfg = config(placement, norm, corpus.chars.len(), 1);
            let (_, varmap, _) = train::train(&cfg, &corpus, &Device::Cpu, &mut |_, _| {}).unwrap();
            let data = varmap.data().lock().unwrap();
            let norms: Vec<_> = data.iter().filter(|(n, _)| n.contains("norm")).collect();
            // 2 blocks × 2 norms + the final norm; LayerNorm has a bias too.
            let per_norm = if norm == NormKind::Layer { 2 } else { 1 };
            assert_eq!(norms.len(), 5 * per_norm, "{placement:?} {norm:?}");
            for (name, var) in norms {
                let initial = if name.ends_with(".bias") { 0.0 } else { 1.0 };
                let decayed = initial * (1.0 - cfg.lr as f32 * 0.01);
                let moved = to_vec(var.as_tensor())
                    .iter()
                    .filter(|&&v| (v - decayed).abs() > cfg.lr as f32 / 2.0)
                    .count();
                assert_eq!(moved, var.elem_count(), "{placement:?} {norm:?}: {name} did not train");
            }
        }
    }
}

#[test]
fn training_lowers_the_loss_writes_its_report_and_reloads() {
    let corpus = data::Corpus::new(&data::TEXT[..20_000]);
    let out = tempfile::tempdir().unwrap();
    let mut variants = Vec::new();
    for placement in [Placement::Pre, Placement::Post] {
        let cfg = config(placement, NormKind::Layer, corpus.chars.len(), 40);
        let mut seen = 0;
        let (record, varmap, model) = train::train(&cfg, &corpus, &Device::Cpu, &mut |_, _| seen += 1).unwrap();
        assert_eq!(seen, 40);
        let (first, last) = (record.val[0].1, record.final_val());
        assert!(last < first - 0.3, "{placement:?}: validation loss {first} -> {last}");
        assert_eq!(record.grad_norms.len(), 2);
        assert!(record.grad_norms.iter().all(|n| n.is_finite() && *n > 0.0));

        let stem = format!("{placement:?}");
        let meta = train::CheckpointMeta {
            model: cfg.model.clone(),
            chars: corpus.chars.iter().collect(),
            dtype: "f32".into(),
        };
        train::save_checkpoint(out.path(), &stem, &varmap, &meta).unwrap();
        let (reloaded, meta2) = train::load_checkpoint(out.path(), &stem, &Device::Cpu).unwrap();
        assert_eq!(meta2.model, cfg.model);
        let mut rng = data::Rng::new(1);
        let (x, _) = corpus.batch(true, &mut rng, 2, 16, &Device::Cpu).unwrap();
        assert_eq!(
            to_vec(&model.forward(&x).unwrap()),
            to_vec(&reloaded.forward(&x).unwrap()),
            "{placement:?}: reloaded checkpoint"
        );
        let text = train::sample(&reloaded, &meta2, "It is", 20, 0.8, 3, &Device::Cpu).unwrap();
        assert_eq!(text.chars().count(), "It is".len() + 20);
        variants.push(report::Variant { name: stem, record });
    }
    report::write_csv(out.path(), &variants).unwrap();
    report::plot(&out.path().join("training.svg"), &variants, "test").unwrap();
    let loss = std::fs::read_to_string(out.path().join("loss.csv")).unwrap();
    assert_eq!(loss.lines().filter(|l| l.contains(",train,")).count(), 80);
    let norms = std::fs::read_to_string(out.path().join("grad_norms.csv")).unwrap();
    assert_eq!(norms.lines().count(), 1 + 2 * 2);
    let svg = std::fs::read_to_string(out.path().join("training.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("\nPre\n") && svg.contains("polyline"));
    let summary = report::summary(&variants);
    assert!(summary.contains("| Pre |") && summary.contains("| Post |"), "{summary}");
}

/// The post-warmup variant: with warm-up, the first step moves the norm weights by
/// lr/warmup instead of lr (AdamW's first step moves each weight by about its rate).
#[test]
fn warmup_scales_the_first_steps() {
    let corpus = data::Corpus::new(&data::TEXT[..20_000]);
    let moved = |warmup: usize| {
        let mut cfg = config(Placement::Post, NormKind::Layer, corpus.chars.len(), 1);
        cfg.warmup = warmup;
        let (_, varmap, _) = train::train(&cfg, &corpus, &Device::Cpu, &mut |_, _| {}).unwrap();
        let data = varmap.data().lock().unwrap();
        let bias = to_vec(data["blocks.0.norm1.bias"].as_tensor());
        bias.iter().map(|v| v.abs()).sum::<f32>() / bias.len() as f32
    };
    let (none, ten) = (moved(0), moved(10));
    let lr = 3e-3;
    assert!((none - lr).abs() < 0.2 * lr, "no warm-up: mean step {none}");
    assert!((ten - lr / 10.0).abs() < 0.2 * lr / 10.0, "warm-up 10: mean step {ten}");
}

/// The sweep on tiny models: a positive, finite norm for every block at every depth,
/// for both placements, written as CSV and plotted.
#[test]
fn gradient_sweep_covers_every_block() {
    let corpus = data::Corpus::new(&data::TEXT[..20_000]);
    let mut points = Vec::new();
    for layers in [2, 3] {
        for placement in [Placement::Pre, Placement::Post] {
            let mut model = config(placement, NormKind::Layer, corpus.chars.len(), 1).model;
            model.layers = layers;
            let norms = train::ffn_grad_norms(&model, Init::Xavier, &corpus, 5, 2, 4, &Device::Cpu).unwrap();
            assert_eq!(norms.len(), layers);
            assert!(
                norms.iter().all(|n| n.is_finite() && *n > 0.0),
                "{placement:?} {layers}: {norms:?}"
            );
            points.push(report::SweepPoint { placement, norms });
        }
    }
    let out = tempfile::tempdir().unwrap();
    report::write_sweep_csv(&out.path().join("grad_depths.csv"), &points).unwrap();
    let csv = std::fs::read_to_string(out.path().join("grad_depths.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * (2 + 3));
    assert!(csv.contains("\npost,3,2,"), "{csv}");
    report::plot_sweep(&out.path().join("grad_depths.svg"), &points, "test").unwrap();
    let svg = std::fs::read_to_string(out.path().join("grad_depths.svg")).unwrap();
    assert!(svg.contains("3 blocks") && svg.contains("\npost-LN\n"));
}
