//! Runs as library calls: what `train_<dataset>`, `evaluate` and `quickstart` do — the run
//! directory's layout, the cached MF model, the choice of checkpoint, pretrained weights and
//! the report — so that a program (ours or a user's) is a few lines over [`train_run`] and
//! [`evaluation_run`]. Nothing here prints; progress bars follow the `show` flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use peapod_datasets::{ItemIndexing, Split, Task, DATAMAPS_FILE, NEGATIVES_FILE, SEQUENTIAL_FILE};
use peapod_pmf::{MfConfig, MfModel, Progress};
use peapod_t5_rec::{load_weights, LoadOptions, LoadReport, T5Config};
use serde::{Deserialize, Serialize};

use crate::checkpoint::read_checkpoint_header;
use crate::eval::EvalConfig;
use crate::model::{ModelConfig, PeaPod, Variant};
use crate::pipeline::{
    cover_users, evaluate, fixed_user_sample, load_model, train_or_load_mf, user_queries,
    ColdStart, EvalRequest, Report, TrainedBaselines,
};
use crate::sasrec::{train_or_load_sasrec_shown, SasRecBaseline};
use crate::train::{
    export_weights, train, CheckpointHeader, TrainConfig, TrainOutcome, TrainingData,
    BEST_CHECKPOINT, LAST_CHECKPOINT,
};
use crate::PeapodError;
pub use peapod_sasrec::TrainConfig as SasRecTraining;

/// The MF model a run's user queries come from, cached in the run directory.
pub const MF_CACHE: &str = "mf.safetensors";
/// The SASRec baseline of a run's reports, cached in the run directory.
pub const SASREC_CACHE: &str = "sasrec.safetensors";
/// What made a run directory ([`RunManifest`]).
pub const RUN_MANIFEST: &str = "run.json";

/// What made a run directory: the dataset and the exact data files it read, how items were
/// indexed, the model and the MF settings. A run directory is bound to its manifest
/// ([`RunDir::bind`]): a run with anything different is refused before it writes a byte there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub dataset: String,
    /// How items are numbered (`ItemIndexing::describe`: `sequential` for P5's ids as the files
    /// give them, `random (seed S)`).
    pub indexing: String,
    pub model: ModelConfig,
    pub mf: MfConfig,
    /// SHA-256 (hex) of every data file read, by its path under the data root (or the
    /// explanation file's name).
    pub data: BTreeMap<String, String>,
}

impl RunManifest {
    /// The manifest of a run on `dataset` under `data_root` (with `explanations` when given).
    pub fn describe(
        dataset: &str,
        data_root: &Path,
        explanations: Option<&Path>,
        indexing: ItemIndexing,
        model: ModelConfig,
        mf: MfConfig,
    ) -> Result<Self, PeapodError> {
        Ok(Self {
            dataset: dataset.to_string(),
            indexing: indexing.describe(),
            model,
            mf,
            data: data_fingerprint(dataset, data_root, explanations)?,
        })
    }
    /// What differs between `self` (the directory's) and `other` (a new run's), in words.
    pub fn differences(&self, other: &RunManifest) -> Vec<String> {
        let mut out = Vec::new();
        if self.dataset != other.dataset {
            out.push(format!(
                "dataset {} (this run: {})",
                self.dataset, other.dataset
            ));
        }
        if self.indexing != other.indexing {
            out.push(format!(
                "indexing {} (this run: {})",
                self.indexing, other.indexing
            ));
        }
        if self.model != other.model {
            let model = |m: &ModelConfig| {
                format!("{} at d_model {}, seed {}", m.variant, m.t5.d_model, m.seed)
            };
            out.push(format!(
                "model {} (this run: {}; or another of their settings)",
                model(&self.model),
                model(&other.model)
            ));
        }
        if self.mf != other.mf {
            out.push(format!(
                "MF settings ({} iterations, seed {}; this run: {} iterations, seed {})",
                self.mf.iterations, self.mf.seed, other.mf.iterations, other.mf.seed
            ));
        }
        if self.dataset == other.dataset && self.data != other.data {
            let changed = changed_files(&self.data, &other.data);
            out.push(format!("data files changed since: {}", changed.join(", ")));
        }
        out
    }
}

/// SHA-256 (hex) of every data file a run on `dataset` reads, by its path under `data_root`
/// (the explanation file, when given, as `explanations/<name>`). The negatives file is
/// optional: without it the negatives are drawn, deterministically.
pub fn data_fingerprint(
    dataset: &str,
    data_root: &Path,
    explanations: Option<&Path>,
) -> Result<BTreeMap<String, String>, PeapodError> {
    let mut files: Vec<(String, PathBuf)> = [
        format!("{dataset}/{SEQUENTIAL_FILE}"),
        format!("{dataset}/{DATAMAPS_FILE}"),
        format!("{dataset}/{NEGATIVES_FILE}"),
        "templates.json".to_string(),
        "tokenizer/t5-tokenizer.json".to_string(),
    ]
    .into_iter()
    .map(|name| {
        let path = data_root.join(&name);
        (name, path)
    })
    .filter(|(name, path)| !name.ends_with(NEGATIVES_FILE) || path.exists())
    .collect();
    if let Some(path) = explanations {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((format!("explanations/{name}"), path.to_path_buf()));
    }
    files
        .into_iter()
        .map(|(name, path)| Ok((name, file_sha256(&path)?)))
        .collect()
}

/// The files whose hash differs between two fingerprints, or that only one has.
fn changed_files<'a>(
    a: &'a BTreeMap<String, String>,
    b: &'a BTreeMap<String, String>,
) -> Vec<&'a str> {
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(String::as_str)
        .collect()
}

/// SHA-256 of a file, hex.
fn file_sha256(path: &Path) -> Result<String, PeapodError> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| PeapodError::io(path, e))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A run directory: checkpoints (`last`, `best`), the cached MF model and the reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_checkpoint(&self) -> PathBuf {
        self.path.join(LAST_CHECKPOINT)
    }

    pub fn best_checkpoint(&self) -> PathBuf {
        self.path.join(BEST_CHECKPOINT)
    }

    pub fn mf_cache(&self) -> PathBuf {
        self.path.join(MF_CACHE)
    }

    pub fn sasrec_cache(&self) -> PathBuf {
        self.path.join(SASREC_CACHE)
    }

    /// Where the report of an evaluation on `split` goes: `report.json` for the test split
    /// evaluated after training, `report-<split>.json` for a later evaluation.
    pub fn report(&self, split: Option<Split>) -> PathBuf {
        match split {
            None => self.path.join("report.json"),
            Some(split) => self.path.join(format!("report-{split}.json")),
        }
    }

    /// The directory's manifest, when it has one.
    pub fn manifest(&self) -> Result<Option<RunManifest>, PeapodError> {
        let path = self.path.join(RUN_MANIFEST);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| PeapodError::io(&path, e))?;
        serde_json::from_str(&text).map(Some).map_err(|e| {
            PeapodError::Config(format!("{}: not a run manifest: {e}", path.display()))
        })
    }

    /// Binds the directory to `manifest`: a directory bound to another run is refused, naming
    /// what differs, before anything is written; an unbound one (new, or written before
    /// manifests existed, whose checkpoint must then be of the same dataset and model) gets
    /// `run.json`.
    pub fn bind(&self, manifest: &RunManifest) -> Result<(), PeapodError> {
        let refuse = |what: Vec<String>| {
            PeapodError::Config(format!(
                "run directory {} belongs to another run: {}. Use another output directory, \
                 or delete this one to start over",
                self.path.display(),
                what.join("; ")
            ))
        };
        match self.manifest()? {
            Some(existing) if existing == *manifest => return Ok(()),
            Some(existing) => return Err(refuse(existing.differences(manifest))),
            None => {}
        }
        for checkpoint in [self.last_checkpoint(), self.best_checkpoint()] {
            if checkpoint.exists() {
                let header: CheckpointHeader = read_checkpoint_header(&checkpoint)?;
                let mut what = Vec::new();
                if header.dataset != manifest.dataset {
                    what.push(format!(
                        "{} holds a {} checkpoint (this run: {})",
                        checkpoint.display(),
                        header.dataset,
                        manifest.dataset
                    ));
                }
                if header.model != manifest.model {
                    what.push(format!(
                        "{} was written for another model",
                        checkpoint.display()
                    ));
                }
                if !what.is_empty() {
                    return Err(refuse(what));
                }
            }
        }
        std::fs::create_dir_all(&self.path).map_err(|e| PeapodError::io(&self.path, e))?;
        let path = self.path.join(RUN_MANIFEST);
        let json = serde_json::to_string_pretty(manifest)
            .map_err(|e| PeapodError::Config(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| PeapodError::io(&path, e))
    }

    /// The run's training curves (`curves.svg`).
    pub fn curves(&self) -> PathBuf {
        self.path.join("curves.svg")
    }

    /// The checkpoint to evaluate: `best` when the run has one, else `last`; an error naming
    /// the directory when it has neither.
    pub fn checkpoint_to_evaluate(&self) -> Result<PathBuf, PeapodError> {
        [self.best_checkpoint(), self.last_checkpoint()]
            .into_iter()
            .find(|p| p.exists())
            .ok_or_else(|| {
                PeapodError::Config(format!(
                    "{} holds no checkpoint ({BEST_CHECKPOINT} or {LAST_CHECKPOINT})",
                    self.path.display()
                ))
            })
    }

    /// A path a user named: a run directory (its checkpoint to evaluate) or a checkpoint file
    /// (its directory is the run's). It must exist.
    pub fn locate(path: &Path) -> Result<(RunDir, PathBuf), PeapodError> {
        if path.is_dir() {
            let run = RunDir::new(path);
            let checkpoint = run.checkpoint_to_evaluate()?;
            Ok((run, checkpoint))
        } else if path.is_file() {
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            Ok((RunDir::new(dir), path.to_path_buf()))
        } else {
            Err(PeapodError::Config(format!(
                "{} is neither a run directory nor a checkpoint file",
                path.display()
            )))
        }
    }
}

/// The checkpoint a run on `dataset` starts from: the one the user `named` — which must exist —
/// or else `default` when it exists (`None` when it does not: the caller starts from scratch).
/// Either way the checkpoint must be of `dataset`.
pub fn starting_checkpoint(
    named: Option<&Path>,
    default: &Path,
    dataset: &str,
) -> Result<Option<PathBuf>, PeapodError> {
    let path = match named {
        Some(path) if !path.is_file() => {
            return Err(PeapodError::Config(format!(
                "checkpoint {} does not exist",
                path.display()
            )))
        }
        Some(path) => path,
        None if default.is_file() => default,
        None => return Ok(None),
    };
    let header: CheckpointHeader = read_checkpoint_header(path)?;
    if header.dataset != dataset {
        return Err(PeapodError::Config(format!(
            "{} is a {} checkpoint; this run is on {dataset}",
            path.display(),
            header.dataset
        )));
    }
    Ok(Some(path.to_path_buf()))
}

/// The GPU when built with `--features cuda` and one is present, else the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A T5 configuration by preset name (`t5-small`, `tiny`) or `config.json` path.
pub fn t5_config(name: &str) -> Result<T5Config, PeapodError> {
    match name {
        "t5-small" => Ok(T5Config::t5_small()),
        "tiny" => Ok(T5Config::tiny()),
        path if Path::new(path).exists() => Ok(T5Config::from_hf_json(path)?),
        other => Err(PeapodError::Config(format!(
            "unknown config `{other}` (t5-small, tiny, or a config.json path)"
        ))),
    }
}

/// MF on the training interactions (`iterations`, `seed`, the paper's other settings), cached
/// in the run directory; and the users' queries (row u−1 = user u).
pub fn mf_and_queries(
    data: &TrainingData,
    iterations: usize,
    seed: u64,
    run: &RunDir,
    device: &Device,
    on_progress: impl FnMut(Progress),
) -> Result<(MfModel, Tensor), PeapodError> {
    let config = mf_config(iterations, seed);
    let mf = train_or_load_mf(&data.dataset, &config, Some(&run.mf_cache()), on_progress)?;
    let queries = user_queries(&mf, &data.dataset, device)?;
    Ok((mf, queries))
}

/// The paper's MF settings with `iterations` and `seed`.
pub fn mf_config(iterations: usize, seed: u64) -> MfConfig {
    MfConfig {
        iterations,
        seed,
        ..MfConfig::default()
    }
}

/// Loads Hugging Face T5 weights (`dir/model.safetensors`) into `model`'s T5; the soft prompts
/// and query table, which a T5 checkpoint cannot hold, keep their initialisation.
pub fn load_pretrained_t5(model: &PeaPod, dir: &Path) -> Result<LoadReport, PeapodError> {
    let mut options = LoadOptions::hf_pretrained();
    options.allow_missing.extend(
        model
            .named_vars()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.contains("prompt") || n == "user_queries"),
    );
    Ok(load_weights(
        model.varmap(),
        dir.join("model.safetensors"),
        &options,
    )?)
}

impl Report {
    /// Writes the report as pretty JSON to `path`, and as Markdown ([`Report::markdown`])
    /// beside it (`path` with the extension `md`), creating the directory.
    pub fn write_json(&self, path: &Path) -> Result<(), PeapodError> {
        let json =
            serde_json::to_string_pretty(self).map_err(|e| PeapodError::Config(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| PeapodError::io(dir, e))?;
        }
        std::fs::write(path, json).map_err(|e| PeapodError::io(path, e))?;
        let md = path.with_extension("md");
        std::fs::write(&md, self.markdown()).map_err(|e| PeapodError::io(&md, e))
    }
}

/// Writes the training curves of `state` ([`crate::curves::training_curves_svg`]) to `path`.
pub fn write_training_curves(
    path: &Path,
    state: &crate::train::TrainState,
    title: &str,
) -> Result<(), PeapodError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| PeapodError::io(dir, e))?;
    }
    std::fs::write(path, crate::curves::training_curves_svg(state, title))
        .map_err(|e| PeapodError::io(path, e))
}

/// Everything a training run needs (what `train_<dataset>` takes from its flags).
#[derive(Debug, Clone)]
pub struct TrainRun {
    /// `data_root/<dataset>` is read, with `data_root/templates.json` and the tokenizer.
    pub dataset: String,
    pub data_root: PathBuf,
    /// Explanation file; the explanation task joins training when given.
    pub explanations: Option<PathBuf>,
    /// How items are numbered (the paper: sequential, P5's ids).
    pub indexing: ItemIndexing,
    pub variant: Variant,
    /// Train the user-query table end to end from its MF initialisation (the paper's future
    /// work; the paper freezes it). Part of the model configuration: a run directory keeps it.
    pub trainable_queries: bool,
    pub t5: T5Config,
    /// Directory with Hugging Face `model.safetensors` to start T5 from (else random).
    pub pretrained: Option<PathBuf>,
    pub train: TrainConfig,
    /// MF iterations for the user queries (paper: 100).
    pub mf_iterations: usize,
    pub run_dir: RunDir,
    /// Continue from the run directory's last checkpoint when it has one.
    pub resume: bool,
    /// Afterwards write the final weights (best when training finished, else last) here as
    /// f16 without optimizer state.
    pub export_f16: Option<PathBuf>,
    /// Afterwards evaluate on the test split, on a fixed sample of this many users (0: all).
    pub eval_users: Option<usize>,
    /// With the evaluation: constrained decoding and exact top-n scoring too.
    pub constrained: bool,
    /// The SASRec baseline of the evaluation (trained once, cached in the run directory);
    /// `None` leaves it out.
    pub sasrec: Option<SasRecTraining>,
    /// Progress bars on stderr.
    pub show: bool,
}

/// What a training run did.
pub struct TrainRunOutcome {
    pub outcome: TrainOutcome,
    /// How the T5 weights started (random, pretrained from a directory).
    pub provenance: String,
    /// Tensors loaded from the pretrained weights, when there were some.
    pub pretrained: Option<LoadReport>,
    pub parameters: usize,
    /// (source checkpoint, f16 file, bytes written) of the export.
    pub exported: Option<(PathBuf, PathBuf, u64)>,
    /// The evaluation report and where it was written.
    pub report: Option<(Report, PathBuf)>,
    /// The training curves (`curves.svg` in the run directory).
    pub curves: PathBuf,
}

/// A training run: MF queries (cached), model (pretrained T5 when given), training with
/// checkpoints in the run directory, then the optional export and evaluation.
pub fn train_run(
    run: &TrainRun,
    device: &Device,
    on_mf_progress: impl FnMut(Progress),
) -> Result<TrainRunOutcome, PeapodError> {
    // Every setting is checked before anything is read or written.
    run.train.validate()?;
    mf_config(run.mf_iterations, run.train.seed).validate()?;
    let data = TrainingData::load(&run.data_root, &run.dataset, run.explanations.as_deref())?
        .with_indexing(run.indexing)?;
    let mf_settings = mf_config(run.mf_iterations, run.train.seed);
    let config = ModelConfig {
        trainable_queries: run.trainable_queries,
        ..ModelConfig::new(run.variant, run.t5.clone(), mf_settings.dim, run.train.seed)
    };
    let manifest = RunManifest::describe(
        &run.dataset,
        &run.data_root,
        run.explanations.as_deref(),
        run.indexing,
        config.clone(),
        mf_settings,
    )?;
    run.run_dir.bind(&manifest)?;
    let (mf, queries) = mf_and_queries(
        &data,
        run.mf_iterations,
        run.train.seed,
        &run.run_dir,
        device,
        on_mf_progress,
    )?;
    let model = PeaPod::new(config, Some(&queries), device)?;
    let (pretrained, provenance) = match &run.pretrained {
        Some(dir) => (
            Some(load_pretrained_t5(&model, dir)?),
            format!("initialised from {}", dir.display()),
        ),
        None => (None, "random initialisation".to_string()),
    };
    let parameters = model.num_parameters();
    let outcome = train(
        &model,
        &data,
        &run.train,
        run.run_dir.path(),
        run.resume,
        run.show,
    )?;
    let curves = run.run_dir.curves();
    let title = format!(
        "{} · {} · d_model {} · {} indexing",
        run.dataset,
        run.variant,
        run.t5.d_model,
        run.indexing.describe()
    );
    write_training_curves(&curves, &outcome.state, &title)?;
    let exported = match &run.export_f16 {
        Some(path) => {
            let from = match &outcome.best_checkpoint {
                Some(best) if outcome.state.finished => best.clone(),
                _ => outcome.last_checkpoint.clone(),
            };
            let bytes = export_weights(&from, path, DType::F16)?;
            Some((from, path.clone(), bytes))
        }
        None => None,
    };
    let report = match run.eval_users {
        Some(n) => {
            let path = outcome
                .best_checkpoint
                .clone()
                .unwrap_or(outcome.last_checkpoint.clone());
            let (model, header) = load_model(&path, Some(&queries), device)?;
            let request = EvalRequest {
                split: Split::Test,
                users: Some(fixed_user_sample(&data.dataset, n)),
                tasks: vec![Task::Sequential, Task::TopN, Task::Explanation],
                decoding: EvalConfig {
                    constrained: run.constrained,
                    exact_topn: run.constrained,
                    ..EvalConfig::default()
                },
            };
            let sasrec =
                sasrec_for_run(&data, run.sasrec.as_ref(), &run.run_dir, device, run.show)?;
            let trained = TrainedBaselines {
                mf: Some(&mf),
                sasrec: sasrec.as_ref().map(|s| &s.model),
            };
            let mut report = evaluate(&model, &data, trained, &request, &provenance, run.show)?;
            report.checkpoint_step = Some(header.optimizer_step);
            let path = run.run_dir.report(None);
            report.write_json(&path)?;
            Some((report, path))
        }
        None => None,
    };
    Ok(TrainRunOutcome {
        outcome,
        provenance,
        pretrained,
        parameters,
        exported,
        report,
        curves,
    })
}

/// Everything an evaluation of a trained run needs (what `evaluate` takes from its flags).
#[derive(Debug, Clone)]
pub struct EvalRun {
    /// A run directory (its best checkpoint, else its last) or a checkpoint file.
    pub checkpoint: PathBuf,
    pub data_root: PathBuf,
    pub explanations: Option<PathBuf>,
    /// The kind of item numbering to evaluate under (`sequential`, `random`): `None` takes the
    /// checkpoint's (a random permutation's seed always comes from the checkpoint); another
    /// kind than the checkpoint's is refused.
    pub indexing: Option<String>,
    pub split: Split,
    pub tasks: Vec<Task>,
    /// A fixed sample of this many users (0: all).
    pub users: usize,
    pub decoding: EvalConfig,
    /// Users the run's MF model was not trained with: folded in, or refused.
    pub cold_start: ColdStart,
    /// Where the report goes (default: `report-<split>.json` in the run directory).
    pub report: Option<PathBuf>,
    /// The SASRec baseline (trained once, cached in the run directory); `None` leaves it out.
    pub sasrec: Option<SasRecTraining>,
    pub show: bool,
}

/// The run directory's SASRec baseline for `data`: read from its cache when trained on the
/// same data, indexing and settings, else trained now (a progress bar when `show`) and cached.
pub fn sasrec_for_run(
    data: &TrainingData,
    training: Option<&SasRecTraining>,
    run: &RunDir,
    device: &Device,
    show: bool,
) -> Result<Option<SasRecBaseline>, PeapodError> {
    let Some(training) = training else {
        return Ok(None);
    };
    let baseline = train_or_load_sasrec_shown(
        data,
        training,
        Some(&run.sasrec_cache()),
        device,
        show,
        |_| {},
    )?;
    Ok(Some(baseline))
}

/// Evaluates a trained run on the dataset its checkpoint names, with its cached MF model (and
/// the MF baseline) when the run directory has one. Returns the report and where it was
/// written.
pub fn evaluation_run(run: &EvalRun, device: &Device) -> Result<(Report, PathBuf), PeapodError> {
    run.decoding.validate()?;
    if run.split == Split::Train {
        return Err(PeapodError::Config(
            "evaluation reads the validation or test split, not train".into(),
        ));
    }
    let (dir, path) = RunDir::locate(&run.checkpoint)?;
    let header: CheckpointHeader = read_checkpoint_header(&path)?;
    if let Some(asked) = run.indexing.as_deref() {
        ItemIndexing::parse(asked, 0)?;
        if asked != header.indexing.kind() {
            return Err(PeapodError::Config(format!(
                "{} was trained with {} item indexing; it cannot be evaluated under {asked}",
                path.display(),
                header.indexing.describe(),
            )));
        }
    }
    // The data must be what the run was trained on.
    // (The explanation file may differ: evaluation can score explanations the run did not
    // train on.)
    if let Some(manifest) = dir.manifest()? {
        let mut trained_on = manifest.data;
        trained_on.retain(|name, _| !name.starts_with("explanations/"));
        let now = data_fingerprint(&manifest.dataset, &run.data_root, None)?;
        let changed = changed_files(&trained_on, &now);
        if !changed.is_empty() {
            return Err(PeapodError::Config(format!(
                "{} was trained on other data: data files changed since: {}",
                dir.path().display(),
                changed.join(", ")
            )));
        }
    }
    let data = TrainingData::load(&run.data_root, &header.dataset, run.explanations.as_deref())?
        .with_indexing(header.indexing)?;
    let (mf, folded) = match dir.mf_cache() {
        p if p.exists() => {
            let (mf, folded) = cover_users(MfModel::load(&p)?, &data.dataset, run.cold_start)?;
            (Some(mf), folded.len())
        }
        _ => (None, 0),
    };
    let queries = match &mf {
        Some(mf) => Some(user_queries(mf, &data.dataset, device)?),
        None => None,
    };
    let (model, _) = load_model(&path, queries.as_ref(), device)?;
    let request = EvalRequest {
        split: run.split,
        users: (run.users > 0).then(|| fixed_user_sample(&data.dataset, run.users)),
        tasks: run.tasks.clone(),
        decoding: run.decoding.clone(),
    };
    let provenance = format!("checkpoint {}", path.display());
    let sasrec = sasrec_for_run(&data, run.sasrec.as_ref(), &dir, device, run.show)?;
    let trained = TrainedBaselines {
        mf: mf.as_ref(),
        sasrec: sasrec.as_ref().map(|s| &s.model),
    };
    let mut report = evaluate(&model, &data, trained, &request, &provenance, run.show)?;
    report.cold_start_users = folded;
    report.checkpoint_step = Some(header.optimizer_step);
    let out = run
        .report
        .clone()
        .unwrap_or_else(|| dir.report(Some(run.split)));
    report.write_json(&out)?;
    Ok((report, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_directory_evaluates_best_then_last_and_refuses_neither() -> Result<(), PeapodError> {
        let tmp = std::env::temp_dir().join(format!("peapod-rundir-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(|e| PeapodError::io(&tmp, e))?;
        let run = RunDir::new(&tmp);
        let err = run.checkpoint_to_evaluate().unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
        std::fs::write(run.last_checkpoint(), b"x").map_err(|e| PeapodError::io(&tmp, e))?;
        assert_eq!(run.checkpoint_to_evaluate()?, run.last_checkpoint());
        std::fs::write(run.best_checkpoint(), b"x").map_err(|e| PeapodError::io(&tmp, e))?;
        assert_eq!(run.checkpoint_to_evaluate()?, run.best_checkpoint());
        // A directory or a file locate the same run; a missing path is an error.
        assert_eq!(RunDir::locate(&tmp)?, (run.clone(), run.best_checkpoint()));
        assert_eq!(
            RunDir::locate(&run.last_checkpoint())?,
            (run.clone(), run.last_checkpoint())
        );
        assert!(RunDir::locate(&tmp.join("missing")).is_err());
        assert_eq!(
            run.report(Some(Split::Validation)),
            tmp.join("report-validation.json")
        );
        std::fs::remove_dir_all(&tmp).map_err(|e| PeapodError::io(&tmp, e))?;
        Ok(())
    }

    #[test]
    fn t5_configs_by_name_and_unknown_names() {
        assert_eq!(t5_config("tiny").ok(), Some(T5Config::tiny()));
        assert_eq!(t5_config("t5-small").ok(), Some(T5Config::t5_small()));
        let err = t5_config("t5-huge").unwrap_err().to_string();
        assert!(err.contains("unknown config `t5-huge`"), "{err}");
    }
}
