//! A ranker that needs no model: the ID-order rule, which exposes the leak of P5's sequential
//! indexing. P5 numbers items in the order users are listed, so the item a user buys next very
//! often carries the next unused id after the largest id in the user's history; ranking by that
//! alone reaches the paper's sequential nDCG on beauty. Every report shows it beside the model.

use crate::{Dataset, DatasetError, Split, MAX_HISTORY};

/// How many ids of the sequential ID-order ranking put top-n candidates first.
pub const ID_ORDER_LEAD: usize = 10;

/// The history a sequential example of `split` shows the model for `user`: its last
/// [`MAX_HISTORY`] items before the split's target.
pub fn visible_history(dataset: &Dataset, user: u32, split: Split) -> Result<&[u32], DatasetError> {
    history_before(dataset, user, split, MAX_HISTORY)
}

/// The last `max_items` items of `user` before the target of `split` (the validation or the
/// test item), oldest first.
pub fn history_before(
    dataset: &Dataset,
    user: u32,
    split: Split,
    max_items: usize,
) -> Result<&[u32], DatasetError> {
    let cut = match split {
        Split::Validation => 2,
        Split::Test => 1,
        Split::Train => {
            return Err(DatasetError::InvalidRequest(
                "a history before the target exists for validation or test targets, not \
                 training ones"
                    .into(),
            ))
        }
    };
    if !dataset.contains_user(user) {
        return Err(DatasetError::InvalidRequest(format!(
            "user {user} is not in dataset {}",
            dataset.name()
        )));
    }
    let seq = dataset.sequence(user);
    let end = seq.len() - cut;
    Ok(&seq[end.saturating_sub(max_items)..end])
}

/// The sequential ID-order ranking: with m the largest id of `history`, the ids m+1, m+2, …,
/// `num_items`, then 1, 2, … (wrapping around), skipping ids in the history; the first `len`.
pub fn id_order_ranking(history: &[u32], num_items: usize, len: usize) -> Vec<u32> {
    let n = num_items as u32;
    let m = history.iter().copied().max().unwrap_or(0).min(n);
    (m + 1..=n)
        .chain(1..=m)
        .filter(|i| !history.contains(i))
        .take(len)
        .collect()
}

/// The top-n ID-order ranking of `candidates`: those among the first [`ID_ORDER_LEAD`] ids of
/// [`id_order_ranking`] first, in its order; the others by descending training `popularity`
/// (indexed by item id), ties by ascending item id.
pub fn id_order_candidates(
    history: &[u32],
    candidates: &[u32],
    num_items: usize,
    popularity: &[u32],
) -> Vec<u32> {
    let lead = id_order_ranking(history, num_items, ID_ORDER_LEAD);
    let mut out: Vec<u32> = lead
        .iter()
        .copied()
        .filter(|i| candidates.contains(i))
        .collect();
    let mut rest: Vec<u32> = candidates
        .iter()
        .copied()
        .filter(|i| !lead.contains(i))
        .collect();
    let pop = |i: u32| popularity.get(i as usize).copied().unwrap_or(0);
    rest.sort_by(|&a, &b| pop(b).cmp(&pop(a)).then(a.cmp(&b)));
    out.extend(rest);
    out
}
