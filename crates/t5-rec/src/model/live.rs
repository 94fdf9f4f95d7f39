//! Decoding in a beam search's terms: a variable number of live hypotheses per step.
//!
//! A beam search hands the model its live hypotheses (one per input at the first step, then up
//! to `beams` per unfinished input, fewer under constraints), while the decoder keeps a fixed
//! `inputs × beams` layout whose rows of one input share that input's cross-attention keys and
//! values. The decoder state owns the mapping between the two: each live hypothesis holds one
//! slot in its input's block of rows; the other slots are computed but never read, and only
//! the hypotheses' rows go through the vocabulary projection.

use candle_core::Tensor;

use super::decoding::DecoderState;
use super::T5ForRec;
use crate::error::{Result, T5Error};

/// Where the live hypotheses sit in a [`DecoderState`]'s fixed layout.
#[derive(Clone, Debug)]
pub(crate) struct LiveRows {
    /// Live row → decoder row; the decoder rows of input `b` are `b * beams .. (b + 1) * beams`.
    slot: Vec<usize>,
    /// Live row → input.
    input: Vec<usize>,
}

impl LiveRows {
    /// One live row per input, as a beam search starts.
    pub(crate) fn one_per_input(inputs: usize, beams: usize) -> Self {
        Self {
            slot: (0..inputs).map(|b| b * beams).collect(),
            input: (0..inputs).collect(),
        }
    }
}

impl DecoderState {
    /// Number of live hypotheses ([`T5ForRec::decode_live_step`]'s rows).
    pub fn live_rows(&self) -> usize {
        self.live.slot.len()
    }

    /// The live hypotheses are reshuffled: new live row `r` continues old live row `from[r]`.
    /// New rows must come grouped by input, in ascending input order, at most
    /// [`DecoderState::beams_per_input`] per input (a beam search's order).
    pub fn reorder_live(&mut self, from: &[usize]) -> Result<()> {
        let beams = self.beams_per_input();
        // Slots left without a hypothesis keep their own (stale) cache row: valid for the
        // layout, and never read.
        let mut perm: Vec<usize> = (0..self.rows()).collect();
        let mut slot = Vec::with_capacity(from.len());
        let mut input = Vec::with_capacity(from.len());
        let (mut current, mut used) = (usize::MAX, 0);
        for &src in from {
            let b = *self.live.input.get(src).ok_or_else(|| {
                T5Error::InvalidInput(format!(
                    "reorder_live: row {src} of {} does not exist",
                    self.live.input.len()
                ))
            })?;
            if b != current {
                if current != usize::MAX && b < current {
                    return Err(T5Error::InvalidInput(format!(
                        "reorder_live: input {b} after input {current}: rows must come in \
                         ascending input order"
                    )));
                }
                current = b;
                used = 0;
            }
            if used == beams {
                return Err(T5Error::InvalidInput(format!(
                    "reorder_live: more than {beams} hypotheses for input {b}, or its rows are \
                     not contiguous"
                )));
            }
            let dst = b * beams + used;
            perm[dst] = self.live.slot[src];
            slot.push(dst);
            input.push(b);
            used += 1;
        }
        self.live = LiveRows { slot, input };
        if perm.iter().enumerate().any(|(i, &p)| p != i) {
            self.reorder(&perm)?;
        }
        Ok(())
    }
}

impl T5ForRec {
    /// One decoding step of the live hypotheses: `last_tokens` holds one token per live row
    /// (see [`DecoderState::live_rows`]), and the next-token *logits* of each live row are
    /// written row-major into `logits` (live rows × vocabulary; normalise them yourself, e.g. with
    /// a log-sum-exp per row). Inference only.
    ///
    /// At the first step, with one live row per input, the decoder runs once per input and
    /// spreads its cache to the input's beams; afterwards it runs on every slot of the layout.
    pub fn decode_live_step(
        &self,
        state: &mut DecoderState,
        last_tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let live = state.live_rows();
        let vocab = self.cfg.vocab_size;
        if last_tokens.len() != live || logits.len() != live * vocab {
            return Err(T5Error::InvalidInput(format!(
                "decode_live_step: {} tokens and {} logits for {live} live rows × {vocab}",
                last_tokens.len(),
                logits.len()
            )));
        }
        if live == 0 {
            return Ok(());
        }
        let (inputs, beams) = (state.batch_size(), state.beams_per_input());
        let per_input = state.step() == 0 && live == inputs;
        let (rows, slots_per_row) = if per_input {
            (inputs, beams)
        } else {
            (state.rows(), 1)
        };
        // Slots without a hypothesis are decoded too (the layout is fixed) but never read: any
        // token will do.
        let mut tokens = vec![self.cfg.pad_token_id; rows];
        for (&slot, &tok) in state.live.slot.iter().zip(last_tokens) {
            tokens[slot / slots_per_row] = tok;
        }
        let tokens = Tensor::from_vec(tokens, rows, &self.device)?;
        let hidden = self.decode_step_hidden(state, &tokens)?;
        // Only the hypotheses' rows go through the vocabulary projection.
        let live_rows: Vec<u32> = state
            .live
            .slot
            .iter()
            .map(|&s| (s / slots_per_row) as u32)
            .collect();
        let idx = Tensor::from_vec(live_rows, live, &self.device)?;
        self.project_step_into(state, &hidden.index_select(&idx, 0)?, logits)
    }
}
