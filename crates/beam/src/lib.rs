//! Batched beam search over any step function, with prefix-trie constraints, in the semantics
//! of Hugging Face `generate(num_beams=…)`.
//!
//! The search knows nothing about T5 or candle: a model implements [`StepModel`] (score the next
//! token of every live hypothesis; reorder its cache when beams are reshuffled) and
//! [`beam_search`] does the rest. Constraints ([`PrefixTrie`], [`Constraint`]) restrict outputs
//! to allowed token sequences, e.g. real item ids for sequential recommendation, or one user's
//! candidate list for top-n recommendation.
//!
//! ```
//! use std::sync::Arc;
//! use peapod_beam::{beam_search, BeamConfig, Constraint, PrefixTrie, StepModel};
//!
//! /// A "language model" with a fixed next-token distribution over 4 tokens
//! /// (0 = pad/start, 1 = EOS, 2, 3): it needs no state.
//! struct Fixed;
//! impl StepModel for Fixed {
//!     type State = ();
//!     type Error = std::convert::Infallible;
//!     fn vocab_size(&self) -> usize { 4 }
//!     fn step(&mut self, _: &mut (), last: &[u32], out: &mut Vec<f32>) -> Result<(), Self::Error> {
//!         out.clear();
//!         for _ in last {
//!             out.extend([0.1f32, 0.2, 0.3, 0.4].map(f32::ln));
//!         }
//!         Ok(())
//!     }
//!     fn reorder(&mut self, _: &mut (), _: &[usize]) -> Result<(), Self::Error> { Ok(()) }
//! }
//!
//! let mut cfg = BeamConfig::t5(3, 2, 4); // 3 beams, return 2, at most 3 generated tokens
//! cfg.length_penalty = 0.0; // rank by plain sum of log-probabilities
//! let best = beam_search(&mut Fixed, (), 1, &cfg, &Constraint::None)?;
//! // [EOS] alone (p = 0.2) is best; the runner-up is cut at max_length without EOS
//! // (p = 0.4³ = 0.064).
//! assert_eq!(best[0][0].tokens, vec![1]);
//! assert!((best[0][0].score - 0.2f32.ln()).abs() < 1e-6);
//! assert_eq!(best[0][1].tokens, vec![3, 3, 3]);
//!
//! // Only "2 3" and "3 2 2" are allowed: EOS is appended by the trie.
//! let items = Arc::new(PrefixTrie::new([vec![2, 3], vec![3, 2, 2]], 1)?);
//! let best = beam_search(&mut Fixed, (), 1, &cfg, &Constraint::Shared(items))?;
//! assert_eq!(best[0][0].tokens, vec![2, 3, 1]); // p = 0.3 · 0.4 · 0.2
//! assert_eq!(best[0].len(), 1); // "3 2 2 EOS" needs 4 generated tokens: cut by max_length
//! # Ok::<(), peapod_beam::BeamError>(())
//! ```
//!
//! # Length conventions (checked against transformers 4.57 `generation/utils.py`)
//! `max_length` and `min_length` count the decoder start token, as in HF; the length in the
//! length penalty is the number of generated tokens (EOS included, start excluded), HF's
//! `cur_len + 1 - decoder_prompt_len`. For EOS-finished hypotheses this equals the older
//! `BeamHypotheses.add(hyp.shape[-1])` (start counted, EOS not); for beams cut at `max_length`,
//! transformers < 4.36 counted one more.

mod error;
mod search;
mod topk;
mod trie;

pub use error::BeamError;
pub use peapod_kernels::rows::{exp_non_positive, log_sum_exp};
pub use search::{beam_search, BeamConfig, Constraint, Hypothesis, StepModel, StepScores};

/// Turns each row of `values` (row-major, `width` columns, e.g. raw logits of shape
/// rows × vocab) into log-probabilities in place: `x - max - ln Σ exp(x - max)`. A row that is
/// entirely `-inf` (fully masked) is left as is. Errors when `values.len()` is not a multiple of
/// `width`. (The row scan itself is `peapod_kernels::rows`'s, shared with the fused ops.)
pub fn log_softmax_rows_in_place(values: &mut [f32], width: usize) -> Result<(), BeamError> {
    peapod_kernels::rows::log_softmax_rows_in_place(values, width).map_err(|e| {
        BeamError::RaggedRows {
            len: e.len,
            width: e.width,
        }
    })
}
pub use trie::PrefixTrie;
