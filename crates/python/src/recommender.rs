//! `peapod.Recommender`: a trained PeaPOD (a run directory or a checkpoint file, the shipped
//! one included) that recommends for users — the sequential task's beam search (free, as the
//! paper's protocol, or constrained to real items) and top-n by exact candidate scoring — with
//! the user prompt's component weights behind them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use numpy::PyArray2;
use peapod::checkpoint::read_checkpoint_header;
use peapod::eval::{
    generate_explanations, item_trie, rank_candidates_exactly, rank_items, EvalConfig,
    ItemConstraint,
};
use peapod::pipeline::{cover_users, load_model, train_or_load_mf, user_queries, ColdStart};
use peapod::run::{mf_config, RunDir};
use peapod::train::{CheckpointHeader, TrainingData};
use peapod::{PeaPod, PeapodError as RustError};
use peapod_datasets::{Example, Task};
use peapod_pmf::MfModel;
use pyo3::prelude::*;

use crate::datasets::{parse_split, Dataset};
use crate::errors::{invalid, to_py};
use crate::rankings::to_python;

/// A trained PeaPOD on the dataset its checkpoint names, with that dataset (`.dataset`).
#[pyclass(frozen, name = "Recommender", module = "peapod")]
pub struct Recommender {
    model: PeaPod,
    dataset: Py<Dataset>,
    checkpoint: PathBuf,
    step: u64,
}

struct Loaded {
    model: PeaPod,
    data: TrainingData,
    mf: Arc<MfModel>,
    seed: u64,
    checkpoint: PathBuf,
    step: u64,
}

/// The checkpoint `path` names (a run directory: its best, else its last), its data under its
/// indexing, and the user queries it was trained with: the run directory's MF model when it
/// has one, else MF retrained from the checkpoint's seed at the paper's settings (how the
/// shipped checkpoint's run made them).
fn load_parts(path: &Path, data_root: &Path) -> Result<Loaded, RustError> {
    let (dir, checkpoint) = RunDir::locate(path)?;
    let header: CheckpointHeader = read_checkpoint_header(&checkpoint)?;
    let data =
        TrainingData::load(data_root, &header.dataset, None)?.with_indexing(header.indexing)?;
    let seed = header.model.seed;
    let mf = match dir.mf_cache() {
        cache if cache.exists() => {
            cover_users(MfModel::load(&cache)?, &data.dataset, ColdStart::default())?.0
        }
        _ => train_or_load_mf(&data.dataset, &mf_config(100, seed), None, |_| {})?,
    };
    let queries = user_queries(&mf, &data.dataset, &Device::Cpu)?;
    let (model, _) = load_model(&checkpoint, Some(&queries), &Device::Cpu)?;
    Ok(Loaded {
        model,
        data,
        mf: Arc::new(mf),
        seed,
        checkpoint,
        step: header.optimizer_step,
    })
}

impl Recommender {
    fn examples(
        &self,
        py: Python<'_>,
        task: Task,
        users: Option<Vec<u32>>,
        split: &str,
        seed: u64,
    ) -> PyResult<Vec<Example>> {
        let split = parse_split(split)?;
        let dataset = self.dataset.get();
        py.detach(|| dataset.examples(task, split, seed, users.as_deref()))
    }

    /// Inputs of `task` (top-n or explanation) for `users[i]` with `items[i]` (its candidates,
    /// or the one item to explain), in the protocol's evaluation template.
    fn given(
        &self,
        task: Task,
        users: Option<Vec<u32>>,
        items: Vec<Vec<u32>>,
    ) -> PyResult<Vec<Example>> {
        let users = users.ok_or_else(|| invalid("give `users` with their item lists"))?;
        if users.len() != items.len() {
            return Err(invalid(format!(
                "{} users but {} item lists: one list per user",
                users.len(),
                items.len()
            )));
        }
        let dataset = self.dataset.get();
        let templates = &dataset.data.templates;
        users
            .into_iter()
            .zip(items)
            .map(|(user, items)| {
                dataset.check_user(user)?;
                if let Some(&bad) = items.iter().find(|&&i| !dataset.p5().contains_item(i)) {
                    return Err(invalid(format!(
                        "item {bad} (for user {user}) is not an item"
                    )));
                }
                if items.is_empty() {
                    return Err(invalid(format!("an empty item list for user {user}")));
                }
                let input = templates
                    .render(task, templates.eval_index(task), user, &items)
                    .map_err(to_py)?;
                Ok(Example {
                    task,
                    user,
                    input,
                    target: String::new(),
                    target_item: None,
                    candidates: (task == Task::TopN).then_some(items),
                })
            })
            .collect()
    }
}

#[pymethods]
impl Recommender {
    /// Loads a run directory or a checkpoint file written by the training examples (e.g.
    /// `data/checkpoints/beauty-tiny-peapod.safetensors`), with the data under `data_root`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf, data_root: PathBuf) -> PyResult<Self> {
        let loaded = py.detach(|| load_parts(&path, &data_root)).map_err(to_py)?;
        let dataset = Dataset::from_data(loaded.data, Some((loaded.seed, loaded.mf)));
        Ok(Recommender {
            model: loaded.model,
            dataset: Py::new(py, dataset)?,
            checkpoint: loaded.checkpoint,
            step: loaded.step,
        })
    }

    /// The dataset the model was trained on, under its indexing.
    #[getter]
    fn dataset(&self, py: Python<'_>) -> Py<Dataset> {
        self.dataset.clone_ref(py)
    }

    /// The checkpoint file loaded.
    #[getter]
    fn checkpoint(&self) -> String {
        self.checkpoint.display().to_string()
    }

    /// The optimizer step the checkpoint was written at.
    #[getter]
    fn step(&self) -> u64 {
        self.step
    }

    /// `peapod`, `pod`, `p5`, `peapod-x` or `similar-users`.
    #[getter]
    fn variant(&self) -> String {
        self.model.config().variant.to_string()
    }

    /// The next item for each user (all users when `users` is None) by the protocol's beam
    /// search over the split's visible history: `k` ranked item ids per user (0 where a beam
    /// generated no item; free decoding can), or real items only with `constrained`.
    #[pyo3(signature = (users = None, split = "test", k = 20, constrained = false, num_beams = 20, batch_size = 32))]
    #[allow(clippy::too_many_arguments)]
    fn recommend(
        &self,
        py: Python<'_>,
        users: Option<Vec<u32>>,
        split: &str,
        k: usize,
        constrained: bool,
        num_beams: usize,
        batch_size: usize,
    ) -> PyResult<Vec<Vec<u32>>> {
        let examples = self.examples(py, Task::Sequential, users, split, 2022)?;
        let config = EvalConfig {
            num_beams,
            num_return_sequences: k,
            batch_size,
            ..EvalConfig::default()
        };
        config.validate().map_err(to_py)?;
        let dataset = self.dataset.get();
        let lists = py
            .detach(|| {
                let all_items;
                let constraint = if constrained {
                    let items: Vec<u32> = (1..=dataset.p5().num_items() as u32).collect();
                    all_items = Arc::new(item_trie(&dataset.data.tokenizer, &items)?);
                    ItemConstraint::Shared(&all_items)
                } else {
                    ItemConstraint::None
                };
                rank_items(
                    &self.model,
                    &dataset.data.tokenizer,
                    dataset.p5(),
                    &examples,
                    &config,
                    constraint,
                    false,
                )
                .map(|(lists, _)| lists)
            })
            .map_err(to_py)?;
        Ok(to_python(lists))
    }

    /// Top-n: every user's candidates ranked by their teacher-forced likelihood under the
    /// model (exact scoring, no search error): the protocol's (`Dataset.candidates(split,
    /// seed)`), or `candidates[i]` for `users[i]` when given (any items, any number).
    #[pyo3(signature = (users = None, split = "test", seed = 2022, candidates = None))]
    fn rank_candidates(
        &self,
        py: Python<'_>,
        users: Option<Vec<u32>>,
        split: &str,
        seed: u64,
        candidates: Option<Vec<Vec<u32>>>,
    ) -> PyResult<Vec<Vec<u32>>> {
        let examples = match candidates {
            None => self.examples(py, Task::TopN, users, split, seed)?,
            Some(candidates) => self.given(Task::TopN, users, candidates)?,
        };
        let dataset = self.dataset.get();
        py.detach(|| {
            rank_candidates_exactly(&self.model, &dataset.data.tokenizer, &examples, 4, false)
        })
        .map_err(to_py)
    }

    /// Explanations generated for `users[i]` and `items[i]` by the protocol's beam search.
    /// Meaningful only for a model trained with the explanation task (`--explanations`); the
    /// shipped tiny model was not.
    fn explain(&self, py: Python<'_>, users: Vec<u32>, items: Vec<u32>) -> PyResult<Vec<String>> {
        let items = items.into_iter().map(|i| vec![i]).collect();
        let examples = self.given(Task::Explanation, Some(users), items)?;
        let dataset = self.dataset.get();
        py.detach(|| {
            generate_explanations(
                &self.model,
                &dataset.data.tokenizer,
                &examples,
                &EvalConfig::default(),
                false,
            )
        })
        .map_err(to_py)
    }

    /// The weights α (one row per user, one column per prompt component, each a cosine in
    /// [-1, 1]) that compose the users' prompts; None for variants without a user prompt.
    fn component_weights<'py>(
        &self,
        py: Python<'py>,
        users: Vec<u32>,
    ) -> PyResult<Option<Bound<'py, PyArray2<f32>>>> {
        let dataset = self.dataset.get();
        for &u in &users {
            dataset.check_user(u)?;
        }
        let Some(alpha) = self.model.component_weights(&users).map_err(to_py)? else {
            return Ok(None);
        };
        let rows = alpha
            .to_vec2::<f32>()
            .map_err(|e| to_py(RustError::from(e)))?;
        PyArray2::from_vec2(py, &rows)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    fn __repr__(&self) -> String {
        format!(
            "Recommender({} on {}, step {}, {})",
            self.model.config().variant,
            self.dataset.get().p5().name(),
            self.step,
            self.checkpoint.display()
        )
    }
}
