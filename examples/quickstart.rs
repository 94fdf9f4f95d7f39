//! The README's main job, on the shipped beauty data and a laptop CPU:
//! 1. matrix factorisation on the training interactions (the user queries, and the MF
//!    baseline), and the SASRec baseline (shipped, or trained here);
//! 2. a PeaPOD model at the tiny T5 config on the sequential and top-n tasks — from the shipped
//!    checkpoint when the repository has one (then briefly fine-tuned), otherwise from scratch
//!    for a few minutes;
//! 3. evaluation on a fixed sample of test users, with the popularity, ID-order, MF and SASRec
//!    baselines on the same users and candidates, and one user's recommendations with the
//!    weights α of the user-prompt components.
//!
//! `cargo run --release --example quickstart [-- --train-minutes 1 --users 2000]`

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use peapod::eval::{rank_candidates_exactly, EvalConfig};
use peapod::model::{ModelConfig, PeaPod, Variant};
use peapod::optim::AdamWConfig;
use peapod::pipeline::{evaluate, fixed_user_sample, load_model, EvalRequest, TrainedBaselines};
use peapod::train::{train, TrainConfig, TrainingData};
use peapod_datasets::{evaluation_examples, Split, Task};
use peapod_t5_rec::T5Config;

#[derive(Parser)]
#[command(about = "PeaPOD quickstart on the shipped beauty data (tiny T5, CPU)")]
struct Cli {
    /// Minutes of training: fine-tuning when a shipped checkpoint exists (default 1), else
    /// from scratch (default 3).
    #[arg(long)]
    train_minutes: Option<f64>,
    /// Test users evaluated (a fixed sample, the same for the model and the baselines).
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Skip the sequential task's free 20-beam search (it then shows the baselines alone).
    #[arg(long)]
    no_beam: bool,
    /// Also run the free 20-beam search on the top-n task.
    #[arg(long)]
    topn_beam: bool,
    /// A beauty checkpoint to start from, which must exist (default: the shipped one, skipped
    /// with a note when absent).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Directory for the MF cache, the fine-tuning checkpoints and report.json.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Seed of MF, the fine-tuning and the evaluation's sampling.
    #[arg(long, default_value_t = 2022)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    peapod::CpuPolicy::default().apply_to_process();
    let cli = Cli::parse();
    let started = Instant::now();
    let device = peapod::run::default_device();
    let data_root = common::default_data_root();
    let data = TrainingData::load(&data_root, "beauty", None)?;
    eprintln!(
        "[1/3] beauty: {} users, {} items, {} interactions; MF on the training interactions",
        data.dataset.num_users(),
        data.dataset.num_items(),
        data.dataset.num_interactions()
    );
    let (mf, queries) = common::paper_mf(&data, cli.seed, &cli.out, &device)?;
    let run_dir = peapod::run::RunDir::new(&cli.out);
    // The SASRec baseline trained by `sasrec_baseline` with these settings ships beside the
    // checkpoint; it is used only if it was trained on this data with these settings (the
    // cache checks), else trained here (a few CPU minutes).
    let shipped_sasrec = data_root.join("checkpoints/sasrec-beauty.safetensors");
    if !run_dir.sasrec_cache().exists() && shipped_sasrec.exists() {
        std::fs::create_dir_all(&cli.out)?;
        std::fs::copy(&shipped_sasrec, run_dir.sasrec_cache())?;
    }
    let sasrec_training = peapod::run::SasRecTraining {
        seed: cli.seed,
        ..Default::default()
    };
    let sasrec =
        peapod::run::sasrec_for_run(&data, Some(&sasrec_training), &run_dir, &device, true)?;
    if let Some(s) = &sasrec {
        eprintln!(
            "      SASRec baseline: {} ({} epochs, kept epoch {}, {:.0} s of training)",
            if s.from_cache {
                "trained earlier, read from its cache"
            } else {
                "trained now"
            },
            s.log.epochs.len(),
            s.log.kept_epoch,
            s.log.seconds
        );
    }
    let trained = TrainedBaselines {
        mf: Some(&mf),
        sasrec: sasrec.as_ref().map(|s| &s.model),
    };

    let default = data_root.join("checkpoints/beauty-tiny-peapod.safetensors");
    // A checkpoint named with --checkpoint must exist and be of beauty; only the shipped
    // default may be absent.
    let start = peapod::run::starting_checkpoint(cli.checkpoint.as_deref(), &default, "beauty")?;
    let from_checkpoint = start.is_some();
    let shipped = start.unwrap_or(default);
    let train_minutes = cli
        .train_minutes
        .unwrap_or(if from_checkpoint { 1.0 } else { 3.0 });
    let (model, provenance) = if from_checkpoint {
        let (model, header) = load_model(&shipped, Some(&queries), &device)?;
        eprintln!(
            "[2/3] PeaPOD (tiny T5) from the shipped checkpoint {} (epoch {}, step {}), fine-tuning {:.1} min",
            shipped.display(),
            header.state.epoch,
            header.state.global_step,
            train_minutes
        );
        (model, format!("shipped checkpoint {}", shipped.display()))
    } else {
        eprintln!(
            "[2/3] no shipped checkpoint at {}: PeaPOD (tiny T5) from RANDOM initialisation, {:.1} min of training. \
             A few CPU minutes from scratch teach it little: expect it below the baselines.",
            shipped.display(),
            train_minutes
        );
        let config = ModelConfig::new(Variant::Peapod, T5Config::tiny(), mf.dim(), cli.seed);
        (
            PeaPod::new(config, Some(&queries), &device)?,
            "random initialisation".to_string(),
        )
    };
    eprintln!("      {} parameters", model.num_parameters());
    let train_config = TrainConfig {
        epochs: 1,
        batch_size: 32,
        optimizer: AdamWConfig {
            // Fine-tuning starts with fresh optimizer moments (the shipped file holds weights
            // only): a smaller step keeps the first updates from undoing the trained model.
            lr: if from_checkpoint { 2e-4 } else { 1e-3 },
            // No clipping, as the paper's config and the shipped model's run.
            max_grad_norm: None,
            ..AdamWConfig::default()
        },
        seed: cli.seed,
        valid_users: Some(256),
        max_seconds: Some(train_minutes * 60.0),
        ..TrainConfig::default()
    };
    if train_minutes > 0.0 {
        let outcome = train(&model, &data, &train_config, &cli.out, false, true)?;
        eprintln!(
            "      trained {} steps ({} samples)",
            outcome.state.global_step,
            outcome.state.global_step * train_config.batch_size as u64
        );
        peapod::run::write_training_curves(
            &peapod::run::RunDir::new(&cli.out).curves(),
            &outcome.state,
            "quickstart: PeaPOD (tiny T5) fine-tuned on beauty",
        )?;
    }

    eprintln!("[3/3] evaluating {} test users", cli.users);
    let users = fixed_user_sample(&data.dataset, cli.users);
    // Sequential: the paper's free 20-beam search. Top-n: exact candidate scoring (the beam
    // search over 420-token prompts costs minutes more on a CPU; `--topn-beam` adds it).
    let sequential = EvalRequest {
        split: Split::Test,
        users: Some(users.clone()),
        tasks: vec![Task::Sequential],
        decoding: EvalConfig {
            free_beam: !cli.no_beam,
            ..EvalConfig::default()
        },
    };
    let mut report = evaluate(&model, &data, trained, &sequential, &provenance, true)?;
    let topn = EvalRequest {
        tasks: vec![Task::TopN],
        decoding: EvalConfig {
            exact_topn: true,
            free_beam: cli.topn_beam,
            ..EvalConfig::default()
        },
        ..sequential
    };
    report.merge(evaluate(&model, &data, trained, &topn, &provenance, true)?);
    let report_path = peapod::run::RunDir::new(&cli.out).report(None);
    report.write_json(&report_path)?;
    println!("{}", report.table());

    // One user's top-n recommendations and the component weights behind their prompt.
    let user = users[0];
    let examples: Vec<_> = evaluation_examples(
        Task::TopN,
        Split::Test,
        &data.dataset,
        &data.templates,
        None,
        cli.seed,
    )?
    .into_iter()
    .filter(|e| e.user == user)
    .collect();
    let ranked = rank_candidates_exactly(&model, &data.tokenizer, &examples, 1, false)?;
    if let (Some(example), Some(list)) = (examples.first(), ranked.first()) {
        let target = example.target_item.unwrap_or(0);
        println!(
            "user {user} ({}): test item {target}; PeaPOD's top 10 of its 100 candidates:",
            data.dataset.user_key(user).unwrap_or("?")
        );
        for (rank, item) in list.iter().take(10).enumerate() {
            let mark = if *item == target {
                "  <- the test item"
            } else {
                ""
            };
            println!(
                "  {:>2}. item {item} ({}){mark}",
                rank + 1,
                data.dataset.item_key(*item).unwrap_or("?")
            );
        }
        if let Some(alpha) = model.component_weights(&[user])? {
            let alpha = alpha.flatten_all()?.to_vec1::<f32>()?;
            let shown: Vec<String> = alpha.iter().map(|a| format!("{a:+.2}")).collect();
            println!("  component weights α: [{}]", shown.join(" "));
        }
    }
    println!(
        "total wall time {:.1} s; report in {} and {} (with the paper's row); training curves in {}",
        started.elapsed().as_secs_f64(),
        report_path.display(),
        report_path.with_extension("md").display(),
        peapod::run::RunDir::new(&cli.out).curves().display()
    );
    Ok(())
}
