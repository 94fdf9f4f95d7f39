//! Trains every variant (peapod, peapod-x, pod, p5, similar-users) with the same budget and seed
//! and prints one table with the popularity and MF baselines beside them: the paper's ordering,
//! checked at CPU scale.
//! `cargo run --release --example compare_variants -- --dataset beauty --config tiny --budget-minutes 5`
//! (`--budget-steps N` gives every variant the same number of optimizer steps instead).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use peapod::eval::EvalConfig;
use peapod::model::{ModelConfig, PeaPod, Variant};
use peapod::optim::AdamWConfig;
use peapod::pipeline::{evaluate, fixed_user_sample, EvalRequest};
use peapod::train::{train, TrainConfig, TrainingData};
use peapod_datasets::{Split, Task};

#[derive(Parser)]
#[command(about = "Train each PeaPOD variant with the same budget and compare")]
struct Cli {
    #[arg(long, default_value = "beauty")]
    dataset: String,
    #[arg(long, default_value = "tiny")]
    config: String,
    /// Training minutes per variant.
    #[arg(long, default_value_t = 5.0)]
    budget_minutes: f64,
    /// Optimizer steps per variant instead of minutes: the same training for every variant
    /// whatever else runs on the machine (each variant's minutes are then only a ceiling).
    #[arg(long)]
    budget_steps: Option<u64>,
    /// Test users evaluated (fixed sample).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Variants, comma-separated.
    #[arg(long, default_value = "peapod,peapod-x,pod,p5,similar-users")]
    variants: String,
    /// Also run the free 20-beam search (slower; exact top-n scoring always runs).
    #[arg(long)]
    beam: bool,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[command(flatten)]
    recipe: common::RecipeArgs,
    #[arg(long, default_value_t = 2022)]
    seed: u64,
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    peapod::CpuPolicy::default().apply_to_process();
    let cli = Cli::parse();
    // Every flag is checked before any work starts.
    let variants = cli
        .variants
        .split(',')
        .map(|name| Variant::parse(name.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let t5 = peapod::run::t5_config(&cli.config)?;
    let train_config = cli.recipe.apply(TrainConfig {
        epochs: 1,
        batch_size: 32,
        optimizer: AdamWConfig {
            lr: cli.lr,
            ..AdamWConfig::default()
        },
        seed: cli.seed,
        valid_users: Some(256),
        max_seconds: Some(cli.budget_minutes * 60.0),
        max_steps: cli.budget_steps,
        ..TrainConfig::default()
    })?;
    let device = peapod::run::default_device();
    let data = TrainingData::load(&common::default_data_root(), &cli.dataset, None)?;
    let (mf, queries) = common::paper_mf(&data, cli.seed, &cli.out, &device)?;
    let sasrec = peapod::run::sasrec_for_run(
        &data,
        Some(&peapod::run::SasRecTraining {
            seed: cli.seed,
            ..Default::default()
        }),
        &peapod::run::RunDir::new(&cli.out),
        &device,
        true,
    )?;
    let trained = peapod::pipeline::TrainedBaselines {
        mf: Some(&mf),
        sasrec: sasrec.as_ref().map(|s| &s.model),
    };
    let users = fixed_user_sample(&data.dataset, cli.users);
    let mut rows: Vec<(String, BTreeMap<String, f64>)> = Vec::new();
    let mut baselines = None;
    for variant in variants {
        let config = ModelConfig::new(variant, t5.clone(), mf.dim(), cli.seed);
        let model = PeaPod::new(config, Some(&queries), &device)?;
        match cli.budget_steps {
            Some(steps) => eprintln!(
                "== {variant}: training {steps} steps (at most {:.1} min)",
                cli.budget_minutes
            ),
            None => eprintln!("== {variant}: training {:.1} min", cli.budget_minutes),
        }
        let outcome = train(
            &model,
            &data,
            &train_config,
            &cli.out.join(variant.name()),
            false,
            true,
        )?;
        let request = EvalRequest {
            split: Split::Test,
            users: Some(users.clone()),
            tasks: vec![Task::Sequential, Task::TopN],
            decoding: EvalConfig {
                exact_topn: true,
                free_beam: cli.beam,
                ..EvalConfig::default()
            },
        };
        let report = evaluate(&model, &data, trained, &request, "compare_variants", true)?;
        for (task, r) in &report.tasks {
            for (mode, m) in &r.modes {
                let mut m = m.clone();
                m.insert("steps".into(), outcome.state.global_step as f64);
                rows.push((format!("{task:<11} {:<14} {mode}", variant.name()), m));
            }
        }
        baselines.get_or_insert(report.baselines);
    }
    if let Some(b) = baselines {
        for (task, m) in b.popularity {
            rows.push((format!("{task:<11} {:<14} -", "popularity"), m));
        }
        for (task, m) in b.mf {
            rows.push((format!("{task:<11} {:<14} -", "MF (BPR)"), m));
        }
        for (task, m) in b.id_order {
            rows.push((format!("{task:<11} {:<14} -", "ID order"), m));
        }
        for (task, m) in b.sasrec {
            rows.push((format!("{task:<11} {:<14} -", "SASRec"), m));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let cols = ["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "steps"];
    let budget = match cli.budget_steps {
        Some(steps) => format!("{steps} steps (at most {:.1} min)", cli.budget_minutes),
        None => format!("{:.1} min", cli.budget_minutes),
    };
    println!(
        "{} · {} · {budget} per variant · {} test users · seed {}",
        cli.dataset,
        cli.config,
        users.len(),
        cli.seed
    );
    print!("{:<11} {:<14} {:<12}", "task", "ranker", "mode");
    for c in cols {
        print!(" {c:>8}");
    }
    println!();
    for (label, m) in rows {
        print!("{label:<39}");
        for c in cols {
            match m.get(c) {
                Some(v) if c == "steps" => print!(" {v:>8.0}"),
                Some(v) => print!(" {v:>8.4}"),
                None => print!(" {:>8}", ""),
            }
        }
        println!();
    }
    Ok(())
}
