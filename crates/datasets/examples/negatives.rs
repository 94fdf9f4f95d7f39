//! Regenerates P5's top-n test negatives (99 per user, numpy's legacy MT19937 seeded 2022).
//! For toys the output equals the published `negative_samples.txt` byte for byte.
//!
//! `cargo run --release --example negatives -- --dataset toys --out PATH`

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use peapod_datasets::{p5_negatives, Dataset, P5_NEGATIVE_SEED};

#[derive(Parser)]
#[command(about = "Generate P5's test negatives for a dataset")]
struct Args {
    /// Dataset name: a sub-directory of --data-dir (sports, beauty, toys).
    #[arg(long)]
    dataset: String,
    /// Where to write the negatives (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Directory holding the datasets (default: the repository's data/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"))]
    data_dir: PathBuf,
    /// The `np.random.seed` value (P5 used 2022).
    #[arg(long, default_value_t = P5_NEGATIVE_SEED)]
    seed: u32,
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
    let dataset = Dataset::load(args.data_dir.join(&args.dataset))?;
    let start = Instant::now();
    let negatives = p5_negatives(&dataset, args.seed)?;
    let seconds = start.elapsed().as_secs_f64();
    negatives.write(&args.out)?;
    eprintln!(
        "{}: negatives for {} users written to {} (generated in {seconds:.2}s)",
        dataset.name(),
        negatives.num_users(),
        args.out.display()
    );
    Ok(())
}
