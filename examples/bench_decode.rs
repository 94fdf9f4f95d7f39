//! Beam-search throughput of `peapod::decode::generate` on a random-weight T5, printed as one
//! JSON line per configuration, next to Hugging Face `generate`'s time for the same job on a
//! 2-core CPU (PyTorch 2.15, transformers 4.57; batch 32, 20 beams, return 20, 40-token inputs).
//!
//! ```text
//! cargo run --release --example bench_decode -- --config all --repeats 3
//! ```
//!
//! The timed work is the encoder plus the whole search, as in HF `generate`. Weights are drawn
//! from a fixed seed, so every run decodes the same hypotheses.
//!
//! `--device cuda` (a build with `--features cuda`, see `scripts/build_cuda.sh`) decodes on the
//! GPU; `--compare-cpu` then also decodes once on the CPU and reports how many inputs got the
//! same returned list and the largest score difference between the two.

mod common;

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use peapod::decode::generate;
use peapod::CpuPolicy;
use peapod_beam::{BeamConfig, Constraint, Hypothesis};
use peapod_t5_rec::{T5Config, T5ForRec};

/// Seconds per batch of 32 for HF `generate` on this CPU (see the module docs).
const HF_SECONDS: [(&str, f64); 2] = [("tiny", 2.466), ("t5-small", 13.01)];

#[derive(Parser)]
#[command(about = "Beam-search throughput on random-weight T5 models, as JSON lines")]
struct Args {
    /// tiny, t5-small or all.
    #[arg(long, default_value = "all")]
    config: String,
    /// Timed runs per configuration; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Untimed runs first (page faults, thread pool start-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, default_value_t = 20)]
    beams: usize,
    #[arg(long, default_value_t = 20)]
    return_sequences: usize,
    #[arg(long, default_value_t = 40)]
    input_len: usize,
    /// Decoder length limit counting the start token (HF's max_length): 11 = up to 10 tokens.
    #[arg(long, default_value_t = 11)]
    max_length: usize,
    /// Concurrent searches (and encoder pieces) on the CPU (default: `CpuPolicy`'s, 2).
    #[arg(long)]
    parts: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// With --device cuda: decode once more on the CPU and compare the results.
    #[arg(long)]
    compare_cpu: bool,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> Result<()> {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    let mut policy = CpuPolicy::default();
    policy.apply_to_process();
    let args = Args::parse();
    if let Some(parts) = args.parts {
        policy.decode_parts = parts;
        policy.encode_parts = parts;
    }
    let configs: Vec<(&str, T5Config)> = match args.config.as_str() {
        "tiny" => vec![("tiny", T5Config::tiny())],
        "t5-small" => vec![("t5-small", T5Config::t5_small())],
        "all" => vec![
            ("tiny", T5Config::tiny()),
            ("t5-small", T5Config::t5_small()),
        ],
        other => bail!("unknown --config {other}: use tiny, t5-small or all"),
    };
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => bail!("unknown --device {other}: use cpu or cuda"),
    };
    for (name, cfg) in configs {
        let beam = BeamConfig::t5(args.beams, args.return_sequences, args.max_length);
        let decode_on = |device: &Device| -> Result<(f64, Vec<Vec<Hypothesis>>)> {
            let varmap = VarMap::new();
            let model = T5ForRec::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
            model.reset_parameters(&varmap, "", 0)?;
            let (ids, words, mask) = inputs(args.batch, args.input_len, cfg.vocab_size, device)?;
            let run = || -> Result<(f64, Vec<Vec<Hypothesis>>)> {
                let start = Instant::now();
                let embeds = model.embed_input(&ids, &words)?;
                let parts = policy.encode_parts_on(device.is_cpu());
                let enc = model.encode_in_parts(&embeds, &mask, parts)?;
                let out = generate(&model, &enc, &mask, &beam, &Constraint::None, &policy)?;
                let secs = start.elapsed().as_secs_f64();
                if out.len() != args.batch {
                    bail!("{} results for {} inputs", out.len(), args.batch);
                }
                Ok((secs, out))
            };
            for _ in 0..args.warmup {
                run()?;
            }
            let mut times = Vec::with_capacity(args.repeats);
            let mut last = Vec::new();
            for _ in 0..args.repeats {
                let (secs, out) = run()?;
                times.push(secs);
                last = out;
            }
            times.sort_by(f64::total_cmp);
            Ok((times[times.len() / 2], last))
        };
        let (median, decoded) = decode_on(&device)?;
        let hf = HF_SECONDS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        let mut line = serde_json::json!({
            "config": name,
            "batch": args.batch,
            "beams": args.beams,
            "return_sequences": args.return_sequences,
            "input_len": args.input_len,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "device": args.device,
            "seconds_per_batch": median,
            "parts": policy.decode_parts_on(device.is_cpu()),
            "inputs_per_second": args.batch as f64 / median,
        });
        // The HF figures are for exactly this job at batch 32 and 20 beams.
        if let (Some(hf), 32, 20) = (hf, args.batch, args.beams) {
            line["hf_seconds_per_batch"] = hf.into();
            line["speedup_vs_hf"] = (hf / median).into();
        }
        if args.compare_cpu && !device.is_cpu() {
            let (cpu_seconds, on_cpu) = decode_on(&Device::Cpu)?;
            let same_lists = decoded
                .iter()
                .zip(&on_cpu)
                .filter(|(a, b)| {
                    a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.tokens == y.tokens)
                })
                .count();
            let max_score_diff = decoded
                .iter()
                .zip(&on_cpu)
                .flat_map(|(a, b)| a.iter().zip(b.iter()))
                .filter(|(x, y)| x.tokens == y.tokens)
                .map(|(x, y)| (x.score - y.score).abs())
                .fold(0f32, f32::max);
            line["cpu_seconds_per_batch"] = cpu_seconds.into();
            line["inputs_with_same_list_as_cpu"] = same_lists.into();
            line["max_score_diff_vs_cpu"] = max_score_diff.into();
        }
        // Fingerprints of the results, to check that a change of the code keeps them.
        line["tokens_digest"] = format!("{:016x}", digest(&decoded, false)).into();
        line["scores_digest"] = format!("{:016x}", digest(&decoded, true)).into();
        println!("{line}");
    }
    Ok(())
}

/// FNV-1a over every hypothesis's tokens in order (and, with `scores`, its score's bits).
fn digest(decoded: &[Vec<Hypothesis>], scores: bool) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |x: u32| {
        for b in x.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for list in decoded {
        eat(list.len() as u32);
        for hyp in list {
            eat(hyp.tokens.len() as u32);
            hyp.tokens.iter().for_each(|&t| eat(t));
            if scores {
                eat(hyp.score.to_bits());
            }
        }
    }
    h
}

/// Full-length inputs of ids spread over the vocabulary (none is padding or EOS).
fn inputs(
    batch: usize,
    len: usize,
    vocab: usize,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let ids: Vec<u32> = (0..batch * len)
        .map(|i| ((i as u64 * 2_654_435_761 % (vocab as u64 - 2)) + 2) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (batch, len), device)?;
    let words = Tensor::zeros((batch, len), DType::U32, device)?;
    let mask = Tensor::ones((batch, len), DType::U32, device)?;
    Ok((ids, words, mask))
}
