//! The SASRec baseline (Kang & McAuley, 2018) on a shipped P5 dataset: trained on the training
//! split, early-stopped on the validation items, evaluated on the test split's sequential
//! protocol (all items ranked, nothing excluded) and top-n protocol (the test candidates), on
//! every user. Prints one JSON line with the metrics and the training time.
//!
//! `cargo run --release --example sasrec_baseline -- --dataset beauty [--indexing random] [--loss ce|bce]`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use peapod::eval::ranking_metrics;
use peapod::sasrec::{sasrec_lists, train_or_load_sasrec_shown};
use peapod::train::TrainingData;
use peapod_datasets::{evaluation_examples, ItemIndexing, Split, Task};
use peapod_sasrec::{Loss, TrainConfig};

#[derive(Parser)]
#[command(about = "Train and evaluate the SASRec baseline on a P5 dataset")]
struct Cli {
    /// sports, beauty or toys
    #[arg(long, default_value = "beauty")]
    dataset: String,
    /// Folder holding <dataset>/, templates.json and tokenizer/ (default: the repository's data/)
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Item numbering: sequential (P5's ids, the paper's) or random (a permutation drawn from
    /// --seed)
    #[arg(long, default_value = "sequential")]
    indexing: String,
    /// ce (full-softmax cross-entropy) or bce (the original: one sampled negative per position)
    #[arg(long, default_value = "ce")]
    loss: String,
    /// At most this many epochs
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Stop after this many epochs without a better validation nDCG@10 (0: train every epoch)
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Users per optimizer step
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Adam learning rate
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seeds the weights, the user order, dropout, negatives and the random indexing
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    /// Cache file: a model trained with the same data, indexing and settings is read from it
    /// instead of trained; a newly trained one is written there
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    peapod::CpuPolicy::default().apply_to_process();
    let cli = Cli::parse();
    let training = TrainConfig {
        loss: Loss::parse(&cli.loss)?,
        learning_rate: cli.lr,
        batch_size: cli.batch_size,
        epochs: cli.epochs,
        patience: (cli.patience > 0).then_some(cli.patience),
        seed: cli.seed,
        ..TrainConfig::default()
    };
    training.validate()?;
    let root = cli
        .data_root
        .clone()
        .unwrap_or_else(common::default_data_root);
    let data = TrainingData::load(&root, &cli.dataset, None)?
        .with_indexing(ItemIndexing::parse(&cli.indexing, cli.seed)?)?;
    let dataset = &data.dataset;
    eprintln!(
        "{}: {} users, {} items; SASRec ({} loss, {} item indexing)",
        dataset.name(),
        dataset.num_users(),
        dataset.num_items(),
        training.loss.name(),
        data.indexing.describe()
    );
    let baseline = train_or_load_sasrec_shown(
        &data,
        &training,
        cli.cache.as_deref(),
        &peapod::run::default_device(),
        true,
        |e| {
            eprintln!(
                "epoch {:>3}: loss {:.4}, validation HR@10 {:.4} nDCG@10 {:.4} ({:.0} s)",
                e.epoch,
                e.mean_loss,
                e.validation_hr10.unwrap_or(f64::NAN),
                e.validation_ndcg10.unwrap_or(f64::NAN),
                e.seconds
            )
        },
    )?;
    let start = Instant::now();
    let mut metrics = serde_json::Map::new();
    for task in [Task::Sequential, Task::TopN] {
        let examples =
            evaluation_examples(task, Split::Test, dataset, &data.templates, None, cli.seed)?;
        let lists = sasrec_lists(&baseline.model, dataset, &examples, Split::Test)?;
        let m = ranking_metrics(&examples, &lists, task)?;
        metrics.insert(task.name().to_string(), serde_json::to_value(m)?);
        metrics.insert(
            format!("{}_users", task.name()),
            serde_json::Value::from(examples.len()),
        );
    }
    let line = serde_json::json!({
        "model": "sasrec",
        "dataset": dataset.name(),
        "indexing": data.indexing.describe(),
        "loss": training.loss.name(),
        "seed": cli.seed,
        "split": "test",
        "metrics": metrics,
        "epochs_trained": baseline.log.epochs.len(),
        "kept_epoch": baseline.log.kept_epoch,
        "train_seconds": baseline.log.seconds,
        "from_cache": baseline.from_cache,
        "eval_seconds": start.elapsed().as_secs_f64(),
    });
    println!("{line}");
    Ok(())
}
