//! Evaluates a checkpoint written by a training example on the protocol's tasks, with the
//! popularity and MF baselines beside it.
//! `cargo run --release --example evaluate -- --checkpoint runs/beauty-peapod [--split test] [--constrained]`

mod common;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Evaluate a PeaPOD checkpoint")]
struct Cli {
    #[command(flatten)]
    args: common::EvaluateArgs,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    peapod::CpuPolicy::default().apply_to_process();
    let cli = Cli::parse();
    common::run_evaluation(&cli.args)?;
    Ok(())
}
