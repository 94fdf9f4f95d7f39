//! Training-step benchmark: forward + backward + AdamW at batch 64, printed as JSON lines.
//!
//! cargo run --release --example bench_t5 -- --config t5-small|tiny
//!     [--case 40x6|420x6|20x20 ...] [--steps 3] [--batch 64] [--device cpu|cuda] [--parts N]
//!
//! On the CPU the batch is backpropagated in `--parts` concurrent slices
//! (`T5ForRec::backward_in_parts`; default one per rayon thread, `--parts 1` for one pass).
//!
//! `--device cuda` needs a build with `--features cuda` (see `scripts/build_cuda.sh`); each
//! timed step then ends with a device synchronisation, so the figures are wall-clock.

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod::optim::{AdamW, AdamWConfig};
use peapod_t5_rec::{T5Config, T5ForRec};

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn pseudo_ids(rows: usize, cols: usize, hi: u32, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            2 + ((s >> 33) as u32) % (hi - 2)
        })
        .collect()
}

#[derive(clap::Parser)]
#[command(about = "Time T5 training steps (forward + backward + AdamW), one JSON line per case")]
struct Cli {
    /// t5-small or tiny.
    #[arg(long, default_value = "tiny")]
    config: String,
    /// Input x target tokens, e.g. 40x6 (repeatable; default 40x6, 20x20, 420x6).
    #[arg(long = "case", value_parser = parse_case)]
    cases: Vec<(usize, usize)>,
    /// Timed steps per case (after one warm-up step); the median is printed.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Examples per training step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// cpu or cuda (a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Concurrent slices of each batch on the CPU (default: one per rayon thread).
    #[arg(long)]
    parts: Option<usize>,
}

fn parse_case(value: &str) -> Result<(usize, usize), String> {
    let parse = |s: &str| s.parse::<usize>().map_err(|e| format!("{value:?}: {e}"));
    match value.split_once('x') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => Err(format!("{value:?}: expected INxOUT, e.g. 40x6")),
    }
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> anyhow::Result<()> {
    // Process-wide allocator and worker-pool settings, once, before any tensor exists.
    peapod::CpuPolicy::default().apply_to_process();
    let cli: Cli = clap::Parser::parse();
    let (config, mut cases, steps, batch, device_name) =
        (cli.config, cli.cases, cli.steps, cli.batch, cli.device);
    let parts = cli.parts.unwrap_or_else(rayon::current_num_threads);
    if cases.is_empty() {
        cases = vec![(40, 6), (20, 20), (420, 6)];
    }
    // Slices only help on the CPU (see `T5ForRec::backward_in_parts`).
    let parts = if device_name == "cpu" {
        parts.clamp(1, batch)
    } else {
        1
    };
    let cfg = match config.as_str() {
        "t5-small" => T5Config::t5_small(),
        "tiny" => T5Config::tiny(),
        other => anyhow::bail!("--config t5-small|tiny, got {other}"),
    };
    let device = match device_name.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => anyhow::bail!("--device cpu|cuda, got {other}"),
    };
    let varmap = VarMap::new();
    let model = T5ForRec::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    model.reset_parameters(&varmap, "", 0)?;
    let named: Vec<_> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned VarMap"))?;
        vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    // PyTorch's reference step: AdamW lr 5e-4, weight decay 0.01, no gradient clipping.
    let mut opt = AdamW::new(
        named,
        AdamWConfig {
            lr: 5e-4,
            max_grad_norm: None,
            ..AdamWConfig::default()
        },
    )?;
    for (t_in, t_out) in cases {
        let input = Tensor::from_vec(pseudo_ids(batch, t_in, 32000, 1), (batch, t_in), &device)?;
        let whole = Tensor::from_vec(pseudo_ids(batch, t_in, 500, 2), (batch, t_in), &device)?;
        let target = Tensor::from_vec(pseudo_ids(batch, t_out, 32000, 3), (batch, t_out), &device)?;
        let mask_in = Tensor::ones((batch, t_in), DType::U32, &device)?;
        let mask_out = Tensor::ones((batch, t_out), DType::U32, &device)?;
        let mut times = Vec::new();
        let mut phases = Vec::new();
        // One warm-up step, then the timed ones.
        for step in 0..=steps {
            let start = Instant::now();
            let (grads, forward) = if parts == 1 {
                let embeds = model.embed_input(&input, &whole)?;
                let loss = model.forward_loss(&embeds, &mask_in, &target, &mask_out, true)?;
                device.synchronize()?;
                let forward = start.elapsed().as_secs_f64();
                (loss.backward()?, forward)
            } else {
                // Every target token counts (full masks): a slice's share is its share of rows.
                let (grads, _loss) =
                    model.backward_in_parts(parts, |p| -> anyhow::Result<Tensor> {
                        let (from, to) = (p * batch / parts, (p + 1) * batch / parts);
                        let rows = |t: &Tensor| t.narrow(0, from, to - from);
                        let embeds = model.embed_input(&rows(&input)?, &rows(&whole)?)?;
                        let loss = model.forward_loss(
                            &embeds,
                            &rows(&mask_in)?,
                            &rows(&target)?,
                            &rows(&mask_out)?,
                            true,
                        )?;
                        Ok((loss * ((to - from) as f64 / batch as f64))?)
                    })?;
                // The slices' forward and backward passes overlap: no separate forward time.
                (grads, f64::NAN)
            };
            device.synchronize()?;
            let backward = start.elapsed().as_secs_f64();
            opt.step(&grads)?;
            device.synchronize()?;
            let secs = start.elapsed().as_secs_f64();
            if step > 0 {
                times.push(secs);
                let backward_only = if forward.is_nan() {
                    backward
                } else {
                    backward - forward
                };
                phases.push((forward, backward_only, secs - backward));
            }
        }
        let n = phases.len().max(1) as f64;
        let phase_means = phases.iter().fold((0.0, 0.0, 0.0), |a, p| {
            (a.0 + p.0 / n, a.1 + p.1 / n, a.2 + p.2 / n)
        });
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{{\"config\":\"{config}\",\"device\":\"{device_name}\",\"batch\":{batch},\"parts\":{parts},\"input_len\":{t_in},\"target_len\":{t_out},\"median_s_per_step\":{median:.3},\"steps\":{},\"times_s\":{:?},\"peak_rss_mb\":{:.0},\"mean_forward_backward_optimizer_s\":[{},{:.3},{:.3}]}}",
            times.len(),
            times.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            peak_rss_mb(),
            // Split steps overlap forward and backward passes: one figure for both.
            if phase_means.0.is_nan() {
                "null".to_string()
            } else {
                format!("{:.3}", phase_means.0)
            },
            phase_means.1,
            phase_means.2
        );
    }
    Ok(())
}
