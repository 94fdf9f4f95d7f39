//! Reproducible initialisation: candle's CPU random generator cannot be seeded, so the
//! parameters are redrawn from a counter-based generator keyed by seed and parameter name.

use candle_core::Tensor;
use candle_nn::VarMap;

use crate::config::T5Config;
use crate::error::{Result, T5Error};
use crate::layers::splitmix64;
use crate::model::{T5ForRec, WHOLE_WORD_EMBEDDINGS};

/// Every parameter name of a T5 with this config, sorted (Hugging Face's names plus
/// [`WHOLE_WORD_EMBEDDINGS`]).
pub fn parameter_names(cfg: &T5Config) -> Vec<String> {
    let mut names = vec![
        "shared.weight".to_string(),
        WHOLE_WORD_EMBEDDINGS.to_string(),
    ];
    let ff: &[&str] = if cfg.feed_forward_proj == "gated-gelu" {
        &["wi_0", "wi_1", "wo"]
    } else {
        &["wi", "wo"]
    };
    let attn = |names: &mut Vec<String>, prefix: String| {
        for p in ["q", "k", "v", "o"] {
            names.push(format!("{prefix}.{p}.weight"));
        }
    };
    for (stack, layers) in [
        ("encoder", cfg.num_layers),
        ("decoder", cfg.num_decoder_layers),
    ] {
        for i in 0..layers {
            let b = format!("{stack}.block.{i}");
            attn(&mut names, format!("{b}.layer.0.SelfAttention"));
            names.push(format!("{b}.layer.0.layer_norm.weight"));
            let ff_layer = if stack == "decoder" {
                attn(&mut names, format!("{b}.layer.1.EncDecAttention"));
                names.push(format!("{b}.layer.1.layer_norm.weight"));
                2
            } else {
                1
            };
            for w in ff {
                names.push(format!("{b}.layer.{ff_layer}.DenseReluDense.{w}.weight"));
            }
            names.push(format!("{b}.layer.{ff_layer}.layer_norm.weight"));
        }
        names.push(format!(
            "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ));
        names.push(format!("{stack}.final_layer_norm.weight"));
    }
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".to_string());
    }
    names.sort();
    names
}

/// Hugging Face's initial standard deviation for a parameter (factor 1); `None` = ones.
fn init_stdev(name: &str, cfg: &T5Config) -> Option<f64> {
    let d = cfg.d_model as f64;
    let last = name.rsplit('.').nth(1).unwrap_or("");
    match last {
        "layer_norm" | "final_layer_norm" => None,
        "q" => Some((d * cfg.d_kv as f64).powf(-0.5)),
        "k" | "v" | "wi" | "wi_0" | "wi_1" | "relative_attention_bias" => Some(d.powf(-0.5)),
        "o" => Some(((cfg.num_heads * cfg.d_kv) as f64).powf(-0.5)),
        "wo" => Some((cfg.d_ff as f64).powf(-0.5)),
        _ => Some(1.0),
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` standard normal draws (Box–Muller) from stream `key`.
fn normals(n: usize, key: u64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    let mut i = 0u64;
    while out.len() < n {
        let a = splitmix64(key ^ splitmix64(i));
        let b = splitmix64(key ^ splitmix64(i + 1));
        i += 2;
        // 53-bit uniforms in (0, 1].
        let u1 = ((a >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

impl T5ForRec {
    /// Redraws every parameter of this model in `varmap` with Hugging Face's T5
    /// initialisation, reproducibly from `seed` (each parameter from its own stream, so the
    /// result does not depend on iteration order). `prefix` is the `VarBuilder` prefix the
    /// model was built under ("" for none). Also reseeds dropout.
    pub fn reset_parameters(&self, varmap: &VarMap, prefix: &str, seed: u64) -> Result<()> {
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| T5Error::InvalidInput("the VarMap's lock is poisoned".to_string()))?;
        for name in parameter_names(self.config()) {
            let full = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let var = vars.get(&full).ok_or_else(|| {
                T5Error::InvalidInput(format!(
                    "reset_parameters: no variable {full} in the VarMap"
                ))
            })?;
            let shape = var.shape().clone();
            let values = match init_stdev(&name, self.config()) {
                None => Tensor::ones(&shape, var.dtype(), var.device())?,
                Some(std) => {
                    let v = normals(shape.elem_count(), splitmix64(seed) ^ fnv1a(&name));
                    (Tensor::from_vec(v, &shape, var.device())? * std)?.to_dtype(var.dtype())?
                }
            };
            var.set(&values)?;
        }
        self.set_dropout_seed(seed)?;
        Ok(())
    }
}
