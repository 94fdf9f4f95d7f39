//! BLEU-1, BLEU-4 and ROUGE-1/2/L over 20,000 pairs of ~15-word random sentences.
//!
//! `cargo bench -p peapod-metrics --bench text_metrics`. The issue's target is "well under a
//! second on one core" for `bleu1+bleu4+rouge` (tokenising and interning included).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use peapod_metrics::{bleu, rouge, Smoothing, TextCorpus};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PAIRS: usize = 20_000;

/// Sentences of 10..=20 words from a 2,000-word vocabulary whose first words are much more
/// frequent (a rough Zipf), so that n-grams overlap as in real explanations.
fn corpus(seed: u64) -> (Vec<String>, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocab: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
    let sentence = |rng: &mut StdRng| {
        let len = rng.random_range(10..=20);
        (0..len)
            .map(|_| {
                let r: f64 = rng.random();
                vocab[((r * r * r) * vocab.len() as f64) as usize].as_str()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let refs = (0..PAIRS).map(|_| sentence(&mut rng)).collect();
    let cands = (0..PAIRS).map(|_| sentence(&mut rng)).collect();
    (refs, cands)
}

fn bench(c: &mut Criterion) {
    let (refs, cands) = corpus(42);
    let mut g = c.benchmark_group("20k_pairs");
    g.sample_size(20);
    g.bench_function("bleu1+bleu4+rouge", |b| {
        b.iter(|| {
            let corpus = TextCorpus::new(black_box(&refs), black_box(&cands)).unwrap();
            let b1 = corpus.bleu(1, Smoothing::None).unwrap();
            let b4 = corpus.bleu(4, Smoothing::None).unwrap();
            (b1, b4, corpus.rouge())
        })
    });
    g.bench_function("report (all metrics, one pass)", |b| {
        b.iter(|| {
            TextCorpus::new(black_box(&refs), black_box(&cands))
                .unwrap()
                .report()
        })
    });
    g.bench_function("free functions (tokenise per call)", |b| {
        b.iter(|| {
            let b1 = bleu(black_box(&refs), black_box(&cands), 1, Smoothing::None).unwrap();
            let b4 = bleu(&refs, &cands, 4, Smoothing::None).unwrap();
            (b1, b4, rouge(&refs, &cands).unwrap())
        })
    });
    g.bench_function("tokenise + intern only", |b| {
        b.iter(|| TextCorpus::new(black_box(&refs), black_box(&cands)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
