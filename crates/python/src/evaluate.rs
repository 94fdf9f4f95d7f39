//! `peapod.evaluate`: any model's ranked lists scored by the protocol, beside the baselines on
//! the same users and candidates — the one call that reads a model honestly.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use peapod::eval::{ranking_metrics, BaselineReport};
use peapod::pipeline::{add_baseline_metrics, TrainedBaselines};
use peapod::run::SasRecTraining;
use peapod::sasrec::{load_cached_sasrec, train_or_load_sasrec};
use peapod_datasets::{Example, Split, Task};
use peapod_metrics::NOT_AN_ITEM;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::datasets::{parse_split, Dataset};
use crate::errors::{invalid, to_py, DataError};
use crate::rankings::ranked_lists;

pub(crate) fn parse_task(name: &str) -> PyResult<Task> {
    match Task::parse(name).map_err(to_py)? {
        Task::Explanation => Err(invalid(
            "evaluate scores ranked item lists (sequential, topn); explanations are scored by \
             peapod.metrics.text_report",
        )),
        task => Ok(task),
    }
}

/// Every list holds items of the dataset (or 0, no item), each once; a top-n list only the
/// user's candidates, each at most as often as among them (P5's test negatives may repeat an
/// item).
fn check_lists(dataset: &Dataset, examples: &[Example], lists: &[Vec<u32>]) -> PyResult<()> {
    if lists.len() != examples.len() {
        return Err(invalid(format!(
            "{} ranked lists for {} users: one list per user, in the order of `users` (or of \
             Dataset.users() when it is not given)",
            lists.len(),
            examples.len()
        )));
    }
    let num_items = dataset.p5().num_items();
    for (row, (example, list)) in examples.iter().zip(lists).enumerate() {
        let mut left: HashMap<u32, usize> = HashMap::new();
        if let Some(candidates) = &example.candidates {
            for &c in candidates {
                *left.entry(c).or_default() += 1;
            }
        }
        let mut seen = HashSet::with_capacity(list.len());
        for (rank, &item) in list.iter().enumerate() {
            if item == NOT_AN_ITEM {
                continue;
            }
            let problem = if item as usize > num_items {
                Some(format!("is not an item (items are 1..={num_items})"))
            } else if example.candidates.is_none() {
                (!seen.insert(item)).then(|| "appears twice in the list".to_string())
            } else {
                match left.get_mut(&item) {
                    Some(count) if *count > 0 => {
                        *count -= 1;
                        None
                    }
                    Some(_) => {
                        Some("appears more often than among the user's candidates".to_string())
                    }
                    None => Some(
                        "is not among the user's top-n candidates (Dataset.candidates)".to_string(),
                    ),
                }
            };
            if let Some(problem) = problem {
                return Err(invalid(format!(
                    "rankings[{row}] (user {}): item {item} at rank {} {problem}",
                    example.user,
                    rank + 1
                )));
            }
        }
    }
    Ok(())
}

/// The baselines on `examples`: popularity, ID order and MF (of `seed`), and SASRec when a
/// checkpoint path is given (read if trained on this data and seed, else trained and written).
fn baseline_report(
    dataset: &Dataset,
    examples: &[Example],
    task: Task,
    split: Split,
    seed: u64,
    mf_cache: Option<PathBuf>,
    sasrec: Option<PathBuf>,
) -> PyResult<BaselineReport> {
    let training = SasRecTraining {
        seed,
        ..Default::default()
    };
    let device = candle_core::Device::Cpu;
    let sasrec = match sasrec {
        Some(path) if path.exists() => {
            let cached = load_cached_sasrec(&dataset.data, &training, &path, &device)
                .map_err(to_py)?
                .ok_or_else(|| {
                    DataError::new_err(format!(
                        "{}: not a SASRec model trained on this dataset, indexing and seed \
                         {seed} (give a new path to train one there, a few CPU minutes)",
                        path.display()
                    ))
                })?;
            Some(cached)
        }
        Some(path) => Some(
            train_or_load_sasrec(&dataset.data, &training, Some(&path), &device, |_| {})
                .map_err(to_py)?,
        ),
        None => None,
    };
    // After SASRec, whose checkpoint may be refused at once, as MF takes seconds to train.
    let mf = dataset.mf(seed, mf_cache.as_deref())?;
    let mut report = BaselineReport::default();
    let trained = TrainedBaselines {
        mf: Some(mf.as_ref()),
        sasrec: sasrec.as_ref().map(|s| &s.model),
    };
    add_baseline_metrics(&mut report, dataset.p5(), examples, task, split, trained)
        .map_err(to_py)?;
    Ok(report)
}

/// Scores `rankings` (row i: the ranked item ids for `users[i]`, or for the i-th user of
/// `Dataset.users()`) on `task` of `split` as the protocol does, and with `baselines` the
/// popularity, ID-order and MF rankers on the same users and candidates (SASRec too when
/// `sasrec` names a checkpoint path). Returns `{"model": {"hr@5": …}, "popularity": …,
/// "id_order": …, "mf": …, "sasrec": …, "users": n, "split": …, "task": …, "indexing": …}`.
#[pyfunction]
#[pyo3(signature = (
    dataset, split, task, rankings, users = None, seed = 2022, baselines = true,
    mf_cache = None, sasrec = None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate<'py>(
    py: Python<'py>,
    dataset: &Bound<'py, Dataset>,
    split: &str,
    task: &str,
    rankings: &Bound<'py, PyAny>,
    users: Option<Vec<u32>>,
    seed: u64,
    baselines: bool,
    mf_cache: Option<PathBuf>,
    sasrec: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let (split, task) = (parse_split(split)?, parse_task(task)?);
    let lists = ranked_lists(rankings)?;
    let dataset = dataset.get();
    let (model, others, users) = py.detach(|| {
        let examples = dataset.examples(task, split, seed, users.as_deref())?;
        check_lists(dataset, &examples, &lists)?;
        let model = ranking_metrics(&examples, &lists, task).map_err(to_py)?;
        let others = if baselines {
            baseline_report(dataset, &examples, task, split, seed, mf_cache, sasrec)?
        } else {
            BaselineReport::default()
        };
        Ok::<_, PyErr>((model, others, examples.len()))
    })?;
    let out = PyDict::new(py);
    out.set_item("model", model)?;
    let name = task.name();
    let rows = [
        ("popularity", &others.popularity),
        ("id_order", &others.id_order),
        ("mf", &others.mf),
        ("sasrec", &others.sasrec),
    ];
    for (ranker, by_task) in rows {
        if let Some(metrics) = by_task.get(name) {
            out.set_item(ranker, metrics.clone())?;
        }
    }
    out.set_item("users", users)?;
    out.set_item("split", split.name())?;
    out.set_item("task", name)?;
    out.set_item("indexing", dataset.data.indexing.describe())?;
    Ok(out)
}
