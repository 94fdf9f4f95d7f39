#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod_t5_rec::{T5Config, T5ForRec};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A small T5 with a 40-token vocabulary: fast enough for many test steps.
pub fn small_config(ff: &str, tied: bool) -> T5Config {
    T5Config {
        vocab_size: 40,
        d_model: 16,
        d_kv: 4,
        d_ff: 32,
        num_layers: 2,
        num_decoder_layers: 2,
        num_heads: 4,
        relative_attention_num_buckets: 8,
        relative_attention_max_distance: 16,
        dropout_rate: 0.1,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: ff.to_string(),
        tie_word_embeddings: tied,
        pad_token_id: 0,
        eos_token_id: 1,
        decoder_start_token_id: 0,
        num_whole_word_embeddings: 8,
    }
}

pub fn build(cfg: &T5Config) -> anyhow::Result<(VarMap, T5ForRec)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = T5ForRec::new(cfg, vb)?;
    Ok((varmap, model))
}

/// Like `build`, with the reproducible initialisation.
pub fn build_seeded(cfg: &T5Config, seed: u64) -> anyhow::Result<(VarMap, T5ForRec)> {
    let (varmap, model) = build(cfg)?;
    model.reset_parameters(&varmap, "", seed)?;
    Ok((varmap, model))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok(a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// Deterministic pseudo-random ids in `lo..hi`.
pub fn ids(rows: usize, cols: usize, lo: u32, hi: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    lo + ((s >> 33) as u32) % (hi - lo)
                })
                .collect()
        })
        .collect()
}

pub fn tensor2(v: &[Vec<u32>]) -> anyhow::Result<Tensor> {
    Ok(Tensor::new(v.to_vec(), &Device::Cpu)?)
}
