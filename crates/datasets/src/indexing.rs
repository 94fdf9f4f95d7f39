//! How items are numbered. P5's files number items in the order in which users are listed
//! ("sequential indexing"), so ids leak the answer (see `id_order_ranking`); a seeded random
//! permutation of the ids removes the leak while keeping every user's items, candidates and
//! explanations the same items. Further schemes (collaborative, semantic ids) belong here.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::DatasetError;

/// An item numbering scheme, stored with every checkpoint and report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ItemIndexing {
    /// P5's ids as the files give them (the paper's protocol).
    #[default]
    Sequential,
    /// P5's ids through a permutation drawn from `seed`.
    Random { seed: u64 },
}

impl ItemIndexing {
    /// `sequential`, or `random` with `seed`.
    pub fn parse(name: &str, seed: u64) -> Result<ItemIndexing, DatasetError> {
        match name.trim() {
            "sequential" => Ok(ItemIndexing::Sequential),
            "random" => Ok(ItemIndexing::Random { seed }),
            other => Err(DatasetError::InvalidRequest(format!(
                "unknown item indexing `{other}` (sequential or random)"
            ))),
        }
    }

    /// The scheme's name, without its parameters: `sequential` or `random`.
    pub fn kind(&self) -> &'static str {
        match self {
            ItemIndexing::Sequential => "sequential",
            ItemIndexing::Random { .. } => "random",
        }
    }

    /// As reports state it: `sequential`, or `random (seed S)`.
    pub fn describe(&self) -> String {
        match self {
            ItemIndexing::Sequential => "sequential".to_string(),
            ItemIndexing::Random { seed } => format!("random (seed {seed})"),
        }
    }

    /// The permutation of `num_items` ids this scheme applies; `None` keeps the ids.
    pub fn permutation(&self, num_items: usize) -> Option<ItemPermutation> {
        match *self {
            ItemIndexing::Sequential => None,
            ItemIndexing::Random { seed } => Some(ItemPermutation::seeded(num_items, seed)),
        }
    }
}

/// A bijection of the item ids `1..=n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemPermutation {
    /// Indexed by the original id (0 unused).
    to_new: Vec<u32>,
    /// Indexed by the new id (0 unused).
    to_old: Vec<u32>,
}

impl ItemPermutation {
    /// A uniformly random permutation of `1..=num_items` drawn from `seed`.
    pub fn seeded(num_items: usize, seed: u64) -> ItemPermutation {
        let mut new_ids: Vec<u32> = (1..=num_items as u32).collect();
        new_ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut to_new = vec![0u32; num_items + 1];
        let mut to_old = vec![0u32; num_items + 1];
        for (old, &new) in (1..=num_items as u32).zip(&new_ids) {
            to_new[old as usize] = new;
            to_old[new as usize] = old;
        }
        ItemPermutation { to_new, to_old }
    }

    pub fn num_items(&self) -> usize {
        self.to_new.len() - 1
    }

    /// The new id of an original id (0 for an id outside `1..=n`).
    pub fn new_id(&self, old: u32) -> u32 {
        self.to_new.get(old as usize).copied().unwrap_or(0)
    }

    /// The original id of a new id (0 for an id outside `1..=n`).
    pub fn old_id(&self, new: u32) -> u32 {
        self.to_old.get(new as usize).copied().unwrap_or(0)
    }
}
