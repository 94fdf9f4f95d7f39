//! The fused attention changes how the scores are computed, not what training does: 30 steps
//! of the tiny PeaPOD on real beauty batches (dropout on, its masks drawn from the same
//! counters) give the losses the composed attention gave, within 1e-4 relative. The fixture was
//! written by this test's code on the composed path (commit e6e7dec, before the fused op), with
//! `PEAPOD_WRITE_STEPS_FIXTURE=tests/fixtures/tiny_steps.json`.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use peapod::model::{BatchTensors, ModelConfig, PeaPod, Variant};
use peapod::optim::{AdamW, AdamWConfig};
use peapod::train::TrainingData;
use peapod_datasets::TaskAlternatingBatcher;
use peapod_t5_rec::T5Config;

const STEPS: usize = 30;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn losses() -> anyhow::Result<Vec<f64>> {
    let data = TrainingData::load(&root().join("data"), "beauty", None)?;
    let users = data.dataset.num_users();
    let q: Vec<f32> = (0..users * 8)
        .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let queries = Tensor::from_vec(q, (users, 8), &Device::Cpu)?;
    let config = ModelConfig::new(Variant::Peapod, T5Config::tiny(), 8, 7);
    let model = PeaPod::new(config, Some(&queries), &Device::Cpu)?;
    let mut optimizer = AdamW::new(
        model.named_vars(),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )?;
    let mut batcher = TaskAlternatingBatcher::new(
        &data.dataset,
        &data.templates,
        None,
        &data.tokenizer,
        6,
        2022,
    )?;
    let mut out = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        let batch = batcher.next_batch()?;
        let tensors = BatchTensors::from_batch(&batch, model.device())?;
        model.t5().set_dropout_seed(1000 + step as u64)?;
        let loss = model.loss(&tensors, true)?;
        out.push(f64::from(loss.to_scalar::<f32>()?));
        optimizer.step(&loss.backward()?)?;
    }
    Ok(out)
}

#[test]
fn thirty_tiny_steps_on_beauty_give_the_composed_paths_losses() -> anyhow::Result<()> {
    let got = losses()?;
    if let Ok(path) = std::env::var("PEAPOD_WRITE_STEPS_FIXTURE") {
        std::fs::write(&path, serde_json::to_string_pretty(&got)?)?;
        return Ok(());
    }
    let fixture = root().join("tests/fixtures/tiny_steps.json");
    let want: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&fixture)?)?;
    assert_eq!(want.len(), STEPS);
    let mut worst = 0f64;
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        assert!(
            rel < 1e-4,
            "step {step}: loss {g} vs {w} ({rel:e} relative)"
        );
        worst = worst.max(rel);
    }
    eprintln!("worst relative difference over {STEPS} steps: {worst:e}");
    // The losses move: a fixture of constants could not tell the paths apart.
    assert!(want[STEPS - 1] < want[0] - 0.1, "{want:?}");
    Ok(())
}
