//! Times the chunked similar-user search and the user-prompt composition at the paper's
//! sizes on random embeddings, printing one JSON object.
//!
//! `cargo run --release -p peapod-prompt --example neighbour_bench -- [users] [dim] [repeats]`
//! (defaults: 35598 users, the Sports split; 512 dimensions; 3 repeats, median reported).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod_prompt::{NeighbourLists, PromptComposer, QueryTable, UserPrompt, UserPromptConfig};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let users = args.first().copied().unwrap_or(35_598);
    let dim = args.get(1).copied().unwrap_or(512);
    let repeats = args.get(2).copied().unwrap_or(3).max(1);
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
