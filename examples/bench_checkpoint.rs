//! What verifying checkpoints costs: saving and loading a t5-small PeaPOD checkpoint with its
//! AdamW moments (three copies of every weight, as training writes them), with the checksum
//! (`save_checkpoint` / `load_checkpoint`, which also syncs and renames atomically) and without
//! (plain safetensors), and the checksum alone; medians of `--repeats` alternating runs, printed
//! as one JSON line.
//!
//! `cargo run --release --example bench_checkpoint -- [--config t5-small|tiny] [--repeats 5]`

mod common;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Parser;
use peapod::checkpoint::{checkpoint_checksum, load_checkpoint, save_checkpoint};
use peapod::model::{ModelConfig, PeaPod, Variant};

#[derive(Parser)]
#[command(about = "Time saving and loading a checkpoint with and without its checksum")]
struct Cli {
    /// t5-small or tiny.
    #[arg(long, default_value = "t5-small")]
    config: String,
    /// Alternating runs of each variant; medians are printed.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::process::ExitCode {
    common::exit_code(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cli.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let t5 = peapod::run::t5_config(&cli.config)?;
    let model = PeaPod::new(
        ModelConfig::new(Variant::Pod, t5, 512, 1),
        None,
        &Device::Cpu,
    )?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in model.named_vars() {
        let t = var.as_tensor().clone();
        tensors.insert(format!("adamw.m.{name}"), t.clone());
        tensors.insert(format!("adamw.v.{name}"), t.clone());
        tensors.insert(name, t);
    }
    let dir = tempfile::tempdir()?;
    let (checked, plain) = (dir.path().join("checked"), dir.path().join("plain"));
    let header = serde_json::json!({ "bench": true });
    let (mut save_checked, mut save_plain, mut load_checked, mut load_plain, mut hash) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cli.repeats {
        let t = Instant::now();
        checkpoint_checksum(&header.to_string(), &tensors);
        hash.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        save_checkpoint(&checked, &tensors, &header, None)?;
        save_checked.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        candle_core::safetensors::save(&tensors, &plain)?;
        save_plain.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let _: (HashMap<String, Tensor>, serde_json::Value) =
            load_checkpoint(&checked, &Device::Cpu)?;
        load_checked.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let bytes = std::fs::read(&plain)?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        load_plain.push(t.elapsed().as_secs_f64());
    }
    let mb = std::fs::metadata(&checked)?.len() as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "config": cli.config,
            "file_mb": mb,
            "repeats": cli.repeats,
            "save_with_checksum_s": median(save_checked),
            "save_plain_s": median(save_plain),
            "load_with_checksum_s": median(load_checked),
            "load_plain_s": median(load_plain),
            "checksum_alone_s": median(hash),
        })
    );
    Ok(())
}
