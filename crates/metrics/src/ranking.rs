//! HR@k and nDCG@k for one ground-truth item per user (SPEC §7).
//!
//! # Ranked lists with repeats or non-items
//!
//! The ranked list is the beam's output decoded to item ids, in score order. The rank of the
//! target is its raw 1-based position in that list, as in the reference scripts (they index the
//! list of predictions directly, without removing anything):
//!
//! - an id that is not an item (a decoded sequence that names no item: pass [`NOT_AN_ITEM`] or
//!   any id that is not the target) simply occupies its position and never hits;
//! - a repeated id also occupies every position it appears at; only the *first* occurrence of
//!   the target counts, so each user contributes at most 1 to HR@k and at most 1 to nDCG@k.
//!
//! The second rule is where we depart from POD's `utils.py`: its `evaluate_hr` counts every
//! occurrence of the target in the top k (one user can then add 2 to a "fraction of users"),
//! and its `evaluate_ndcg` sums the discounts of all occurrences and divides by the ideal DCG
//! of that many hits. SPEC §7 defines HR@k as the fraction of users whose target is in the top
//! k, and nDCG@k as 1/log2(rank+1), which our rule implements. Both definitions agree whenever
//! the target appears at most once in the top k, which is the case for beam search unless two
//! distinct sequences decode to the same id. POD also replaces an undecodable sequence by a
//! random item id (which can hit by chance); the protocol counts it as a miss.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::MetricsError;

/// An id for a decoded sequence that names no item: it takes a position and never hits.
///
/// A target equal to `NOT_AN_ITEM` is itself not an item, so it is never found.
pub const NOT_AN_ITEM: u32 = u32::MAX;

/// The 1-based raw position of the first occurrence of `target` in `ranked`, or `None`.
///
/// This is the rank that [`hit_ratio_at`] and [`ndcg_at`] use; see the module docs for why
/// repeats and non-items keep their positions.
pub fn rank_of(ranked: &[u32], target: u32) -> Option<usize> {
    if target == NOT_AN_ITEM {
        return None;
    }
    ranked.iter().position(|&id| id == target).map(|i| i + 1)
}

/// 1.0 if `target` is among the first `k` entries of `ranked`, else 0.0 (k = 0 gives 0.0).
pub fn hit_ratio_at(ranked: &[u32], target: u32, k: usize) -> f64 {
    match rank_of(ranked, target) {
        Some(rank) if rank <= k => 1.0,
        _ => 0.0,
    }
}

/// 1/log2(rank + 1) if the target's rank is at most `k`, else 0.0 (one relevant item, so the
/// ideal DCG is 1).
pub fn ndcg_at(ranked: &[u32], target: u32, k: usize) -> f64 {
    match rank_of(ranked, target) {
        Some(rank) if rank <= k => discount(rank),
        _ => 0.0,
    }
}

fn discount(rank: usize) -> f64 {
    // Written as the reference writes it: 1 / log2(i + 2) for the 0-based index i.
    1.0 / ((rank + 1) as f64).log2()
}

/// Streams users one at a time and reports HR@k and nDCG@k averaged over them.
///
/// Accumulators over disjoint sets of users can be [merged](Self::merge), so evaluation can be
/// split across threads or batches.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingAccumulator {
    ks: Vec<usize>,
    hits: Vec<u64>,
    dcg: Vec<f64>,
    users: u64,
}

impl RankingAccumulator {
    /// An accumulator for the cut-offs `ks` (sorted and de-duplicated; each must be ≥ 1).
    pub fn new(ks: &[usize]) -> Result<Self, MetricsError> {
        if ks.is_empty() {
            return Err(MetricsError::Empty("cut-offs"));
        }
        if ks.contains(&0) {
            return Err(MetricsError::ZeroCutoff);
        }
        let mut ks = ks.to_vec();
        ks.sort_unstable();
        ks.dedup();
        let n = ks.len();
        Ok(Self {
            ks,
            hits: vec![0; n],
            dcg: vec![0.0; n],
            users: 0,
        })
    }

    /// The protocol's cut-offs 1, 5 and 10 (sequential reports 5 and 10, top-n all three).
    pub fn protocol() -> Self {
        Self {
            ks: vec![1, 5, 10],
            hits: vec![0; 3],
            dcg: vec![0.0; 3],
            users: 0,
        }
    }

    /// Adds one user whose ground-truth item is `target` and whose ranked list is `ranked`.
    pub fn add(&mut self, target: u32, ranked: &[u32]) {
        self.users += 1;
        let Some(rank) = rank_of(ranked, target) else {
            return;
        };
        let gain = discount(rank);
        for ((&k, hits), dcg) in self.ks.iter().zip(&mut self.hits).zip(&mut self.dcg) {
            if rank <= k {
                *hits += 1;
                *dcg += gain;
            }
        }
    }

    /// Adds the users counted by `other` (which must have the same cut-offs).
    pub fn merge(&mut self, other: &Self) -> Result<(), MetricsError> {
        if self.ks != other.ks {
            return Err(MetricsError::CutoffMismatch {
                left: self.ks.clone(),
                right: other.ks.clone(),
            });
        }
        self.users += other.users;
        for (a, b) in self.hits.iter_mut().zip(&other.hits) {
            *a += b;
        }
        for (a, b) in self.dcg.iter_mut().zip(&other.dcg) {
            *a += b;
        }
        Ok(())
    }

    /// Number of users added so far.
    pub fn users(&self) -> usize {
        self.users as usize
    }

    /// The cut-offs counted, ascending.
    pub fn ks(&self) -> &[usize] {
        &self.ks
    }

    /// The means over all users added; an error if there are none.
    pub fn finish(&self) -> Result<RankingReport, MetricsError> {
        if self.users == 0 {
            return Err(MetricsError::Empty("users"));
        }
        let n = self.users as f64;
        Ok(RankingReport {
            users: self.users as usize,
            ks: self.ks.clone(),
            hit_ratio: self.hits.iter().map(|&h| h as f64 / n).collect(),
            ndcg: self.dcg.iter().map(|&d| d / n).collect(),
        })
    }
}

impl Default for RankingAccumulator {
    fn default() -> Self {
        Self::protocol()
    }
}

/// HR@k and nDCG@k averaged over users, for each cut-off k (ascending).
///
/// Serialises to a JSON object `{"hr@1": …, "hr@5": …, "ndcg@5": …, "hr@10": …, "ndcg@10": …}`
/// in cut-off order. `ndcg@1` is left out of that object and of [`to_map`](Self::to_map):
/// with one relevant item nDCG@1 equals HR@1 (1/log2 2 = 1), and the protocol reports only HR@1.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingReport {
    /// Number of users averaged over.
    pub users: usize,
    /// The cut-offs, ascending.
    pub ks: Vec<usize>,
    /// HR@ks[i], a fraction in [0, 1].
    pub hit_ratio: Vec<f64>,
    /// nDCG@ks[i], in [0, 1].
    pub ndcg: Vec<f64>,
}

impl RankingReport {
    /// HR@k if k was counted.
    pub fn hit_ratio_at(&self, k: usize) -> Option<f64> {
        self.ks
            .iter()
            .position(|&x| x == k)
            .map(|i| self.hit_ratio[i])
    }

    /// nDCG@k if k was counted.
    pub fn ndcg_at(&self, k: usize) -> Option<f64> {
        self.ks.iter().position(|&x| x == k).map(|i| self.ndcg[i])
    }

    fn entries(&self) -> impl Iterator<Item = (String, f64)> + '_ {
        self.ks.iter().enumerate().flat_map(move |(i, &k)| {
            let hr = Some((format!("hr@{k}"), self.hit_ratio[i]));
            let ndcg = (k > 1).then(|| (format!("ndcg@{k}"), self.ndcg[i]));
            hr.into_iter().chain(ndcg)
        })
    }

    /// The metrics keyed `"hr@k"` and `"ndcg@k"` (k > 1).
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        self.entries().collect()
    }
}

impl Serialize for RankingReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.entries() {
            map.serialize_entry(&key, &value)?;
        }
        map.end()
    }
}

/// HR@k and nDCG@k over `(target, ranked list)` pairs, one per user, keyed as in
/// [`RankingReport::to_map`].
pub fn rank_metrics(
    lists: &[(u32, Vec<u32>)],
    ks: &[usize],
) -> Result<BTreeMap<String, f64>, MetricsError> {
    let mut acc = RankingAccumulator::new(ks)?;
    for (target, ranked) in lists {
        acc.add(*target, ranked);
    }
    Ok(acc.finish()?.to_map())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn rank_is_raw_first_position() {
        assert_eq!(rank_of(&[5, 12, 7], 12), Some(2));
        assert_eq!(rank_of(&[5, 12, 7], 9), None);
        assert_eq!(rank_of(&[], 9), None);
        // Repeats of another id occupy positions: 12 is the 4th entry, not the 3rd distinct id.
        assert_eq!(rank_of(&[5, 5, 7, 12], 12), Some(4));
        // A repeated target counts at its first occurrence.
        assert_eq!(rank_of(&[3, 12, 12], 12), Some(2));
        // Non-items occupy positions.
        assert_eq!(rank_of(&[NOT_AN_ITEM, NOT_AN_ITEM, 12], 12), Some(3));
        // A non-item target is never found, even if the list contains the sentinel.
        assert_eq!(rank_of(&[NOT_AN_ITEM], NOT_AN_ITEM), None);
    }

    #[test]
    fn hit_ratio_cutoffs() {
        let ranked = [5, 12, 7];
        // rank 2: not in the top 1, in the top 2 and beyond; k = 0 never hits.
        assert_eq!(hit_ratio_at(&ranked, 12, 0), 0.0);
        assert_eq!(hit_ratio_at(&ranked, 12, 1), 0.0);
        assert_eq!(hit_ratio_at(&ranked, 12, 2), 1.0);
        assert_eq!(hit_ratio_at(&ranked, 12, 100), 1.0);
        assert_eq!(hit_ratio_at(&ranked, 99, 100), 0.0);
    }

    #[test]
    fn ndcg_hand_values() {
        // rank 1: 1/log2(2) = 1.
        assert_eq!(ndcg_at(&[4, 1, 2], 4, 5), 1.0);
        // rank 3: 1/log2(4) = 1/2 exactly.
        assert_eq!(ndcg_at(&[1, 2, 4], 4, 5), 0.5);
        // rank 3 with k = 2: outside the cut-off.
        assert_eq!(ndcg_at(&[1, 2, 4], 4, 2), 0.0);
        // rank 7: 1/log2(8) = 1/3.
        assert!(close(ndcg_at(&[0, 0, 0, 0, 0, 0, 4], 4, 10), 1.0 / 3.0));
        // rank 2: 1/log2(3) = 0.630929753571457...
        assert!(close(ndcg_at(&[1, 4], 4, 5), 0.630_929_753_571_457_4));
        // A repeated target keeps its first rank: [9, 4, 4] → rank 2, not 1/log2(3)+1/log2(4).
        assert!(close(ndcg_at(&[9, 4, 4], 4, 5), 0.630_929_753_571_457_4));
    }

    #[test]
    fn accumulator_means_over_users() {
        // user a: target at rank 1; b: rank 3; c: rank 7; d: missing.
        // HR@1 = 1/4, HR@5 = 2/4, HR@10 = 3/4.
        // nDCG@5  = (1 + 1/2) / 4 = 0.375
        // nDCG@10 = (1 + 1/2 + 1/3) / 4 = 0.458333...
        let mut acc = RankingAccumulator::protocol();
        acc.add(1, &[1, 2, 3]);
        acc.add(2, &[1, 3, 2]);
        acc.add(3, &[0, 0, 0, 0, 0, 0, 3]);
        acc.add(4, &[1, 2, 3]);
        let r = acc.finish().unwrap();
        assert_eq!(r.users, 4);
        assert_eq!(r.hit_ratio, vec![0.25, 0.5, 0.75]);
        assert_eq!(r.ndcg_at(5), Some(0.375));
        assert!(close(r.ndcg_at(10).unwrap(), (1.0 + 0.5 + 1.0 / 3.0) / 4.0));
        // nDCG@1 equals HR@1 by definition.
        assert_eq!(r.ndcg_at(1), r.hit_ratio_at(1));
        assert_eq!(r.hit_ratio_at(3), None);
    }

    #[test]
    fn repeats_count_once_per_user() {
        // POD's evaluate_hr would give 2 for this single user (two hits in the top 5);
        // the protocol's fraction of users is 1.
        let mut acc = RankingAccumulator::new(&[5]).unwrap();
        acc.add(7, &[7, 7, 1]);
        let r = acc.finish().unwrap();
        assert_eq!(r.hit_ratio, vec![1.0]);
        assert_eq!(r.ndcg, vec![1.0]);
    }

    #[test]
    fn merge_equals_single_pass() {
        let users: Vec<(u32, Vec<u32>)> = (0..20u32)
            .map(|u| (u % 7, (0..10).map(|i| (u * 3 + i) % 11).collect()))
            .collect();
        let mut whole = RankingAccumulator::new(&[1, 5, 10]).unwrap();
        let mut left = whole.clone();
        let mut right = whole.clone();
        for (i, (t, r)) in users.iter().enumerate() {
            whole.add(*t, r);
            if i < 8 {
                left.add(*t, r)
            } else {
                right.add(*t, r)
            }
        }
        left.merge(&right).unwrap();
        assert_eq!(left.users(), 20);
        let (a, b) = (left.finish().unwrap(), whole.finish().unwrap());
        assert_eq!(a.hit_ratio, b.hit_ratio);
        for (x, y) in a.ndcg.iter().zip(&b.ndcg) {
            assert!(close(*x, *y));
        }
        let other = RankingAccumulator::new(&[5]).unwrap();
        assert!(matches!(
            left.merge(&other),
            Err(MetricsError::CutoffMismatch { .. })
        ));
    }

    #[test]
    fn accumulator_cross_checks_per_user_functions() {
        let lists: Vec<(u32, Vec<u32>)> = (0..50u32)
            .map(|u| (u % 13, (0..12).map(|i| (u * 7 + i * 5) % 17).collect()))
            .collect();
        let map = rank_metrics(&lists, &[10, 1, 5, 5]).unwrap();
        for k in [1usize, 5, 10] {
            let hr: f64 = lists
                .iter()
                .map(|(t, r)| hit_ratio_at(r, *t, k))
                .sum::<f64>()
                / 50.0;
            assert!(close(map[&format!("hr@{k}")], hr));
            if k > 1 {
                let nd: f64 = lists.iter().map(|(t, r)| ndcg_at(r, *t, k)).sum::<f64>() / 50.0;
                assert!(close(map[&format!("ndcg@{k}")], nd));
            }
        }
        assert_eq!(map.len(), 5);
        assert!(!map.contains_key("ndcg@1"));
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert_eq!(
            RankingAccumulator::new(&[]),
            Err(MetricsError::Empty("cut-offs"))
        );
        assert_eq!(
            RankingAccumulator::new(&[5, 0]),
            Err(MetricsError::ZeroCutoff)
        );
        assert_eq!(
            RankingAccumulator::protocol().finish(),
            Err(MetricsError::Empty("users"))
        );
        assert_eq!(rank_metrics(&[], &[1]), Err(MetricsError::Empty("users")));
    }
}
