//! Command-line front ends shared by the examples (`train_sports`, `train_beauty`,
//! `train_toys`, `evaluate`): their flags, and what they print around the library's runs
//! (`peapod::run`). The library never prints; these front ends do.
#![allow(dead_code)]

use std::path::PathBuf;

use clap::Args;
use peapod::eval::EvalConfig;
use peapod::model::Variant;
use peapod::optim::AdamWConfig;
use peapod::pipeline::ColdStart;
use peapod::run::{
    default_device, evaluation_run, t5_config, train_run, EvalRun, RunDir, SasRecTraining, TrainRun,
};
use peapod::schedule::LrSchedule;
use peapod::train::TrainConfig;
use peapod::PeapodError;
use peapod_datasets::{ItemIndexing, Split, Task};

/// Ends an example: exit status 0, or 1 after printing its error on one line (`error: …`,
/// Display with its causes, never Debug).
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The repository's `data/` folder (the examples' default).
pub fn default_data_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// The paper's MF (100 iterations) cached in the run directory `out`, progress on stderr.
pub fn paper_mf(
    data: &peapod::train::TrainingData,
    seed: u64,
    out: &std::path::Path,
    device: &candle_core::Device,
) -> Result<(peapod_pmf::MfModel, candle_core::Tensor), PeapodError> {
    let run = RunDir::new(out);
    peapod::run::mf_and_queries(data, 100, seed, &run, device, print_mf_progress)
}

/// MF progress lines on stderr, every 20 iterations.
pub fn print_mf_progress(p: peapod_pmf::Progress) {
    if p.iteration % 20 == 0 || p.iteration == p.iterations {
        eprintln!(
            "      MF iteration {}/{}: loss {:.4}",
            p.iteration, p.iterations, p.loss
        );
    }
}

/// The optimisation recipe beyond the learning rate: its schedule and gradient clipping (the
/// paper's config: constant, no clipping).
#[derive(Debug, Clone, Args)]
pub struct RecipeArgs {
    /// Learning-rate schedule: constant (the paper), linear or cosine (transformers' schedules:
    /// warm-up from 0, then decay to 0 at the schedule's last step).
    #[arg(long, default_value = "constant")]
    pub lr_schedule: String,
    /// Steps of linear warm-up (linear and cosine schedules).
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// Steps the schedule decays over (default: the run's budget, --max-steps or the epochs'
    /// steps, fixed when the run starts).
    #[arg(long)]
    pub schedule_steps: Option<u64>,
    /// Clip the global gradient norm to this value (default: no clipping, as POD's code).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
}

impl RecipeArgs {
    /// `cfg` with this recipe's schedule and clipping, checked.
    pub fn apply(&self, cfg: TrainConfig) -> Result<TrainConfig, PeapodError> {
        let lr_schedule =
            LrSchedule::parse(&self.lr_schedule, self.warmup_steps, self.schedule_steps)?;
        let cfg = TrainConfig {
            lr_schedule,
            optimizer: AdamWConfig {
                max_grad_norm: self.max_grad_norm,
                ..cfg.optimizer
            },
            ..cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }
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
    /// Item numbering: sequential (P5's ids, the paper; they leak the answer) or random (a
    /// permutation drawn from --seed, leak-free).
    #[arg(long, default_value = "sequential")]
    pub indexing: String,
    /// Training epochs (the paper: up to 30, with early stopping).
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// AdamW learning rate (the peak of a schedule).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Stop after this many epochs without a better mean validation loss.
    #[arg(long, default_value_t = 5)]
    pub patience: usize,
    /// Seed of the initialisation, the sampling and dropout (and of MF).
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
    /// Write the last checkpoint every N optimizer steps (and at each epoch end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
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
    /// Leave the SASRec baseline out of the evaluation (it trains once per run directory, a
    /// few CPU minutes, then is cached there).
    #[arg(long)]
    pub no_sasrec: bool,
    /// Tune the user queries end to end, starting from MF's embeddings (the paper's future
    /// work; it freezes them). Variants with a user prompt only.
    #[arg(long)]
    pub trainable_queries: bool,
}

#[derive(clap::Parser)]
struct TrainCli {
    #[command(flatten)]
    args: TrainArgs,
}

/// The whole of `train_sports`, `train_beauty` and `train_toys`: the process settings, the
/// flags, the run, and its exit status.
pub fn train_main(dataset: &str) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    peapod::CpuPolicy::default().apply_to_process();
    let about = format!(
        "Train PeaPOD on {dataset} with the paper's settings (P5 protocol), then optionally \
         evaluate the best checkpoint"
    );
    let matches = TrainCli::command().about(about).get_matches();
    let cli = TrainCli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    exit_code(run_training(dataset, &cli.args).map_err(anyhow::Error::from))
}

/// `train_<dataset>`: the library's training run, with what it did printed.
pub fn run_training(dataset: &str, args: &TrainArgs) -> Result<(), PeapodError> {
    let device = default_device();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{dataset}-{}", args.variant)));
    let run = TrainRun {
        dataset: dataset.to_string(),
        data_root: args.data_root.clone().unwrap_or_else(default_data_root),
        explanations: args.explanations.clone(),
        indexing: ItemIndexing::parse(&args.indexing, args.seed)?,
        variant: Variant::parse(&args.variant)?,
        trainable_queries: args.trainable_queries,
        t5: t5_config(&args.config)?,
        pretrained: args.weights.clone(),
        train: args.recipe.apply(TrainConfig {
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
            checkpoint_every: args.checkpoint_every,
            ..TrainConfig::default()
        })?,
        mf_iterations: args.mf_iters,
        run_dir: RunDir::new(&out),
        resume: !args.no_resume,
        export_f16: args.export_f16.clone(),
        eval_users: args.eval_users,
        constrained: args.constrained,
        sasrec: (!args.no_sasrec).then(|| SasRecTraining {
            seed: args.seed,
            ..SasRecTraining::default()
        }),
        show: true,
    };
    eprintln!(
        "device: {device:?}; dataset {dataset}, {} at {}, run directory {}",
        run.variant,
        args.config,
        out.display()
    );
    if run.pretrained.is_none() {
        eprintln!(
            "WARNING: no --weights given: T5 starts from RANDOM initialisation, not from \
             pretrained t5-small. Expect far weaker results than the paper's."
        );
    }
    let done = train_run(&run, &device, print_mf_progress)?;
    if let Some(report) = &done.pretrained {
        eprintln!("loaded {} pretrained tensors", report.loaded.len());
    }
    eprintln!(
        "model: {} parameters ({})",
        done.parameters, done.provenance
    );
    for r in &done.outcome.state.history {
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
        done.outcome.stopped_by,
        done.outcome.state.global_step,
        done.outcome.last_checkpoint.display()
    );
    eprintln!("training curves in {}", done.curves.display());
    if let Some((from, to, bytes)) = &done.exported {
        eprintln!(
            "exported {} as f16 weights to {} ({:.1} MB)",
            from.display(),
            to.display(),
            *bytes as f64 / 1e6
        );
    }
    if let Some((report, path)) = &done.report {
        println!("{}", report.table());
        eprintln!(
            "report written to {} and {}",
            path.display(),
            path.with_extension("md").display()
        );
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
    /// Item numbering to evaluate under (sequential or random); it must be the checkpoint's
    /// (default: the checkpoint's).
    #[arg(long)]
    pub indexing: Option<String>,
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
    /// Explanation file (P5/POD JSON layout), for the explanation task.
    #[arg(long)]
    pub explanations: Option<PathBuf>,
    /// Data root with <dataset>/, templates.json and tokenizer/ (default: the repository's data/).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// Beams of the search (and hypotheses returned per input).
    #[arg(long, default_value_t = 20)]
    pub beams: usize,
    /// Inputs decoded per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Users the run's MF model was not trained with: fold-in (embed them from their history)
    /// or error.
    #[arg(long, default_value = "fold-in")]
    pub cold_start: String,
    /// Write the JSON report here (default: beside the checkpoint).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Leave the SASRec baseline out (it trains once per run directory, a few CPU minutes,
    /// then is cached there).
    #[arg(long)]
    pub no_sasrec: bool,
    /// Seed of the SASRec baseline.
    #[arg(long, default_value_t = 2022)]
    pub sasrec_seed: u64,
}

/// `evaluate`: the library's evaluation run, with its table printed.
pub fn run_evaluation(args: &EvaluateArgs) -> Result<(), PeapodError> {
    let device = default_device();
    let run = EvalRun {
        checkpoint: args.checkpoint.clone(),
        data_root: args.data_root.clone().unwrap_or_else(default_data_root),
        explanations: args.explanations.clone(),
        indexing: args.indexing.clone(),
        split: Split::parse(&args.split)?,
        tasks: args
            .tasks
            .split(',')
            .map(Task::parse)
            .collect::<Result<_, _>>()?,
        users: args.users,
        decoding: EvalConfig {
            num_beams: args.beams,
            num_return_sequences: args.beams,
            batch_size: args.batch_size,
            constrained: args.constrained,
            exact_topn: args.constrained || args.exact,
            free_beam: !args.no_beam,
            ..EvalConfig::default()
        },
        cold_start: ColdStart::parse(&args.cold_start)?,
        report: args.report.clone(),
        sasrec: (!args.no_sasrec).then(|| SasRecTraining {
            seed: args.sasrec_seed,
            ..SasRecTraining::default()
        }),
        show: true,
    };
    let (report, path) = evaluation_run(&run, &device)?;
    println!("{}", report.table());
    eprintln!(
        "report written to {} and {}",
        path.display(),
        path.with_extension("md").display()
    );
    Ok(())
}
