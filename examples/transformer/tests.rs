//! The example's training loop on the CPU with a tiny configuration: the loss falls,
//! the norm weights train in both placements, the report files are written, and a
//! checkpoint reloads to the same outputs. Run by `cargo test` (the example is declared
//! with `test = true`).

use super::{data, report, train};
use crate::model::{ModelConfig, NormKind, Placement};
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
    assert!(svg.starts_with("<svg") && svg.contains("Pre train") && svg.contains("polyline"));
    let summary = report::summary(&variants);
    assert!(summary.contains("| Pre |") && summary.contains("| Post |"), "{summary}");
}
