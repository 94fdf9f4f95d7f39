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
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Large tensors are freed and reallocated every step: keep them in the heap; and let
    // candle's idle workers sleep instead of spinning on cores the gemm needs.
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    peapod::CpuPolicy::default().apply_to_process();
    let cli = Cli::parse();
    common::run_evaluation(&cli.args)?;
    Ok(())
}
