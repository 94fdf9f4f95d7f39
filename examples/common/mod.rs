//! Command-line front ends shared by the examples (`train_sports`, `train_beauty`,
//! `train_toys`, `evaluate`, `quickstart`, `compare_variants`): argument definitions and the
//! runs they start. The library never prints; these front ends do.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::Args;
use peapod_pmf::{MfConfig, MfModel};
use peapod_t5_rec::{load_weights, LoadOptions, T5Config};

use peapod::eval::EvalConfig;
use peapod::model::{ModelConfig, PeaPod, Variant};
use peapod::optim::AdamWConfig;
use peapod::pipeline::{
    evaluate, fixed_user_sample, load_model, train_or_load_mf, user_queries, EvalRequest,
};
use peapod::train::{
    export_weights, train, TrainConfig, TrainingData, BEST_CHECKPOINT, LAST_CHECKPOINT,
};
use peapod::PeapodError;

/// The repository's `data/` folder (the examples' default).
pub fn default_data_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The GPU when built with `--features cuda` and one is present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// T5 configuration by preset name or `config.json` path.
pub fn t5_config(name: &str) -> Result<T5Config, PeapodError> {
    match name {
        "t5-small" => Ok(T5Config::t5_small()),
        "tiny" => Ok(T5Config::tiny()),
        path if Path::new(path).exists() => Ok(T5Config::from_hf_json(path)?),
        other => Err(PeapodError::Config(format!(
            "unknown config `{other}` (t5-small, tiny, or a config.json path)"
        ))),
    }
}

/// MF on the training interactions with the paper's settings (`iterations`, `seed`), cached as
/// `dir/mf.safetensors`, progress on stderr; and the users' queries (row u−1 = user u).
pub fn mf_and_queries(
    data: &TrainingData,
    iterations: usize,
    seed: u64,
    dir: &Path,
    device: &Device,
) -> Result<(MfModel, candle_core::Tensor), PeapodError> {
    let config = MfConfig {
        iterations,
        seed,
        ..MfConfig::default()
    };
    let mf = train_or_load_mf(
        &data.dataset,
        &config,
        Some(&dir.join("mf.safetensors")),
        |p| {
            if p.iteration % 20 == 0 || p.iteration == p.iterations {
                eprintln!(
                    "      MF iteration {}/{}: loss {:.4}",
                    p.iteration, p.iterations, p.loss
                );
            }
        },
    )?;
    let queries = user_queries(&mf, &data.dataset, device)?;
    Ok((mf, queries))
}

/// Flags of the training examples.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// T5 size: t5-small (the paper) or tiny (CPU), or a config.json.
    #[arg(long, default_value = "t5-small")]
    pub config: String,
    /// peapod, peapod-x, pod, p5 or similar-users.
    #[arg(long, default_value = "peapod")]
    pub variant: String,
    /// Directory with Hugging Face t5-small `config.json` + `model.safetensors`.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Explanation file (P5/POD JSON layout); the explanation task joins training when given.
    #[arg(long)]
    pub explanations: Option<PathBuf>,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    #[arg(long, default_value_t = 2022)]
    pub seed: u64,
    /// Train on the first N users only (a quick subset).
    #[arg(long)]
    pub max_users: Option<usize>,
    /// Validation loss on the first N users only.
    #[arg(long)]
    pub valid_users: Option<usize>,
    /// Stop (with a checkpoint) after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Stop (with a checkpoint) after this many minutes of training.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Run directory (checkpoints, MF cache, report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Start afresh even if the run directory holds a checkpoint.
    #[arg(long)]
    pub no_resume: bool,
    /// Data root with <dataset>/, templates.json and tokenizer/.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// MF iterations for the user queries (paper: 100).
    #[arg(long, default_value_t = 100)]
    pub mf_iters: usize,
    /// Evaluate the best checkpoint on the test split afterwards, on this many users (0 = all).
    #[arg(long)]
    pub eval_users: Option<usize>,
    /// Also report constrained decoding and exact top-n scoring.
    #[arg(long)]
    pub constrained: bool,
    /// Afterwards write the final weights (the best checkpoint when the run finished by epochs
    /// or early stopping, else the last) to this file as f16, without optimizer state: the
    /// form the repository ships (`data/checkpoints/`).
    #[arg(long)]
    pub export_f16: Option<PathBuf>,
}

/// `train_<dataset>`: MF queries, model, training with checkpoints, optional evaluation.
pub fn run_training(dataset: &str, args: &TrainArgs) -> Result<(), PeapodError> {
    let device = default_device();
    let data_root = args.data_root.clone().unwrap_or_else(default_data_root);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{dataset}-{}", args.variant)));
    let mut data = TrainingData::load(&data_root, dataset, args.explanations.as_deref())?;
    let variant = Variant::parse(&args.variant)?;
    let t5 = t5_config(&args.config)?;
    eprintln!(
        "device: {device:?}; dataset {dataset}: {} users, {} items",
        data.dataset.num_users(),
        data.dataset.num_items()
    );
    let (mf, queries) = mf_and_queries(&data, args.mf_iters, args.seed, &out, &device)?;
    let model_config = ModelConfig::new(variant, t5, mf.dim(), args.seed);
    let model = PeaPod::new(model_config, Some(&queries), &device)?;
    let provenance = match &args.weights {
        Some(dir) => {
            let mut options = LoadOptions::hf_pretrained();
            options.allow_missing.extend(
                model
                    .named_vars()
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| n.contains("prompt") || n == "user_queries"),
            );
            let report = load_weights(model.varmap(), dir.join("model.safetensors"), &options)?;
            eprintln!(
                "loaded {} tensors from {}",
                report.loaded.len(),
                dir.display()
            );
            format!("initialised from {}", dir.display())
        }
        None => {
            eprintln!(
                "WARNING: no --weights given: T5 starts from RANDOM initialisation, not from \
                 pretrained t5-small. Expect far weaker results than the paper's."
            );
            "random initialisation".to_string()
        }
    };
    eprintln!(
        "model: {} at {} ({} parameters), run directory {}",
        variant,
        args.config,
        model.num_parameters(),
        out.display()
    );
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        optimizer: AdamWConfig {
            lr: args.lr,
            ..AdamWConfig::default()
        },
        patience: args.patience,
        seed: args.seed,
        max_users: args.max_users,
        valid_users: args.valid_users,
        max_steps: args.max_steps,
        max_seconds: args.max_minutes.map(|m| m * 60.0),
        ..TrainConfig::default()
    };
    let outcome = train(&model, &data, &train_config, &out, !args.no_resume, true)?;
    for r in &outcome.state.history {
        eprintln!(
            "epoch {}: train loss {:.4}, mean validation loss {:.4} ({:.0} s)",
            r.epoch + 1,
            r.train_loss,
            r.mean_valid_loss,
            r.seconds
        );
    }
    eprintln!(
        "stopped by {} after {} steps; last checkpoint {}",
        outcome.stopped_by,
        outcome.state.global_step,
        outcome.last_checkpoint.display()
    );
    if let Some(path) = &args.export_f16 {
        let from = match &outcome.best_checkpoint {
            Some(best) if outcome.state.finished => best.clone(),
            _ => outcome.last_checkpoint.clone(),
        };
        let bytes = export_weights(&from, path, candle_core::DType::F16)?;
        eprintln!(
            "exported {} as f16 weights to {} ({:.1} MB)",
            from.display(),
            path.display(),
            bytes as f64 / 1e6
        );
    }
    if let Some(n) = args.eval_users {
        let path = outcome
            .best_checkpoint
            .clone()
            .unwrap_or(outcome.last_checkpoint.clone());
        let (model, _) = load_model(&path, Some(&queries), &device)?;
        let request = EvalRequest {
            split: "test".into(),
            users: Some(fixed_user_sample(&data.dataset, n)),
            tasks: vec!["sequential".into(), "topn".into(), "explanation".into()],
            decoding: EvalConfig {
                constrained: args.constrained,
                exact_topn: args.constrained,
                ..EvalConfig::default()
            },
        };
        let report = evaluate(&model, &mut data, Some(&mf), &request, &provenance, true)?;
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| PeapodError::Config(e.to_string()))?;
        let path = out.join("report.json");
        std::fs::write(&path, json).map_err(|e| PeapodError::Io {
            path: path.clone(),
            source: e,
        })?;
        println!("{}", report.table());
    }
    Ok(())
}

/// Flags of the `evaluate` example.
#[derive(Debug, Clone, Args)]
pub struct EvaluateArgs {
    /// Run directory (or checkpoint file) written by a training example.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// validation or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Also decode restricted to real items / the input's candidates, and score top-n exactly.
    #[arg(long)]
    pub constrained: bool,
    /// Also rank top-n candidates by exact scoring (implied by --constrained).
    #[arg(long)]
    pub exact: bool,
    /// Skip the paper-protocol free beam search (e.g. with --exact for a quick top-n check).
    #[arg(long)]
    pub no_beam: bool,
    /// Evaluate a fixed sample of N users (0 = all).
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    /// Tasks, comma-separated.
    #[arg(long, default_value = "sequential,topn,explanation")]
    pub tasks: String,
    #[arg(long)]
    pub explanations: Option<PathBuf>,
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub beams: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Write the JSON report here (default: beside the checkpoint).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `evaluate`: loads a checkpoint (and its MF queries) and prints the report.
pub fn run_evaluation(args: &EvaluateArgs) -> Result<(), PeapodError> {
    let device = default_device();
    let (dir, path) = if args.checkpoint.is_dir() {
        let best = args.checkpoint.join(BEST_CHECKPOINT);
        let path = if best.exists() {
            best
        } else {
            args.checkpoint.join(LAST_CHECKPOINT)
        };
        (args.checkpoint.clone(), path)
    } else {
        let dir = args
            .checkpoint
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        (dir, args.checkpoint.clone())
    };
    let (_, header): (
        std::collections::HashMap<String, candle_core::Tensor>,
        peapod::train::CheckpointHeader,
    ) = peapod::checkpoint::load_checkpoint(&path, &Device::Cpu)?;
    let data_root = args.data_root.clone().unwrap_or_else(default_data_root);
    let mut data = TrainingData::load(&data_root, &header.dataset, args.explanations.as_deref())?;
    let mf_path = dir.join("mf.safetensors");
    let mf = if mf_path.exists() {
        Some(peapod_pmf::MfModel::load(&mf_path)?)
    } else {
        None
    };
    let queries = match &mf {
        Some(mf) => Some(user_queries(mf, &data.dataset, &device)?),
        None => None,
    };
    let (model, _) = load_model(&path, queries.as_ref(), &device)?;
    let request = EvalRequest {
        split: args.split.clone(),
        users: (args.users > 0).then(|| fixed_user_sample(&data.dataset, args.users)),
        tasks: args
            .tasks
            .split(',')
            .map(|s| s.trim().to_string())
            .collect(),
        decoding: EvalConfig {
            num_beams: args.beams,
            num_return_sequences: args.beams,
            batch_size: args.batch_size,
            constrained: args.constrained,
            exact_topn: args.constrained || args.exact,
            free_beam: !args.no_beam,
            ..EvalConfig::default()
        },
    };
    let provenance = format!("checkpoint {}", path.display());
    let report = evaluate(&model, &mut data, mf.as_ref(), &request, &provenance, true)?;
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| PeapodError::Config(e.to_string()))?;
    let out = args
        .report
        .clone()
        .unwrap_or_else(|| dir.join(format!("report-{}.json", args.split)));
    std::fs::write(&out, &json).map_err(|e| PeapodError::Io {
        path: out.clone(),
        source: e,
    })?;
    println!("{}", report.table());
    eprintln!("report written to {}", out.display());
    Ok(())
}
