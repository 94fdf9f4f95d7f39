//! Text metrics of generated explanations against their references.
//!
//! `cargo run --release --example text_metrics < pairs.jsonl`, one pair per line:
//! `{"reference": "...", "candidate": "..."}`. Prints one JSON object with `bleu_1`, `bleu_4`,
//! `rouge_{1,2,l}/{f,p,r}_score` (×100), `usr`, `distinct_1` and `distinct_2` (fractions).

use std::io::{self, BufRead};

use anyhow::{bail, Context, Result};
use clap::Parser;
use peapod_metrics::TextCorpus;

#[derive(Parser)]
#[command(
    about = "BLEU, ROUGE, USR and Distinct of explanations read from stdin, one JSON pair per \
             line: {\"reference\": \"...\", \"candidate\": \"...\"}"
)]
struct Cli {}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    reference: String,
    candidate: String,
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
    Cli::parse();
    let (mut references, mut candidates) = (Vec::new(), Vec::new());
    for (i, line) in io::stdin().lock().lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(&line).with_context(|| {
            format!(
                "line {}: expected {{\"reference\": \"...\", \"candidate\": \"...\"}}",
                i + 1
            )
        })?;
        references.push(pair.reference);
        candidates.push(pair.candidate);
    }
    if references.is_empty() {
        bail!("no pairs on standard input (one JSON object per line)");
    }
    let report = TextCorpus::new(&references, &candidates)?.report();
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
