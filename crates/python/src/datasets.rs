//! `peapod.Dataset`: a P5 dataset directory with its templates and tokenizer, under P5's or a
//! leak-free indexing, and what the protocol derives from it (histories, targets, candidates,
//! test negatives).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::PyArray2;
use peapod::train::TrainingData;
use peapod_datasets::{
    evaluation_examples, visible_history, Dataset as P5Dataset, Example, ItemIndexing,
    ItemPermutation, Split, Task,
};
use peapod_pmf::MfModel;
use pyo3::prelude::*;

use crate::errors::{invalid, to_py};

/// A P5 dataset (`sequential_data.txt`, `datamaps.json`, optional `negative_samples.txt`)
/// loaded with the data root's `templates.json` and T5 tokenizer, its items numbered by one
/// indexing. Users and items are P5's 1-based ids (items renumbered under random indexing).
#[pyclass(frozen, name = "Dataset", module = "peapod")]
pub struct Dataset {
    pub(crate) data: TrainingData,
    permutation: Option<ItemPermutation>,
    /// MF models trained on this data, by seed: `evaluate(baselines=True)` trains once.
    mf: Mutex<BTreeMap<u64, Arc<MfModel>>>,
}

impl Dataset {
    /// The dataset of `data`, with an MF model already trained on it (`(seed, model)`).
    pub(crate) fn from_data(data: TrainingData, mf: Option<(u64, Arc<MfModel>)>) -> Self {
        let permutation = data.indexing.permutation(data.dataset.num_items());
        Dataset {
            data,
            permutation,
            mf: Mutex::new(mf.into_iter().collect()),
        }
    }

    pub(crate) fn p5(&self) -> &P5Dataset {
        &self.data.dataset
    }

    pub(crate) fn check_user(&self, user: u32) -> PyResult<()> {
        if self.p5().contains_user(user) {
            Ok(())
        } else {
            Err(invalid(format!(
                "user {user} is not in dataset {} (users are 1..={})",
                self.p5().name(),
                self.p5().num_users()
            )))
        }
    }

    fn check_item(&self, item: u32) -> PyResult<()> {
        if self.p5().contains_item(item) {
            Ok(())
        } else {
            Err(invalid(format!(
                "item {item} is not in dataset {} (items are 1..={})",
                self.p5().name(),
                self.p5().num_items()
            )))
        }
    }

    /// The protocol's evaluation examples of `task` on `split` (top-n candidates drawn or
    /// shuffled from `seed`) for `users`, in their order (all users in the dataset's order when
    /// `None`).
    pub(crate) fn examples(
        &self,
        task: Task,
        split: Split,
        seed: u64,
        users: Option<&[u32]>,
    ) -> PyResult<Vec<Example>> {
        let all = evaluation_examples(task, split, self.p5(), &self.data.templates, None, seed)
            .map_err(to_py)?;
        let Some(users) = users else {
            return Ok(all);
        };
        let mut by_user: HashMap<u32, Example> = all.into_iter().map(|e| (e.user, e)).collect();
        users
            .iter()
            .map(|&u| {
                self.check_user(u)?;
                by_user
                    .remove(&u)
                    .ok_or_else(|| invalid(format!("user {u} appears twice in users")))
            })
            .collect()
    }

    /// The MF model of `seed` (100 iterations, the paper's settings): trained once per seed, or
    /// read from `cache` when that file holds the same configuration.
    pub(crate) fn mf(&self, seed: u64, cache: Option<&std::path::Path>) -> PyResult<Arc<MfModel>> {
        let mut models = self
            .mf
            .lock()
            .map_err(|_| invalid("an earlier MF training failed while holding the cache"))?;
        if let Some(model) = models.get(&seed) {
            return Ok(model.clone());
        }
        let config = peapod::run::mf_config(100, seed);
        let model =
            peapod::pipeline::train_or_load_mf(self.p5(), &config, cache, |_| {}).map_err(to_py)?;
        let model = Arc::new(model);
        models.insert(seed, model.clone());
        Ok(model)
    }
}

pub(crate) fn parse_split(name: &str) -> PyResult<Split> {
    match Split::parse(name).map_err(to_py)? {
        Split::Train => Err(invalid(
            "the protocol evaluates the validation or the test split, not train",
        )),
        split => Ok(split),
    }
}

#[pymethods]
impl Dataset {
    /// Loads `root/name` (e.g. `load("data", "beauty")`), `root/templates.json` and
    /// `root/tokenizer/t5-tokenizer.json`. `indexing="random"` renumbers the items through a
    /// permutation drawn from `seed` (leak-free; every user's candidates stay the same items).
    #[staticmethod]
    #[pyo3(signature = (root, name, indexing = "sequential", seed = 2022))]
    fn load(
        py: Python<'_>,
        root: PathBuf,
        name: &str,
        indexing: &str,
        seed: u64,
    ) -> PyResult<Self> {
        let indexing = ItemIndexing::parse(indexing, seed).map_err(to_py)?;
        let data = py
            .detach(|| TrainingData::load(&root, name, None)?.with_indexing(indexing))
            .map_err(to_py)?;
        Ok(Dataset::from_data(data, None))
    }

    /// The dataset's name (its directory's), e.g. `"beauty"`.
    #[getter]
    fn name(&self) -> String {
        self.p5().name().to_string()
    }

    #[getter]
    fn num_users(&self) -> usize {
        self.p5().num_users()
    }

    #[getter]
    fn num_items(&self) -> usize {
        self.p5().num_items()
    }

    /// How items are numbered: P5's sequential ids (which leak the answer) or a permutation.
    #[getter]
    fn indexing(&self) -> String {
        self.data.indexing.describe()
    }

    /// Every user id, in the file's order.
    fn users(&self) -> Vec<u32> {
        self.p5().users().collect()
    }

    /// The user's whole chronological sequence, validation and test items included.
    fn sequence(&self, user: u32) -> PyResult<Vec<u32>> {
        self.check_user(user)?;
        Ok(self.p5().sequence(user).to_vec())
    }

    /// The history the protocol shows a model before the split's target: the user's last 20
    /// items before it, oldest first.
    #[pyo3(signature = (user, split = "test"))]
    fn history(&self, user: u32, split: &str) -> PyResult<Vec<u32>> {
        let split = parse_split(split)?;
        self.check_user(user)?;
        Ok(visible_history(self.p5(), user, split)
            .map_err(to_py)?
            .to_vec())
    }

    /// The split's target item of the user (the second-to-last or the last of its sequence).
    #[pyo3(signature = (user, split = "test"))]
    fn target(&self, user: u32, split: &str) -> PyResult<u32> {
        let split = parse_split(split)?;
        self.check_user(user)?;
        Ok(match split {
            Split::Validation => self.p5().valid_item(user),
            _ => self.p5().test_item(user),
        })
    }

    /// The top-n candidates of every user (row u−1 is user u) as the protocol builds them: the
    /// target among 99 negatives (P5's fixed test negatives, or validation negatives drawn
    /// from `seed`), in an order shuffled from `seed`.
    #[pyo3(signature = (split = "test", seed = 2022))]
    fn candidates<'py>(
        &self,
        py: Python<'py>,
        split: &str,
        seed: u64,
    ) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let split = parse_split(split)?;
        let rows: Vec<Vec<u32>> = py
            .detach(|| self.examples(Task::TopN, split, seed, None))?
            .into_iter()
            .map(|e| e.candidates.unwrap_or_default())
            .collect();
        rectangular(py, &rows, "candidate lists")
    }

    /// P5's fixed top-n test negatives of every user (row u−1 is user u): those of
    /// `negative_samples.txt` when the directory has it, else drawn now exactly as P5 drew them.
    fn test_negatives<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let rows = py
            .detach(|| {
                self.p5().test_negatives().map(|n| {
                    self.p5()
                        .users()
                        .map(|u| n.of(u).to_vec())
                        .collect::<Vec<_>>()
                })
            })
            .map_err(to_py)?;
        rectangular(py, &rows, "test negative lists")
    }

    /// The item's id in P5's numbering (itself under sequential indexing).
    fn p5_item(&self, item: u32) -> PyResult<u32> {
        self.check_item(item)?;
        Ok(self.permutation.as_ref().map_or(item, |p| p.old_id(item)))
    }

    /// The id under this indexing of the item P5 numbers `p5_item` (itself under sequential
    /// indexing): `p5_item`'s inverse.
    fn item_from_p5(&self, p5_item: u32) -> PyResult<u32> {
        self.check_item(p5_item)?;
        Ok(self
            .permutation
            .as_ref()
            .map_or(p5_item, |p| p.new_id(p5_item)))
    }

    /// The item's Amazon ASIN, from `datamaps.json`.
    fn item_key(&self, item: u32) -> PyResult<Option<String>> {
        self.check_item(item)?;
        Ok(self.p5().item_key(item).map(str::to_string))
    }

    /// The user's Amazon reviewer id, from `datamaps.json`.
    fn user_key(&self, user: u32) -> PyResult<Option<String>> {
        self.check_user(user)?;
        Ok(self.p5().user_key(user).map(str::to_string))
    }

    fn __repr__(&self) -> String {
        format!(
            "Dataset({:?}: {} users, {} items, {} interactions, {})",
            self.p5().name(),
            self.p5().num_users(),
            self.p5().num_items(),
            self.p5().num_interactions(),
            self.data.indexing.describe()
        )
    }

    fn __len__(&self) -> usize {
        self.p5().num_users()
    }
}

fn rectangular<'py>(
    py: Python<'py>,
    rows: &[Vec<u32>],
    what: &str,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    PyArray2::from_vec2(py, rows)
        .map_err(|e| invalid(format!("the {what} differ in length ({e}): no 2-D array")))
}
