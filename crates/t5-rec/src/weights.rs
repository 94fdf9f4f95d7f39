//! Loading weights by name (Hugging Face checkpoints or ours) and saving checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_nn::VarMap;

use crate::error::{Result, T5Error};
use crate::model::WHOLE_WORD_EMBEDDINGS;

/// Names under which checkpoints store the tied embedding table.
const SHARED_ALIASES: [&str; 3] = [
    "shared.weight",
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
];

/// What [`load_weights`] tolerates besides an exact name-for-name match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Variables that may be absent from the file; they keep their current value.
    pub allow_missing: Vec<String>,
    /// File tensors that may match no variable; they are skipped.
    pub ignore_unexpected: Vec<String>,
}

impl LoadOptions {
    /// Every variable must be in the file and every tensor of the file must be used (aliases of
    /// the shared embedding excepted): for our own checkpoints.
    pub fn exact() -> Self {
        Self::default()
    }

    /// For Hugging Face's T5 checkpoints (`t5-small`'s `model.safetensors`): the whole-word
    /// table is ours and keeps its initialisation; the unused decoder cross-attention relative
    /// bias and a tied copy of `lm_head.weight` are skipped.
    pub fn hf_pretrained() -> Self {
        Self {
            allow_missing: vec![WHOLE_WORD_EMBEDDINGS.to_string()],
            ignore_unexpected: vec![
                "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
                    .to_string(),
                "lm_head.weight".to_string(),
            ],
        }
    }
}

/// What [`load_weights`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: Vec<String>,
    /// Variables absent from the file that kept their value (allowed by the options).
    pub kept: Vec<String>,
    /// File tensors skipped (allowed by the options, or aliases of the shared embedding).
    pub skipped: Vec<String>,
}

/// Sets the variables of `varmap` from the safetensors file at `path`, by name, converting
/// dtypes. `shared.weight`, `encoder.embed_tokens.weight` and `decoder.embed_tokens.weight`
/// are accepted as one another's aliases. Nothing is modified unless the whole file matches:
/// missing or unexpected tensors (beyond `options`) and shape mismatches are errors that name
/// the tensors.
pub fn load_weights(
    varmap: &VarMap,
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(T5Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    // SAFETY: the file is mapped read-only and only read while `data` lives; like every
    // safetensors reader, this assumes nobody truncates the file meanwhile.
    let data = unsafe { MmapedSafetensors::new(path)? };
    let shapes: BTreeMap<String, Vec<usize>> = data
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| T5Error::InvalidInput("the VarMap's lock is poisoned".to_string()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();

    let mut plan = Vec::new();
    let mut report = LoadReport::default();
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for name in names {
        let source = if shapes.contains_key(name.as_str()) {
            Some(name.clone())
        } else if SHARED_ALIASES.contains(&name.as_str()) {
            SHARED_ALIASES
                .iter()
                .find(|a| shapes.contains_key(**a))
                .map(|a| a.to_string())
        } else {
            None
        };
        match source {
            Some(src) => {
                let model_shape = vars[name].shape().dims().to_vec();
                if shapes[&src] != model_shape {
                    return Err(T5Error::ShapeMismatch {
                        path: path.to_path_buf(),
                        file: shapes[&src].clone(),
                        name: src,
                        model: model_shape,
                    });
                }
                used.insert(src.clone());
                plan.push((name.clone(), src));
            }
            None if options.allow_missing.contains(name) => report.kept.push(name.clone()),
            None => missing.push(name.clone()),
        }
    }
    let shared_loaded = plan.iter().any(|(n, _)| n == "shared.weight");
    let mut unexpected = Vec::new();
    for name in shapes.keys() {
        if used.contains(name) {
            continue;
        }
        let alias = shared_loaded && SHARED_ALIASES.contains(&name.as_str());
        if alias || options.ignore_unexpected.contains(name) {
            report.skipped.push(name.clone());
        } else {
            unexpected.push(name.clone());
        }
    }
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(T5Error::WeightMismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
        });
    }
    for (name, src) in plan {
        let var = &vars[&name];
        let value = data.load(&src, var.device())?.to_dtype(var.dtype())?;
        var.set(&value)?;
        report.loaded.push(name);
    }
    Ok(report)
}

/// Saves every variable of `varmap` (T5 weights under Hugging Face's names plus ours) as
/// safetensors; [`load_weights`] with [`LoadOptions::exact`] reads it back.
pub fn save_checkpoint(varmap: &VarMap, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    varmap.save(path).map_err(|e| match e {
        candle_core::Error::Io(source) => T5Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => T5Error::Candle(other),
    })
}

/// Local paths of a downloaded Hugging Face model.
#[derive(Clone, Debug)]
pub struct HubFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
}

/// Downloads (or finds in the hub cache) `config.json` and `model.safetensors` of a Hugging
/// Face T5 repository, e.g. `"google-t5/t5-small"`.
#[cfg(feature = "hub")]
pub fn download_from_hub(repo_id: &str) -> Result<HubFiles> {
    let api = hf_hub::api::sync::Api::new().map_err(|e| T5Error::Hub(e.to_string()))?;
    let repo = api.model(repo_id.to_string());
    let config = repo
        .get("config.json")
        .map_err(|e| T5Error::Hub(format!("{repo_id}/config.json: {e}")))?;
    let weights = repo
        .get("model.safetensors")
        .map_err(|e| T5Error::Hub(format!("{repo_id}/model.safetensors: {e}")))?;
    Ok(HubFiles { config, weights })
}
