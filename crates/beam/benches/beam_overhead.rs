//! The search's own cost, beyond the model: batch 32, 20 beams, return 20, vocab 32128,
//! 10 generated tokens, with a synthetic step model that serves precomputed random
//! log-probabilities (it only fills the output buffer when the row count changes, so its own
//! cost is nearly zero). Also times `log_softmax_rows_in_place` on a full 640 × 32128 step.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use peapod_beam::{
    beam_search, log_softmax_rows_in_place, BeamConfig, Constraint, PrefixTrie, StepModel,
};
use rand::{Rng, SeedableRng};

const VOCAB: usize = 32128;
const BATCH: usize = 32;
const BEAMS: usize = 20;

/// Serves the first `rows` rows of a fixed random table every step.
struct Synthetic {
    table: Vec<f32>,
}

impl StepModel for Synthetic {
    type State = ();
    type Error = std::convert::Infallible;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn step(&mut self, _: &mut (), last: &[u32], out: &mut Vec<f32>) -> Result<(), Self::Error> {
        let n = last.len() * VOCAB;
        // With min_length 0 the search never writes into the buffer, which therefore always
        // holds a prefix of the table: only missing rows are copied (the first step's 32 rows
        // grow to 640 once), so the step itself costs almost nothing.
        if out.len() > n {
            out.truncate(n);
        } else {
            let have = out.len();
            out.extend_from_slice(&self.table[have..n]);
        }
        Ok(())
    }
    fn reorder(&mut self, _: &mut (), _: &[usize]) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn random_log_probs(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Peaked like a trained model: a few large logits per row over a flat floor.
    let mut v: Vec<f32> = (0..rows * VOCAB)
        .map(|_| rng.random_range(-4.0f32..4.0))
        .collect();
    for row in v.chunks_exact_mut(VOCAB) {
        for _ in 0..50 {
            let i = rng.random_range(0..VOCAB);
            row[i] += rng.random_range(4.0f32..12.0);
        }
    }
    log_softmax_rows_in_place(&mut v, VOCAB).expect("whole rows");
    v
}

fn bench(c: &mut Criterion) {
    let table = random_log_probs(BATCH * BEAMS, 1);
    let mut cfg = BeamConfig::t5(BEAMS, BEAMS, 11);
    cfg.early_stopping = true;
    let mut model = Synthetic { table };
    let mut group = c.benchmark_group("beam_overhead");
    group.sample_size(20);
    group.bench_function("unconstrained_b32_k20_v32128_10steps", |b| {
        b.iter(|| {
            black_box(beam_search(&mut model, (), BATCH, &cfg, &Constraint::None).expect("search"))
        })
    });

    // Sequential recommendation style: ~12k items of 2–5 tokens each.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let items: Vec<Vec<u32>> = (0..12_000)
        .map(|_| {
            (0..rng.random_range(2..=5))
                .map(|_| rng.random_range(2..VOCAB as u32))
                .collect()
        })
        .collect();
    let trie = Arc::new(PrefixTrie::new(&items, 1).expect("valid item sequences"));
    let shared = Constraint::Shared(trie);
    group.bench_function("shared_trie_12k_items_b32_k20_10steps", |b| {
        b.iter(|| black_box(beam_search(&mut model, (), BATCH, &cfg, &shared).expect("search")))
    });

    // The floor for any search that looks at every log-probability: reading them once per
    // step (block maxima of the 640 × 32128 table, 10 times).
    group.bench_function("read_floor_640x32128_x10", |b| {
        b.iter(|| {
            let mut m = f32::NEG_INFINITY;
            for _ in 0..10 {
                for block in black_box(&model.table).chunks_exact(64) {
                    let mut acc = [f32::NEG_INFINITY; 8];
                    for lane in block.chunks_exact(8) {
                        for (a, &x) in acc.iter_mut().zip(lane) {
                            *a = if x > *a { x } else { *a };
                        }
                    }
                    m = acc.iter().fold(m, |m, &x| if x > m { x } else { m });
                }
            }
            m
        })
    });

    let mut raw = random_log_probs(BATCH * BEAMS, 3);
    group.bench_function("log_softmax_640x32128", |b| {
        b.iter(|| log_softmax_rows_in_place(black_box(&mut raw), VOCAB))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
