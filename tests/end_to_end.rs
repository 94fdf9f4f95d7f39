//! The composed system on real data, small: train a tiny PeaPOD for a few steps on a few
//! beauty users, evaluate, checkpoint, resume, and check that the interrupted-and-resumed run
//! ends exactly where the uninterrupted one does.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peapod::eval::EvalConfig;
use peapod::model::{ModelConfig, PeaPod, Variant};
use peapod::optim::AdamWConfig;
use peapod::pipeline::{evaluate, load_model, EvalRequest, Report};
use peapod::train::{
    export_weights, train, TrainConfig, TrainingData, BEST_CHECKPOINT, LAST_CHECKPOINT,
};
use peapod::PeapodError;
use peapod_datasets::{Split, Task};
use peapod_t5_rec::T5Config;

fn data_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

fn queries(users: usize) -> Result<Tensor, PeapodError> {
    // Deterministic stand-in for MF embeddings: the pipeline's MF is tested in its own crate.
    let data: Vec<f32> = (0..users * 8)
        .map(|i| ((i * 7919 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (users, 8), &Device::Cpu)?)
}

fn config(max_steps: u64) -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 4,
        optimizer: AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
        seed: 7,
        max_users: Some(8),
        valid_users: Some(4),
        max_steps: Some(max_steps),
        checkpoint_every: 2,
        eval_batch_size: 4,
        ..TrainConfig::default()
    }
}

fn fresh_model(q: &Tensor) -> Result<PeaPod, PeapodError> {
    PeaPod::new(
        ModelConfig::new(Variant::Peapod, T5Config::micro(), 8, 7),
        Some(q),
        &Device::Cpu,
    )
}

fn weights_of(model: &PeaPod) -> Result<Vec<(String, Vec<f32>)>, PeapodError> {
    model
        .named_vars()
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

fn eval(model: &PeaPod, data: &TrainingData) -> Result<Report, PeapodError> {
    let request = EvalRequest {
        split: Split::Validation,
        users: Some(vec![1, 2, 3, 4]),
        tasks: vec![Task::Sequential, Task::TopN],
        decoding: EvalConfig {
            num_beams: 4,
            num_return_sequences: 4,
            batch_size: 4,
            max_item_length: 5,
            exact_topn: true,
            ..EvalConfig::default()
        },
    };
    evaluate(model, data, Default::default(), &request, "test", false)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peapod-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn exists(dir: &Path, file: &str) -> bool {
    dir.join(file).exists()
}

#[test]
fn train_checkpoint_resume_and_evaluate_reproducibly() -> Result<(), PeapodError> {
    let data = TrainingData::load(&data_root(), "beauty", None)?;
    let q = queries(data.dataset.num_users())?;

    // Uninterrupted: 7 steps (an epoch here is (8 + 8) / 4 = 4 batches, so this crosses an
    // epoch end with its validation pass and best checkpoint).
    let dir_a = tmp("a");
    let model_a = fresh_model(&q)?;
    let before = weights_of(&model_a)?;
    let out_a = train(&model_a, &data, &config(7), &dir_a, false, false)?;
    assert_eq!(out_a.state.global_step, 7);
    assert_eq!(out_a.state.history.len(), 1);
    assert!(out_a.state.history[0].mean_valid_loss.is_finite());
    assert!(exists(&dir_a, LAST_CHECKPOINT) && exists(&dir_a, BEST_CHECKPOINT));
    let after_a = weights_of(&model_a)?;
    assert_ne!(before, after_a, "training must change the weights");

    // Interrupted after 3 steps (mid-epoch), then resumed by a new process-like model object.
    let dir_b = tmp("b");
    let model_b = fresh_model(&q)?;
    let out_b = train(&model_b, &data, &config(3), &dir_b, false, false)?;
    assert_eq!(
        (out_b.stopped_by, out_b.state.global_step),
        ("max-steps", 3)
    );
    let resumed = fresh_model(&q)?;
    let out_c = train(&resumed, &data, &config(7), &dir_b, true, false)?;
    assert_eq!(out_c.state.global_step, 7);
    // Wall time differs between runs; the losses must not.
    let losses = |h: &[peapod::train::EpochRecord]| -> Vec<(f64, f64)> {
        h.iter()
            .map(|r| (r.train_loss, r.mean_valid_loss))
            .collect()
    };
    assert_eq!(losses(&out_c.state.history), losses(&out_a.state.history));
    // The loss curve (and its pending steps) resumes exactly too.
    assert_eq!(out_c.state.loss_curve, out_a.state.loss_curve);
    assert_eq!(
        out_c.state.loss_curve_pending,
        out_a.state.loss_curve_pending
    );
    assert_eq!(out_a.state.loss_curve_pending.1, 7);
    assert_eq!(out_a.state.history[0].step, 4);
    assert_eq!(
        weights_of(&resumed)?,
        after_a,
        "resumed run must end with identical weights"
    );

    // Evaluation is deterministic and survives a checkpoint round trip.
    let report_a = eval(&model_a, &data)?;
    let (reloaded, header) = load_model(&dir_b.join(LAST_CHECKPOINT), Some(&q), &Device::Cpu)?;
    assert_eq!(header.state.global_step, 7);
    let report_b = eval(&reloaded, &data)?;
    for (task, a) in &report_a.tasks {
        assert_eq!(a.modes, report_b.tasks[task].modes, "{task}");
    }
    assert_eq!(report_a.users_evaluated, 4);
    let topn = &report_a.tasks["topn"];
    for mode in ["beam", "exact"] {
        let hr10 = topn.modes[mode]["hr@10"];
        assert!((0.0..=1.0).contains(&hr10), "{mode}: {hr10}");
    }
    // The popularity baseline ranks the same candidates.
    assert!(report_a.baselines.popularity.contains_key("topn"));

    // The shipped form: weights only, f16, smaller, and it evaluates like the original within
    // f16 rounding (the same ranking metrics on these four users).
    let full = dir_b.join(LAST_CHECKPOINT);
    let shipped = dir_b.join("shipped.safetensors");
    let bytes = export_weights(&full, &shipped, DType::F16)?;
    assert!(bytes < std::fs::metadata(&full).map(|m| m.len()).unwrap_or(0) / 4);
    let (small, header) = load_model(&shipped, Some(&q), &Device::Cpu)?;
    assert_eq!(header.state.global_step, 7);
    for ((name, a), (_, b)) in weights_of(&reloaded)?.iter().zip(weights_of(&small)?) {
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (x.abs() + 1e-3))
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-3,
            "{name}: f16 export differs by {worst} (relative)"
        );
    }

    // A checkpoint of another model configuration is refused with a clear message.
    let other = PeaPod::new(
        ModelConfig::new(Variant::Pod, T5Config::micro(), 8, 7),
        None,
        &Device::Cpu,
    )?;
    let err = train(&other, &data, &config(8), &dir_b, true, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("different model configuration"), "{err}");

    let _ = std::fs::remove_dir_all(dir_a);
    let _ = std::fs::remove_dir_all(dir_b);
    Ok(())
}

#[test]
fn the_shipped_checkpoint_loads_as_a_tiny_peapod() -> Result<(), PeapodError> {
    let path = data_root().join("checkpoints/beauty-tiny-peapod.safetensors");
    let (tensors, header): (_, peapod::train::CheckpointHeader) =
        peapod::checkpoint::load_checkpoint(&path, &Device::Cpu)?;
    assert_eq!(header.dataset, "beauty");
    assert_eq!(header.state.global_step, 15_378);
    assert_eq!(header.model.variant, Variant::Peapod);
    assert_eq!(header.model.t5, T5Config::tiny());
    // Weights only, stored as f16.
    assert!(tensors.keys().all(|n| !n.starts_with("adamw.")));
    assert!(tensors.values().all(|t| t.dtype() == DType::F16));
    let users = 22_363;
    let (model, _) = load_model(&path, Some(&queries(users)?.repeat((1, 64))?), &Device::Cpu)?;
    assert_eq!(model.num_parameters(), 5_126_528);
    Ok(())
}

/// Item 1 of the learning issue: a learning-rate schedule spans the run's step budget, is kept
/// in the checkpoint, and a resumed run follows it exactly.
#[test]
fn a_scheduled_run_resumes_on_its_schedule() -> Result<(), PeapodError> {
    use peapod::schedule::{LrSchedule, ScheduleKind};
    let data = TrainingData::load(&data_root(), "beauty", None)?;
    let q = queries(data.dataset.num_users())?;
    let scheduled = |max_steps, total_steps| TrainConfig {
        lr_schedule: LrSchedule {
            kind: ScheduleKind::Linear,
            warmup_steps: 2,
            total_steps,
        },
        ..config(max_steps)
    };

    // Uninterrupted, the schedule spanning the step budget (7).
    let dir_a = tmp("sched-a");
    let model_a = fresh_model(&q)?;
    let out_a = train(&model_a, &data, &scheduled(7, None), &dir_a, false, false)?;
    assert_eq!(out_a.state.schedule_steps, Some(7));
    let constant = fresh_model(&q)?;
    train(&constant, &data, &config(7), &tmp("sched-c"), false, false)?;
    assert_ne!(
        weights_of(&model_a)?,
        weights_of(&constant)?,
        "the schedule must change the updates"
    );

    // Interrupted after 3 steps of a 7-step schedule, then resumed: the same run.
    let dir_b = tmp("sched-b");
    let out_b = train(
        &fresh_model(&q)?,
        &data,
        &scheduled(3, Some(7)),
        &dir_b,
        false,
        false,
    )?;
    assert_eq!(
        (out_b.state.global_step, out_b.state.schedule_steps),
        (3, Some(7))
    );
    let resumed = fresh_model(&q)?;
    let out_c = train(&resumed, &data, &scheduled(7, Some(7)), &dir_b, true, false)?;
    assert_eq!(out_c.state.global_step, 7);
    assert_eq!(
        out_c.state.loss_curve_pending,
        out_a.state.loss_curve_pending
    );
    assert_eq!(weights_of(&resumed)?, weights_of(&model_a)?);

    // A schedule fixed by the first call's budget stays fixed when a later call extends it.
    let dir_d = tmp("sched-d");
    train(
        &fresh_model(&q)?,
        &data,
        &scheduled(3, None),
        &dir_d,
        false,
        false,
    )?;
    let extended = train(
        &fresh_model(&q)?,
        &data,
        &scheduled(5, None),
        &dir_d,
        true,
        false,
    )?;
    assert_eq!(
        (extended.state.global_step, extended.state.schedule_steps),
        (5, Some(3))
    );

    // A different schedule cannot resume the run.
    let other = TrainConfig {
        lr_schedule: LrSchedule {
            kind: ScheduleKind::Cosine,
            ..scheduled(7, Some(7)).lr_schedule
        },
        ..scheduled(7, Some(7))
    };
    let err = train(&fresh_model(&q)?, &data, &other, &dir_b, true, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("different training settings"), "{err}");
    for dir in ["sched-a", "sched-b", "sched-c", "sched-d"] {
        let _ = std::fs::remove_dir_all(tmp(dir));
    }
    Ok(())
}
