//! Prints one JSON object per dataset found under the data directory:
//! `{"dataset":"beauty","users":N,"items":N,"interactions":N}`.
//!
//! `cargo run --release --example dataset_stats [-- --data-dir DIR]`

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use peapod_datasets::{Dataset, SEQUENTIAL_FILE};

#[derive(Parser)]
#[command(about = "User, item and interaction counts of the P5 datasets")]
struct Args {
    /// Directory holding one sub-directory per dataset (default: the repository's data/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"))]
    data_dir: PathBuf,
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
    let args = Args::parse();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&args.data_dir)
        .with_context(|| format!("reading {}", args.data_dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.join(SEQUENTIAL_FILE).is_file())
        .collect();
    dirs.sort();
    anyhow::ensure!(
        !dirs.is_empty(),
        "no dataset (a directory with {SEQUENTIAL_FILE}) under {}",
        args.data_dir.display()
    );
    for dir in dirs {
        let d = Dataset::load(&dir)?;
        // Written by hand to keep the key order fixed (serde_json's map sorts keys).
        println!(
            "{{\"dataset\":{},\"users\":{},\"items\":{},\"interactions\":{}}}",
            serde_json::Value::from(d.name()),
            d.num_users(),
            d.num_items(),
            d.num_interactions()
        );
    }
    Ok(())
}
