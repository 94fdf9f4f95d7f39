use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, T5Error};

fn default_max_distance() -> usize {
    128
}
fn default_ff_proj() -> String {
    "relu".to_string()
}
fn default_true() -> bool {
    true
}
fn default_eos() -> u32 {
    1
}
fn default_whole_word() -> usize {
    512
}

/// Hyper-parameters of the T5 encoder–decoder, under Hugging Face's `config.json` names.
///
/// `num_whole_word_embeddings` is ours (PeaPOD's whole-word embedding table, SPEC §3); a
/// Hugging Face config lacks it and gets the default 512.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    pub dropout_rate: f64,
    pub layer_norm_epsilon: f64,
    /// `"relu"` (T5 v1, t5-small) or `"gated-gelu"` (T5 v1.1).
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    #[serde(default = "default_whole_word")]
    pub num_whole_word_embeddings: usize,
}

impl T5Config {
    /// The configuration of Hugging Face's `t5-small` (60.5M parameters), the paper's base model.
    pub fn t5_small() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".to_string(),
            tie_word_embeddings: true,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            num_whole_word_embeddings: 512,
        }
    }

    /// A small model with T5's vocabulary, for tests and CPU runs: d_model 128, 2+2 layers,
    /// 4 heads, d_ff 512.
    pub fn tiny() -> Self {
        Self {
            d_model: 128,
            d_kv: 32,
            d_ff: 512,
            num_layers: 2,
            num_decoder_layers: 2,
            num_heads: 4,
            ..Self::t5_small()
        }
    }

    /// The smallest useful model, for tests of everything around T5: T5's vocabulary,
    /// d_model 16, one encoder and one decoder layer of 4 heads, d_ff 32.
    pub fn micro() -> Self {
        Self {
            d_model: 16,
            d_kv: 4,
            d_ff: 32,
            num_heads: 4,
            num_layers: 1,
            num_decoder_layers: 1,
            ..Self::tiny()
        }
    }

    /// Reads a Hugging Face `config.json` (unknown fields are ignored; absent
    /// `num_decoder_layers` means as many as the encoder, absent `decoder_start_token_id` means
    /// the pad id, as in T5). Our own checkpoints' configs are plain serde of this struct.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| T5Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|source| T5Error::Config {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            vocab_size: hf.vocab_size,
            d_model: hf.d_model,
            d_kv: hf.d_kv,
            d_ff: hf.d_ff,
            num_layers: hf.num_layers,
            num_decoder_layers: hf.num_decoder_layers.unwrap_or(hf.num_layers),
            num_heads: hf.num_heads,
            relative_attention_num_buckets: hf.relative_attention_num_buckets,
            relative_attention_max_distance: hf.relative_attention_max_distance,
            dropout_rate: hf.dropout_rate,
            layer_norm_epsilon: hf.layer_norm_epsilon,
            feed_forward_proj: hf.feed_forward_proj,
            // transformers 5 writes `tie_word_embeddings: true` for every T5 and marks T5 v1.1
            // (separate head, no output scaling) with `scale_decoder_outputs: false`.
            tie_word_embeddings: hf.tie_word_embeddings && hf.scale_decoder_outputs.unwrap_or(true),
            pad_token_id: hf.pad_token_id,
            eos_token_id: hf.eos_token_id,
            decoder_start_token_id: hf.decoder_start_token_id.unwrap_or(hf.pad_token_id),
            num_whole_word_embeddings: hf.num_whole_word_embeddings,
        })
    }

    pub(crate) fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// Hugging Face's `config.json`, where several fields are optional.
#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    d_model: usize,
    d_kv: usize,
    d_ff: usize,
    num_layers: usize,
    #[serde(default)]
    num_decoder_layers: Option<usize>,
    num_heads: usize,
    relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    relative_attention_max_distance: usize,
    dropout_rate: f64,
    layer_norm_epsilon: f64,
    #[serde(default = "default_ff_proj")]
    feed_forward_proj: String,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pad_token_id: u32,
    #[serde(default = "default_eos")]
    eos_token_id: u32,
    #[serde(default)]
    decoder_start_token_id: Option<u32>,
    #[serde(default = "default_whole_word")]
    num_whole_word_embeddings: usize,
}
