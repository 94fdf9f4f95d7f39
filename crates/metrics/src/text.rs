//! BLEU, ROUGE, USR and Distinct-n over whitespace tokens (SPEC §7).
//!
//! The reference is POD's explanation evaluation: `bleu.py` (`compute_bleu`, the TensorFlow NMT
//! corpus BLEU) over token lists from `decode(...).split()`, and `rouge.py` (the seq2seq
//! sentence-level ROUGE) over the same tokens joined by single spaces. Formulas, epsilons and
//! the order of floating-point operations follow those scripts. Where they divide by zero the
//! choice made is documented on the metric.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::MetricsError;

/// Smoothing of BLEU's modified n-gram precisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Smoothing {
    /// The protocol's choice: a precision of 0 at any order makes BLEU 0.
    #[default]
    None,
    /// Add one to the matches and the possible matches of every order, (m + 1) / (p + 1):
    /// `compute_bleu(..., smooth=True)` (Lin & Och 2004).
    AddOne,
}

/// Python's `str.split()` with no argument: runs of whitespace separate tokens and there are
/// no empty tokens. Python also splits on the ASCII separators U+001C..U+001F, which Rust's
/// `char::is_whitespace` does not; they are included so token counts match exactly.
pub fn tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
}

/// FxHash: interning hashes every token of the corpus, and SipHash's resistance to crafted
/// collisions buys nothing for a local evaluation while costing a third of the run time.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Maps each distinct word to a dense `u32` so that n-gram comparisons are integer compares.
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, u32, BuildHasherDefault<FxHasher>>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, word: &'a str) -> Result<u32, MetricsError> {
        let next = self.ids.len();
        match self.ids.entry(word) {
            Entry::Occupied(e) => Ok(*e.get()),
            Entry::Vacant(e) => {
                let id = u32::try_from(next).map_err(|_| MetricsError::VocabularyOverflow)?;
                Ok(*e.insert(id))
            }
        }
    }
}

/// A list of tokenised sentences stored flat: sentence i is `tokens[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, Default)]
struct Sentences {
    tokens: Vec<u32>,
    offsets: Vec<usize>,
}

impl Sentences {
    fn intern<'a, S: AsRef<str>>(
        texts: &'a [S],
        interner: &mut Interner<'a>,
    ) -> Result<Self, MetricsError> {
        let mut out = Sentences {
            tokens: Vec::with_capacity(texts.len() * 16),
            offsets: Vec::with_capacity(texts.len() + 1),
        };
        out.offsets.push(0);
        for text in texts {
            for word in tokenize(text.as_ref()) {
                out.tokens.push(interner.intern(word)?);
            }
            out.offsets.push(out.tokens.len());
        }
        Ok(out)
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    fn get(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        self.offsets.windows(2).map(|w| &self.tokens[w[0]..w[1]])
    }
}

/// An n-gram of up to four 32-bit ids packed into one integer; longer n-grams compare as slices.
const PACKED_ORDER: usize = 4;

fn pack(gram: &[u32]) -> u128 {
    gram.iter()
        .fold(0u128, |acc, &id| (acc << 32) | u128::from(id))
}

/// Counts of one n-gram order for one (candidate, reference) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OrderCounts {
    /// Σ over candidate n-grams of min(count in candidate, count in reference): BLEU's matches.
    clipped: u64,
    /// Distinct candidate n-grams (ROUGE-n's candidate set).
    candidate_set: u64,
    /// Distinct reference n-grams.
    reference_set: u64,
    /// Distinct n-grams in both sets.
    set_overlap: u64,
}

fn run_end<K: PartialEq>(v: &[K], i: usize) -> usize {
    let mut j = i + 1;
    while j < v.len() && v[j] == v[i] {
        j += 1;
    }
    j
}

/// One merge walk over the sorted n-grams of both sides yields BLEU's clipped count and the
/// ROUGE set sizes at once.
fn compare_sorted<K: Ord>(c: &[K], r: &[K]) -> OrderCounts {
    use std::cmp::Ordering;
    let mut out = OrderCounts::default();
    let (mut i, mut j) = (0, 0);
    loop {
        let order = match (c.get(i), r.get(j)) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                i = run_end(c, i);
                out.candidate_set += 1;
            }
            Ordering::Greater => {
                j = run_end(r, j);
                out.reference_set += 1;
            }
            Ordering::Equal => {
                let (ni, nj) = (run_end(c, i), run_end(r, j));
                out.clipped += (ni - i).min(nj - j) as u64;
                out.candidate_set += 1;
                out.reference_set += 1;
                out.set_overlap += 1;
                i = ni;
                j = nj;
            }
        }
    }
    out
}

#[derive(Default)]
struct Scratch {
    candidate: Vec<u128>,
    reference: Vec<u128>,
    lcs_row: Vec<u32>,
}

fn order_counts(candidate: &[u32], reference: &[u32], n: usize, s: &mut Scratch) -> OrderCounts {
    if n <= PACKED_ORDER {
        s.candidate.clear();
        s.candidate.extend(candidate.windows(n).map(pack));
        s.candidate.sort_unstable();
        s.reference.clear();
        s.reference.extend(reference.windows(n).map(pack));
        s.reference.sort_unstable();
        compare_sorted(&s.candidate, &s.reference)
    } else {
        let mut c: Vec<&[u32]> = candidate.windows(n).collect();
        let mut r: Vec<&[u32]> = reference.windows(n).collect();
        c.sort_unstable();
        r.sort_unstable();
        compare_sorted(&c, &r)
    }
}

fn lcs_len(candidate: &[u32], reference: &[u32], row: &mut Vec<u32>) -> u32 {
    row.clear();
    row.resize(reference.len() + 1, 0);
    for &x in candidate {
        let mut diagonal = 0;
        for (j, &y) in reference.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[reference.len()]
}

/// F-score, precision and recall (×100 when returned by this crate's corpus functions).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Prf {
    /// F-score.
    pub f_score: f64,
    /// Precision: overlap over the candidate side.
    pub p_score: f64,
    /// Recall: overlap over the reference side.
    pub r_score: f64,
}

impl Prf {
    fn add(&mut self, other: Prf) {
        self.f_score += other.f_score;
        self.p_score += other.p_score;
        self.r_score += other.r_score;
    }

    fn mean_percent(self, pairs: usize) -> Prf {
        let n = pairs as f64;
        Prf {
            f_score: self.f_score / n * 100.0,
            p_score: self.p_score / n * 100.0,
            r_score: self.r_score / n * 100.0,
        }
    }
}

/// ROUGE-N on n-gram sets for one pair (`rouge_n` of the reference script): 0 where a set is
/// empty.
fn rouge_n_pair(counts: OrderCounts) -> Prf {
    let overlap = counts.set_overlap as f64;
    let p = if counts.candidate_set == 0 {
        0.0
    } else {
        overlap / counts.candidate_set as f64
    };
    let r = if counts.reference_set == 0 {
        0.0
    } else {
        overlap / counts.reference_set as f64
    };
    Prf {
        f_score: 2.0 * ((p * r) / (p + r + 1e-8)),
        p_score: p,
        r_score: r,
    }
}

/// ROUGE-L for one pair (`_f_p_r_lcs` of the reference script) from the LCS length `lcs`, the
/// reference length `m` and the candidate length `n`. An empty side scores 0 (the script
/// would divide by zero).
fn rouge_l_pair(lcs: u32, m: usize, n: usize) -> Prf {
    if m == 0 || n == 0 {
        return Prf::default();
    }
    let lcs = f64::from(lcs);
    let r = lcs / m as f64;
    let p = lcs / n as f64;
    let beta = p / (r + 1e-12);
    let beta2 = beta * beta;
    let num = (1.0 + beta2) * r * p;
    let denom = r + beta2 * p;
    Prf {
        f_score: num / (denom + 1e-12),
        p_score: p,
        r_score: r,
    }
}

/// Corpus BLEU from summed counts (`compute_bleu` of the reference script), ×100.
///
/// `matches[i]` / `possible[i]` are the clipped and total candidate (i+1)-grams summed over the
/// corpus; `candidate_len` / `reference_len` the summed lengths c and r. Where the script
/// divides by zero: c = 0 (nothing generated) gives 0, and r = 0 < c gives a brevity penalty of
/// 1 (c/r is +∞ > 1).
fn bleu_from_counts(
    matches: &[u64],
    possible: &[u64],
    candidate_len: u64,
    reference_len: u64,
    smoothing: Smoothing,
) -> f64 {
    let max_order = matches.len();
    if max_order == 0 || candidate_len == 0 {
        return 0.0;
    }
    let precisions: Vec<f64> = matches
        .iter()
        .zip(possible)
        .map(|(&m, &p)| match smoothing {
            Smoothing::AddOne => (m as f64 + 1.0) / (p as f64 + 1.0),
            Smoothing::None if p > 0 => m as f64 / p as f64,
            Smoothing::None => 0.0,
        })
        .collect();
    let geo_mean = if precisions.iter().all(|&p| p > 0.0) {
        let p_log_sum = precisions
            .iter()
            .fold(0.0, |acc, &p| acc + (1.0 / max_order as f64) * p.ln());
        p_log_sum.exp()
    } else {
        0.0
    };
    let ratio = candidate_len as f64 / reference_len as f64;
    let brevity_penalty = if ratio > 1.0 {
        1.0
    } else {
        (1.0 - 1.0 / ratio).exp()
    };
    geo_mean * brevity_penalty * 100.0
}

/// What one pass over the pairs gathers.
struct PassTotals {
    matches: Vec<u64>,
    possible: Vec<u64>,
    candidate_len: u64,
    reference_len: u64,
    /// Per-pair ROUGE-1, ROUGE-2, ROUGE-L summed over pairs (unscaled).
    rouge: Option<[Prf; 3]>,
}

/// Aligned reference/candidate pairs, tokenised on whitespace and interned once, so that
/// several metrics can be computed without re-tokenising.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    references: Sentences,
    candidates: Sentences,
    vocabulary: usize,
}

impl TextCorpus {
    /// Tokenises `references[i]` and `candidates[i]` (pair i). Errors if the lengths differ or
    /// there is no pair.
    pub fn new<R: AsRef<str>, C: AsRef<str>>(
        references: &[R],
        candidates: &[C],
    ) -> Result<Self, MetricsError> {
        if references.len() != candidates.len() {
            return Err(MetricsError::LengthMismatch {
                references: references.len(),
                candidates: candidates.len(),
            });
        }
        if references.is_empty() {
            return Err(MetricsError::Empty("pairs"));
        }
        let mut interner = Interner::default();
        let references = Sentences::intern(references, &mut interner)?;
        let candidates = Sentences::intern(candidates, &mut interner)?;
        Ok(Self {
            references,
            candidates,
            vocabulary: interner.ids.len(),
        })
    }

    /// Number of pairs (at least 1).
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Always false: a corpus has at least one pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct words over both sides.
    pub fn vocabulary_size(&self) -> usize {
        self.vocabulary
    }

    fn pass(&self, bleu_order: usize, with_rouge: bool) -> PassTotals {
        let orders = bleu_order.max(if with_rouge { 2 } else { 0 });
        let mut totals = PassTotals {
            matches: vec![0; bleu_order],
            possible: vec![0; bleu_order],
            candidate_len: 0,
            reference_len: 0,
            rouge: with_rouge.then_some([Prf::default(); 3]),
        };
        let mut scratch = Scratch::default();
        for i in 0..self.len() {
            let (c, r) = (self.candidates.get(i), self.references.get(i));
            totals.candidate_len += c.len() as u64;
            totals.reference_len += r.len() as u64;
            for n in 1..=orders {
                let counts = order_counts(c, r, n, &mut scratch);
                if n <= bleu_order {
                    totals.matches[n - 1] += counts.clipped;
                    totals.possible[n - 1] += (c.len() + 1).saturating_sub(n) as u64;
                }
                if let Some(rouge) = totals.rouge.as_mut() {
                    if n <= 2 {
                        rouge[n - 1].add(rouge_n_pair(counts));
                    }
                }
            }
            if let Some(rouge) = totals.rouge.as_mut() {
                let lcs = lcs_len(c, r, &mut scratch.lcs_row);
                rouge[2].add(rouge_l_pair(lcs, r.len(), c.len()));
            }
        }
        totals
    }

    /// Corpus BLEU-n, ×100: modified (clipped) n-gram precisions of orders 1..=n summed over
    /// the corpus, uniform weights 1/n, brevity penalty exp(1 − r/c) when c ≤ r (c, r: summed
    /// candidate / reference lengths). A corpus with no candidate token scores 0.
    pub fn bleu(&self, n: usize, smoothing: Smoothing) -> Result<f64, MetricsError> {
        if n == 0 {
            return Err(MetricsError::ZeroOrder);
        }
        let t = self.pass(n, false);
        Ok(bleu_from_counts(
            &t.matches,
            &t.possible,
            t.candidate_len,
            t.reference_len,
            smoothing,
        ))
    }

    /// ROUGE-1, ROUGE-2 and ROUGE-L, each the mean over pairs of the per-pair F/P/R, ×100.
    ///
    /// ROUGE-1/2 compare n-gram SETS (a repeated n-gram counts once): P = |overlap| /
    /// |candidate set|, R = |overlap| / |reference set|, F = 2PR/(P+R+1e-8), with P (R) = 0
    /// where the candidate (reference) set is empty. ROUGE-L uses the LCS length l of the
    /// word lists: R = l/m, P = l/n, β = P/(R+1e-12), F = (1+β²)RP/(R+β²P+1e-12), and all
    /// three are 0 for a pair with an empty side.
    ///
    /// One difference from the reference script, documented rather than copied: it rebuilds
    /// words with `"".split(" ") == [""]`, so a pair whose reference and candidate are both
    /// empty scores 100 there and 0 here. Other pairs score identically.
    pub fn rouge(&self) -> RougeScores {
        let t = self.pass(0, true);
        RougeScores::from_sums(t.rouge.unwrap_or_default(), self.len())
    }

    /// Unique sentence ratio: distinct candidate token sequences / candidates, in (0, 1].
    /// Two candidates are the same sentence when their whitespace tokens are equal.
    pub fn unique_sentence_ratio(&self) -> f64 {
        unique_ratio(&self.candidates)
    }

    /// Distinct-n: distinct candidate n-grams over the whole corpus / all candidate n-grams,
    /// in [0, 1]; 0 when no candidate has n tokens.
    pub fn distinct_n(&self, n: usize) -> Result<f64, MetricsError> {
        distinct_ratio(&self.candidates, n)
    }

    /// All the protocol's text metrics in one pass over the pairs (BLEU without smoothing).
    pub fn report(&self) -> TextReport {
        let t = self.pass(4, true);
        let rouge = RougeScores::from_sums(t.rouge.unwrap_or_default(), self.len());
        let bleu = |n: usize| {
            bleu_from_counts(
                &t.matches[..n],
                &t.possible[..n],
                t.candidate_len,
                t.reference_len,
                Smoothing::None,
            )
        };
        TextReport {
            bleu_1: bleu(1),
            bleu_4: bleu(4),
            rouge_1: rouge.rouge_1,
            rouge_2: rouge.rouge_2,
            rouge_l: rouge.rouge_l,
            usr: unique_ratio(&self.candidates),
            distinct_1: distinct_ratio(&self.candidates, 1).unwrap_or(0.0),
            distinct_2: distinct_ratio(&self.candidates, 2).unwrap_or(0.0),
        }
    }
}

fn unique_ratio(candidates: &Sentences) -> f64 {
    let mut sentences: Vec<&[u32]> = candidates.iter().collect();
    let total = sentences.len();
    if total == 0 {
        return 0.0;
    }
    sentences.sort_unstable();
    sentences.dedup();
    sentences.len() as f64 / total as f64
}

fn distinct_ratio(candidates: &Sentences, n: usize) -> Result<f64, MetricsError> {
    if n == 0 {
        return Err(MetricsError::ZeroOrder);
    }
    let (distinct, total) = if n <= PACKED_ORDER {
        let mut grams: Vec<u128> = candidates
            .iter()
            .flat_map(|s| s.windows(n).map(pack))
            .collect();
        let total = grams.len();
        grams.sort_unstable();
        grams.dedup();
        (grams.len(), total)
    } else {
        let mut grams: Vec<&[u32]> = candidates.iter().flat_map(|s| s.windows(n)).collect();
        let total = grams.len();
        grams.sort_unstable();
        grams.dedup();
        (grams.len(), total)
    };
    Ok(if total == 0 {
        0.0
    } else {
        distinct as f64 / total as f64
    })
}

/// ROUGE-1, ROUGE-2 and ROUGE-L, each F/P/R ×100 averaged over pairs.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct RougeScores {
    /// Unigram sets.
    pub rouge_1: Prf,
    /// Bigram sets.
    pub rouge_2: Prf,
    /// Longest common subsequence.
    pub rouge_l: Prf,
}

impl RougeScores {
    fn from_sums(sums: [Prf; 3], pairs: usize) -> Self {
        Self {
            rouge_1: sums[0].mean_percent(pairs),
            rouge_2: sums[1].mean_percent(pairs),
            rouge_l: sums[2].mean_percent(pairs),
        }
    }
}

/// The protocol's text metrics plus the diversity measures beyond the paper.
///
/// Serialises to a flat JSON object with exactly the keys `bleu_1`, `bleu_4`,
/// `rouge_1/f_score`, `rouge_1/p_score`, `rouge_1/r_score`, the same three for `rouge_2` and
/// `rouge_l`, `usr`, `distinct_1`, `distinct_2`. BLEU and ROUGE are ×100; USR and Distinct are
/// fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextReport {
    /// Corpus BLEU-1 ×100.
    pub bleu_1: f64,
    /// Corpus BLEU-4 ×100.
    pub bleu_4: f64,
    /// ROUGE-1 ×100.
    pub rouge_1: Prf,
    /// ROUGE-2 ×100.
    pub rouge_2: Prf,
    /// ROUGE-L ×100.
    pub rouge_l: Prf,
    /// Unique sentence ratio of the candidates, a fraction.
    pub usr: f64,
    /// Distinct-1 of the candidates, a fraction.
    pub distinct_1: f64,
    /// Distinct-2 of the candidates, a fraction.
    pub distinct_2: f64,
}

impl Serialize for TextReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(14))?;
        map.serialize_entry("bleu_1", &self.bleu_1)?;
        map.serialize_entry("bleu_4", &self.bleu_4)?;
        for (name, prf) in [
            ("rouge_1", &self.rouge_1),
            ("rouge_2", &self.rouge_2),
            ("rouge_l", &self.rouge_l),
        ] {
            map.serialize_entry(&format!("{name}/f_score"), &prf.f_score)?;
            map.serialize_entry(&format!("{name}/p_score"), &prf.p_score)?;
            map.serialize_entry(&format!("{name}/r_score"), &prf.r_score)?;
        }
        map.serialize_entry("usr", &self.usr)?;
        map.serialize_entry("distinct_1", &self.distinct_1)?;
        map.serialize_entry("distinct_2", &self.distinct_2)?;
        map.end()
    }
}

/// Corpus BLEU-n ×100 of aligned pairs; see [`TextCorpus::bleu`].
pub fn bleu<R: AsRef<str>, C: AsRef<str>>(
    references: &[R],
    candidates: &[C],
    n: usize,
    smoothing: Smoothing,
) -> Result<f64, MetricsError> {
    TextCorpus::new(references, candidates)?.bleu(n, smoothing)
}

/// ROUGE-1/2/L ×100 of aligned pairs; see [`TextCorpus::rouge`].
pub fn rouge<R: AsRef<str>, C: AsRef<str>>(
    references: &[R],
    candidates: &[C],
) -> Result<RougeScores, MetricsError> {
    Ok(TextCorpus::new(references, candidates)?.rouge())
}

/// Every text metric of aligned pairs; see [`TextCorpus::report`].
pub fn text_report<R: AsRef<str>, C: AsRef<str>>(
    references: &[R],
    candidates: &[C],
) -> Result<TextReport, MetricsError> {
    Ok(TextCorpus::new(references, candidates)?.report())
}

fn intern_candidates<S: AsRef<str>>(candidates: &[S]) -> Result<Sentences, MetricsError> {
    if candidates.is_empty() {
        return Err(MetricsError::Empty("candidates"));
    }
    Sentences::intern(candidates, &mut Interner::default())
}

/// Distinct generated sentences / generated sentences; see
/// [`TextCorpus::unique_sentence_ratio`].
pub fn unique_sentence_ratio<S: AsRef<str>>(candidates: &[S]) -> Result<f64, MetricsError> {
    Ok(unique_ratio(&intern_candidates(candidates)?))
}

/// Distinct-n of generated sentences; see [`TextCorpus::distinct_n`].
pub fn distinct_n<S: AsRef<str>>(candidates: &[S], n: usize) -> Result<f64, MetricsError> {
    if n == 0 {
        return Err(MetricsError::ZeroOrder);
    }
    distinct_ratio(&intern_candidates(candidates)?, n)
}

#[cfg(test)]
mod tests;
