//! Beam-search decoding of a `peapod-t5-rec` model through `peapod-beam`.
//!
//! [`generate`] is the entry point: it packs the decoder's weights once, splits the inputs into
//! the concurrent searches the [`CpuPolicy`] asks for, and runs [`beam_search`] over each with a
//! [`T5Decoder`]. The decoder state owns the layout of the search's live hypotheses in the T5
//! rows (`T5ForRec::decode_live_step`, `DecoderState::reorder_live`), so the adapter here only
//! forwards the search's calls.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use peapod::decode::generate;
//! use peapod::CpuPolicy;
//! use peapod_beam::{BeamConfig, Constraint};
//! use peapod_t5_rec::{T5Config, T5ForRec};
//!
//! # fn main() -> Result<(), peapod::PeapodError> {
//! let cfg = T5Config { vocab_size: 50, d_model: 16, d_kv: 4, d_ff: 32, ..T5Config::tiny() };
//! let varmap = VarMap::new();
//! let model = T5ForRec::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//! model.reset_parameters(&varmap, "", 7)?;
//!
//! let ids = Tensor::new(&[[5u32, 6, 7, 1], [8, 9, 1, 0]], &Device::Cpu)?;
//! let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu)?;
//! let words = Tensor::zeros((2, 4), DType::U32, &Device::Cpu)?;
//! let enc = model.encode(&model.embed_input(&ids, &words)?, &mask, false)?;
//!
//! // 4 beams, the 3 best hypotheses per input, at most 5 generated tokens.
//! let beam = BeamConfig::t5(4, 3, 6);
//! let best = generate(&model, &enc, &mask, &beam, &Constraint::None, &CpuPolicy::default())?;
//! assert_eq!(best.len(), 2);
//! assert_eq!(best[0].len(), 3);
//! assert!(best[0][0].score >= best[0][1].score);
//! # Ok(())
//! # }
//! ```

use std::ops::Range;
use std::sync::Arc;

use candle_core::Tensor;
use peapod_beam::{beam_search, BeamConfig, Constraint, Hypothesis, StepModel, StepScores};
use peapod_t5_rec::{DecoderState, PackedDecoder, T5ForRec};
use rayon::prelude::*;

use peapod_kernels::CpuPolicy;

use crate::{even_slices, PeapodError};

/// Beam search over the encoded inputs `encoder_out` (B×T×d, from [`T5ForRec::encode`]) with
/// keep-mask `encoder_mask` (B×T): per input, up to `cfg.num_return_sequences` hypotheses, best
/// first (see [`peapod_beam::beam_search`] for the exact semantics and [`Constraint`] for
/// restricting outputs to item ids or candidate lists).
///
/// `policy` says how the CPU is used: its [`CpuPolicy::decode_parts`] slices of the inputs are
/// searched concurrently on the rayon pool (one search elsewhere). Inputs never
/// interact in a beam search, so the hypotheses are those of one search over all inputs;
/// scores differ only by float rounding.
///
/// Why split on a CPU: one search alternates multi-threaded matrix products with single-threaded
/// work (the search's own bookkeeping, small attention products, element-wise steps), during
/// which the other cores wait. Independent searches keep every core busy, and their matrix
/// products still share idle cores through rayon (t5-small, batch 32, 20 beams, 2 cores:
/// 6.1–6.3 s per batch in one search, 5.0–5.2 s in two; `bench_decode`; the defaults'
/// measurements are in `peapod_kernels::runtime`).
pub fn generate(
    model: &T5ForRec,
    encoder_out: &Tensor,
    encoder_mask: &Tensor,
    cfg: &BeamConfig,
    constraint: &Constraint,
    policy: &CpuPolicy,
) -> Result<Vec<Vec<Hypothesis>>, PeapodError> {
    let parts = policy.decode_parts_on(model.device().is_cpu());
    let batch = encoder_out.dim(0)?;
    if let Constraint::PerInput(tries) = constraint {
        if tries.len() != batch {
            return Err(peapod_beam::BeamError::ConstraintCount {
                expected: batch,
                got: tries.len(),
            }
            .into());
        }
    }
    // Packed once, shared by every part's decoder.
    let packed = model.pack_decoder()?;
    let search = |inputs: Range<usize>| -> Result<Vec<Vec<Hypothesis>>, PeapodError> {
        let constraint = match constraint {
            Constraint::PerInput(tries) => Constraint::PerInput(tries[inputs.clone()].to_vec()),
            other => other.clone(),
        };
        let enc = encoder_out.narrow(0, inputs.start, inputs.len())?;
        let mask = encoder_mask.narrow(0, inputs.start, inputs.len())?;
        let mut decoder = T5Decoder::new(model).with_packed(packed.clone());
        let state = decoder.start(&enc, &mask, cfg.num_beams)?;
        Ok(beam_search(
            &mut decoder,
            state,
            inputs.len(),
            cfg,
            &constraint,
        )?)
    };
    let slices = even_slices(batch, parts.clamp(1, batch.max(1)));
    if let [all] = slices.as_slice() {
        return search(all.clone());
    }
    let found: Vec<Result<Vec<Vec<Hypothesis>>, PeapodError>> =
        slices.into_par_iter().map(search).collect();
    let mut all = Vec::with_capacity(batch);
    for part in found {
        all.extend(part?);
    }
    Ok(all)
}

/// A [`StepModel`] over a [`T5ForRec`]: what [`generate`] uses, exposed for callers that drive
/// [`beam_search`] themselves.
#[derive(Debug)]
pub struct T5Decoder<'a> {
    model: &'a T5ForRec,
    /// Weights packed beforehand; `None`: [`T5Decoder::start`] packs them (CPU, f32).
    packed: Option<Arc<PackedDecoder>>,
}

impl<'a> T5Decoder<'a> {
    pub fn new(model: &'a T5ForRec) -> Self {
        Self {
            model,
            packed: None,
        }
    }

    /// Decodes with weights already packed by this model's [`T5ForRec::pack_decoder`] (shared
    /// by several decoders, e.g. concurrent searches); `None` lets [`T5Decoder::start`] pack
    /// them itself.
    pub fn with_packed(mut self, packed: Option<Arc<PackedDecoder>>) -> Self {
        self.packed = packed;
        self
    }

    /// The initial state for [`beam_search`] over `encoder_out` (B×T×d) with `num_beams`
    /// beams: one live row per input, as the search expects at its first step.
    pub fn start(
        &self,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        num_beams: usize,
    ) -> Result<DecoderState, PeapodError> {
        let packed = match &self.packed {
            Some(p) => Some(p.clone()),
            None => self.model.pack_decoder()?,
        };
        Ok(self
            .model
            .start_decoding_with(encoder_out, encoder_mask, num_beams, packed)?)
    }
}

impl StepModel for T5Decoder<'_> {
    type State = DecoderState;
    type Error = PeapodError;

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn step_scores(&self) -> StepScores {
        // Raw logits: the search normalises each row as it ranks it.
        StepScores::Logits
    }

    fn step(
        &mut self,
        state: &mut DecoderState,
        last_tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), PeapodError> {
        // Growing only on the first steps: afterwards the buffer is reused as is.
        logits.resize(last_tokens.len() * self.vocab_size(), 0.0);
        Ok(self.model.decode_live_step(state, last_tokens, logits)?)
    }

    fn reorder(&mut self, state: &mut DecoderState, indices: &[usize]) -> Result<(), PeapodError> {
        Ok(state.reorder_live(indices)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{DType, Device, Tensor, D};
    use candle_nn::{VarBuilder, VarMap};
    use peapod_beam::{beam_search, BeamConfig, Constraint, Hypothesis, PrefixTrie};
    use peapod_t5_rec::{T5Config, T5ForRec};

    use super::{generate, CpuPolicy, T5Decoder};

    /// `generate` with `parts` concurrent searches.
    fn generate_in_parts(
        model: &T5ForRec,
        enc: &Tensor,
        mask: &Tensor,
        cfg: &BeamConfig,
        constraint: &Constraint,
        parts: usize,
    ) -> Result<Vec<Vec<Hypothesis>>, crate::PeapodError> {
        let policy = CpuPolicy {
            decode_parts: parts,
            ..CpuPolicy::default()
        };
        generate(model, enc, mask, cfg, constraint, &policy)
    }

    /// `generate` with the default policy.
    fn search(
        model: &T5ForRec,
        enc: &Tensor,
        mask: &Tensor,
        cfg: &BeamConfig,
        constraint: &Constraint,
    ) -> Vec<Vec<Hypothesis>> {
        generate(model, enc, mask, cfg, constraint, &CpuPolicy::default()).unwrap()
    }

    const VOCAB: usize = 64;

    fn model(seed: u64) -> T5ForRec {
        let cfg = T5Config {
            vocab_size: VOCAB,
            d_model: 32,
            d_kv: 8,
            d_ff: 64,
            num_heads: 4,
            num_whole_word_embeddings: 8,
            ..T5Config::tiny()
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = T5ForRec::new(&cfg, vb).unwrap();
        model.reset_parameters(&varmap, "", seed).unwrap();
        model
    }

    /// `batch` inputs of 7 positions; input `b` has `7 - b` real tokens (padding exercised).
    fn encoded(model: &T5ForRec, batch: usize) -> (Tensor, Tensor) {
        let t = 7;
        let ids: Vec<u32> = (0..batch * t)
            .map(|i| ((i * 37 + 11) % (VOCAB - 2) + 2) as u32)
            .collect();
        let mask: Vec<u32> = (0..batch * t)
            .map(|i| u32::from(i % t < t - (i / t).min(t - 1)))
            .collect();
        let ids = Tensor::from_vec(ids, (batch, t), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(mask, (batch, t), &Device::Cpu).unwrap();
        let words = Tensor::zeros((batch, t), DType::U32, &Device::Cpu).unwrap();
        let enc = model
            .encode(&model.embed_input(&ids, &words).unwrap(), &mask, false)
            .unwrap();
        (enc, mask)
    }

    /// Full teacher-forced decoding of input `b`: log-probabilities (one row per position) of
    /// the next token after each prefix of `tokens` (the decoder start token, then `tokens`).
    fn teacher_forced(
        model: &T5ForRec,
        enc: &Tensor,
        mask: &Tensor,
        b: usize,
        tokens: &[u32],
    ) -> Vec<Vec<f32>> {
        let mut dec_in = vec![0u32];
        dec_in.extend_from_slice(tokens);
        let n = dec_in.len();
        let dec_in = Tensor::from_vec(dec_in, (1, n), &Device::Cpu).unwrap();
        let logits = model
            .decode(
                &dec_in,
                &enc.narrow(0, b, 1).unwrap(),
                &mask.narrow(0, b, 1).unwrap(),
                false,
            )
            .unwrap();
        candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    /// `sum log p(tokens) / len ^ penalty` by full decoding.
    fn full_score(
        model: &T5ForRec,
        enc: &Tensor,
        mask: &Tensor,
        b: usize,
        tokens: &[u32],
        penalty: f32,
    ) -> f32 {
        let lp = teacher_forced(model, enc, mask, b, &tokens[..tokens.len() - 1]);
        let sum: f32 = tokens
            .iter()
            .zip(&lp)
            .map(|(&t, row)| row[t as usize])
            .sum();
        sum / (tokens.len() as f32).powf(penalty)
    }

    fn assert_same(a: &[Vec<Hypothesis>], b: &[Vec<Hypothesis>]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.len(), y.len());
            for (h, g) in x.iter().zip(y) {
                assert_eq!(h.tokens, g.tokens);
                assert_close(h.score, g.score, "another split of the decoding");
            }
        }
    }

    fn assert_close(got: f32, want: f32, what: &str) {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{what}: {got} vs {want}"
        );
    }

    #[test]
    fn one_beam_is_greedy_argmax_of_full_decoding() {
        let model = model(1);
        let (enc, mask) = encoded(&model, 4);
        let cfg = BeamConfig::t5(1, 1, 8);
        let got = search(&model, &enc, &mask, &cfg, &Constraint::None);
        assert_eq!(got.len(), 4);
        for (b, hyps) in got.iter().enumerate() {
            let mut greedy: Vec<u32> = Vec::new();
            while greedy.len() < cfg.max_length - 1 {
                let lp = teacher_forced(&model, &enc, &mask, b, &greedy);
                let last = &lp[lp.len() - 1];
                let arg = (0..VOCAB).fold(0, |m, i| if last[i] > last[m] { i } else { m });
                greedy.push(arg as u32);
                if arg as u32 == cfg.eos_token_id {
                    break;
                }
            }
            assert_eq!(hyps.len(), 1);
            assert_eq!(hyps[0].tokens, greedy, "input {b}");
            let want = full_score(&model, &enc, &mask, b, &greedy, 1.0);
            assert_close(hyps[0].score, want, "greedy score");
        }
    }

    #[test]
    fn hypothesis_scores_are_full_decoding_log_probabilities() {
        let model = model(2);
        let (enc, mask) = encoded(&model, 3);
        let mut cfg = BeamConfig::t5(5, 5, 6);
        cfg.length_penalty = 0.7;
        let got = search(&model, &enc, &mask, &cfg, &Constraint::None);
        // Driving the search directly through the adapter gives the same results.
        let mut decoder = T5Decoder::new(&model);
        let state = decoder.start(&enc, &mask, cfg.num_beams).unwrap();
        let direct = beam_search(&mut decoder, state, 3, &cfg, &Constraint::None).unwrap();
        assert_same(&direct, &got);
        for (b, hyps) in got.iter().enumerate() {
            assert_eq!(hyps.len(), 5);
            for (i, h) in hyps.iter().enumerate() {
                let want = full_score(&model, &enc, &mask, b, &h.tokens, 0.7);
                assert_close(h.score, want, &format!("input {b} hypothesis {i}"));
                if i > 0 {
                    assert!(hyps[i - 1].score >= h.score);
                    assert!(hyps[..i].iter().all(|o| o.tokens != h.tokens));
                }
            }
        }
    }

    /// With at least as many beams as allowed sequences, constrained beam search is exhaustive:
    /// it must return every allowed sequence, ranked by its full-decoding score. The inputs'
    /// sets differ in size, so inputs hold different numbers of beams and finish at different
    /// steps.
    #[test]
    fn constrained_search_returns_exactly_the_ranked_allowed_sequences() {
        let model = model(3);
        let (enc, mask) = encoded(&model, 3);
        let sets: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![5, 6], vec![5, 7, 8]],
            vec![
                vec![9],
                vec![10, 11],
                vec![10, 12],
                vec![13, 14, 15],
                vec![9, 16],
            ],
            vec![
                vec![20, 21, 22],
                vec![20, 21, 23],
                vec![20, 24],
                vec![25],
                vec![26, 27],
                vec![28, 29, 30],
            ],
        ];
        let tries = sets
            .iter()
            .map(|s| Arc::new(PrefixTrie::new(s.clone(), 1).unwrap()))
            .collect();
        let mut cfg = BeamConfig::t5(6, 6, 5);
        cfg.length_penalty = 0.5;
        let constraint = Constraint::PerInput(tries);
        let got = search(&model, &enc, &mask, &cfg, &constraint);
        // One search per input: inputs finish at different steps, results are the same.
        let alone = generate_in_parts(&model, &enc, &mask, &cfg, &constraint, 3).unwrap();
        assert_same(&alone, &got);
        for (b, set) in sets.iter().enumerate() {
            let mut want: Vec<Hypothesis> = set
                .iter()
                .map(|s| {
                    let mut tokens = s.clone();
                    tokens.push(1);
                    let score = full_score(&model, &enc, &mask, b, &tokens, 0.5);
                    Hypothesis { tokens, score }
                })
                .collect();
            want.sort_by(|x, y| y.score.total_cmp(&x.score));
            assert_eq!(got[b].len(), want.len(), "input {b}");
            for (g, w) in got[b].iter().zip(&want) {
                assert_eq!(g.tokens, w.tokens, "input {b}");
                assert_close(g.score, w.score, "constrained score");
            }
        }
    }

    /// Splitting the inputs into parts searched concurrently returns what one search does, for
    /// every split (uneven ones included) and with per-input constraints sliced to each part.
    #[test]
    fn searching_in_parts_returns_the_single_search_results() {
        let model = model(5);
        let (enc, mask) = encoded(&model, 5);
        let cfg = BeamConfig::t5(4, 3, 6);
        let whole = generate_in_parts(&model, &enc, &mask, &cfg, &Constraint::None, 1).unwrap();
        for parts in [2, 3, 5, 9] {
            let split =
                generate_in_parts(&model, &enc, &mask, &cfg, &Constraint::None, parts).unwrap();
            assert_same(&split, &whole);
        }
        let tries: Vec<_> = (0..5u32)
            .map(|b| {
                let set = vec![vec![10 + b, 20], vec![30 + b], vec![10 + b, 21, 22]];
                Arc::new(PrefixTrie::new(set, 1).unwrap())
            })
            .collect();
        let constraint = Constraint::PerInput(tries.clone());
        let whole = generate_in_parts(&model, &enc, &mask, &cfg, &constraint, 1).unwrap();
        let split = generate_in_parts(&model, &enc, &mask, &cfg, &constraint, 2).unwrap();
        assert_same(&split, &whole);
        // Input b's results come from input b's own trie.
        for (b, hyps) in split.iter().enumerate() {
            assert!(hyps
                .iter()
                .all(|h| h.tokens[0] == 10 + b as u32 || h.tokens[0] == 30 + b as u32));
        }
        let short = Constraint::PerInput(tries[..4].to_vec());
        let err = generate_in_parts(&model, &enc, &mask, &cfg, &short, 2).unwrap_err();
        assert!(err.to_string().contains("expected 5"), "{err}");
    }

    #[test]
    fn shared_constraint_emits_only_allowed_distinct_sequences() {
        let model = model(4);
        let (enc, mask) = encoded(&model, 3);
        let items: Vec<Vec<u32>> = (0..12u32)
            .map(|i| vec![40 + i % 3, 50 + i % 4, 30 + i])
            .collect();
        let trie = Arc::new(PrefixTrie::new(items.clone(), 1).unwrap());
        let cfg = BeamConfig::t5(4, 4, 6);
        let got = search(&model, &enc, &mask, &cfg, &Constraint::Shared(trie));
        for hyps in &got {
            assert_eq!(hyps.len(), 4);
            for (i, h) in hyps.iter().enumerate() {
                let (body, eos) = h.tokens.split_at(h.tokens.len() - 1);
                assert_eq!(eos, [1]);
                assert!(
                    items.iter().any(|s| s == body),
                    "{:?} is not an item",
                    h.tokens
                );
                assert!(hyps[..i].iter().all(|o| o.tokens != h.tokens));
            }
        }
    }
}
