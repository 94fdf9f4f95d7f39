//! The whole job in a few calls: MF queries, model construction or loading, evaluation with
//! baselines, and a report (JSON and a short table).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use peapod_datasets::{evaluation_examples, Dataset, Example, Split, Task};
use peapod_pmf::{Interactions, MfConfig, MfModel, LEAVE_ONE_OUT_HELD_OUT};
use serde::{Deserialize, Serialize};

use crate::checkpoint::load_checkpoint;
use crate::eval::{
    baseline_lists, explanation_metrics, generate_explanations, id_order_lists, item_popularity,
    item_trie, rank_candidates_exactly, rank_items, ranking_metrics, BaselineReport, EvalConfig,
    ItemConstraint, TaskReport,
};
use crate::model::{ModelConfig, PeaPod};
use crate::sasrec::sasrec_lists;
use crate::train::{CheckpointHeader, TrainingData};
use crate::PeapodError;
use peapod_sasrec::SasRec;

/// Trains MF on the training interactions of `dataset` (the last two items of every user never
/// enter), or loads it from `cache` when the file was written for the same configuration.
pub fn train_or_load_mf(
    dataset: &Dataset,
    config: &MfConfig,
    cache: Option<&Path>,
    on_progress: impl FnMut(peapod_pmf::Progress),
) -> Result<MfModel, PeapodError> {
    if let Some(path) = cache.filter(|p| p.exists()) {
        if let Ok(model) = MfModel::load(path) {
            if model.config() == config && model.user_ids().len() == dataset.num_users() {
                return Ok(model);
            }
        }
    }
    let sequences: Vec<(u32, Vec<u32>)> = dataset
        .users()
        .map(|u| (u, dataset.sequence(u).to_vec()))
        .collect();
    let train = Interactions::training_split(&sequences, LEAVE_ONE_OUT_HELD_OUT)?;
    let model = MfModel::train_with_progress(&train, config, on_progress)?;
    if let Some(path) = cache {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PeapodError::io(dir, e))?;
        }
        model.save(path)?;
    }
    Ok(model)
}

/// What evaluation does with users the MF model was not trained with (their query vector,
/// and their MF baseline, need an embedding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColdStart {
    /// Embed them by MF fold-in of their training history (`MfModel::fold_in`).
    #[default]
    FoldIn,
    /// Refuse, naming them.
    Error,
}

impl ColdStart {
    pub fn parse(name: &str) -> Result<ColdStart, PeapodError> {
        match name {
            "fold-in" => Ok(ColdStart::FoldIn),
            "error" => Ok(ColdStart::Error),
            other => Err(PeapodError::Config(format!(
                "unknown cold-start policy `{other}` (fold-in or error)"
            ))),
        }
    }
}

/// `mf` covering every user of `dataset`: users it was not trained with are folded in from
/// their training history (or refused, by `policy`). Returns the model (`mf` itself when it
/// knew everyone) and the users folded in.
pub fn cover_users(
    mf: MfModel,
    dataset: &Dataset,
    policy: ColdStart,
) -> Result<(MfModel, Vec<u32>), PeapodError> {
    let unknown: Vec<u32> = dataset
        .users()
        .filter(|&u| mf.user_row(u).is_err())
        .collect();
    if unknown.is_empty() {
        return Ok((mf, unknown));
    }
    if policy == ColdStart::Error {
        return Err(PeapodError::Config(format!(
            "{} users of {} are unknown to the MF model (the first: {}); with the fold-in \
             cold-start policy they get an embedding from their history",
            unknown.len(),
            dataset.name(),
            unknown[0]
        )));
    }
    let histories: Vec<(u32, Vec<u32>)> = unknown
        .iter()
        .map(|&u| (u, dataset.train_history(u).to_vec()))
        .collect();
    Ok((mf.with_folded_in(&histories)?, unknown))
}

/// The users' MF embeddings as the query table of the user prompt: row u−1 is user u.
pub fn user_queries(
    mf: &MfModel,
    dataset: &Dataset,
    device: &Device,
) -> Result<Tensor, PeapodError> {
    let dim = mf.dim();
    let mut data: Vec<f32> = Vec::with_capacity(dataset.num_users() * dim);
    for u in dataset.users() {
        data.extend(mf.embedding(u)?.iter());
    }
    Ok(Tensor::from_vec(data, (dataset.num_users(), dim), device)?)
}

/// Rebuilds a model from a checkpoint written by training (`last` or `best`).
pub fn load_model(
    path: &Path,
    user_queries: Option<&Tensor>,
    device: &Device,
) -> Result<(PeaPod, CheckpointHeader), PeapodError> {
    let (tensors, header): (_, CheckpointHeader) = load_checkpoint(path, device)?;
    let model = PeaPod::new(header.model.clone(), user_queries, device)?;
    model.set_weights(&tensors)?;
    Ok((model, header))
}

/// What to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRequest {
    pub split: Split,
    /// Evaluate these users only (1-based ids); all users when `None`.
    pub users: Option<Vec<u32>>,
    pub tasks: Vec<Task>,
    pub decoding: EvalConfig,
}

/// The evaluation report: per-task metrics under each decoding mode, baselines, throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub dataset: String,
    pub variant: String,
    pub split: Split,
    pub seed: u64,
    pub users_evaluated: usize,
    pub tasks: BTreeMap<String, TaskReport>,
    pub baselines: BaselineReport,
    pub wall_seconds: f64,
    pub model: ModelConfig,
    pub decoding: EvalConfig,
    /// Free text: how the weights were obtained (random init, HF weights, checkpoint).
    pub provenance: String,
    /// Users unknown to the MF model, embedded by fold-in of their history.
    #[serde(default)]
    pub cold_start_users: usize,
    /// How items were numbered (`sequential`: P5's ids, which leak the answer: see the ID-order
    /// baseline).
    #[serde(default = "sequential_indexing")]
    pub indexing: String,
    /// The optimizer step of the evaluated checkpoint, when one was evaluated.
    #[serde(default)]
    pub checkpoint_step: Option<u64>,
}

fn sequential_indexing() -> String {
    "sequential".to_string()
}

/// A fixed sample of `n` users (every ⌈N/n⌉-th user from the first): the same users for every
/// model and baseline, and for every run.
pub fn fixed_user_sample(dataset: &Dataset, n: usize) -> Vec<u32> {
    let total = dataset.num_users();
    if n == 0 || n >= total {
        return dataset.users().collect();
    }
    (0..n).map(|k| (k * total / n) as u32 + 1).collect()
}

/// The trained baselines an evaluation ranks beside the model (popularity and the ID-order
/// rule need no training and are always there).
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainedBaselines<'a> {
    pub mf: Option<&'a MfModel>,
    pub sasrec: Option<&'a SasRec>,
}

/// Evaluates `model` (and the baselines on the same users and candidates).
pub fn evaluate(
    model: &PeaPod,
    data: &TrainingData,
    trained: TrainedBaselines<'_>,
    request: &EvalRequest,
    provenance: &str,
    show: bool,
) -> Result<Report, PeapodError> {
    let start = Instant::now();
    request.decoding.validate()?;
    let split = request.split;
    if split == Split::Train {
        return Err(PeapodError::Config(
            "evaluation reads the validation or test split, not train".into(),
        ));
    }
    let keep = request.users.as_ref().map(|u| {
        let mut v = u.clone();
        v.sort_unstable();
        v
    });
    let select = |mut examples: Vec<Example>| -> Vec<Example> {
        if let Some(keep) = &keep {
            examples.retain(|e| keep.binary_search(&e.user).is_ok());
        }
        examples
    };
    let cfg = &request.decoding;
    let mut tasks = BTreeMap::new();
    let mut baselines = BaselineReport::default();
    let mut users = std::collections::BTreeSet::new();
    for &task in &request.tasks {
        let name = task.name().to_string();
        let examples = select(evaluation_examples(
            task,
            split,
            &data.dataset,
            &data.templates,
            data.explanations.as_ref(),
            model.config().seed,
        )?);
        if examples.is_empty() {
            continue;
        }
        users.extend(examples.iter().map(|e| e.user));
        let mut report = TaskReport {
            users: examples.len(),
            ..TaskReport::default()
        };
        match task {
            Task::Explanation => {
                let generated =
                    generate_explanations(model, &data.tokenizer, &examples, cfg, show)?;
                let references: Vec<String> = examples
                    .iter()
                    .map(|e| {
                        let ids = data
                            .tokenizer
                            .encode_target(&e.target, peapod_datasets::MAX_EXPLANATION_TOKENS)?;
                        data.tokenizer.decode(&ids)
                    })
                    .collect::<Result<_, _>>()?;
                report
                    .modes
                    .insert("beam".into(), explanation_metrics(&references, &generated)?);
            }
            Task::Sequential | Task::TopN => {
                if cfg.free_beam {
                    let (lists, rate) = rank_items(
                        model,
                        &data.tokenizer,
                        &data.dataset,
                        &examples,
                        cfg,
                        ItemConstraint::None,
                        show,
                    )?;
                    report.decode_inputs_per_second = Some(rate);
                    report
                        .modes
                        .insert("beam".into(), ranking_metrics(&examples, &lists, task)?);
                }
                if cfg.constrained {
                    let all_items;
                    let constraint = if task == Task::Sequential {
                        let items: Vec<u32> = (1..=data.dataset.num_items() as u32).collect();
                        all_items = std::sync::Arc::new(item_trie(&data.tokenizer, &items)?);
                        ItemConstraint::Shared(&all_items)
                    } else {
                        ItemConstraint::Candidates
                    };
                    let (lists, _) = rank_items(
                        model,
                        &data.tokenizer,
                        &data.dataset,
                        &examples,
                        cfg,
                        constraint,
                        show,
                    )?;
                    report.modes.insert(
                        "constrained".into(),
                        ranking_metrics(&examples, &lists, task)?,
                    );
                }
                if cfg.exact_topn && task == Task::TopN {
                    let lists =
                        rank_candidates_exactly(model, &data.tokenizer, &examples, 4, show)?;
                    report
                        .modes
                        .insert("exact".into(), ranking_metrics(&examples, &lists, task)?);
                }
                add_baseline_metrics(
                    &mut baselines,
                    &data.dataset,
                    &examples,
                    task,
                    split,
                    trained,
                )?;
            }
        }
        tasks.insert(name, report);
    }
    Ok(Report {
        dataset: data.dataset.name().to_string(),
        variant: model.config().variant.to_string(),
        split: request.split,
        seed: model.config().seed,
        users_evaluated: users.len(),
        tasks,
        baselines,
        wall_seconds: start.elapsed().as_secs_f64(),
        model: model.config().clone(),
        decoding: cfg.clone(),
        provenance: provenance.to_string(),
        cold_start_users: 0,
        indexing: data.indexing.describe(),
        checkpoint_step: None,
    })
}

/// The baselines' metrics on the examples of one ranking task of `split`, under the task's
/// name in `report`: popularity and the ID-order rule always, MF and SASRec when trained. Any
/// other ranker's lists of the same examples are read against these (`ranking_metrics`).
pub fn add_baseline_metrics(
    report: &mut BaselineReport,
    dataset: &Dataset,
    examples: &[Example],
    task: Task,
    split: Split,
    trained: TrainedBaselines<'_>,
) -> Result<(), PeapodError> {
    let name = task.name().to_string();
    let popularity = item_popularity(dataset);
    let (pop, mf_lists) = baseline_lists(dataset, examples, &popularity, trained.mf)?;
    let id_order = id_order_lists(dataset, examples, split, &popularity)?;
    report
        .id_order
        .insert(name.clone(), ranking_metrics(examples, &id_order, task)?);
    report
        .popularity
        .insert(name.clone(), ranking_metrics(examples, &pop, task)?);
    if let Some(lists) = mf_lists {
        report
            .mf
            .insert(name.clone(), ranking_metrics(examples, &lists, task)?);
    }
    if let Some(sasrec) = trained.sasrec {
        let lists = sasrec_lists(sasrec, dataset, examples, split)?;
        report
            .sasrec
            .insert(name, ranking_metrics(examples, &lists, task)?);
    }
    Ok(())
}

impl Report {
    /// Adds the tasks and baselines of `other` (another evaluation of the same model on the
    /// same users); wall time adds up.
    pub fn merge(&mut self, other: Report) {
        self.tasks.extend(other.tasks);
        self.baselines.popularity.extend(other.baselines.popularity);
        self.baselines.id_order.extend(other.baselines.id_order);
        self.baselines.mf.extend(other.baselines.mf);
        self.baselines.sasrec.extend(other.baselines.sasrec);
        self.users_evaluated = self.users_evaluated.max(other.users_evaluated);
        self.wall_seconds += other.wall_seconds;
    }

    /// The report as Markdown, one table per task: the model under each decoding mode, the
    /// baselines on the same users and candidates, and the paper's PeaPOD row for the dataset;
    /// with the indexing, the users evaluated and the checkpoint step stated.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# {} · {} · {} split\n\n- users evaluated: {}{}\n- item indexing: {}{}\n- \
             weights: {}\n- decoding: {} beams, {} returned\n- wall time: {:.1} s\n",
            self.dataset,
            self.variant,
            self.split,
            self.users_evaluated,
            if self.cold_start_users > 0 {
                format!(
                    " ({} unknown to MF, embedded by fold-in of their history)",
                    self.cold_start_users
                )
            } else {
                String::new()
            },
            self.indexing,
            if self.indexing == "sequential" {
                " (P5's ids: the ID-order row shows what they leak)"
            } else {
                ""
            },
            match self.checkpoint_step {
                Some(step) => format!("{} (step {step})", self.provenance),
                None => self.provenance.clone(),
            },
            self.decoding.num_beams,
            self.decoding.num_return_sequences,
            self.wall_seconds,
        );
        let paper = crate::paper::paper_row(&self.dataset);
        for (task, report) in &self.tasks {
            let cols: &[&str] = match task.as_str() {
                "explanation" => &[
                    "bleu_1",
                    "bleu_4",
                    "rouge_1/f_score",
                    "rouge_2/f_score",
                    "rouge_l/f_score",
                    "usr",
                ],
                "topn" => &["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"],
                _ => &["hr@5", "ndcg@5", "hr@10", "ndcg@10"],
            };
            out.push_str(&format!(
                "\n## {task} ({} users)\n\n| ranker | {} |\n|---|{}\n",
                report.users,
                cols.join(" | "),
                "---|".repeat(cols.len())
            ));
            let mut row = |name: &str, m: &BTreeMap<String, f64>| {
                let cells: Vec<String> = cols
                    .iter()
                    .map(|c| m.get(*c).map_or("—".to_string(), |v| format!("{v:.4}")))
                    .collect();
                out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
            };
            for (mode, m) in &report.modes {
                row(&format!("**{} ({mode})**", self.variant), m);
            }
            for (name, table) in [
                ("popularity", &self.baselines.popularity),
                ("ID order (leak)", &self.baselines.id_order),
                ("MF (BPR)", &self.baselines.mf),
                ("SASRec (cross-entropy)", &self.baselines.sasrec),
            ] {
                if let Some(m) = table.get(task) {
                    row(name, m);
                }
            }
            if let (Some(m), "sequential") =
                (crate::paper::paper_sasrec(&self.dataset), task.as_str())
            {
                let m: BTreeMap<String, f64> =
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                row("paper: SASRec (its baseline table)", &m);
            }
            if let Some(p) = paper {
                let m: BTreeMap<String, f64> = crate::paper::paper_metrics(p, task)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                if !m.is_empty() {
                    row("paper: PeaPOD (T5-small, all test users)", &m);
                }
            }
        }
        out.push_str(
            "\nThe paper's row evaluates every test user with T5-small trained to convergence; \
             compare it with care when the rows above come from fewer users or a smaller \
             model. The paper's SASRec row is a weak SASRec (the original binary loss); ours \
             is trained with the full-softmax cross-entropy, early-stopped on the validation \
             items (docs/baselines.md).\n",
        );
        out
    }

    /// A short human-readable table: one row per (task, ranker).
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} · {} · {} split · {} users · {:.1} s\n",
            self.dataset, self.variant, self.split, self.users_evaluated, self.wall_seconds
        );
        if self.cold_start_users > 0 {
            out.push_str(&format!(
                "{} users unknown to MF, embedded by fold-in of their history\n",
                self.cold_start_users
            ));
        }
        let cols = ["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"];
        out.push_str(&format!("{:<12} {:<22}", "task", "ranker"));
        for c in cols {
            out.push_str(&format!(" {c:>8}"));
        }
        out.push('\n');
        let mut row = |task: &str, ranker: &str, m: &BTreeMap<String, f64>| {
            out.push_str(&format!("{task:<12} {ranker:<22}"));
            for c in cols {
                match m.get(c) {
                    Some(v) => out.push_str(&format!(" {v:>8.4}")),
                    None => out.push_str(&format!(" {:>8}", "")),
                }
            }
            out.push('\n');
        };
        for (task, report) in &self.tasks {
            if task == "explanation" {
                continue;
            }
            for (mode, m) in &report.modes {
                row(task, &format!("{} ({mode})", self.variant), m);
            }
            if let Some(m) = self.baselines.popularity.get(task) {
                row(task, "popularity", m);
            }
            if let Some(m) = self.baselines.id_order.get(task) {
                row(task, "ID order (leak)", m);
            }
            if let Some(m) = self.baselines.mf.get(task) {
                row(task, "MF (BPR)", m);
            }
            if let Some(m) = self.baselines.sasrec.get(task) {
                row(task, "SASRec", m);
            }
        }
        if let Some(report) = self.tasks.get("explanation") {
            for (mode, m) in &report.modes {
                out.push_str(&format!("explanation ({mode}):"));
                for k in [
                    "bleu_1",
                    "bleu_4",
                    "rouge_1/f_score",
                    "rouge_2/f_score",
                    "rouge_l/f_score",
                    "usr",
                ] {
                    if let Some(v) = m.get(k) {
                        out.push_str(&format!(" {k} {v:.4}"));
                    }
                }
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use peapod_datasets::Dataset;
    use peapod_pmf::{Interactions, MfConfig, MfModel};
    use peapod_t5_rec::T5Config;

    use super::{cover_users, user_queries, ColdStart};
    use crate::model::{ModelConfig, PeaPod, Variant};
    use crate::PeapodError;

    #[test]
    fn users_unknown_to_mf_are_folded_in_and_their_prompt_follows() -> Result<(), PeapodError> {
        // 12 users over 30 items; MF learns the first 8 only.
        let sequences: Vec<Vec<u32>> = (0..12u32)
            .map(|u| (0..6).map(|k| 1 + (u * 5 + k * 7) % 30).collect())
            .collect();
        let dataset = Dataset::from_sequences("t", sequences.clone(), 30)?;
        let known: Vec<(u32, Vec<u32>)> = (1..=8u32)
            .map(|u| (u, sequences[u as usize - 1].clone()))
            .collect();
        let config = MfConfig {
            dim: 8,
            iterations: 5,
            ..MfConfig::default()
        };
        let mf = MfModel::train(&Interactions::training_split(&known, 2)?, &config)?;

        let err = cover_users(mf.clone(), &dataset, ColdStart::Error)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 users of t are unknown"), "{err}");
        let (covered, folded) = cover_users(mf.clone(), &dataset, ColdStart::FoldIn)?;
        assert_eq!(folded, vec![9, 10, 11, 12]);
        // A known user keeps its learned row; a folded-in one gets the fold-in of its history.
        assert_eq!(covered.embedding(3)?, mf.embedding(3)?);
        let by_hand = mf.fold_in(dataset.train_history(10))?;
        assert_eq!(covered.embedding(10)?, by_hand.view());

        // The user prompt of the folded-in user is composed from that vector.
        let queries = user_queries(&covered, &dataset, &Device::Cpu)?;
        let row: Vec<f32> = queries.get(9)?.to_vec1()?;
        assert_eq!(row, by_hand.to_vec());
        let t5 = T5Config::micro();
        let model_config = ModelConfig::new(Variant::Peapod, t5, 8, 5);
        let model = PeaPod::new(model_config.clone(), Some(&queries), &Device::Cpu)?;
        let alpha = |m: &PeaPod| -> Result<Vec<f32>, PeapodError> {
            let a = m
                .component_weights(&[10])?
                .expect("the paper's user prompt");
            Ok(a.flatten_all()?.to_vec1()?)
        };
        // The same model over a table whose row for user 10 is zero instead: other weights.
        let mut zeroed = queries.to_vec2::<f32>()?;
        zeroed[9].iter_mut().for_each(|x| *x = 0.0);
        let zeroed = candle_core::Tensor::new(zeroed, &Device::Cpu)?;
        let other = PeaPod::new(model_config, Some(&zeroed), &Device::Cpu)?;
        assert_ne!(alpha(&model)?, alpha(&other)?);
        assert!(alpha(&other)?.iter().all(|&a| a == 0.0));
        Ok(())
    }
}
