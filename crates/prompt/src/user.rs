use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{PromptError, Result};
use crate::init::{get_or_init, orthonormal, param_rng};
use crate::query::QueryTable;
use crate::{PromptComposer, PromptCondition};

/// ε in the cosine of [`UserPrompt`]: `cos(x, y) = x·y / (‖x‖_ε ‖y‖_ε)` with
/// `‖x‖_ε = √(‖x‖² + ε²)`.
///
/// For vectors of ordinary size this is the plain cosine (the relative change is ~ε²/‖x‖²).
/// For a zero vector (a user with an all-zero MF embedding, or a zero attention row) it gives
/// α = 0 instead of 0/0 = NaN, and the ε inside the square root also keeps the *gradient*
/// finite, which a `max(‖x‖, ε)` clamp after the square root would not (d√s/ds is infinite at 0).
pub const COSINE_EPS: f64 = 1e-8;

/// Sizes of a [`UserPrompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPromptConfig {
    /// M, the number of decomposed prompt components (paper: 20).
    pub num_components: usize,
    /// L, the number of prompt vectors a user gets (paper: 3).
    pub prompt_len: usize,
    /// D_q, the dimension of the query vectors (paper: 512, the MF embedding size).
    pub query_dim: usize,
    /// The embedding size of the model receiving the prompt (T5-small: 512).
    pub d_model: usize,
    /// Seed of the orthogonal initialisation.
    pub seed: u64,
}

impl UserPromptConfig {
    /// The paper's sizes (M = 20, L = 3) for the given dimensions, seed 0.
    pub fn new(query_dim: usize, d_model: usize) -> Self {
        Self {
            num_components: 20,
            prompt_len: 3,
            query_dim,
            d_model,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        let sizes = [
            ("num_components", self.num_components),
            ("prompt_len", self.prompt_len),
            ("query_dim", self.query_dim),
            ("d_model", self.d_model),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(PromptError::Config(format!("{name} must be positive")));
        }
        Ok(())
    }
}

/// The user-personalised prompt of PeaPOD (paper §4): a weighted sum of M shared prompt
/// components, weighted by how the user's query matches each component's key.
///
/// For a query q (D_q), with learnable attention vectors A (M × D_q), keys K (M × D_q) and
/// components P (M × L × d_model):
/// `α_m = cos(q ⊙ A_m, K_m)` (no softmax: α_m ∈ [-1, 1]) and `prompt = Σ_m α_m P_m` (L × d_model).
/// The cosine uses [`COSINE_EPS`].
///
/// Parameters, created under the builder's prefix followed by `user_prompt.`:
/// `attention` (A), `keys` (K), `components` (P). A fresh `VarMap` gets them orthonormally
/// initialised (§4.4; P as an M × (L·d_model) matrix); a builder that already holds them
/// (a checkpoint) supplies them as they are.
#[derive(Debug, Clone)]
pub struct UserPrompt {
    config: UserPromptConfig,
    query: QueryTable,
    attention: Tensor,
    keys: Tensor,
    components: Tensor,
}

impl UserPrompt {
    /// The name segment under which the parameters live.
    pub const PREFIX: &'static str = "user_prompt";

    /// Builds the prompt module; `query` supplies q(x) for [`PromptComposer::compose`].
    pub fn new(config: UserPromptConfig, query: QueryTable, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let query = query.prepared(config.query_dim, vb.dtype(), vb.device())?;
        let vb = vb.pp(Self::PREFIX);
        let (m, l, d, dq, seed) = (
            config.num_components,
            config.prompt_len,
            config.d_model,
            config.query_dim,
            config.seed,
        );
        let attention = get_or_init(&vb, &[m, dq], "attention", || {
            orthonormal(m, dq, &mut param_rng(seed, 0))
        })?;
        let keys = get_or_init(&vb, &[m, dq], "keys", || {
            orthonormal(m, dq, &mut param_rng(seed, 1))
        })?;
        let components = get_or_init(&vb, &[m, l, d], "components", || {
            orthonormal(m, l * d, &mut param_rng(seed, 2))
        })?;
        Ok(Self {
            config,
            query,
            attention,
            keys,
            components,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &UserPromptConfig {
        &self.config
    }

    /// The query table q(x).
    pub fn query(&self) -> &QueryTable {
        &self.query
    }

    /// A (M × D_q).
    pub fn attention(&self) -> &Tensor {
        &self.attention
    }

    /// K (M × D_q).
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    /// P (M × L × d_model).
    pub fn components(&self) -> &Tensor {
        &self.components
    }

    /// The component weights α (B × M) for query vectors `q` (B × D_q).
    pub fn weights(&self, q: &Tensor) -> Result<Tensor> {
        let dq = self.config.query_dim;
        if q.rank() != 2 || q.dims()[1] != dq {
            return Err(PromptError::Shape(format!(
                "queries must be B × {dq}, got {:?}",
                q.shape()
            )));
        }
        let q = q.to_dtype(self.attention.dtype())?;
        let eps2 = COSINE_EPS * COSINE_EPS;
        // (q ⊙ A_m)·K_m = q·(A_m ⊙ K_m) and ‖q ⊙ A_m‖² = q²·A_m²: two B×D_q×M matmuls instead
        // of materialising the B × M × D_q attended queries.
        let numerator = q.matmul(&(&self.attention * &self.keys)?.t()?)?;
        let attended_sq = q.sqr()?.matmul(&self.attention.sqr()?.t()?)?;
        let attended_norm = (attended_sq + eps2)?.sqrt()?;
        let key_norm = (self.keys.sqr()?.sum(1)? + eps2)?.sqrt()?.unsqueeze(0)?;
        Ok(numerator.div(&attended_norm.broadcast_mul(&key_norm)?)?)
    }

    /// The prompt (B × L × d_model) and the weights α (B × M) for query vectors `q`
    /// (B × D_q), for models that bring their own queries instead of a table.
    pub fn forward_queries(&self, q: &Tensor) -> Result<(Tensor, Tensor)> {
        let alpha = self.weights(q)?;
        let (m, l, d) = (
            self.config.num_components,
            self.config.prompt_len,
            self.config.d_model,
        );
        let batch = alpha.dims()[0];
        let prompt = alpha
            .matmul(&self.components.reshape((m, l * d))?)?
            .reshape((batch, l, d))?;
        Ok((prompt, alpha))
    }

    /// The prompt (B × L × d_model) and weights α (B × M) of the users at rows `users` of the
    /// query table. α shows which components each user draws on.
    pub fn compose_with_alpha(&self, users: &[u32]) -> Result<(Tensor, Tensor)> {
        self.forward_queries(&self.query.gather(users)?)
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.components.dtype()
    }
}

impl PromptComposer for UserPrompt {
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
        Ok(self.compose_with_alpha(ids)?.0)
    }

    fn compose_with_weights(&self, ids: &[u32]) -> Result<(Tensor, Option<Tensor>)> {
        let (prompt, alpha) = self.compose_with_alpha(ids)?;
        Ok((prompt, Some(alpha)))
    }
}
