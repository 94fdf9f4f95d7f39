//! Parity of an accelerator against the CPU: the same seeded T5 on both devices, one padded
//! batch with a prepended soft prompt, compared on encoder states, teacher-forced logits, loss,
//! the gradients of every weight and of the soft prompt, and the losses of a few AdamW steps;
//! and on the device alone, that dropout repeats under the same seed and changes with another.
//! Prints one JSON line and exits non-zero when a relative difference exceeds `--tolerance`.
//!
//! ```text
//! scripts/build_cuda.sh --example check_device
//! check_device --device cuda [--config tiny|t5-small] [--steps 20] [--tolerance 1e-3]
//! ```

mod common;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use peapod::optim::{AdamW, AdamWConfig};
use peapod_t5_rec::{T5Config, T5ForRec};

/// Host copies of everything compared.
struct Run {
    encoder: Vec<f32>,
    logits: Vec<f32>,
    loss: f32,
    grads: BTreeMap<String, Vec<f32>>,
    train_losses: Vec<f32>,
    /// Training-mode encoder outputs: equal under the same dropout seed, different under another.
    dropout_repeatable: bool,
    dropout_reseeds: bool,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Largest |a − b| divided by the largest |b| (the CPU value), so every tensor is judged on
/// its own scale.
fn relative_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    if a.len() != b.len() {
        f32::INFINITY
    } else {
        diff / scale
    }
}

fn run_on(cfg: &T5Config, device: &Device, steps: usize) -> Result<Run> {
    let varmap = VarMap::new();
    let model = T5ForRec::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    // Host-side generator: the same weights on every device.
    model.reset_parameters(&varmap, "", 7)?;
    let d = cfg.d_model;
    let ids = Tensor::new(
        &[
            [13u32, 205, 9, 4410, 77, 1, 0, 0],
            [8, 31999, 642, 15, 2, 90, 3, 1],
            [501, 1, 0, 0, 0, 0, 0, 0],
        ],
        device,
    )?;
    let mask = ids.ne(0u32)?.to_dtype(DType::U32)?;
    let words = Tensor::new(
        &[
            [1u32, 2, 2, 3, 4, 5, 0, 0],
            [1, 1, 2, 3, 3, 4, 5, 6],
            [1, 2, 0, 0, 0, 0, 0, 0],
        ],
        device,
    )?;
    let targets = Tensor::new(&[[71u32, 5, 1], [1200, 1, 0], [3, 44, 1]], device)?;
    let target_mask = targets.ne(0u32)?.to_dtype(DType::U32)?;
    let prompt_values: Vec<f32> = (0..3 * 2 * d)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 0.2)
        .collect();
    let prompt = Var::from_tensor(&Tensor::from_vec(prompt_values, (3, 2, d), device)?)?;
    let full_mask = Tensor::cat(&[&Tensor::ones((3, 2), DType::U32, device)?, &mask], 1)?;
    let embeds = Tensor::cat(&[prompt.as_tensor(), &model.embed_input(&ids, &words)?], 1)?;

    let encoder = model.encode(&embeds, &full_mask, false)?;
    let logits = model.decode(&model.shift_right(&targets)?, &encoder, &full_mask, false)?;
    let loss = model.loss(&logits, &targets, &target_mask)?;
    let grad_store = loss.backward()?;
    let mut grads = BTreeMap::new();
    let named: Vec<(String, Var)> = {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned VarMap"))?;
        vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    for (name, var) in &named {
        let g = grad_store
            .get(var.as_tensor())
            .with_context(|| format!("no gradient reached {name}"))?;
        grads.insert(name.clone(), host(g)?);
    }
    let g = grad_store
        .get(prompt.as_tensor())
        .context("no gradient reached the soft prompt")?;
    grads.insert("<soft prompt>".to_string(), host(g)?);

    let dropped = |seed: u64| -> Result<Tensor> {
        model.set_dropout_seed(seed)?;
        Ok(model.encode(&embeds, &full_mask, true)?)
    };
    let first = dropped(3)?;
    let same = (&first - &dropped(3)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    let other = (&first - &dropped(4)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;

    let mut opt = AdamW::new(
        named,
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )?;
    let mut train_losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let embeds = Tensor::cat(&[prompt.as_tensor(), &model.embed_input(&ids, &words)?], 1)?;
        let loss = model.forward_loss(&embeds, &full_mask, &targets, &target_mask, false)?;
        train_losses.push(loss.to_scalar::<f32>()?);
        opt.step(&loss.backward()?)?;
    }
    Ok(Run {
        encoder: host(&encoder)?,
        logits: host(&logits)?,
        loss: loss.to_scalar::<f32>()?,
        grads,
        train_losses,
        dropout_repeatable: same == 0.0,
        dropout_reseeds: other > 0.0,
    })
}

#[derive(clap::Parser)]
#[command(about = "Parity of an accelerator against the CPU on one seeded T5 (one JSON line)")]
struct Cli {
    /// cuda (a build with --features cuda) or cpu (the CPU against itself).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// tiny or t5-small.
    #[arg(long, default_value = "tiny")]
    config: String,
    /// AdamW steps whose losses are compared.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Largest relative difference accepted; the exit status is non-zero above it.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f32,
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> Result<()> {
    let cli: Cli = clap::Parser::parse();
    let (device_name, config, steps, tolerance) =
        (cli.device, cli.config, cli.steps, cli.tolerance);
    let cfg = match config.as_str() {
        "t5-small" => T5Config::t5_small(),
        "tiny" => T5Config::tiny(),
        other => bail!("--config t5-small|tiny, got {other}"),
    };
    let device = match device_name.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => bail!("--device cpu|cuda, got {other}"),
    };
    let on_device = run_on(&cfg, &device, steps)?;
    let on_cpu = run_on(&cfg, &Device::Cpu, steps)?;

    let mut worst_grad = ("".to_string(), 0f32);
    for (name, cpu) in &on_cpu.grads {
        let other = on_device
            .grads
            .get(name)
            .with_context(|| format!("{name} has no gradient on {device_name}"))?;
        let diff = relative_diff(other, cpu);
        if diff > worst_grad.1 || diff.is_nan() {
            worst_grad = (name.clone(), diff);
        }
    }
    let encoder = relative_diff(&on_device.encoder, &on_cpu.encoder);
    let logits = relative_diff(&on_device.logits, &on_cpu.logits);
    let loss = (on_device.loss - on_cpu.loss).abs() / on_cpu.loss.abs().max(1e-12);
    let train = relative_diff(&on_device.train_losses, &on_cpu.train_losses);
    let checks = [encoder, logits, loss, worst_grad.1, train];
    let dropout_ok = on_device.dropout_repeatable && on_device.dropout_reseeds;
    let ok = checks.iter().all(|d| *d <= tolerance) && dropout_ok;
    println!(
        "{}",
        serde_json::json!({
            "device": device_name,
            "config": config,
            "tolerance": tolerance,
            "encoder_rel_diff": encoder,
            "logits_rel_diff": logits,
            "loss_cpu": on_cpu.loss,
            "loss_device": on_device.loss,
            "loss_rel_diff": loss,
            "gradients_compared": on_cpu.grads.len(),
            "worst_gradient": worst_grad.0,
            "worst_gradient_rel_diff": worst_grad.1,
            "train_losses_cpu": on_cpu.train_losses,
            "train_losses_device": on_device.train_losses,
            "train_losses_rel_diff": train,
            "dropout_repeatable_and_reseeded": dropout_ok,
            "ok": ok,
        })
    );
    if !ok {
        bail!("{device_name} differs from the CPU by more than {tolerance}");
    }
    Ok(())
}
