//! Trains PeaPOD on the sports dataset with the paper's settings (SPEC §6), then optionally
//! evaluates the best checkpoint. `cargo run --release --example train_sports --features cuda -- --help`

mod common;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Train PeaPOD on sports (P5 protocol)")]
struct Cli {
    #[command(flatten)]
    args: common::TrainArgs,
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
    common::run_training("sports", &cli.args)?;
    Ok(())
}
