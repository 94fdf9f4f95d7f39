//! Evaluation (SPEC §7): beam-search decoding into ranked item lists, the protocol's metrics,
//! constrained and exact-scoring modes reported beside them, and the popularity, ID-order, MF
//! and SASRec baselines on the same users and candidates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use indicatif::ProgressBar;
use peapod_beam::{log_sum_exp, BeamConfig, Constraint, PrefixTrie};
use peapod_datasets::{
    id_order_candidates, id_order_ranking, visible_history, Batch, Dataset, Example, RecTokenizer,
    Split, Task,
};
use peapod_metrics::{RankingAccumulator, TextCorpus, NOT_AN_ITEM};
use peapod_pmf::MfModel;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode::generate;
use crate::model::{BatchTensors, PeaPod};
use crate::PeapodError;

/// Decoding settings. Defaults are the protocol's: 20 beams, 20 returned, batch 32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub num_beams: usize,
    pub num_return_sequences: usize,
    pub batch_size: usize,
    /// Decoder length limit for item ids, start token included.
    pub max_item_length: usize,
    /// Decoder length limit for explanations (20 tokens + eos + start).
    pub max_explanation_length: usize,
    /// Also decode restricted to real items (sequential) / the input's candidates (top-n).
    pub constrained: bool,
    /// Also rank top-n candidates by their teacher-forced likelihood (no search error).
    pub exact_topn: bool,
    /// Run the paper-protocol free beam search (the reference numbers).
    pub free_beam: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            num_beams: 20,
            num_return_sequences: 20,
            batch_size: 32,
            max_item_length: 10,
            max_explanation_length: 22,
            constrained: false,
            exact_topn: false,
            free_beam: true,
        }
    }
}

impl EvalConfig {
    /// Checks every setting's domain, naming the first that is out of it.
    pub fn validate(&self) -> Result<(), PeapodError> {
        let checks = [
            (
                self.num_beams > 0,
                "num_beams (--beams) must be at least 1, not 0".to_string(),
            ),
            (
                (1..=self.num_beams).contains(&self.num_return_sequences),
                format!(
                    "num_return_sequences must lie in 1..={}, not {}",
                    self.num_beams, self.num_return_sequences
                ),
            ),
            (
                self.batch_size > 0,
                "batch_size (--batch-size) must be at least 1, not 0".to_string(),
            ),
            (
                self.max_item_length > 1 && self.max_explanation_length > 1,
                format!(
                    "maximum lengths count the start token and must exceed 1, not {} and {}",
                    self.max_item_length, self.max_explanation_length
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(PeapodError::Config(format!("decoding settings: {what}"))),
            None => Ok(()),
        }
    }
}

/// Metrics of one task under each decoding mode that ran (`"beam"`, `"constrained"`, `"exact"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub users: usize,
    pub modes: BTreeMap<String, BTreeMap<String, f64>>,
    /// Inputs decoded per second by the free beam search.
    pub decode_inputs_per_second: Option<f64>,
}

/// Non-generative rankers on the same users and candidates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineReport {
    pub popularity: BTreeMap<String, BTreeMap<String, f64>>,
    /// The ID-order rule (`peapod_datasets::id_order_ranking`): what P5's sequential indexing
    /// leaks, with no model at all.
    #[serde(default)]
    pub id_order: BTreeMap<String, BTreeMap<String, f64>>,
    pub mf: BTreeMap<String, BTreeMap<String, f64>>,
    /// SASRec (`peapod_sasrec`), trained on the training split (`crate::sasrec`).
    #[serde(default)]
    pub sasrec: BTreeMap<String, BTreeMap<String, f64>>,
}

/// A ranked list per input: generated item ids in score order ([`NOT_AN_ITEM`] for a sequence that is not an
/// item id: it still occupies its rank, as in the reference scripts).
pub type RankedLists = Vec<Vec<u32>>;

fn progress(len: usize, label: &str, show: bool) -> ProgressBar {
    let bar = crate::progress::bar(
        len as u64,
        "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
        show,
    );
    bar.set_prefix(label.to_string());
    bar
}

fn beam_config(cfg: &EvalConfig, max_length: usize, num_return: usize) -> BeamConfig {
    let mut beam = BeamConfig::t5(cfg.num_beams, num_return.min(cfg.num_beams), max_length);
    beam.early_stopping = true;
    beam
}

/// Item ranked lists for `examples` by beam search; with `constraint`, a function giving each
/// input's constraint (or one shared trie).
pub fn rank_items(
    model: &PeaPod,
    tokenizer: &RecTokenizer,
    dataset: &Dataset,
    examples: &[Example],
    cfg: &EvalConfig,
    constraint: ItemConstraint<'_>,
    show: bool,
) -> Result<(RankedLists, f64), PeapodError> {
    let beam = beam_config(cfg, cfg.max_item_length, cfg.num_return_sequences);
    let bar = progress(examples.len(), constraint.label(), show);
    let start = Instant::now();
    let mut lists = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(cfg.batch_size.max(1)) {
        let batch = Batch::from_examples(tokenizer, chunk)?;
        let tensors = BatchTensors::from_batch(&batch, model.device())?;
        let (enc, mask) = model.encode(&tensors)?;
        let constraint = constraint.for_chunk(tokenizer, chunk)?;
        let hyps = generate(
            model.t5(),
            &enc,
            &mask,
            &beam,
            &constraint,
            model.cpu_policy(),
        )?;
        for h in hyps {
            lists.push(
                h.iter()
                    .map(|h| {
                        tokenizer
                            .decode_item(&h.tokens)
                            .filter(|&i| dataset.contains_item(i))
                            .unwrap_or(NOT_AN_ITEM)
                    })
                    .collect(),
            );
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let rate = examples.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok((lists, rate))
}

/// How beam search is restricted when ranking items.
pub enum ItemConstraint<'a> {
    /// Free decoding (the paper's protocol).
    None,
    /// Every input restricted to the same items (sequential: all real items).
    Shared(&'a Arc<PrefixTrie>),
    /// Each input restricted to its own candidate list (top-n).
    Candidates,
}

impl ItemConstraint<'_> {
    fn label(&self) -> &'static str {
        match self {
            ItemConstraint::None => "beam",
            _ => "constrained",
        }
    }

    fn for_chunk(
        &self,
        tokenizer: &RecTokenizer,
        chunk: &[Example],
    ) -> Result<Constraint, PeapodError> {
        Ok(match self {
            ItemConstraint::None => Constraint::None,
            ItemConstraint::Shared(t) => Constraint::Shared(Arc::clone(t)),
            ItemConstraint::Candidates => {
                let mut tries = Vec::with_capacity(chunk.len());
                for e in chunk {
                    let items = e.candidates.as_deref().ok_or_else(|| {
                        PeapodError::Config("a top-n example has no candidate list".into())
                    })?;
                    tries.push(Arc::new(item_trie(tokenizer, items)?));
                }
                Constraint::PerInput(tries)
            }
        })
    }
}

/// A prefix trie over the target token sequences of `items`.
pub fn item_trie(tokenizer: &RecTokenizer, items: &[u32]) -> Result<PrefixTrie, PeapodError> {
    let sequences = items
        .iter()
        .map(|&i| tokenizer.item_target_ids(i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PrefixTrie::new(sequences, peapod_datasets::EOS_ID)?)
}

/// Top-n by exact scoring: every candidate's teacher-forced log-likelihood (sum over its
/// tokens), candidates sorted by it. One encoder pass per `inputs_per_pass` inputs; the decoder
/// sees all candidates of an input as one batch reading that input's encoder output once, and
/// the vocabulary projection (the dominant cost at 32k tokens) runs once per distinct target
/// prefix, not once per candidate position: candidates sharing a prefix share its
/// distribution.
pub fn rank_candidates_exactly(
    model: &PeaPod,
    tokenizer: &RecTokenizer,
    examples: &[Example],
    inputs_per_pass: usize,
    show: bool,
) -> Result<RankedLists, PeapodError> {
    let bar = progress(examples.len(), "exact", show);
    let mut lists = Vec::with_capacity(examples.len());
    let t5 = model.t5();
    let device = model.device();
    let vocab = t5.config().vocab_size;
    // The projected logits of one input's candidates (tens of MB), reused input after input.
    let mut logits = Vec::new();
    for chunk in examples.chunks(inputs_per_pass.max(1)) {
        let batch = Batch::from_examples(tokenizer, chunk)?;
        let tensors = BatchTensors::from_batch(&batch, device)?;
        let (enc, mask) = model.encode(&tensors)?;
        for (b, example) in chunk.iter().enumerate() {
            let items = example.candidates.as_deref().ok_or_else(|| {
                PeapodError::Config("a top-n example has no candidate list".into())
            })?;
            let targets = items
                .iter()
                .map(|&i| tokenizer.item_target_ids(i))
                .collect::<Result<Vec<_>, _>>()?;
            let scores = score_continuations(
                model,
                &enc.narrow(0, b, 1)?,
                &mask.narrow(0, b, 1)?,
                &targets,
                vocab,
                &mut logits,
            )?;
            let n = targets.len();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
            lists.push(order.into_iter().map(|r| items[r]).collect());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(lists)
}

/// Log-likelihood of each target sequence given one encoded input (1×T×d, mask 1×T).
/// `logits` is scratch space, reused across calls.
fn score_continuations(
    model: &PeaPod,
    enc: &Tensor,
    mask: &Tensor,
    targets: &[Vec<u32>],
    vocab: usize,
    logits: &mut Vec<f32>,
) -> Result<Vec<f32>, PeapodError> {
    let t5 = model.t5();
    let device = model.device();
    let n = targets.len();
    let len = targets.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut ids = vec![0u32; n * len];
    for (r, t) in targets.iter().enumerate() {
        ids[r * len..r * len + t.len()].copy_from_slice(t);
    }
    // The distribution at position p depends only on the prefix t[..p].
    let mut prefix_row: std::collections::HashMap<&[u32], u32> = Default::default();
    let mut projected_rows: Vec<u32> = Vec::new();
    let mut picks: Vec<(usize, u32)> = Vec::with_capacity(n * len);
    for (r, t) in targets.iter().enumerate() {
        for p in 0..t.len() {
            let next = projected_rows.len() as u32;
            let unique = *prefix_row.entry(&t[..p]).or_insert_with(|| {
                projected_rows.push((r * len + p) as u32);
                next
            });
            picks.push((r, unique * vocab as u32 + t[p]));
        }
    }
    let target_ids = Tensor::from_vec(ids, (n, len), device)?;
    let dec_in = t5.shift_right(&target_ids)?;
    let hidden = t5.decode_hidden(&dec_in, enc, mask, false)?;
    let d = hidden.dim(2)?;
    let rows = Tensor::new(projected_rows.as_slice(), device)?;
    let selected = hidden.reshape((n * len, d))?.index_select(&rows, 0)?;
    // Written in place (no logits tensor, no copy); only each row's normaliser and the picked
    // entries are read, so the rows are never rewritten as log-probabilities.
    logits.resize(projected_rows.len() * vocab, 0.0);
    t5.project_to_vocab_into(&selected, logits)?;
    let normalisers: Vec<f32> = logits.par_chunks(vocab).map(log_sum_exp).collect();
    let mut scores = vec![0f32; n];
    for &(r, i) in &picks {
        let i = i as usize;
        scores[r] += logits[i] - normalisers[i / vocab];
    }
    Ok(scores)
}

/// Explanations by beam search (the single best sequence), decoded to text.
pub fn generate_explanations(
    model: &PeaPod,
    tokenizer: &RecTokenizer,
    examples: &[Example],
    cfg: &EvalConfig,
    show: bool,
) -> Result<Vec<String>, PeapodError> {
    let beam = beam_config(cfg, cfg.max_explanation_length, 1);
    let bar = progress(examples.len(), "explanation", show);
    let mut out = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(cfg.batch_size.max(1)) {
        let batch = Batch::from_examples(tokenizer, chunk)?;
        let tensors = BatchTensors::from_batch(&batch, model.device())?;
        let (enc, mask) = model.encode(&tensors)?;
        for h in generate(
            model.t5(),
            &enc,
            &mask,
            &beam,
            &Constraint::None,
            model.cpu_policy(),
        )? {
            let tokens = h.first().map(|h| h.tokens.as_slice()).unwrap_or(&[]);
            out.push(tokenizer.decode(tokens)?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// HR/nDCG of ranked lists against the examples' target items.
pub fn ranking_metrics(
    examples: &[Example],
    lists: &[Vec<u32>],
    task: Task,
) -> Result<BTreeMap<String, f64>, PeapodError> {
    let mut acc = RankingAccumulator::protocol();
    for (e, list) in examples.iter().zip(lists) {
        let target = e.target_item.ok_or_else(|| {
            PeapodError::Config(format!("a {} example has no target item", task.name()))
        })?;
        acc.add(target, list);
    }
    let mut map = acc.finish()?.to_map();
    if task == Task::Sequential {
        // The protocol reports HR@5/10 and nDCG@5/10 for sequential recommendation.
        map.remove("hr@1");
    }
    Ok(map)
}

/// Text metrics of generated explanations against the (truncated) references.
pub fn explanation_metrics(
    references: &[String],
    generated: &[String],
) -> Result<BTreeMap<String, f64>, PeapodError> {
    let report = TextCorpus::new(references, generated)?.report();
    let value = serde_json::to_value(report)
        .map_err(|e| PeapodError::Config(format!("text report: {e}")))?;
    let mut out = BTreeMap::new();
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            if let Some(x) = v.as_f64() {
                out.insert(k, x);
            }
        }
    }
    Ok(out)
}

/// Training popularity of every item (index = item id; index 0 unused).
pub fn item_popularity(dataset: &Dataset) -> Vec<u32> {
    let mut counts = vec![0u32; dataset.num_items() + 1];
    for u in dataset.users() {
        for &i in dataset.train_history(u) {
            if let Some(c) = counts.get_mut(i as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// Sorts `items` by descending score; ties keep the lower item id first.
fn by_score(items: &[u32], score: impl Fn(u32) -> f32) -> Vec<u32> {
    let mut scored: Vec<(f32, u32)> = items.iter().map(|&i| (score(i), i)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// The ID-order rule's rankings for the examples of one task of `split`: sequential ranks all
/// items (top 20) after the largest id of the visible history; top-n puts the input's candidates
/// among that ranking's first 10 first, the others by popularity.
pub fn id_order_lists(
    dataset: &Dataset,
    examples: &[Example],
    split: Split,
    popularity: &[u32],
) -> Result<RankedLists, PeapodError> {
    examples
        .iter()
        .map(|e| {
            let history = visible_history(dataset, e.user, split)?;
            Ok(match &e.candidates {
                Some(c) => id_order_candidates(history, c, dataset.num_items(), popularity),
                None => id_order_ranking(history, dataset.num_items(), 20),
            })
        })
        .collect()
}

/// Popularity and MF rankings for the examples of one task: top-n ranks the input's candidates;
/// sequential ranks all items (top 20).
pub fn baseline_lists(
    dataset: &Dataset,
    examples: &[Example],
    popularity: &[u32],
    mf: Option<&MfModel>,
) -> Result<(RankedLists, Option<RankedLists>), PeapodError> {
    let all_items: Vec<u32> = (1..=dataset.num_items() as u32).collect();
    let pop_all = by_score(&all_items, |i| popularity[i as usize] as f32);
    let mut pop = Vec::with_capacity(examples.len());
    let mut mf_lists = mf.map(|_| Vec::with_capacity(examples.len()));
    let known_to_mf: Vec<bool> = match mf {
        Some(model) => (0..=dataset.num_items() as u32)
            .map(|i| model.item_row(i).is_ok())
            .collect(),
        None => Vec::new(),
    };
    for e in examples {
        match &e.candidates {
            Some(c) => pop.push(by_score(c, |i| popularity[i as usize] as f32)),
            None => pop.push(pop_all[..pop_all.len().min(20)].to_vec()),
        }
        if let (Some(model), Some(out)) = (mf, mf_lists.as_mut()) {
            let items = e.candidates.as_deref().unwrap_or(&all_items);
            // Items MF never saw in training (only in held-out positions, or only by users it
            // was not trained with) rank last, by id.
            let (known, unknown): (Vec<u32>, Vec<u32>) =
                items.iter().partition(|&&i| known_to_mf[i as usize]);
            let scores = model.score_embedding(model.embedding(e.user)?, &known)?;
            let mut order: Vec<usize> = (0..known.len()).collect();
            order.sort_by(|&a, &b| {
                scores[b]
                    .total_cmp(&scores[a])
                    .then(known[a].cmp(&known[b]))
            });
            let mut ranked: Vec<u32> = order.into_iter().map(|k| known[k]).collect();
            ranked.extend(unknown);
            ranked[known.len()..].sort_unstable();
            ranked.truncate(if e.candidates.is_some() {
                items.len()
            } else {
                20
            });
            out.push(ranked);
        }
    }
    Ok((pop, mf_lists))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Variant};
    use candle_core::{Device, D};
    use peapod_t5_rec::T5Config;

    #[test]
    fn exact_scores_equal_per_candidate_teacher_forcing() -> Result<(), PeapodError> {
        let t5 = T5Config {
            vocab_size: 50,
            num_whole_word_embeddings: 8,
            ..T5Config::micro()
        };
        let dev = Device::Cpu;
        let model = PeaPod::new(ModelConfig::new(Variant::Pod, t5, 4, 11), None, &dev)?;
        let embeds = Tensor::randn(0f32, 1.0, (1, 6, 16), &dev)?;
        let mask = Tensor::from_vec(vec![1u32, 1, 1, 1, 1, 0], (1, 6), &dev)?;
        let enc = model.t5().encode(&embeds, &mask, false)?;
        // Shared prefixes, different lengths, a repeated candidate.
        let targets = vec![
            vec![7, 9, 1],
            vec![7, 12, 1],
            vec![30, 1],
            vec![7, 9, 4, 1],
            vec![7, 9, 1],
        ];
        let mut scratch = Vec::new();
        let got = score_continuations(&model, &enc, &mask, &targets, 50, &mut scratch)?;
        for (t, &score) in targets.iter().zip(&got) {
            let ids = Tensor::new(t.as_slice(), &dev)?.unsqueeze(0)?;
            let logits = model
                .t5()
                .decode(&model.t5().shift_right(&ids)?, &enc, &mask, false)?;
            let logp =
                candle_nn::ops::log_softmax(&logits.squeeze(0)?, D::Minus1)?.to_vec2::<f32>()?;
            let want: f32 = t
                .iter()
                .enumerate()
                .map(|(p, &tok)| logp[p][tok as usize])
                .sum();
            assert!((score - want).abs() < 1e-4, "{t:?}: {score} vs {want}");
        }
        assert_eq!(got[0], got[4]);
        // The scratch buffer, larger than needed now, does not leak into the next input.
        let again = score_continuations(&model, &enc, &mask, &targets[2..3], 50, &mut scratch)?;
        assert!((again[0] - got[2]).abs() < 1e-5);
        Ok(())
    }
}
