use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::files::{parse_id, parse_id_lines, read_to_string};
use crate::indexing::ItemPermutation;
use crate::negatives::{
    Negatives, NumpyMt19937, NEGATIVES_FILE, NUM_TEST_NEGATIVES, P5_NEGATIVE_SEED,
};
use crate::DatasetError;

/// Name of the per-user sequence file inside a dataset directory.
pub const SEQUENTIAL_FILE: &str = "sequential_data.txt";
/// Name of the id map file inside a dataset directory.
pub const DATAMAPS_FILE: &str = "datamaps.json";

/// Fewest items a user may have: one for training, one for validation, one for test.
pub const MIN_ITEMS_PER_USER: usize = 3;

/// One P5 dataset (sports, beauty, toys …): every user's chronological item sequence with the
/// leave-one-out split of SPEC §1 (last item = test, the one before = validation, the rest =
/// training history).
///
/// User and item ids are 1-based, exactly as in the files. Methods taking a `user` panic on an
/// id outside `1..=num_users()`, like slice indexing does; check with [`Dataset::contains_user`]
/// when the id comes from outside.
#[derive(Debug, Clone)]
pub struct Dataset {
    name: String,
    dir: PathBuf,
    /// User ids in the order of the sequence file.
    order: Vec<u32>,
    /// `(start, len)` into `items`, indexed by `user - 1`.
    spans: Vec<(usize, usize)>,
    items: Vec<u32>,
    num_items: usize,
    universe: Vec<u32>,
    user_keys: Vec<String>,
    item_keys: Vec<String>,
    /// Read from `negative_samples.txt` at load time when present, else drawn with P5's
    /// procedure the first time they are asked for.
    test_negatives: OnceLock<Negatives>,
}

#[derive(Deserialize)]
struct RawDatamaps {
    id2user: HashMap<String, String>,
    id2item: HashMap<String, String>,
}

impl Dataset {
    /// Loads `sequential_data.txt` and `datamaps.json` from `dir`, plus the top-n test
    /// negatives from `negative_samples.txt` when it is there (otherwise
    /// [`Dataset::test_negatives`] draws P5's). The dataset's name is the directory's name.
    pub fn load(dir: impl AsRef<Path>) -> Result<Dataset, DatasetError> {
        let dir = dir.as_ref();
        let seq_path = dir.join(SEQUENTIAL_FILE);
        let text = read_to_string(&seq_path)?;
        let sequences = parse_sequences(&seq_path, &text)?;

        let maps_path = dir.join(DATAMAPS_FILE);
        let maps_text = read_to_string(&maps_path)?;
        let raw: RawDatamaps =
            serde_json::from_str(&maps_text).map_err(|e| DatasetError::json(&maps_path, &e))?;
        let user_keys = dense_map(&maps_path, "id2user", raw.id2user)?;
        let item_keys = dense_map(&maps_path, "id2item", raw.id2item)?;
        if user_keys.len() != sequences.len() {
            return Err(DatasetError::inconsistent(
                &maps_path,
                format!(
                    "id2user has {} users but {} has {}",
                    user_keys.len(),
                    seq_path.display(),
                    sequences.len()
                ),
            ));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut dataset = Dataset::build(name, dir.to_path_buf(), sequences, item_keys.len())
            .map_err(|(line, message)| DatasetError::line(&seq_path, line, message))?;
        dataset.user_keys = user_keys;
        dataset.item_keys = item_keys;

        let neg_path = dir.join(NEGATIVES_FILE);
        if neg_path.exists() {
            dataset.test_negatives = OnceLock::from(Negatives::load(&neg_path, &dataset)?);
        }
        Ok(dataset)
    }

    /// Builds a dataset from sequences in memory (`sequences[i]` belongs to user `i + 1`), e.g.
    /// for tests or synthetic data. Items must lie in `1..=num_items`.
    ///
    /// ```
    /// use peapod_datasets::Dataset;
    /// let d = Dataset::from_sequences("tiny", vec![vec![1, 2, 3, 4], vec![4, 3, 2]], 5).unwrap();
    /// assert_eq!(d.train_history(1), &[1, 2]);
    /// assert_eq!((d.valid_item(2), d.test_item(2)), (3, 2));
    /// assert_eq!(d.item_universe(), &[1, 2, 3, 4]);
    /// ```
    pub fn from_sequences(
        name: &str,
        sequences: Vec<Vec<u32>>,
        num_items: usize,
    ) -> Result<Dataset, DatasetError> {
        let sequences = sequences
            .into_iter()
            .enumerate()
            .map(|(i, s)| ((i + 1) as u32, s, i + 1))
            .collect();
        Dataset::build(name.to_string(), PathBuf::new(), sequences, num_items).map_err(
            |(line, message)| DatasetError::InvalidRequest(format!("sequence {line}: {message}")),
        )
    }

    /// `sequences`: `(user, items, line)`. Errors carry the offending line.
    fn build(
        name: String,
        dir: PathBuf,
        sequences: Vec<(u32, Vec<u32>, usize)>,
        num_items: usize,
    ) -> Result<Dataset, (usize, String)> {
        let num_users = sequences.len();
        let mut first_line = vec![0usize; num_users];
        let mut spans = vec![(0usize, 0usize); num_users];
        let mut order = Vec::with_capacity(num_users);
        let mut items = Vec::with_capacity(sequences.iter().map(|s| s.1.len()).sum());
        let mut seen_item = vec![false; num_items + 1];
        let mut universe = Vec::new();
        for (user, seq, line) in sequences {
            let idx = user as usize - 1;
            if idx >= num_users {
                return Err((
                    line,
                    format!("user {user} out of range: with {num_users} users, ids must be 1..={num_users}"),
                ));
            }
            if first_line[idx] != 0 {
                return Err((
                    line,
                    format!(
                        "duplicate user {user} (first seen at line {})",
                        first_line[idx]
                    ),
                ));
            }
            first_line[idx] = line;
            if seq.len() < MIN_ITEMS_PER_USER {
                return Err((
                    line,
                    format!(
                        "user {user} has {} item(s); at least {MIN_ITEMS_PER_USER} are needed (training, validation, test)",
                        seq.len()
                    ),
                ));
            }
            for (pos, &item) in seq.iter().enumerate() {
                if item == 0 || item as usize > num_items {
                    return Err((
                        line,
                        format!(
                            "item {item} (position {}) out of range 1..={num_items}",
                            pos + 1
                        ),
                    ));
                }
                if !seen_item[item as usize] {
                    seen_item[item as usize] = true;
                    universe.push(item);
                }
            }
            spans[idx] = (items.len(), seq.len());
            items.extend_from_slice(&seq);
            order.push(user);
        }
        Ok(Dataset {
            name,
            dir,
            order,
            spans,
            items,
            num_items,
            universe,
            user_keys: Vec::new(),
            item_keys: Vec::new(),
            test_negatives: OnceLock::new(),
        })
    }

    /// This dataset with its items renumbered by `permutation` (of exactly its items): every
    /// sequence, the item keys and the test negatives — drawn first on the original ids when
    /// they were not loaded, so that each user's candidates stay the same items.
    pub fn reindexed(&self, permutation: &ItemPermutation) -> Result<Dataset, DatasetError> {
        if permutation.num_items() != self.num_items {
            return Err(DatasetError::InvalidRequest(format!(
                "a permutation of {} items for dataset {} of {}",
                permutation.num_items(),
                self.name,
                self.num_items
            )));
        }
        let negatives = self.test_negatives()?;
        let sequences = self
            .order
            .iter()
            .map(|&u| {
                let items = self
                    .sequence(u)
                    .iter()
                    .map(|&i| permutation.new_id(i))
                    .collect();
                (u, items, u as usize)
            })
            .collect();
        let mut out = Dataset::build(
            self.name.clone(),
            self.dir.clone(),
            sequences,
            self.num_items,
        )
        .map_err(|(_, m)| DatasetError::InvalidRequest(m))?;
        out.user_keys = self.user_keys.clone();
        if !self.item_keys.is_empty() {
            out.item_keys = (1..=self.num_items as u32)
                .map(|new| self.item_keys[permutation.old_id(new) as usize - 1].clone())
                .collect();
        }
        out.test_negatives = OnceLock::from(Negatives {
            order: negatives.order.clone(),
            lists: negatives
                .lists
                .iter()
                .map(|l| l.iter().map(|&i| permutation.new_id(i)).collect())
                .collect(),
        });
        Ok(out)
    }

    /// The dataset's name: its directory's name, e.g. `"beauty"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory the dataset was loaded from (empty for in-memory datasets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn num_users(&self) -> usize {
        self.spans.len()
    }

    /// Number of items in the id map (every item id lies in `1..=num_items()`).
    pub fn num_items(&self) -> usize {
        self.num_items
    }

    /// Total number of (user, item) interactions, all splits together.
    pub fn num_interactions(&self) -> usize {
        self.items.len()
    }

    /// User ids in the order of the sequence file (for the shipped data: `1..=num_users()`).
    pub fn users(&self) -> impl Iterator<Item = u32> + '_ {
        self.order.iter().copied()
    }

    pub fn contains_user(&self, user: u32) -> bool {
        user >= 1 && user as usize <= self.spans.len()
    }

    pub fn contains_item(&self, item: u32) -> bool {
        item >= 1 && item as usize <= self.num_items
    }

    /// The user's whole chronological sequence, validation and test items included.
    pub fn sequence(&self, user: u32) -> &[u32] {
        let (start, len) = self.spans[user as usize - 1];
        &self.items[start..start + len]
    }

    /// Everything but the last two items: the only part of a user's data training may see.
    pub fn train_history(&self, user: u32) -> &[u32] {
        let seq = self.sequence(user);
        &seq[..seq.len() - 2]
    }

    /// The second-to-last item: the validation target.
    pub fn valid_item(&self, user: u32) -> u32 {
        let seq = self.sequence(user);
        seq[seq.len() - 2]
    }

    /// The last item: the test target.
    pub fn test_item(&self, user: u32) -> u32 {
        let seq = self.sequence(user);
        seq[seq.len() - 1]
    }

    /// Every item that occurs in the sequence file, in order of first appearance reading the
    /// file top to bottom, left to right: the population P5 draws test negatives from.
    pub fn item_universe(&self) -> &[u32] {
        &self.universe
    }

    /// Amazon reviewerID of a user, from `datamaps.json` (None for in-memory datasets).
    pub fn user_key(&self, user: u32) -> Option<&str> {
        self.user_keys.get(user as usize - 1).map(String::as_str)
    }

    /// Amazon asin of an item, from `datamaps.json` (None for in-memory datasets).
    pub fn item_key(&self, item: u32) -> Option<&str> {
        self.item_keys
            .get((item as usize).wrapping_sub(1))
            .map(String::as_str)
    }

    /// The fixed top-n test negatives: those of `negative_samples.txt` when it was present at
    /// load time (or attached with [`Dataset::set_test_negatives`]), else P5's, drawn now with
    /// [`P5_NEGATIVE_SEED`] exactly as P5 drew them (see [`p5_negatives`]) and kept.
    pub fn test_negatives(&self) -> Result<&Negatives, DatasetError> {
        if let Some(negatives) = self.test_negatives.get() {
            return Ok(negatives);
        }
        let drawn = p5_negatives(self, P5_NEGATIVE_SEED)?;
        Ok(self.test_negatives.get_or_init(|| drawn))
    }

    /// Attaches test negatives (e.g. from [`crate::load_or_generate_negatives`]).
    pub fn set_test_negatives(&mut self, negatives: Negatives) -> Result<(), DatasetError> {
        if negatives.num_users() != self.num_users() {
            return Err(DatasetError::InvalidRequest(format!(
                "negatives cover {} users, dataset {} has {}",
                negatives.num_users(),
                self.name,
                self.num_users()
            )));
        }
        self.test_negatives = OnceLock::from(negatives);
        Ok(())
    }
}

fn parse_sequences(path: &Path, text: &str) -> Result<Vec<(u32, Vec<u32>, usize)>, DatasetError> {
    let sequences = parse_id_lines(path, text)?;
    if sequences.is_empty() {
        return Err(DatasetError::inconsistent(path, "no users"));
    }
    Ok(sequences)
}

/// Turns `{"1": v1, "2": v2, …}` into `[v1, v2, …]`, insisting the keys are exactly `1..=n`.
fn dense_map(
    path: &Path,
    field: &str,
    map: HashMap<String, String>,
) -> Result<Vec<String>, DatasetError> {
    let n = map.len();
    let mut out = vec![None; n];
    for (key, value) in map {
        let id = parse_id(&key, &format!("{field} key"))
            .map_err(|m| DatasetError::inconsistent(path, m))?;
        if id as usize > n {
            return Err(DatasetError::inconsistent(
                path,
                format!("{field} key {id} out of range: with {n} entries, ids must be 1..={n}"),
            ));
        }
        out[id as usize - 1] = Some(value);
    }
    // n distinct keys all within 1..=n cover every id, so every slot is filled.
    Ok(out.into_iter().flatten().collect())
}

impl Negatives {
    /// Reads a `negative_samples.txt` (`user item item …` per line) and checks it against the
    /// dataset: every user exactly once, items in range.
    pub fn load(path: impl AsRef<Path>, dataset: &Dataset) -> Result<Negatives, DatasetError> {
        let path = path.as_ref();
        let text = read_to_string(path)?;
        let rows = parse_id_lines(path, &text)?;
        let n = dataset.num_users();
        let mut lists: Vec<Option<Vec<u32>>> = vec![None; n];
        let mut order = Vec::with_capacity(n);
        for (user, items, line) in rows {
            if !dataset.contains_user(user) {
                return Err(DatasetError::line(
                    path,
                    line,
                    format!("user {user} out of range 1..={n}"),
                ));
            }
            if items.is_empty() {
                return Err(DatasetError::line(
                    path,
                    line,
                    format!("user {user} has no negatives"),
                ));
            }
            if let Some(pos) = items.iter().position(|&i| !dataset.contains_item(i)) {
                return Err(DatasetError::line(
                    path,
                    line,
                    format!(
                        "item {} (position {}) out of range 1..={}",
                        items[pos],
                        pos + 1,
                        dataset.num_items()
                    ),
                ));
            }
            let slot = &mut lists[user as usize - 1];
            if slot.is_some() {
                return Err(DatasetError::line(
                    path,
                    line,
                    format!("duplicate user {user}"),
                ));
            }
            *slot = Some(items);
            order.push(user);
        }
        if let Some(missing) = lists.iter().position(Option::is_none) {
            return Err(DatasetError::inconsistent(
                path,
                format!("user {} has no line", missing + 1),
            ));
        }
        Ok(Negatives {
            order,
            lists: lists.into_iter().flatten().collect(),
        })
    }
}

/// P5's test negatives, regenerated exactly (P5 used `seed = 2022`, [`P5_NEGATIVE_SEED`]).
///
/// For each user in file order: repeat `np.random.choice(universe, 99, replace=False)` — in
/// numpy's legacy generator a full Fisher–Yates permutation of the item universe truncated to
/// its first 99 entries — and append the drawn items the user never interacted with, until at
/// least 99 are collected; keep the first 99. Like P5, items are not de-duplicated across
/// repeated draws, so a user needing a second draw can get an item twice (it happens in the
/// published toys file); reproducing that is what makes the output byte-identical.
///
/// Where P5 would fail (numpy refuses a universe under 99 items) or never finish (a user who
/// touched every item), this returns an error.
pub fn p5_negatives(dataset: &Dataset, seed: u32) -> Result<Negatives, DatasetError> {
    let mut rng = NumpyMt19937::new(seed);
    let universe = dataset.item_universe();
    let invalid = |message: String| {
        DatasetError::InvalidRequest(format!("dataset {}: {message}", dataset.name()))
    };
    if universe.len() < NUM_TEST_NEGATIVES {
        return Err(invalid(format!(
            "P5's negative sampling draws {NUM_TEST_NEGATIVES} distinct items at a time; the item universe has only {}",
            universe.len()
        )));
    }
    let mut in_sequence = vec![false; dataset.num_items() + 1];
    let mut permutation: Vec<u32> = Vec::with_capacity(universe.len());
    let mut lists = vec![Vec::new(); dataset.num_users()];
    let mut order = Vec::with_capacity(dataset.num_users());
    for user in dataset.users() {
        let seq = dataset.sequence(user);
        let mut touched = 0;
        for &item in seq {
            touched += usize::from(!in_sequence[item as usize]);
            in_sequence[item as usize] = true;
        }
        // Sequence items all belong to the universe. Any untouched item is eventually drawn
        // among the first 99 of a permutation, so the loop below ends.
        if touched == universe.len() {
            return Err(invalid(format!(
                "user {user} has interacted with every item of the universe; no negatives to draw"
            )));
        }
        let mut kept = Vec::with_capacity(NUM_TEST_NEGATIVES * 2);
        while kept.len() < NUM_TEST_NEGATIVES {
            permutation.clear();
            permutation.extend(0..universe.len() as u32);
            rng.shuffle(&mut permutation);
            for &idx in permutation.iter().take(NUM_TEST_NEGATIVES) {
                let item = universe[idx as usize];
                if !in_sequence[item as usize] {
                    kept.push(item);
                }
            }
        }
        kept.truncate(NUM_TEST_NEGATIVES);
        for &item in seq {
            in_sequence[item as usize] = false;
        }
        lists[user as usize - 1] = kept;
        order.push(user);
    }
    Ok(Negatives { order, lists })
}

/// Reads `dir/negative_samples.txt` when it exists; otherwise generates P5's negatives with
/// [`P5_NEGATIVE_SEED`], writes them there (atomically) and returns them.
pub fn load_or_generate_negatives(
    dir: impl AsRef<Path>,
    dataset: &Dataset,
) -> Result<Negatives, DatasetError> {
    let path: PathBuf = dir.as_ref().join(NEGATIVES_FILE);
    if path.exists() {
        return Negatives::load(&path, dataset);
    }
    let negatives = p5_negatives(dataset, P5_NEGATIVE_SEED)?;
    negatives.write(&path)?;
    Ok(negatives)
}
