//! `peapod.metrics`: the protocol's ranking and text metrics, the Rust crate's own functions.

use std::collections::BTreeMap;

use peapod_metrics::{MetricsError, Prf, Smoothing, TextCorpus};
use pyo3::prelude::*;

use crate::errors::{invalid, to_py};
use crate::rankings::ranked_lists;

fn cutoff(k: usize) -> PyResult<usize> {
    if k == 0 {
        Err(to_py(MetricsError::ZeroCutoff))
    } else {
        Ok(k)
    }
}

/// 1.0 when `target` is among the first `k` items of `ranked`, else 0.0.
#[pyfunction]
pub(crate) fn hit_ratio_at(ranked: Vec<u32>, target: u32, k: usize) -> PyResult<f64> {
    Ok(peapod_metrics::hit_ratio_at(&ranked, target, cutoff(k)?))
}

/// 1 / log2(rank + 1) when `target` is at `rank` ≤ `k` of `ranked` (one relevant item), else 0.
#[pyfunction]
pub(crate) fn ndcg_at(ranked: Vec<u32>, target: u32, k: usize) -> PyResult<f64> {
    Ok(peapod_metrics::ndcg_at(&ranked, target, cutoff(k)?))
}

/// Mean HR@k and nDCG@k over users (`{"hr@1": …, "ndcg@1": …, …}`): `rankings[i]` is user i's
/// ranked list and `targets[i]` its held-out item.
#[pyfunction]
#[pyo3(signature = (rankings, targets, cutoffs = vec![1, 5, 10]))]
pub(crate) fn rank_metrics(
    rankings: &Bound<'_, PyAny>,
    targets: Vec<u32>,
    cutoffs: Vec<usize>,
) -> PyResult<BTreeMap<String, f64>> {
    let lists = ranked_lists(rankings)?;
    if lists.len() != targets.len() {
        return Err(invalid(format!(
            "{} ranked lists but {} targets: one target per list",
            lists.len(),
            targets.len()
        )));
    }
    let pairs: Vec<(u32, Vec<u32>)> = targets.into_iter().zip(lists).collect();
    peapod_metrics::rank_metrics(&pairs, &cutoffs).map_err(to_py)
}

fn parse_smoothing(name: &str) -> PyResult<Smoothing> {
    match name {
        "none" => Ok(Smoothing::None),
        "add-one" => Ok(Smoothing::AddOne),
        other => Err(invalid(format!(
            "unknown BLEU smoothing `{other}` (none, add-one)"
        ))),
    }
}

/// Corpus BLEU-n ×100 of aligned reference/candidate strings (whitespace tokens), the
/// reference script's `compute_bleu`; `smoothing="add-one"` is its `smooth=True`.
#[pyfunction]
#[pyo3(signature = (references, candidates, n = 4, smoothing = "none"))]
pub(crate) fn bleu(
    py: Python<'_>,
    references: Vec<String>,
    candidates: Vec<String>,
    n: usize,
    smoothing: &str,
) -> PyResult<f64> {
    let smoothing = parse_smoothing(smoothing)?;
    py.detach(|| TextCorpus::new(&references, &candidates)?.bleu(n, smoothing))
        .map_err(to_py)
}

fn prf(scores: Prf) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("f_score".to_string(), scores.f_score),
        ("p_score".to_string(), scores.p_score),
        ("r_score".to_string(), scores.r_score),
    ])
}

/// ROUGE-1, ROUGE-2 (on n-gram sets) and ROUGE-L (on the LCS) ×100, averaged over pairs:
/// `{"rouge_1": {"f_score": …, "p_score": …, "r_score": …}, …}`.
#[pyfunction]
pub(crate) fn rouge(
    py: Python<'_>,
    references: Vec<String>,
    candidates: Vec<String>,
) -> PyResult<BTreeMap<String, BTreeMap<String, f64>>> {
    let scores = py
        .detach(|| peapod_metrics::rouge(&references, &candidates))
        .map_err(to_py)?;
    Ok(BTreeMap::from([
        ("rouge_1".to_string(), prf(scores.rouge_1)),
        ("rouge_2".to_string(), prf(scores.rouge_2)),
        ("rouge_l".to_string(), prf(scores.rouge_l)),
    ]))
}

/// Every text metric of the protocol in one pass, under the reports' keys: `bleu_1`,
/// `bleu_4`, `rouge_1/f_score` … `rouge_l/r_score` (×100), `usr`, `distinct_1`, `distinct_2`.
#[pyfunction]
pub(crate) fn text_report(
    py: Python<'_>,
    references: Vec<String>,
    candidates: Vec<String>,
) -> PyResult<BTreeMap<String, f64>> {
    py.detach(|| peapod::eval::explanation_metrics(&references, &candidates))
        .map_err(to_py)
}
