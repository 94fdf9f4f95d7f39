//! HR@k and nDCG@k of ranked lists, one ground-truth item per user.
//!
//! `cargo run --release --example rank_metrics [-- K...] < ranks.jsonl`, one user per line:
//! `{"target": 12, "ranked": [5, 12, 7, ...]}`; `null` in `ranked` is a sequence that names no
//! item (it takes its position and never hits). Cut-offs default to 1 5 10. Prints
//! `{"hr@1": …, "hr@5": …, "ndcg@5": …, "hr@10": …, "ndcg@10": …}`.

use std::io::{self, BufRead};

use anyhow::{bail, Context, Result};
use clap::Parser;
use peapod_metrics::{RankingAccumulator, NOT_AN_ITEM};

#[derive(Parser)]
#[command(
    about = "HR@k and nDCG@k of ranked lists read from stdin, one JSON user per line: \
             {\"target\": 12, \"ranked\": [5, 12, 7]} (null in ranked names no item)"
)]
struct Cli {
    /// Cut-offs k (default: the protocol's 1 5 10).
    ks: Vec<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    target: u32,
    ranked: Vec<Option<u32>>,
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

fn run() -> Result<()> {
    let ks = Cli::parse().ks;
    let mut acc = if ks.is_empty() {
        RankingAccumulator::protocol()
    } else {
        RankingAccumulator::new(&ks)?
    };
    let mut ranked = Vec::new();
    for (i, line) in io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let user: User = serde_json::from_str(&line).with_context(|| {
            format!(
                "line {}: expected {{\"target\": <item id>, \"ranked\": [<item id or null>, ...]}}",
                i + 1
            )
        })?;
        if user.target == NOT_AN_ITEM {
            bail!(
                "line {}: target {} is reserved for non-items",
                i + 1,
                NOT_AN_ITEM
            );
        }
        ranked.clear();
        ranked.extend(user.ranked.iter().map(|id| id.unwrap_or(NOT_AN_ITEM)));
        acc.add(user.target, &ranked);
    }
    if acc.users() == 0 {
        bail!("no users on standard input (one JSON object per line)");
    }
    println!("{}", serde_json::to_string(&acc.finish()?)?);
    Ok(())
}
