use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use peapod_kernels::ops::{linear, softmax_last_dim};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::config::SasRecConfig;
use crate::error::{Result, SasRecError};

const FORMAT: &str = "peapod-sasrec";
const FORMAT_VERSION: &str = "1";
/// A large negative score for attention to keys a query may not see (finite: a row whose keys
/// are all masked would otherwise give NaN).
const MASKED: f32 = -1e9;
const LAYER_NORM_EPS: f64 = 1e-8;

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(d: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(d, "weight")?,
            bias: vb.get(d, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Composed: candle's fused layer norm has no backward pass, and at 64 hidden units
        // these few passes cost little next to the item projection.
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// Inverted dropout drawn from a seeded generator: candle's CPU random numbers cannot be
/// seeded, and a baseline must give the same figures for the same seed.
pub(crate) struct Dropout {
    keep_below: u64,
    scale: f32,
    rng: ChaCha8Rng,
}

impl Dropout {
    pub(crate) fn new(p: f64, rng: ChaCha8Rng) -> Self {
        Self {
            keep_below: ((1.0 - p) * 4_294_967_296.0) as u64,
            scale: (1.0 / (1.0 - p)) as f32,
            rng,
        }
    }

    fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        if self.keep_below >= 1 << 32 {
            return Ok(x.clone());
        }
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if u64::from(self.rng.next_u32()) < self.keep_below {
                    self.scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok(x.mul(&mask)?)
    }
}

fn dropout(d: Option<&mut Dropout>, x: Tensor) -> Result<Tensor> {
    match d {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

#[derive(Debug, Clone)]
struct Block {
    attention_norm: LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    forward_norm: LayerNorm,
    conv1_weight: Tensor,
    conv1_bias: Tensor,
    conv2_weight: Tensor,
    conv2_bias: Tensor,
}

impl Block {
    fn new(d: usize, i: usize, vb: &VarBuilder) -> Result<Self> {
        let attn = vb.pp(format!("attention_layers.{i}"));
        let ffn = vb.pp(format!("forward_layers.{i}"));
        // The point-wise feed-forward layers are 1×1 convolutions in the reference
        // implementation; stored in its shape, used as matrices.
        let conv = |name: &str| -> Result<Tensor> {
            Ok(ffn
                .get((d, d, 1), &format!("{name}.weight"))?
                .reshape((d, d))?)
        };
        Ok(Self {
            attention_norm: LayerNorm::new(d, vb.pp(format!("attention_layernorms.{i}")))?,
            in_proj_weight: attn.get((3 * d, d), "in_proj_weight")?,
            in_proj_bias: attn.get(3 * d, "in_proj_bias")?,
            out_proj_weight: attn.get((d, d), "out_proj.weight")?,
            out_proj_bias: attn.get(d, "out_proj.bias")?,
            forward_norm: LayerNorm::new(d, vb.pp(format!("forward_layernorms.{i}")))?,
            conv1_weight: conv("conv1")?,
            conv1_bias: ffn.get(d, "conv1.bias")?,
            conv2_weight: conv("conv2")?,
            conv2_bias: ffn.get(d, "conv2.bias")?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        heads: usize,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / heads;
        let split = |w: &Tensor, k: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                w.narrow(0, k * d, d)?,
                self.in_proj_bias.narrow(0, k * d, d)?,
            ))
        };
        let project = |input: &Tensor, k: usize| -> Result<Tensor> {
            let (w, bias) = split(&self.in_proj_weight, k)?;
            Ok(linear(input, &w)?
                .broadcast_add(&bias)?
                .reshape((b, t, heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        // Queries from the normalised input, keys and values from the input itself, and the
        // normalised input as the residual (Kang & McAuley's reference code).
        let normed = self.attention_norm.forward(x)?;
        let q = project(&normed, 0)?;
        let k = project(x, 1)?;
        let v = project(x, 2)?;
        let scores =
            (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?.broadcast_add(mask)?;
        let weights = dropout(drop.as_deref_mut(), softmax_last_dim(&scores)?)?;
        let attended = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        let attended =
            linear(&attended, &self.out_proj_weight)?.broadcast_add(&self.out_proj_bias)?;
        let h = self.forward_norm.forward(&(normed + attended)?)?;
        let inner = linear(&h, &self.conv1_weight)?.broadcast_add(&self.conv1_bias)?;
        let inner = dropout(drop.as_deref_mut(), inner)?.relu()?;
        let outer = linear(&inner, &self.conv2_weight)?.broadcast_add(&self.conv2_bias)?;
        Ok((dropout(drop, outer)? + h)?)
    }
}

/// One batch of item sequences, right-aligned (padding first), as the model reads them.
pub(crate) struct SequenceBatch {
    pub(crate) ids: Vec<u32>,
    pub(crate) rows: usize,
    pub(crate) len: usize,
}

impl SequenceBatch {
    /// The last `max_len` items of each history, left-padded with 0 to the longest.
    pub(crate) fn right_aligned(histories: &[&[u32]], max_len: usize) -> Self {
        let len = histories
            .iter()
            .map(|h| h.len().min(max_len))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0u32; histories.len() * len];
        for (r, h) in histories.iter().enumerate() {
            let window = &h[h.len().saturating_sub(max_len)..];
            ids[r * len + len - window.len()..(r + 1) * len].copy_from_slice(window);
        }
        Self {
            ids,
            rows: histories.len(),
            len,
        }
    }

    /// The additive attention mask (rows × 1 × len × len): a query sees itself and the items
    /// before it, never padding. The reference code lets queries see padding slots (zeroed
    /// inputs, which still have a projected key); masking them makes a sequence's states
    /// independent of how far its batch is padded.
    fn attention_mask(&self, device: &Device) -> Result<Tensor> {
        let t = self.len;
        let mut mask = vec![MASKED; self.rows * t * t];
        for r in 0..self.rows {
            let ids = &self.ids[r * t..(r + 1) * t];
            for q in 0..t {
                let row = &mut mask[(r * t + q) * t..(r * t + q + 1) * t];
                for (k, m) in row.iter_mut().enumerate().take(q + 1) {
                    if k == q || ids[k] != 0 {
                        *m = 0.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(mask, (self.rows, 1, t, t), device)?)
    }
}

/// SASRec: item embeddings plus learned positions, causal self-attention blocks, and scores
/// as the dot product of the last state with each item's (shared) embedding.
///
/// Weight names and shapes are those of the widely used PyTorch port (`item_emb.weight`,
/// `attention_layers.0.in_proj_weight`, `forward_layers.0.conv1.weight`, …), with positions
/// `pos_emb.weight` of `max_len` rows.
#[derive(Debug, Clone)]
pub struct SasRec {
    config: SasRecConfig,
    item_emb: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    last_norm: LayerNorm,
    device: Device,
}

impl SasRec {
    /// Builds the model from `vb` (weights named as described on [`SasRec`]).
    pub fn new(config: &SasRecConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let d = config.hidden;
        let blocks = (0..config.blocks)
            .map(|i| Block::new(d, i, &vb))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config: config.clone(),
            item_emb: vb.get((config.num_items + 1, d), "item_emb.weight")?,
            pos_emb: vb.get((config.max_len, d), "pos_emb.weight")?,
            blocks,
            last_norm: LayerNorm::new(d, vb.pp("last_layernorm"))?,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &SasRecConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The item embeddings of items `1..=num_items` (row j is item j + 1): the output layer.
    pub(crate) fn item_table(&self) -> Result<Tensor> {
        Ok(self.item_emb.narrow(0, 1, self.config.num_items)?)
    }

    pub(crate) fn item_embeddings(&self) -> &Tensor {
        &self.item_emb
    }

    /// The states of every slot of `batch` (rows × len × hidden), dropout applied when given.
    pub(crate) fn states(
        &self,
        batch: &SequenceBatch,
        mut drop: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let (b, t, d) = (batch.rows, batch.len, self.config.hidden);
        if let Some(&bad) = batch
            .ids
            .iter()
            .find(|&&i| i as usize > self.config.num_items)
        {
            return Err(SasRecError::InvalidInput(format!(
                "item {bad} is outside the model's items 1..={}",
                self.config.num_items
            )));
        }
        let ids = Tensor::from_slice(&batch.ids, b * t, &self.device)?;
        let items = self
            .item_emb
            .index_select(&ids, 0)?
            .reshape((b, t, d))?
            .affine((d as f64).sqrt(), 0.0)?;
        // Right-aligned: the last slot is always the last position, however short the batch.
        let positions = self.pos_emb.narrow(0, self.config.max_len - t, t)?;
        let mut x = dropout(drop.as_deref_mut(), items.broadcast_add(&positions)?)?;
        let mask = batch.attention_mask(&self.device)?;
        for block in &self.blocks {
            x = block.forward(&x, &mask, self.config.heads, drop.as_deref_mut())?;
        }
        self.last_norm.forward(&x)
    }

    /// The model's scores of every item after each history (histories × num_items; column j
    /// is item j + 1). Only the last `max_len` items of a history are read.
    pub fn item_scores(&self, histories: &[&[u32]]) -> Result<Tensor> {
        let last = self.last_states(histories)?;
        Ok(linear(&last, &self.item_table()?)?)
    }

    fn last_states(&self, histories: &[&[u32]]) -> Result<Tensor> {
        let batch = SequenceBatch::right_aligned(histories, self.config.max_len);
        let states = self.states(&batch, None)?;
        Ok(states.narrow(1, batch.len - 1, 1)?.squeeze(1)?)
    }

    /// The `k` best items after each history, best first, over all items (nothing excluded);
    /// equal scores rank the smaller id first. Histories are scored `batch_size` at a time.
    pub fn recommend(
        &self,
        histories: &[&[u32]],
        k: usize,
        batch_size: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(histories.len());
        for chunk in histories.chunks(batch_size.max(1)) {
            let scores = self.item_scores(chunk)?.to_vec2::<f32>()?;
            out.extend(scores.iter().map(|row| top_k(row, k)));
        }
        Ok(out)
    }

    /// Each history's `candidates` ranked by score, best first (equal scores: smaller id first).
    pub fn rank_candidates(
        &self,
        histories: &[&[u32]],
        candidates: &[&[u32]],
        batch_size: usize,
    ) -> Result<Vec<Vec<u32>>> {
        if histories.len() != candidates.len() {
            return Err(SasRecError::InvalidInput(format!(
                "{} histories but {} candidate lists",
                histories.len(),
                candidates.len()
            )));
        }
        let n = self.config.num_items;
        let mut out = Vec::with_capacity(histories.len());
        for (hs, cs) in histories
            .chunks(batch_size.max(1))
            .zip(candidates.chunks(batch_size.max(1)))
        {
            let scores = self.item_scores(hs)?.to_vec2::<f32>()?;
            for (row, cands) in scores.iter().zip(cs) {
                if let Some(&bad) = cands.iter().find(|&&c| c == 0 || c as usize > n) {
                    return Err(SasRecError::InvalidInput(format!(
                        "candidate {bad} is outside the model's items 1..={n}"
                    )));
                }
                let mut ranked = cands.to_vec();
                ranked.sort_by(|&a, &b| {
                    row[b as usize - 1]
                        .total_cmp(&row[a as usize - 1])
                        .then(a.cmp(&b))
                });
                out.push(ranked);
            }
        }
        Ok(out)
    }

    /// The weights by name (the names [`SasRec::new`] reads).
    pub fn named_weights(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        out.insert("item_emb.weight".to_string(), self.item_emb.clone());
        out.insert("pos_emb.weight".to_string(), self.pos_emb.clone());
        let d = self.config.hidden;
        for (i, b) in self.blocks.iter().enumerate() {
            let a = format!("attention_layers.{i}");
            let f = format!("forward_layers.{i}");
            let conv = |w: &Tensor| w.reshape((d, d, 1)).unwrap_or_else(|_| w.clone());
            for (name, t) in [
                (
                    format!("attention_layernorms.{i}.weight"),
                    &b.attention_norm.weight,
                ),
                (
                    format!("attention_layernorms.{i}.bias"),
                    &b.attention_norm.bias,
                ),
                (format!("{a}.in_proj_weight"), &b.in_proj_weight),
                (format!("{a}.in_proj_bias"), &b.in_proj_bias),
                (format!("{a}.out_proj.weight"), &b.out_proj_weight),
                (format!("{a}.out_proj.bias"), &b.out_proj_bias),
                (
                    format!("forward_layernorms.{i}.weight"),
                    &b.forward_norm.weight,
                ),
                (format!("forward_layernorms.{i}.bias"), &b.forward_norm.bias),
                (format!("{f}.conv1.bias"), &b.conv1_bias),
                (format!("{f}.conv2.bias"), &b.conv2_bias),
            ] {
                out.insert(name, t.clone());
            }
            out.insert(format!("{f}.conv1.weight"), conv(&b.conv1_weight));
            out.insert(format!("{f}.conv2.weight"), conv(&b.conv2_weight));
        }
        out.insert(
            "last_layernorm.weight".into(),
            self.last_norm.weight.clone(),
        );
        out.insert("last_layernorm.bias".into(), self.last_norm.bias.clone());
        out
    }

    /// Writes the weights (f32) and the configuration to a safetensors file, with `metadata`
    /// (for instance, what the model was trained on) beside them. The file appears complete or
    /// not at all.
    pub fn save(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let weights = self.named_weights();
        let mut bytes = Vec::with_capacity(weights.len());
        for (name, t) in &weights {
            let data: Vec<u8> = t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            bytes.push((name.clone(), t.dims().to_vec(), data));
        }
        let views = bytes
            .iter()
            .map(|(name, dims, data)| {
                TensorView::new(Dtype::F32, dims.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| SasRecError::file(path, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta: HashMap<String, String> = metadata.clone().into_iter().collect();
        meta.insert("format".into(), FORMAT.into());
        meta.insert("format_version".into(), FORMAT_VERSION.into());
        meta.insert(
            "config".into(),
            serde_json::to_string(&self.config).map_err(|e| SasRecError::file(path, e))?,
        );
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp)
            .map_err(|e| SasRecError::file(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| SasRecError::io(path, e))
    }

    /// Reads a file written by [`SasRec::save`]: the model and the metadata saved with it.
    pub fn load(path: &Path, device: &Device) -> Result<(SasRec, BTreeMap<String, String>)> {
        let bytes = std::fs::read(path).map_err(|e| SasRecError::io(path, e))?;
        let (_, header) =
            SafeTensors::read_metadata(&bytes).map_err(|e| SasRecError::file(path, e))?;
        let mut meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(SasRecError::file(path, "not a peapod-sasrec model"));
        }
        if meta.get("format_version").map(String::as_str) != Some(FORMAT_VERSION) {
            return Err(SasRecError::file(path, "unsupported format_version"));
        }
        let config: SasRecConfig = serde_json::from_str(
            meta.get("config")
                .ok_or_else(|| SasRecError::file(path, "no config in its metadata"))?,
        )
        .map_err(|e| SasRecError::file(path, format!("config: {e}")))?;
        for key in ["format", "format_version", "config"] {
            meta.remove(key);
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| SasRecError::file(path, e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = SasRec::new(&config, vb).map_err(|e| SasRecError::file(path, e))?;
        Ok((model, meta))
    }
}

/// Indices (as item ids, index + 1) of the `k` largest scores, best first; ties by smaller id.
pub(crate) fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let better = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..row.len()).collect();
    let k = k.min(idx.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, better);
    }
    idx.truncate(k);
    idx.sort_by(better);
    idx.into_iter().map(|i| i as u32 + 1).collect()
}

/// 0-based rank of item `target` among all items by `row` (ties: smaller ids first).
pub(crate) fn rank_of(row: &[f32], target: u32) -> usize {
    let t = target as usize - 1;
    let s = row[t];
    row.iter()
        .enumerate()
        .filter(|&(i, &x)| x > s || (x == s && i < t))
        .count()
}
