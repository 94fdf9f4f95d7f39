use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::negatives::Negatives;
use crate::DatasetError;

/// Name of the per-user sequence file inside a dataset directory.
pub const SEQUENTIAL_FILE: &str = "sequential_data.txt";
/// Name of the id map file inside a dataset directory.
pub const DATAMAPS_FILE: &str = "datamaps.json";
/// Name of the fixed top-n test negatives inside a dataset directory.
pub const NEGATIVES_FILE: &str = "negative_samples.txt";

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
    test_negatives: Option<Negatives>,
}

#[derive(Deserialize)]
struct RawDatamaps {
    id2user: HashMap<String, String>,
    id2item: HashMap<String, String>,
}

impl Dataset {
    /// Loads `sequential_data.txt` and `datamaps.json` from `dir`, plus `negative_samples.txt`
    /// when it is there. The dataset's name is the directory's name.
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
            dataset.test_negatives = Some(Negatives::load(&neg_path, &dataset)?);
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
            test_negatives: None,
        })
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

    /// The fixed top-n test negatives, when `negative_samples.txt` was present at load time or
    /// was attached with [`Dataset::set_test_negatives`].
    pub fn test_negatives(&self) -> Option<&Negatives> {
        self.test_negatives.as_ref()
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
        self.test_negatives = Some(negatives);
        Ok(())
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|e| DatasetError::io(path, e))
}

/// Parses a positive integer id, naming what it was meant to be when it is not one.
pub(crate) fn parse_id(token: &str, what: &str) -> Result<u32, String> {
    match token.parse::<u32>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!("{what} {token:?} is not a positive integer id")),
    }
}

/// Lines of `user item item …`; returns `(user, items, line number)`.
pub(crate) fn parse_id_lines(
    path: &Path,
    text: &str,
) -> Result<Vec<(u32, Vec<u32>, usize)>, DatasetError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let mut tokens = line.split_whitespace();
        let user = match tokens.next() {
            Some(tok) => parse_id(tok, "user").map_err(|m| DatasetError::line(path, line_no, m))?,
            None => return Err(DatasetError::line(path, line_no, "empty line")),
        };
        let items = tokens
            .enumerate()
            .map(|(pos, tok)| parse_id(tok, &format!("item (position {})", pos + 1)))
            .collect::<Result<Vec<u32>, String>>()
            .map_err(|m| DatasetError::line(path, line_no, m))?;
        out.push((user, items, line_no));
    }
    Ok(out)
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
