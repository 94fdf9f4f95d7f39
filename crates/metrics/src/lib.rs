//! Ranking and text metrics exactly as the P5/POD/PeaPOD protocol computes them.
//!
//! The paper's tables are only comparable if every number is computed the way the reference
//! scripts compute it, so each formula here follows those scripts down to their epsilons and
//! their order of operations; where a script is undefined (a division by zero) or disagrees
//! with the protocol, the choice made is documented on the function.
//!
//! - Ranking (one ground-truth item per user): [`hit_ratio_at`], [`ndcg_at`], the streaming
//!   [`RankingAccumulator`] and the one-shot [`rank_metrics`].
//! - Text (whitespace tokens of decoded strings): corpus [`bleu`], per-pair-averaged
//!   [`rouge`] (ROUGE-1/2 on n-gram sets, ROUGE-L on the LCS), and two diversity measures
//!   beyond the paper, [`unique_sentence_ratio`] and [`distinct_n`]. [`TextCorpus`] tokenises
//!   and interns a corpus once so that several metrics can share that work, and
//!   [`TextReport`] gathers all of them under the protocol's JSON keys.
//!
//! ```
//! use peapod_metrics::{hit_ratio_at, ndcg_at, RankingAccumulator, TextCorpus, Smoothing};
//!
//! // The target 12 is at rank 2 of the beam's ranked list.
//! let ranked = [5, 12, 7];
//! assert_eq!(hit_ratio_at(&ranked, 12, 1), 0.0);
//! assert_eq!(hit_ratio_at(&ranked, 12, 5), 1.0);
//! assert!((ndcg_at(&ranked, 12, 5) - 1.0 / 3f64.log2()).abs() < 1e-15);
//!
//! // Evaluation streams users through an accumulator.
//! let mut acc = RankingAccumulator::new(&[1, 5, 10])?;
//! acc.add(12, &ranked);
//! acc.add(3, &[3, 1, 2]);
//! let report = acc.finish()?;
//! assert_eq!(report.hit_ratio_at(1), Some(0.5));
//! assert_eq!(report.hit_ratio_at(5), Some(1.0));
//!
//! // Text metrics over aligned reference/candidate pairs.
//! let refs = ["the screen is bright and sharp"];
//! let cands = ["the screen is sharp"];
//! let corpus = TextCorpus::new(&refs, &cands)?;
//! // 4 of 4 unigrams match; brevity penalty exp(1 - 6/4).
//! let bleu_1 = corpus.bleu(1, Smoothing::None)?;
//! assert!((bleu_1 - 100.0 * (1.0f64 - 6.0 / 4.0).exp()).abs() < 1e-9);
//! let report = corpus.report();
//! assert!((report.rouge_1.p_score - 100.0).abs() < 1e-9);
//! # Ok::<(), peapod_metrics::MetricsError>(())
//! ```

mod ranking;
mod text;

pub use ranking::{
    hit_ratio_at, ndcg_at, rank_metrics, rank_of, RankingAccumulator, RankingReport, NOT_AN_ITEM,
};
pub use text::{
    bleu, distinct_n, rouge, text_report, tokenize, unique_sentence_ratio, Prf, RougeScores,
    Smoothing, TextCorpus, TextReport,
};

/// Everything that can go wrong when computing a metric from user input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// Text metrics compare reference `i` with candidate `i`, so both sides must be aligned.
    #[error("{references} references but {candidates} candidates: the corpora must be aligned pair by pair")]
    LengthMismatch {
        /// Number of references given.
        references: usize,
        /// Number of candidates given.
        candidates: usize,
    },
    /// A mean over zero users / pairs / sentences is undefined.
    #[error("no {0} to evaluate: a mean over an empty set is undefined")]
    Empty(&'static str),
    /// BLEU-0 or Distinct-0 has no meaning.
    #[error("the n-gram order must be at least 1")]
    ZeroOrder,
    /// HR@0 / nDCG@0 have no meaning as reported cut-offs.
    #[error("a cut-off k must be at least 1")]
    ZeroCutoff,
    /// Two accumulators can only be merged when they count the same cut-offs.
    #[error("cannot merge ranking accumulators with different cut-offs ({left:?} vs {right:?})")]
    CutoffMismatch {
        /// Cut-offs of the accumulator merged into.
        left: Vec<usize>,
        /// Cut-offs of the accumulator merged from.
        right: Vec<usize>,
    },
    /// More distinct words than `u32` ids.
    #[error("the corpus has more distinct words than fit in 32-bit ids")]
    VocabularyOverflow,
}
