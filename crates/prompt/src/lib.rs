//! Personalised soft prompts for any candle model: PeaPOD's user-personalised prompt composed
//! from decomposed prompt components (paper §4), POD's task prompt, and the similar-user
//! attention prompt of the authors' released code.
//!
//! Nothing here knows about T5 or a dataset: a composer turns what it is conditioned on (the
//! users of a batch, or their tasks) into `B × L × d_model` prompt vectors, and
//! [`prepend_prompts`] puts them in front of any embedded sequence and extends its attention
//! mask. A model holds its composers as a list of [`PromptComposer`]s and gives each the ids it
//! asks for ([`PromptComposer::condition`]).
//!
//! - [`UserPrompt`] (the paper): `α_m = cos(q ⊙ A_m, K_m)`, `prompt = Σ_m α_m P_m`, with the
//!   query q from a [`QueryTable`] (frozen MF embeddings, or trainable ones) or given directly
//!   ([`UserPrompt::forward_queries`]). Orthonormal initialisation, seeded.
//! - [`TaskPrompt`] (POD): one learned block per task.
//! - [`SimilarUserPrompt`]: multi-head attention from a user's embedding over its
//!   [`NeighbourLists`] (chunked cosine top-k, cacheable on disk).
//!
//! Parameters are created through a `VarBuilder` under fixed names (`user_prompt.attention`,
//! `user_prompt.keys`, `user_prompt.components`, `task_prompt.prompts`,
//! `similar_user_prompt.{query,key,value,projector}.{weight,bias}`), so a `VarMap` saved after
//! training loads back by name. Fresh parameters in a `VarMap` are initialised by this crate
//! from the configured seed (candle's own initialisers are not seeded).
//!
//! # Plugging a user prompt into someone else's model
//!
//! A toy model (token embedding, masked mean pooling, a linear scorer) receives PeaPOD's
//! user prompt; one training step shows gradients reaching the prompt components while the
//! frozen query table stays untouched.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use peapod_prompt::{prepend_prompts, PromptComposer, QueryTable, UserPrompt, UserPromptConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
//!
//! // Someone else's model.
//! let d_model = 8;
//! let tokens_embedding = candle_nn::embedding(10, d_model, vb.pp("tokens"))?;
//! let scorer = candle_nn::linear(d_model, 1, vb.pp("scorer"))?;
//!
//! // Query vectors of 3 users (their MF embeddings, D_q = 4 ≠ d_model), kept frozen.
//! // User 1 has a zero embedding: its weights are 0, not NaN.
//! let mf = Tensor::new(
//!     &[[0.1f32, 0.2, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0]],
//!     &device,
//! )?;
//! let config = UserPromptConfig { num_components: 5, seed: 42, ..UserPromptConfig::new(4, d_model) };
//! let user_prompt = UserPrompt::new(config, QueryTable::frozen(&mf), vb.clone())?;
//!
//! // A batch: users 2 and 1, three tokens each (the second one padded).
//! let users = [2u32, 1];
//! let tokens = Tensor::new(&[[1u32, 2, 3], [4, 5, 0]], &device)?;
//! let mask = Tensor::new(&[[1f32, 1., 1.], [1., 1., 0.]], &device)?;
//!
//! let (prompt, alpha) = user_prompt.compose_with_alpha(&users)?;
//! assert_eq!(prompt.dims(), &[2, user_prompt.prompt_len(), d_model]);
//! assert_eq!(alpha.to_vec2::<f32>()?[1], vec![0.0; 5]);
//!
//! let (inputs, mask) = prepend_prompts(&[&prompt], &tokens_embedding.forward(&tokens)?, &mask)?;
//! assert_eq!(inputs.dims(), &[2, 3 + 3, d_model]);
//! assert_eq!(mask.to_vec2::<f32>()?[1], vec![1., 1., 1., 1., 1., 0.]);
//!
//! let pooled = inputs
//!     .broadcast_mul(&mask.unsqueeze(2)?)?
//!     .sum(1)?
//!     .broadcast_div(&mask.sum_keepdim(1)?)?;
//! let score = scorer.forward(&pooled)?.squeeze(1)?;
//! let loss = (score - Tensor::new(&[1f32, 0.], &device)?)?.sqr()?.mean_all()?;
//!
//! let grads = loss.backward()?;
//! assert!(grads.get(user_prompt.components()).is_some());
//! assert!(grads.get(user_prompt.query().table()).is_none());
//!
//! let before = user_prompt.components().flatten_all()?.to_vec1::<f32>()?;
//! let mut optimiser = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-2)?;
//! optimiser.step(&grads)?;
//! assert_ne!(user_prompt.components().flatten_all()?.to_vec1::<f32>()?, before);
//! # Ok(()) }
//! ```

mod error;
mod init;
mod query;
mod similar;
mod task;
mod user;

use candle_core::Tensor;

pub use error::{PromptError, Result};
pub use init::orthonormal;
pub use query::QueryTable;
pub use similar::{NeighbourLists, SimilarUserPrompt, SimilarUserPromptConfig};
pub use task::{TaskPrompt, TaskPromptConfig};
pub use user::{UserPrompt, UserPromptConfig, COSINE_EPS};

/// What a prompt composer is conditioned on, i.e. what the ids given to
/// [`PromptComposer::compose`] are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptCondition {
    /// The user: each id is the user's row in the composer's [`QueryTable`] (0-based).
    User,
    /// The task: each id is the task's index.
    Task,
}

/// Something that produces soft prompt vectors for a batch.
pub trait PromptComposer {
    /// L, the number of prompt vectors per example.
    fn prompt_len(&self) -> usize;

    /// Width of each prompt vector.
    fn d_model(&self) -> usize;

    /// What [`PromptComposer::compose`]'s ids are.
    fn condition(&self) -> PromptCondition;

    /// The prompts of a batch, B × L × d_model; `ids[i]` is example i's user row or task, as
    /// [`PromptComposer::condition`] says.
    fn compose(&self, ids: &[u32]) -> Result<Tensor>;

    /// [`PromptComposer::compose`] plus the weights the prompts were mixed with, for composers
    /// that have them (the user prompt's component weights α, B × M; the similar-user prompt's
    /// attention over neighbours, B × heads × k); `None` otherwise.
    fn compose_with_weights(&self, ids: &[u32]) -> Result<(Tensor, Option<Tensor>)> {
        Ok((self.compose(ids)?, None))
    }
}

/// Prepends `prompts` (each B × L_i × d, in the given order) to `embeds` (B × T × d) and
/// extends `mask` (B × T, any dtype) with ones over the prompt positions.
///
/// Returns the B × (ΣL_i + T) × d inputs and the B × (ΣL_i + T) mask.
pub fn prepend_prompts(
    prompts: &[&Tensor],
    embeds: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (b, t, d) = match *embeds.dims() {
        [b, t, d] => (b, t, d),
        _ => {
            return Err(PromptError::Shape(format!(
                "embeddings must be B × T × d, got {:?}",
                embeds.shape()
            )))
        }
    };
    if mask.dims() != [b, t] {
        return Err(PromptError::Shape(format!(
            "the mask must be {b} × {t} like the embeddings, got {:?}",
            mask.shape()
        )));
    }
    let mut total = 0;
    for p in prompts {
        match *p.dims() {
            [pb, l, pd] if pb == b && pd == d && p.dtype() == embeds.dtype() => total += l,
            _ => {
                return Err(PromptError::Shape(format!(
                    "a prompt must be {b} × L × {d} of {:?} like the embeddings, got {:?} of {:?}",
                    embeds.dtype(),
                    p.shape(),
                    p.dtype()
                )))
            }
        }
    }
    if total == 0 {
        return Ok((embeds.clone(), mask.clone()));
    }
    let mut parts: Vec<&Tensor> = prompts.to_vec();
    parts.push(embeds);
    let inputs = Tensor::cat(&parts, 1)?;
    let ones = Tensor::ones((b, total), mask.dtype(), mask.device())?;
    let mask = Tensor::cat(&[&ones, mask], 1)?;
    Ok((inputs, mask))
}
