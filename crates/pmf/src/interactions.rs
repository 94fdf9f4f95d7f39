use crate::error::{PmfError, Result};

/// Number of items at the end of each chronological sequence that the leave-one-out protocol
/// holds out: the validation target and, after it, the test target (SPEC §1).
pub const LEAVE_ONE_OUT_HELD_OUT: usize = 2;

/// Implicit (binary) user–item feedback, the only thing the trainer ever sees.
///
/// Users and items are stored as dense 0-based *rows*; each row also carries the caller's
/// *id* for it (`user_ids()[row]`, `item_ids()[row]`), kept sorted so that id → row is a
/// binary search. [`Interactions::new`] takes rows directly (ids = rows, 0-based);
/// [`Interactions::training_split`] takes the data files' ids (1-based in the P5 files) and
/// keeps them, so a model trained from it is queried with the same ids.
///
/// Repeated (user, item) pairs count once: the feedback is binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interactions {
    user_ids: Vec<u32>,
    item_ids: Vec<u32>,
    /// CSR by user: the items of user row `u` are `items[offsets[u]..offsets[u + 1]]`,
    /// sorted ascending, without duplicates.
    offsets: Vec<usize>,
    items: Vec<u32>,
}

impl Interactions {
    /// Builds interactions from `(user, item)` pairs of 0-based rows, `user < num_users` and
    /// `item < num_items`. Ids equal rows.
    pub fn new(num_users: usize, num_items: usize, pairs: &[(u32, u32)]) -> Result<Self> {
        for &(u, i) in pairs {
            if u as usize >= num_users {
                return Err(PmfError::UserOutOfRange {
                    index: u,
                    num_users,
                });
            }
            if i as usize >= num_items {
                return Err(PmfError::ItemOutOfRange {
                    index: i,
                    num_items,
                });
            }
        }
        let user_ids = (0..num_users)
            .map(|u| u32::try_from(u).map_err(|_| PmfError::Empty("too many users".into())))
            .collect::<Result<Vec<_>>>()?;
        let item_ids = (0..num_items)
            .map(|i| u32::try_from(i).map_err(|_| PmfError::Empty("too many items".into())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_rows(user_ids, item_ids, pairs))
    }

    /// Builds the TRAINING interactions of the leave-one-out protocol from full chronological
    /// sequences `(user id, [item ids, oldest first])`: the last `held_out` items of every
    /// sequence never enter ([`LEAVE_ONE_OUT_HELD_OUT`] = 2 for validation + test).
    ///
    /// Every user and every item that occurs anywhere in `sequences` gets a row (sorted by
    /// id), so held-out items can still be scored; only their existence is used, never the
    /// interaction. A user whose sequence is not longer than `held_out` keeps a row with an
    /// empty history.
    pub fn training_split(sequences: &[(u32, Vec<u32>)], held_out: usize) -> Result<Self> {
        let mut user_ids: Vec<u32> = sequences.iter().map(|(u, _)| *u).collect();
        user_ids.sort_unstable();
        if let Some(w) = user_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(PmfError::DuplicateUser(w[0]));
        }
        let mut item_ids: Vec<u32> = sequences
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        item_ids.sort_unstable();
        item_ids.dedup();
        let mut pairs = Vec::new();
        for (user, sequence) in sequences {
            let kept = sequence.len().saturating_sub(held_out);
            // Both lookups succeed: the id lists were built from these very sequences.
            let Ok(u) = user_ids.binary_search(user) else {
                continue;
            };
            for item in &sequence[..kept] {
                if let Ok(i) = item_ids.binary_search(item) {
                    pairs.push((u as u32, i as u32));
                }
            }
        }
        Ok(Self::from_rows(user_ids, item_ids, &pairs))
    }

    fn from_rows(user_ids: Vec<u32>, item_ids: Vec<u32>, pairs: &[(u32, u32)]) -> Self {
        let num_users = user_ids.len();
        let mut counts = vec![0usize; num_users + 1];
        for &(u, _) in pairs {
            counts[u as usize + 1] += 1;
        }
        for u in 0..num_users {
            counts[u + 1] += counts[u];
        }
        let mut fill = counts.clone();
        let mut items = vec![0u32; pairs.len()];
        for &(u, i) in pairs {
            items[fill[u as usize]] = i;
            fill[u as usize] += 1;
        }
        // Deduplicate per user and compact in place.
        let mut offsets = Vec::with_capacity(num_users + 1);
        offsets.push(0);
        let mut write = 0;
        for u in 0..num_users {
            let row = &mut items[counts[u]..counts[u + 1]];
            row.sort_unstable();
            let mut last = None;
            for k in counts[u]..counts[u + 1] {
                let item = items[k];
                if last != Some(item) {
                    items[write] = item;
                    write += 1;
                    last = Some(item);
                }
            }
            offsets.push(write);
        }
        items.truncate(write);
        Self {
            user_ids,
            item_ids,
            offsets,
            items,
        }
    }

    /// Number of user rows.
    pub fn num_users(&self) -> usize {
        self.user_ids.len()
    }

    /// Number of item rows.
    pub fn num_items(&self) -> usize {
        self.item_ids.len()
    }

    /// Number of distinct (user, item) pairs.
    pub fn num_interactions(&self) -> usize {
        self.items.len()
    }

    /// The id of each user row (sorted ascending).
    pub fn user_ids(&self) -> &[u32] {
        &self.user_ids
    }

    /// The id of each item row (sorted ascending).
    pub fn item_ids(&self) -> &[u32] {
        &self.item_ids
    }

    /// The row of a user id, if known.
    pub fn user_row(&self, user: u32) -> Option<usize> {
        self.user_ids.binary_search(&user).ok()
    }

    /// The row of an item id, if known.
    pub fn item_row(&self, item: u32) -> Option<usize> {
        self.item_ids.binary_search(&item).ok()
    }

    /// Item rows of user row `user` (sorted, distinct); empty for an out-of-range row.
    pub fn user_items(&self, user: usize) -> &[u32] {
        match (self.offsets.get(user), self.offsets.get(user + 1)) {
            (Some(&a), Some(&b)) => &self.items[a..b],
            _ => &[],
        }
    }

    /// Number of users that interacted with each item row (training popularity).
    pub fn item_popularity(&self) -> Vec<u32> {
        let mut popularity = vec![0u32; self.num_items()];
        for &i in &self.items {
            popularity[i as usize] += 1;
        }
        popularity
    }

    pub(crate) fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    pub(crate) fn item_rows(&self) -> &[u32] {
        &self.items
    }
}
