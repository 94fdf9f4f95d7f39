//! Beam search with the real T5 (random weights): batch 32, 20 beams, return 20, 40-token
//! inputs, up to 10 generated tokens (max_length 11), at the tiny and t5-small configs. The
//! timed work is encoder + search, as in Hugging Face `generate`; `examples/bench_decode.rs`
//! prints the same measurement as JSON next to HF's figures.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use peapod::decode::generate;
use peapod_beam::{BeamConfig, Constraint};
use peapod_t5_rec::{T5Config, T5ForRec};

const BATCH: usize = 32;
const INPUT_LEN: usize = 40;

fn bench(c: &mut Criterion) {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    let policy = peapod::CpuPolicy::default();
    policy.apply_to_process();
    let mut group = c.benchmark_group("beam_search_b32_beams20_new10");
    // One t5-small iteration takes seconds: ten samples are all a few minutes allow.
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    for (name, cfg) in [
        ("tiny", T5Config::tiny()),
        ("t5-small", T5Config::t5_small()),
    ] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = T5ForRec::new(&cfg, vb).expect("model");
        model.reset_parameters(&varmap, "", 0).expect("init");
        let ids: Vec<u32> = (0..BATCH * INPUT_LEN)
            .map(|i| ((i as u64 * 2_654_435_761 % (cfg.vocab_size as u64 - 2)) + 2) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, (BATCH, INPUT_LEN), &Device::Cpu).expect("ids");
        let words = Tensor::zeros((BATCH, INPUT_LEN), DType::U32, &Device::Cpu).expect("words");
        let mask = Tensor::ones((BATCH, INPUT_LEN), DType::U32, &Device::Cpu).expect("mask");
        let beam = BeamConfig::t5(20, 20, 11);
        group.bench_function(name, |b| {
            b.iter(|| {
                let embeds = model.embed_input(&ids, &words).expect("embed");
                let enc = model.encode(&embeds, &mask, false).expect("encode");
                generate(&model, &enc, &mask, &beam, &Constraint::None, &policy).expect("generate")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
