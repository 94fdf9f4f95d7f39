use std::sync::Arc;

use rayon::prelude::*;

use crate::topk::{Candidate, TopK};
use crate::trie::{PrefixTrie, ROOT};
use crate::BeamError;
use peapod_kernels::rows::log_sum_exp;

/// A decoder that scores next tokens for a batch of hypotheses: the only thing the search needs
/// from a model.
///
/// # Row layout
/// The first `step` sees exactly one row per input (`batch_size` rows, row `b` = input `b`, every
/// last token = `decoder_start_token_id`): all beams of an input start from the same prefix, so
/// scoring it once instead of `num_beams` times saves that much work. The initial `State` must
/// therefore describe `batch_size` rows. After every step the search calls [`StepModel::reorder`]
/// with the new layout: the live hypotheses of the unfinished inputs, grouped by input in
/// ascending input order, best first within an input. The number of rows changes over time
/// (it grows to `num_beams` per input after the first step and shrinks as inputs finish or, under
/// constraints, as beams die), so implementations should index-select rather than assume a
/// fixed `batch_size × num_beams` shape. A model that needs to know the input of each row (e.g.
/// for cross-attention over a per-input encoder output) can carry a row→input map in its state
/// and reorder it alongside the cache.
pub trait StepModel {
    /// Decoder state (e.g. a key/value cache) for the current rows.
    type State;
    /// The model's own error type; it is boxed into [`BeamError::Model`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// Vocabulary size: the width of each row written by [`StepModel::step`].
    fn vocab_size(&self) -> usize;

    /// What [`StepModel::step`] writes. The default, [`StepScores::LogProbabilities`], suits a
    /// model that normalises itself; a model that produces raw logits should say
    /// [`StepScores::Logits`] and leave the normalising to the search, which then reads each
    /// row once from memory for its log-sum-exp and ranks it while it is still in cache
    /// (normalising in the model would add a read and a write of every row).
    fn step_scores(&self) -> StepScores {
        StepScores::LogProbabilities
    }

    /// Writes the next-token log-probabilities (or logits, see [`StepModel::step_scores`]) of
    /// every row into `log_probs`, row-major, exactly `last_tokens.len() × vocab_size()` values,
    /// given each row's last token (and whatever the state remembers of the earlier ones).
    ///
    /// `log_probs` is a buffer owned by the search and handed back every step: a CPU model can
    /// resize and fill it in place (no allocation after the first step), and a model whose
    /// backend already produced a `Vec<f32>` can move it in with `*log_probs = v` at no copy.
    /// The search only reads the buffer.
    fn step(
        &mut self,
        state: &mut Self::State,
        last_tokens: &[u32],
        log_probs: &mut Vec<f32>,
    ) -> Result<(), Self::Error>;

    /// Rebuilds the state so that new row `i` continues the hypothesis that was row `indices[i]`.
    /// `indices.len()` is the new row count; indices may repeat (a hypothesis that spawned
    /// several beams) or be missing (pruned or finished hypotheses). Not called when the new
    /// layout is the identity.
    fn reorder(&mut self, state: &mut Self::State, indices: &[usize]) -> Result<(), Self::Error>;
}

/// The meaning of the rows a [`StepModel`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepScores {
    /// Next-token log-probabilities, used as they are.
    #[default]
    LogProbabilities,
    /// Raw logits: the search takes `logit − ln Σ exp(logits of the row)` (the row's
    /// log-softmax, computed by [`crate::log_sum_exp`]), exactly what
    /// [`crate::log_softmax_rows_in_place`] would have written.
    Logits,
}

/// Beam search settings, with the meaning of the same-named Hugging Face `generate` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamConfig {
    /// Beams kept per input (and finished hypotheses kept per input).
    pub num_beams: usize,
    /// Hypotheses returned per input (≤ `num_beams`).
    pub num_return_sequences: usize,
    /// Maximum decoder length counting the decoder start token, as in HF: at most
    /// `max_length − 1` tokens are generated. Must be ≥ 2.
    pub max_length: usize,
    /// EOS is forbidden while the decoder length (start token included) is below `min_length`,
    /// i.e. every hypothesis has at least `min_length` generated tokens counting its EOS
    /// (HF `MinLengthLogitsProcessor`).
    pub min_length: usize,
    /// `true`: an input stops as soon as `num_beams` hypotheses are finished. `false`: it also
    /// needs the best live beam's current score, `sum / len^length_penalty`, to be no better
    /// than the worst finished one (HF's heuristic).
    pub early_stopping: bool,
    /// Finished scores are `sum_logprobs / generated_len ^ length_penalty`.
    pub length_penalty: f32,
    /// End of sequence (T5: 1).
    pub eos_token_id: u32,
    /// Padding (T5: 0). Only validated: finished inputs leave the batch instead of being padded.
    pub pad_token_id: u32,
    /// First decoder input (T5: the pad token, 0).
    pub decoder_start_token_id: u32,
}

impl BeamConfig {
    /// T5 token ids (eos 1, pad 0, decoder start 0) and the HF defaults `min_length` 0,
    /// `early_stopping` false, `length_penalty` 1.0.
    pub fn t5(num_beams: usize, num_return_sequences: usize, max_length: usize) -> Self {
        Self {
            num_beams,
            num_return_sequences,
            max_length,
            min_length: 0,
            early_stopping: false,
            length_penalty: 1.0,
            eos_token_id: 1,
            pad_token_id: 0,
            decoder_start_token_id: 0,
        }
    }

    fn validate(&self, vocab: usize) -> Result<(), BeamError> {
        let bad = |field, reason: String| Err(BeamError::InvalidConfig { field, reason });
        if vocab == 0 {
            return bad("vocab_size", "must be positive".into());
        }
        if self.num_beams == 0 || self.num_beams > (u32::MAX / 4) as usize {
            return bad("num_beams", format!("{} is out of range", self.num_beams));
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams {
            return bad(
                "num_return_sequences",
                format!(
                    "{} must be in 1..={} (num_beams)",
                    self.num_return_sequences, self.num_beams
                ),
            );
        }
        if self.max_length < 2 {
            return bad(
                "max_length",
                format!(
                    "{} leaves no room for a token after the decoder start",
                    self.max_length
                ),
            );
        }
        if !self.length_penalty.is_finite() {
            return bad("length_penalty", "must be finite".into());
        }
        for (field, tok) in [
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if tok as usize >= vocab {
                return bad(field, format!("{tok} is outside the vocabulary of {vocab}"));
            }
        }
        Ok(())
    }
}

/// Which output sequences are allowed.
#[derive(Debug, Clone, Default)]
pub enum Constraint {
    /// Any sequence (plain HF beam search).
    #[default]
    None,
    /// Every input is restricted to the same set (e.g. all real item ids).
    Shared(Arc<PrefixTrie>),
    /// Input `b` is restricted to `tries[b]` (e.g. its own top-n candidate list).
    PerInput(Vec<Arc<PrefixTrie>>),
}

/// A finished hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated tokens, without the decoder start token, ending with EOS unless the hypothesis
    /// was cut at `max_length` (never the case under a constraint).
    pub tokens: Vec<u32>,
    /// `sum of log-probabilities / tokens.len() ^ length_penalty` (HF `sequences_scores`).
    pub score: f32,
}

/// One input's ranking buffers, reused every step.
struct Selector {
    topk: TopK,
    cands: Vec<Candidate>,
}

impl Selector {
    fn new(k: usize) -> Self {
        Self {
            topk: TopK::new(k),
            cands: Vec::with_capacity(k),
        }
    }
}

/// The best `num_beams` finished hypotheses of every input (HF `BeamHypotheses`), stored in
/// fixed slots so that finishing a hypothesis allocates nothing.
struct Finished {
    num_beams: usize,
    width: usize,
    count: Vec<usize>,
    score: Vec<f32>,
    len: Vec<usize>,
    order: Vec<u64>,
    tokens: Vec<u32>,
    next_order: u64,
}

impl Finished {
    fn new(batch: usize, num_beams: usize, width: usize) -> Self {
        let slots = batch * num_beams;
        Self {
            num_beams,
            width,
            count: vec![0; batch],
            score: vec![0.0; slots],
            len: vec![0; slots],
            order: vec![0; slots],
            tokens: vec![0; slots * width],
            next_order: 0,
        }
    }

    fn is_full(&self, b: usize) -> bool {
        self.count[b] == self.num_beams
    }

    /// Slot holding the worst hypothesis of input `b` (the earliest one among equal scores).
    fn worst_slot(&self, b: usize) -> usize {
        let base = b * self.num_beams;
        let mut worst = base;
        for s in base + 1..base + self.count[b] {
            if self.score[s] < self.score[worst]
                || (self.score[s] == self.score[worst] && self.order[s] < self.order[worst])
            {
                worst = s;
            }
        }
        worst
    }

    fn add(&mut self, b: usize, prefix: &[u32], last: u32, score: f32) {
        let slot = if self.count[b] < self.num_beams {
            self.count[b] += 1;
            b * self.num_beams + self.count[b] - 1
        } else {
            let w = self.worst_slot(b);
            if score <= self.score[w] {
                return;
            }
            w
        };
        let dst = &mut self.tokens[slot * self.width..];
        dst[..prefix.len()].copy_from_slice(prefix);
        dst[prefix.len()] = last;
        self.len[slot] = prefix.len() + 1;
        self.score[slot] = score;
        self.order[slot] = self.next_order;
        self.next_order += 1;
    }

    fn into_results(self, keep: usize) -> Vec<Vec<Hypothesis>> {
        (0..self.count.len())
            .map(|b| {
                let base = b * self.num_beams;
                let mut slots: Vec<usize> = (base..base + self.count[b]).collect();
                slots.sort_by(|&x, &y| {
                    self.score[y]
                        .total_cmp(&self.score[x])
                        .then(self.order[x].cmp(&self.order[y]))
                });
                slots
                    .into_iter()
                    .take(keep)
                    .map(|s| Hypothesis {
                        tokens: self.tokens[s * self.width..s * self.width + self.len[s]].to_vec(),
                        score: self.score[s],
                    })
                    .collect()
            })
            .collect()
    }
}

/// Beam search over `batch_size` inputs whose decoder state is `state` (one row per input, see
/// [`StepModel`]), in the semantics of Hugging Face `generate(num_beams=…)` (transformers 4.57):
///
/// - each step ranks the `2 · num_beams` best continuations of an input over all its beams ×
///   vocabulary by summed log-probability; EOS continuations ranked within the first
///   `num_beams` become finished hypotheses, the best `num_beams` non-EOS ones live on;
/// - a finished hypothesis of `n` generated tokens (EOS included, decoder start excluded) scores
///   `sum_logprobs / n ^ length_penalty`; each input keeps its `num_beams` best;
/// - at the last step (`max_length − 1` generated tokens) the top `num_beams` continuations all
///   finish, EOS or not (without a constraint);
/// - see [`BeamConfig`] for `min_length` and `early_stopping`.
///
/// Returns, per input, up to `num_return_sequences` hypotheses, best first. Fewer are returned
/// only when fewer valid sequences exist (constraints, or `-inf` log-probabilities).
///
/// Deliberate differences from HF, none of which changes a result HF would get right:
/// masked (`-inf`) continuations are never selected, so a beam with no allowed continuation is
/// dropped instead of surviving with a `-1e9` score, and tiny vocabularies (fewer than
/// `2 · num_beams` tokens) never produce duplicate junk beams; ties are broken towards the
/// lower (beam, token) index; finished inputs leave the batch instead of being padded.
///
/// Under a [`Constraint`], log-probabilities of disallowed tokens are masked without
/// renormalisation (as HF `prefix_allowed_tokens_fn` does), only complete allowed sequences
/// (ending with EOS) are returned, and beams still open at `max_length` are discarded. No
/// returned list contains the same token sequence twice: beams of one input always hold
/// distinct prefixes (each is a distinct (beam, token) extension of distinct beams), and the
/// trie stores each allowed sequence once, so distinct hypotheses are distinct allowed
/// sequences.
pub fn beam_search<M: StepModel>(
    model: &mut M,
    mut state: M::State,
    batch_size: usize,
    cfg: &BeamConfig,
    constraint: &Constraint,
) -> Result<Vec<Vec<Hypothesis>>, BeamError> {
    let vocab = model.vocab_size();
    let scores = model.step_scores();
    cfg.validate(vocab)?;
    let tries: Vec<Option<&PrefixTrie>> = match constraint {
        Constraint::None => vec![None; batch_size],
        Constraint::Shared(t) => vec![Some(t.as_ref()); batch_size],
        Constraint::PerInput(ts) => {
            if ts.len() != batch_size {
                return Err(BeamError::ConstraintCount {
                    expected: batch_size,
                    got: ts.len(),
                });
            }
            ts.iter().map(|t| Some(t.as_ref())).collect()
        }
    };
    for trie in tries.iter().flatten() {
        if trie.eos_token_id() != cfg.eos_token_id {
            return Err(BeamError::InvalidConstraint(format!(
                "trie EOS {} differs from eos_token_id {}",
                trie.eos_token_id(),
                cfg.eos_token_id
            )));
        }
        if trie.max_token() as usize >= vocab {
            return Err(BeamError::InvalidConstraint(format!(
                "trie token {} is outside the vocabulary of {vocab}",
                trie.max_token()
            )));
        }
    }
    if batch_size == 0 {
        return Ok(Vec::new());
    }

    let nb = cfg.num_beams;
    let eos = cfg.eos_token_id;
    let width = cfg.max_length - 1;
    let max_rows = batch_size * nb;
    let model_err = |e: M::Error| BeamError::Model(Box::new(e));

    // Per-row buffers, double-buffered and swapped each step: nothing below allocates in the
    // step loop except what the model does itself.
    let mut score = vec![0f32; max_rows];
    let mut node = vec![ROOT; max_rows];
    let mut seq = vec![0u32; max_rows * width];
    let mut next_score = score.clone();
    let mut next_node = node.clone();
    let mut next_seq = seq.clone();
    let mut last_tokens = vec![cfg.decoder_start_token_id; max_rows];
    let mut indices: Vec<usize> = Vec::with_capacity(max_rows);
    // Rows of input b are in_start[b] .. in_start[b] + in_count[b].
    let mut in_start: Vec<usize> = (0..batch_size).collect();
    let mut in_count = vec![1usize; batch_size];
    let mut done = vec![false; batch_size];
    let mut rows = batch_size;
    let mut log_probs: Vec<f32> = Vec::new();
    // One selector per input, so that inputs are ranked in parallel (each input's ranking only
    // reads its own rows, hence the results do not depend on the thread count).
    let mut selectors: Vec<Selector> = (0..batch_size).map(|_| Selector::new(2 * nb)).collect();
    let mut finished = Finished::new(batch_size, nb, width);

    for t in 1..=width {
        model
            .step(&mut state, &last_tokens[..rows], &mut log_probs)
            .map_err(model_err)?;
        if log_probs.len() != rows * vocab {
            return Err(BeamError::StepOutputSize {
                rows,
                vocab,
                got: log_probs.len(),
            });
        }
        let is_last = t == width;
        // HF bans EOS while the decoder length (start + t − 1 generated) is below min_length.
        let eos_banned = t < cfg.min_length;
        let banned = eos_banned.then_some(eos);
        let denom = (t as f32).powf(cfg.length_penalty);
        let mut new_rows = 0;
        indices.clear();

        {
            let (log_probs, score, node) = (&log_probs, &score, &node);
            let (in_start, in_count, done, tries) = (&in_start, &in_count, &done, &tries);
            selectors
                .par_iter_mut()
                .enumerate()
                .filter(|(b, _)| !done[*b])
                .for_each(|(b, sel)| {
                    let (start, count) = (in_start[b], in_count[b]);
                    sel.topk.clear();
                    for r in 0..count {
                        let row = start + r;
                        let lp = &log_probs[row * vocab..(row + 1) * vocab];
                        // The row's log-softmax shift, while the row is read anyway (HF
                        // normalises before banning EOS, so EOS counts in the sum).
                        let shift = match scores {
                            StepScores::LogProbabilities => 0.0,
                            StepScores::Logits => log_sum_exp(lp),
                        };
                        if shift == f32::NEG_INFINITY {
                            // A fully masked row has no continuation.
                            continue;
                        }
                        match tries[b] {
                            None => sel
                                .topk
                                .offer_dense(lp, score[row], shift, r as u32, banned),
                            Some(trie) => {
                                // Only the allowed children are looked at: the mask is implicit.
                                for &tok in trie.children(node[row]).0 {
                                    if banned != Some(tok) {
                                        sel.topk.offer(
                                            score[row] + (lp[tok as usize] - shift),
                                            r as u32,
                                            tok,
                                        );
                                    }
                                }
                            }
                        }
                    }
                    sel.topk.drain_sorted(&mut sel.cands);
                });
        }

        for b in 0..batch_size {
            if done[b] {
                continue;
            }
            let start = in_start[b];
            let cands = &selectors[b].cands;

            let first_new = new_rows;
            let mut running = 0;
            for (rank, c) in cands.iter().enumerate() {
                let src = start + c.row as usize;
                let prefix = &seq[src * width..src * width + t - 1];
                if c.token == eos || is_last {
                    // Only the first num_beams ranks may finish; under a constraint a beam cut
                    // at max_length is not an allowed sequence.
                    if rank < nb && (c.token == eos || tries[b].is_none()) {
                        finished.add(b, prefix, c.token, c.score / denom);
                    }
                } else if running < nb {
                    let dst = new_rows;
                    indices.push(src);
                    next_score[dst] = c.score;
                    if let Some(trie) = tries[b] {
                        // The token came from this node's children, so the child exists.
                        next_node[dst] = trie.child(node[src], c.token).unwrap_or(ROOT);
                    }
                    next_seq[dst * width..dst * width + t - 1].copy_from_slice(prefix);
                    next_seq[dst * width + t - 1] = c.token;
                    last_tokens[dst] = c.token;
                    new_rows += 1;
                    running += 1;
                }
                if running == nb && rank + 1 >= nb {
                    break;
                }
            }

            let input_done = running == 0
                || (finished.is_full(b)
                    && (cfg.early_stopping || {
                        // HF heuristic: the best live beam, scored at its current length, cannot
                        // beat the worst finished hypothesis.
                        let best_running = next_score[first_new] / denom;
                        finished.score[finished.worst_slot(b)] >= best_running
                    }));
            if input_done {
                done[b] = true;
                new_rows = first_new;
                indices.truncate(first_new);
            } else {
                in_start[b] = first_new;
                in_count[b] = running;
            }
        }

        std::mem::swap(&mut score, &mut next_score);
        std::mem::swap(&mut node, &mut next_node);
        std::mem::swap(&mut seq, &mut next_seq);
        if new_rows == 0 || is_last {
            break;
        }
        let identity = new_rows == rows && indices.iter().enumerate().all(|(i, &s)| i == s);
        rows = new_rows;
        if !identity {
            model.reorder(&mut state, &indices).map_err(model_err)?;
        }
    }
    Ok(finished.into_results(cfg.num_return_sequences))
}
