//! Times the chunked similar-user search and the user-prompt composition at the paper's
//! sizes on random embeddings, printing one JSON object.
//!
//! `cargo run --release -p peapod-prompt --example neighbour_bench -- [--users N] [--dim D]
//! [--repeats R]` (defaults: 35598 users, the Sports split; 512 dimensions; 3 repeats, median
//! reported).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod_prompt::{NeighbourLists, PromptComposer, QueryTable, UserPrompt, UserPromptConfig};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[derive(clap::Parser)]
#[command(
    about = "Time the similar-user search and the user-prompt composition at the paper's sizes"
)]
struct Cli {
    /// Users (default: the Sports split's).
    #[arg(long, default_value_t = 35_598)]
    users: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let Cli {
        users,
        dim,
        repeats,
    } = clap::Parser::parse();
    let repeats = repeats.max(1);
    let device = Device::Cpu;
    let table = Tensor::randn(0f32, 1.0, (users, dim), &device)?;

    let mut search = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        let lists = NeighbourLists::compute(&table, 20)?;
        search.push(start.elapsed().as_secs_f64());
        assert_eq!(lists.num_users(), users);
    }

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let up = UserPrompt::new(
        UserPromptConfig::new(dim, 512),
        QueryTable::frozen(&table),
        vb,
    )?;
    let batch: Vec<u32> = (0..64u32).map(|i| i * 7 % users as u32).collect();
    let mut compose = Vec::new();
    for _ in 0..repeats.max(20) {
        let start = Instant::now();
        let p = up.compose(&batch)?;
        p.sum_all()?.to_scalar::<f32>()?;
        compose.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{{\"users\": {users}, \"dim\": {dim}, \"k\": 20, \"neighbour_search_s_median\": {:.3}, \"user_prompt_compose_b64_ms_median\": {:.3}}}",
        median(search),
        median(compose)
    );
    Ok(())
}
