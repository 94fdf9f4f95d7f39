use std::io::Write;
use std::path::Path;

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{PromptError, Result};
use crate::init::linear;
use crate::query::QueryTable;
use crate::user::COSINE_EPS;
use crate::{PromptComposer, PromptCondition};

/// Each user's most similar users by cosine similarity of their embeddings (the user itself
/// excluded), most similar first; ties go to the lower index.
///
/// Computed block by block ([`NeighbourLists::compute_chunked`]): a block of rows is compared
/// with the whole table on the table's device, and only its top k per row is kept, so memory
/// is `chunk_rows × N` floats rather than N × N (35,598 users: 5 GB dense). Zero embeddings
/// use the ε-cosine of [`COSINE_EPS`] (similarity 0 with everyone). Save the lists with
/// [`NeighbourLists::save`], or let [`NeighbourLists::load_or_compute`] cache them.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourLists {
    num_users: usize,
    k: usize,
    fingerprint: u64,
    indices: Vec<u32>,
    similarities: Vec<f32>,
}

const CACHE_MAGIC: &[u8; 8] = b"PEAPODNB";
const CACHE_VERSION: u32 = 1;
const CACHE_HEADER: usize = 8 + 4 + 8 + 8 + 8;
/// Similarity floats held per block by [`NeighbourLists::compute`] (128 MB of f32).
const BLOCK_FLOATS: usize = 1 << 25;

impl NeighbourLists {
    /// The `k` nearest users of every row of `embeddings` (N × D), in blocks of ~128 MB.
    pub fn compute(embeddings: &Tensor, k: usize) -> Result<Self> {
        let n = embeddings.dims().first().copied().unwrap_or(1).max(1);
        Self::compute_chunked(embeddings, k, (BLOCK_FLOATS / n).max(1))
    }

    /// As [`NeighbourLists::compute`], comparing `chunk_rows` users with everyone at a time.
    pub fn compute_chunked(embeddings: &Tensor, k: usize, chunk_rows: usize) -> Result<Self> {
        let (n, _) = dims2(embeddings)?;
        if k == 0 || k >= n {
            return Err(PromptError::Config(format!(
                "need 1 <= k < number of users, got k = {k} with {n} users"
            )));
        }
        if chunk_rows == 0 {
            return Err(PromptError::Config("chunk_rows must be positive".into()));
        }
        let fingerprint = fingerprint(embeddings)?;
        let x = embeddings.detach().to_dtype(DType::F32)?;
        let norms = (x.sqr()?.sum_keepdim(1)? + COSINE_EPS * COSINE_EPS)?.sqrt()?;
        let unit = x.broadcast_div(&norms)?;
        // Left as a transposed view: gemm reads it in place, faster than a contiguous copy.
        let unit_t = unit.t()?;
        let mut indices = vec![0u32; n * k];
        let mut similarities = vec![0f32; n * k];
        for start in (0..n).step_by(chunk_rows) {
            let rows = chunk_rows.min(n - start);
            let block: Vec<f32> = unit
                .narrow(0, start, rows)?
                .matmul(&unit_t)?
                .flatten_all()?
                .to_vec1()?;
            let span = start * k..(start + rows) * k;
            indices[span.clone()]
                .par_chunks_mut(k)
                .zip(similarities[span].par_chunks_mut(k))
                .zip(block.par_chunks(n))
                .enumerate()
                .for_each(|(r, ((idx, sim), row))| top_k(row, start + r, idx, sim));
        }
        Ok(Self {
            num_users: n,
            k,
            fingerprint,
            indices,
            similarities,
        })
    }

    /// Loads the lists from `path` when it holds lists for these `embeddings` and this `k`;
    /// otherwise (no file, another table, another k, an unreadable file) computes them and
    /// writes them to `path`.
    pub fn load_or_compute(path: impl AsRef<Path>, embeddings: &Tensor, k: usize) -> Result<Self> {
        let path = path.as_ref();
        if path.exists() {
            if let Ok(cached) = Self::load(path) {
                let (n, _) = dims2(embeddings)?;
                if cached.k == k
                    && cached.num_users == n
                    && cached.fingerprint == fingerprint(embeddings)?
                {
                    return Ok(cached);
                }
            }
        }
        let lists = Self::compute(embeddings, k)?;
        lists.save(path)?;
        Ok(lists)
    }

    /// Number of users N.
    pub fn num_users(&self) -> usize {
        self.num_users
    }

    /// Neighbours per user.
    pub fn k(&self) -> usize {
        self.k
    }

    /// A hash of the embeddings the lists were computed from (FNV-1a over shape and f32 bits).
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The `k` neighbours of `user`, most similar first; `None` for an unknown user.
    pub fn neighbours(&self, user: u32) -> Option<&[u32]> {
        let u = user as usize;
        (u < self.num_users).then(|| &self.indices[u * self.k..(u + 1) * self.k])
    }

    /// The cosine similarities matching [`NeighbourLists::neighbours`].
    pub fn similarities(&self, user: u32) -> Option<&[f32]> {
        let u = user as usize;
        (u < self.num_users).then(|| &self.similarities[u * self.k..(u + 1) * self.k])
    }

    /// Writes the lists as a small little-endian binary file (header, then N·k u32 indices,
    /// then N·k f32 similarities), via a temporary file so a crash never leaves half a cache.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io = |source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::with_capacity(CACHE_HEADER + self.indices.len() * 8);
        bytes.extend_from_slice(CACHE_MAGIC);
        bytes.extend_from_slice(&CACHE_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(self.num_users as u64).to_le_bytes());
        bytes.extend_from_slice(&(self.k as u64).to_le_bytes());
        bytes.extend_from_slice(&self.fingerprint.to_le_bytes());
        self.indices
            .iter()
            .for_each(|i| bytes.extend_from_slice(&i.to_le_bytes()));
        self.similarities
            .iter()
            .for_each(|s| bytes.extend_from_slice(&s.to_le_bytes()));
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads lists written by [`NeighbourLists::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| PromptError::Cache {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.len() < CACHE_HEADER || &bytes[..8] != CACHE_MAGIC {
            return Err(bad("not a neighbour-list file".into()));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| (u32_at(o) as u64) | ((u32_at(o + 4) as u64) << 32);
        let version = u32_at(8);
        if version != CACHE_VERSION {
            return Err(bad(format!("unsupported version {version}")));
        }
        let (n, k, fingerprint) = (u64_at(12), u64_at(20), u64_at(28));
        let entries = n
            .checked_mul(k)
            .and_then(|e| usize::try_from(e).ok())
            .ok_or_else(|| bad("absurd header".into()))?;
        if bytes.len() != CACHE_HEADER + entries * 8 {
            return Err(bad(format!(
                "expected {} bytes for {n} users × {k} neighbours, found {}",
                CACHE_HEADER + entries * 8,
                bytes.len()
            )));
        }
        let body = &bytes[CACHE_HEADER..];
        let indices: Vec<u32> = body[..entries * 4]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if indices.iter().any(|&i| i as u64 >= n) {
            return Err(bad("a neighbour index is out of range".into()));
        }
        let similarities = body[entries * 4..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            num_users: n as usize,
            k: k as usize,
            fingerprint,
            indices,
            similarities,
        })
    }
}

/// The k best entries of `row` other than `me`, best first, by (similarity desc, index asc).
/// One pass with a sorted buffer of k: for k ≪ N almost every entry is rejected by a single
/// comparison with the current k-th best.
fn top_k(row: &[f32], me: usize, idx: &mut [u32], sim: &mut [f32]) {
    let k = idx.len();
    let mut len = 0;
    for (j, &s) in row.iter().enumerate() {
        if j == me {
            continue;
        }
        // Scanning indices upwards, an equal similarity never beats an entry already held.
        if len == k && s.total_cmp(&sim[k - 1]).is_le() {
            continue;
        }
        let mut pos = len.min(k - 1);
        while pos > 0 && s.total_cmp(&sim[pos - 1]).is_gt() {
            sim[pos] = sim[pos - 1];
            idx[pos] = idx[pos - 1];
            pos -= 1;
        }
        sim[pos] = s;
        idx[pos] = j as u32;
        len = (len + 1).min(k);
    }
}

fn dims2(t: &Tensor) -> Result<(usize, usize)> {
    match *t.dims() {
        [n, d] => Ok((n, d)),
        _ => Err(PromptError::Shape(format!(
            "embeddings must be N × D, got {:?}",
            t.shape()
        ))),
    }
}

fn fingerprint(embeddings: &Tensor) -> Result<u64> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: [u8; 8]| {
        for b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    for &d in embeddings.dims() {
        eat((d as u64).to_le_bytes());
    }
    let values: Vec<f32> = embeddings.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    for pair in values.chunks(2) {
        let lo = pair[0].to_bits() as u64;
        let hi = pair.get(1).map_or(0, |v| v.to_bits() as u64);
        eat((lo | (hi << 32)).to_le_bytes());
    }
    Ok(h)
}

/// Sizes of a [`SimilarUserPrompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimilarUserPromptConfig {
    /// Similar users attended to (authors' code: 20, the number of prompts).
    pub num_neighbours: usize,
    /// Attention heads (authors' code: 4); must divide `d_model`.
    pub num_heads: usize,
    /// Prompt vectors produced (3).
    pub prompt_len: usize,
    /// Dimension of the user embeddings.
    pub query_dim: usize,
    /// The embedding size of the model receiving the prompt; also the attention width.
    pub d_model: usize,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl SimilarUserPromptConfig {
    /// The authors' sizes (20 neighbours, 4 heads, 3 vectors), seed 0.
    pub fn new(query_dim: usize, d_model: usize) -> Self {
        Self {
            num_neighbours: 20,
            num_heads: 4,
            prompt_len: 3,
            query_dim,
            d_model,
            seed: 0,
        }
    }
}

/// The user prompt of the authors' released code (an alternative to the paper's formula):
/// multi-head attention whose query is the user's embedding and whose keys and values are the
/// embeddings of its most similar users, then a linear map to L × d_model.
///
/// With W_q, W_k, W_v (D_q → d_model, with bias) split into H heads of d_model / H:
/// `ctx_h = softmax(Q_h K_hᵀ / √(d_model/H)) V_h`, `prompt = W_o [ctx_1 … ctx_H] + b_o`
/// reshaped to L × d_model. Parameters under `similar_user_prompt.`: `query`, `key`, `value`,
/// `projector` (each `.weight`, `.bias`), initialised like PyTorch's `nn.Linear`.
#[derive(Debug, Clone)]
pub struct SimilarUserPrompt {
    config: SimilarUserPromptConfig,
    table: QueryTable,
    neighbours: NeighbourLists,
    query: Linear,
    key: Linear,
    value: Linear,
    projector: Linear,
}

impl SimilarUserPrompt {
    /// The name segment under which the parameters live.
    pub const PREFIX: &'static str = "similar_user_prompt";

    /// Builds the module over the user embeddings `table`; `neighbours` must come from the same
    /// users and hold at least `num_neighbours` per user (the first ones are used).
    pub fn new(
        config: SimilarUserPromptConfig,
        table: QueryTable,
        neighbours: NeighbourLists,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = config;
        if [
            c.num_neighbours,
            c.num_heads,
            c.prompt_len,
            c.query_dim,
            c.d_model,
        ]
        .contains(&0)
        {
            return Err(PromptError::Config("all sizes must be positive".into()));
        }
        if c.d_model % c.num_heads != 0 {
            return Err(PromptError::Config(format!(
                "num_heads = {} must divide d_model = {}",
                c.num_heads, c.d_model
            )));
        }
        let table = table.prepared(c.query_dim, vb.dtype(), vb.device())?;
        if neighbours.num_users() != table.num_users() || neighbours.k() < c.num_neighbours {
            return Err(PromptError::Config(format!(
                "neighbour lists cover {} users with k = {}, need {} users with k >= {}",
                neighbours.num_users(),
                neighbours.k(),
                table.num_users(),
                c.num_neighbours
            )));
        }
        let vb = vb.pp(Self::PREFIX);
        let (dq, d) = (c.query_dim, c.d_model);
        Ok(Self {
            query: linear(&vb.pp("query"), dq, d, c.seed, 0)?,
            key: linear(&vb.pp("key"), dq, d, c.seed, 2)?,
            value: linear(&vb.pp("value"), dq, d, c.seed, 4)?,
            projector: linear(&vb.pp("projector"), d, c.prompt_len * d, c.seed, 6)?,
            config,
            table,
            neighbours,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SimilarUserPromptConfig {
        &self.config
    }

    /// The neighbour lists in use.
    pub fn neighbour_lists(&self) -> &NeighbourLists {
        &self.neighbours
    }

    /// The prompt (B × L × d_model) of `users` and the attention weights over their
    /// neighbours (B × H × k, rows summing to 1).
    pub fn forward_with_weights(&self, users: &[u32]) -> Result<(Tensor, Tensor)> {
        let query = self.table.gather(users)?;
        let k = self.config.num_neighbours;
        let mut ids = Vec::with_capacity(users.len() * k);
        for &u in users {
            // `gather` above has already rejected unknown users.
            let list = self.neighbours.neighbours(u).unwrap_or(&[]);
            ids.extend_from_slice(&list[..k]);
        }
        let b = users.len();
        let (h, d) = (self.config.num_heads, self.config.d_model);
        let hd = d / h;
        let similar = self
            .table
            .gather(&ids)?
            .reshape((b, k, self.config.query_dim))?;
        let q = self.query.forward(&query)?.reshape((b, h, 1, hd))?;
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, k, h, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let keys = heads(self.key.forward(&similar)?)?;
        let values = heads(self.value.forward(&similar)?)?;
        let scores = (q.matmul(&keys.transpose(2, 3)?.contiguous()?)? / (hd as f64).sqrt())?;
        // `ops::softmax` (not `softmax_last_dim`) because it has a backward pass in candle 0.11.
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let context = weights.matmul(&values)?.reshape((b, d))?;
        let prompt = self
            .projector
            .forward(&context)?
            .reshape((b, self.config.prompt_len, d))?;
        Ok((prompt, weights.reshape((b, h, k))?))
    }
}

impl PromptComposer for SimilarUserPrompt {
    fn prompt_len(&self) -> usize {
        self.config.prompt_len
    }

    fn d_model(&self) -> usize {
        self.config.d_model
    }

    fn condition(&self) -> PromptCondition {
        PromptCondition::User
    }

    fn compose(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.forward_with_weights(ids)?.0)
    }

    fn compose_with_weights(&self, ids: &[u32]) -> Result<(Tensor, Option<Tensor>)> {
        let (prompt, weights) = self.forward_with_weights(ids)?;
        Ok((prompt, Some(weights)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_similarity_then_index_and_skips_self() {
        let row = [0.5, 0.9, 0.9, -1.0, 0.7, 1.0];
        let (mut idx, mut sim) = ([0u32; 3], [0f32; 3]);
        top_k(&row, 5, &mut idx, &mut sim);
        assert_eq!(idx, [1, 2, 4]);
        assert_eq!(sim, [0.9, 0.9, 0.7]);
        top_k(&row, 1, &mut idx, &mut sim);
        assert_eq!(idx, [5, 2, 4]);
    }
}
