//! Training (SPEC §6): task-alternated batches, AdamW, validation loss per epoch, the best
//! checkpoint kept, early stopping, and checkpoints a run resumes from exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use indicatif::ProgressBar;
use peapod_datasets::{
    evaluation_examples, Batch, Dataset, Example, Explanations, ItemIndexing, RecTokenizer, Split,
    Task, TaskAlternatingBatcher, Templates,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_checkpoint, save_checkpoint};
use crate::model::{BatchTensors, ModelConfig, PeaPod};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::LrSchedule;
use crate::{even_slices, PeapodError};

/// File names inside a run directory.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
pub const BEST_CHECKPOINT: &str = "best.safetensors";

/// Checkpoint format version, bumped on incompatible changes.
const FORMAT: u32 = 1;

/// Training settings. Defaults are the paper's (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: AdamWConfig,
    /// Stop after this many epochs without a better mean validation loss.
    pub patience: usize,
    pub seed: u64,
    /// Train on the first N users only (a quick subset).
    pub max_users: Option<usize>,
    /// Validation loss on the first N users only (the full set is the protocol).
    pub valid_users: Option<usize>,
    /// Stop after this many optimizer steps in total (a budget), checkpointing first.
    pub max_steps: Option<u64>,
    /// Stop after this much training time in this process, checkpointing first.
    pub max_seconds: Option<f64>,
    /// Write `last.safetensors` every N steps as well as at each epoch end.
    pub checkpoint_every: u64,
    /// Batch size for validation-loss passes.
    pub eval_batch_size: usize,
    /// On the CPU, each batch is backpropagated as this many slices of rows run concurrently
    /// ([`peapod_t5_rec::T5ForRec::backward_in_parts`]: the cores no longer wait on each
    /// other's single-threaded stretches; 1 = one pass; ignored on other devices). Dropout
    /// masks depend on it, so it is part of what reproduces a run; it is fixed rather than
    /// the core count so that machines with different core counts train alike.
    #[serde(default = "default_batch_slices")]
    pub batch_slices: usize,
    /// The learning rate over the run, a factor of `optimizer.lr` (the paper: constant).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

fn default_batch_slices() -> usize {
    2
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            optimizer: AdamWConfig::default(),
            patience: 5,
            seed: 2022,
            max_users: None,
            valid_users: None,
            max_steps: None,
            max_seconds: None,
            checkpoint_every: 500,
            eval_batch_size: 64,
            batch_slices: default_batch_slices(),
            lr_schedule: LrSchedule::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every setting's domain, naming the first that is out of it: a run is refused
    /// before it starts rather than trained with a meaningless setting.
    pub fn validate(&self) -> Result<(), PeapodError> {
        let o = &self.optimizer;
        let checks = [
            (
                self.epochs > 0,
                format!("epochs must be at least 1, not {}", self.epochs),
            ),
            (
                self.batch_size > 0,
                "batch_size must be at least 1, not 0".to_string(),
            ),
            (
                self.eval_batch_size > 0,
                "eval_batch_size must be at least 1, not 0".to_string(),
            ),
            (
                self.checkpoint_every > 0,
                "checkpoint_every must be at least 1, not 0".to_string(),
            ),
            (
                self.batch_slices > 0,
                "batch_slices must be at least 1, not 0".to_string(),
            ),
            (
                o.lr.is_finite() && o.lr > 0.0,
                format!(
                    "the learning rate must be finite and positive, not {}",
                    o.lr
                ),
            ),
            (
                (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2),
                format!(
                    "beta1 and beta2 must lie in [0, 1), not {} and {}",
                    o.beta1, o.beta2
                ),
            ),
            (
                o.eps.is_finite() && o.eps > 0.0,
                format!("eps must be finite and positive, not {}", o.eps),
            ),
            (
                o.weight_decay.is_finite() && o.weight_decay >= 0.0,
                format!(
                    "weight_decay must be finite and non-negative, not {}",
                    o.weight_decay
                ),
            ),
            (
                o.max_grad_norm.is_none_or(|m| m.is_finite() && m > 0.0),
                format!(
                    "max_grad_norm must be finite and positive, not {:?}",
                    o.max_grad_norm
                ),
            ),
            (
                self.max_seconds.is_none_or(|s| s.is_finite() && s >= 0.0),
                format!(
                    "max_seconds must be finite and non-negative, not {:?}",
                    self.max_seconds
                ),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(PeapodError::Config(format!("training settings: {what}"))),
            None => self.lr_schedule.validate(),
        }
    }
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// The optimizer step at the epoch's end (0 in checkpoints from before it was recorded).
    #[serde(default)]
    pub step: u64,
    pub train_loss: f64,
    /// Mean validation loss per task name, and their mean.
    pub valid_loss: HashMap<String, f64>,
    pub mean_valid_loss: f64,
    pub seconds: f64,
}

/// Where a run stands; stored in every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub step_in_epoch: u64,
    /// Batches trained in total.
    pub global_step: u64,
    /// Sum of the training losses of this epoch so far (for the epoch mean).
    pub epoch_loss_sum: f64,
    pub best_valid_loss: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    pub history: Vec<EpochRecord>,
    /// True once training ended by epochs or early stopping (not by a budget).
    pub finished: bool,
    /// The training loss against steps: the mean of every [`LOSS_CURVE_EVERY`] steps.
    #[serde(default)]
    pub loss_curve: Vec<(u64, f64)>,
    /// Losses of the steps since the curve's last point (their sum and count), so that a
    /// resumed run draws the curve the uninterrupted one would.
    #[serde(default)]
    pub loss_curve_pending: (f64, u64),
    /// The steps the learning-rate schedule spans, fixed when the run started.
    #[serde(default)]
    pub schedule_steps: Option<u64>,
}

/// Steps averaged into one point of [`TrainState::loss_curve`].
pub const LOSS_CURVE_EVERY: u64 = 10;

impl TrainState {
    fn record_loss(&mut self, loss: f64) {
        let (sum, count) = &mut self.loss_curve_pending;
        *sum += loss;
        *count += 1;
        if *count == LOSS_CURVE_EVERY {
            self.loss_curve
                .push((self.global_step, *sum / LOSS_CURVE_EVERY as f64));
            self.loss_curve_pending = (0.0, 0);
        }
    }
}

/// The JSON header of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointHeader {
    pub format: u32,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub state: TrainState,
    pub optimizer_step: u64,
    /// Dataset directory name the run trained on.
    pub dataset: String,
    /// How the run numbered items (checkpoints from before the choice existed: sequential).
    #[serde(default)]
    pub indexing: ItemIndexing,
}

/// What a training call ended with.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub last_checkpoint: PathBuf,
    pub best_checkpoint: Option<PathBuf>,
    /// Why it stopped: "epochs", "early-stopping", "max-steps" or "max-seconds".
    pub stopped_by: &'static str,
}

/// The data a run reads: the dataset, its templates, the tokenizer, optional explanations, and
/// how its items are numbered.
pub struct TrainingData {
    pub dataset: Dataset,
    pub templates: Templates,
    pub tokenizer: RecTokenizer,
    pub explanations: Option<Explanations>,
    pub indexing: ItemIndexing,
}

impl TrainingData {
    /// Loads `data_root/<dataset>`, `data_root/templates.json` and
    /// `data_root/tokenizer/t5-tokenizer.json`, plus an explanation file when given.
    pub fn load(
        data_root: &Path,
        dataset: &str,
        explanations: Option<&Path>,
    ) -> Result<Self, PeapodError> {
        let dataset = Dataset::load(data_root.join(dataset))?;
        let templates = Templates::load(data_root.join("templates.json"))?;
        let tokenizer = RecTokenizer::from_file(data_root.join("tokenizer/t5-tokenizer.json"))?;
        let explanations = explanations
            .map(|p| Explanations::load(p, &dataset))
            .transpose()?;
        Ok(Self {
            dataset,
            templates,
            tokenizer,
            explanations,
            indexing: ItemIndexing::Sequential,
        })
    }

    /// This data with its items numbered by `indexing` (from P5's sequential ids): the
    /// dataset, its test negatives and the explanations, so that every user's items,
    /// candidates and explanations stay the same items.
    pub fn with_indexing(self, indexing: ItemIndexing) -> Result<Self, PeapodError> {
        if self.indexing != ItemIndexing::Sequential {
            return Err(PeapodError::Config(format!(
                "the data is already numbered by {}",
                self.indexing.describe()
            )));
        }
        let Some(permutation) = indexing.permutation(self.dataset.num_items()) else {
            return Ok(self);
        };
        Ok(Self {
            dataset: self.dataset.reindexed(&permutation)?,
            explanations: self.explanations.map(|e| e.reindexed(&permutation)),
            indexing,
            ..self
        })
    }

    /// The first `n` users as a dataset of their own (same ids, same items).
    fn subset(&self, n: usize) -> Result<Dataset, PeapodError> {
        let sequences = self
            .dataset
            .users()
            .take(n)
            .map(|u| self.dataset.sequence(u).to_vec())
            .collect();
        Ok(Dataset::from_sequences(
            self.dataset.name(),
            sequences,
            self.dataset.num_items(),
        )?)
    }
}

/// Validation examples per task (deterministic), limited to the first `users` users.
fn validation_sets(
    data: &TrainingData,
    cfg: &TrainConfig,
    tasks: &[Task],
) -> Result<Vec<(Task, Vec<Example>)>, PeapodError> {
    let limit = cfg.valid_users.or(cfg.max_users);
    let mut sets = Vec::new();
    for &task in tasks {
        let mut examples = evaluation_examples(
            task,
            Split::Validation,
            &data.dataset,
            &data.templates,
            data.explanations.as_ref(),
            cfg.seed,
        )?;
        if let Some(n) = limit {
            examples.retain(|e| (e.user as usize) <= n);
        }
        if !examples.is_empty() {
            sets.push((task, examples));
        }
    }
    Ok(sets)
}

/// Mean token NLL of `examples` (eval mode), in batches.
pub fn mean_loss(
    model: &PeaPod,
    tokenizer: &RecTokenizer,
    examples: &[Example],
    batch_size: usize,
) -> Result<f64, PeapodError> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let batch = Batch::from_examples(tokenizer, chunk)?;
        let tensors = BatchTensors::from_batch(&batch, model.device())?;
        let loss = model.loss(&tensors, false)?.to_scalar::<f32>()? as f64;
        sum += loss * chunk.len() as f64;
        count += chunk.len();
    }
    Ok(if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    })
}

/// A diverged step stops the run with where it happened.
fn ensure_finite(
    what: &'static str,
    value: f64,
    state: &TrainState,
    task: Task,
) -> Result<(), PeapodError> {
    if value.is_finite() {
        return Ok(());
    }
    Err(PeapodError::NonFinite {
        what,
        value,
        epoch: state.epoch,
        step: state.global_step,
        task: task.name(),
    })
}

/// Mean validation loss per task name.
fn validation_losses(
    model: &PeaPod,
    tokenizer: &RecTokenizer,
    valid: &[(Task, Vec<Example>)],
    batch_size: usize,
) -> Result<HashMap<String, f64>, PeapodError> {
    valid
        .iter()
        .map(|(task, examples)| {
            let loss = mean_loss(model, tokenizer, examples, batch_size)?;
            Ok((task.name().to_string(), loss))
        })
        .collect()
}

fn dropout_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

fn checkpoint_tensors(
    model: &PeaPod,
    optimizer: Option<&AdamW>,
) -> Result<HashMap<String, Tensor>, PeapodError> {
    let mut tensors = model.weights();
    if let Some(opt) = optimizer {
        let (state, _) = opt.state()?;
        tensors.extend(state);
    }
    Ok(tensors)
}

/// Trains `model` on `data`, writing checkpoints to `out_dir`. With `resume`, continues from
/// `out_dir/last.safetensors` when it exists (the model configuration must match); the result
/// is then the same as an uninterrupted run with the same seed.
pub fn train(
    model: &PeaPod,
    data: &TrainingData,
    cfg: &TrainConfig,
    out_dir: &Path,
    resume: bool,
    show_progress: bool,
) -> Result<TrainOutcome, PeapodError> {
    cfg.validate()?;
    let last_path = out_dir.join(LAST_CHECKPOINT);
    let best_path = out_dir.join(BEST_CHECKPOINT);
    // A write killed half-way left its temporary file; the checkpoints themselves are whole.
    crate::checkpoint::remove_stale_temporaries(out_dir)?;
    let mut optimizer = AdamW::new(model.named_vars(), cfg.optimizer)?;
    let mut state = TrainState::default();
    if resume && last_path.exists() {
        state = resume_state(model, &mut optimizer, data, cfg, &last_path)?;
        if state.finished {
            return Ok(TrainOutcome {
                best_checkpoint: best_path.exists().then_some(best_path),
                last_checkpoint: last_path,
                state,
                stopped_by: "epochs",
            });
        }
    }

    let subset;
    let train_set = match cfg.max_users {
        Some(n) if n < data.dataset.num_users() => {
            subset = data.subset(n)?;
            &subset
        }
        _ => &data.dataset,
    };
    let mut batcher = TaskAlternatingBatcher::new(
        train_set,
        &data.templates,
        data.explanations.as_ref(),
        &data.tokenizer,
        cfg.batch_size,
        cfg.seed,
    )?;
    // The batch stream is a pure function of the seed: replaying the sampler (without
    // tokenising) puts a resumed run exactly where the interrupted one stopped.
    for _ in 0..state.global_step {
        batcher.next_examples();
    }
    let valid = validation_sets(data, cfg, batcher.tasks())?;
    let per_epoch = batcher.batches_per_epoch() as u64;
    let schedule_steps = *state.schedule_steps.get_or_insert_with(|| {
        cfg.lr_schedule
            .total_steps
            .or(cfg.max_steps)
            .unwrap_or(cfg.epochs as u64 * per_epoch)
    });
    LrSchedule {
        total_steps: Some(schedule_steps),
        ..cfg.lr_schedule
    }
    .validate()?;

    let header = |state: &TrainState, optimizer: &AdamW| CheckpointHeader {
        format: FORMAT,
        model: model.config().clone(),
        train: cfg.clone(),
        state: state.clone(),
        optimizer_step: optimizer.steps(),
        dataset: data.dataset.name().to_string(),
        indexing: data.indexing,
    };
    let started = Instant::now();
    let mut stopped_by = "epochs";
    'epochs: while state.epoch < cfg.epochs {
        // The bar shows the real budget: the epoch's steps, or fewer when a step budget ends
        // the run earlier; a time budget replaces the step-based estimate by the time left.
        let len = epoch_bar_len(per_epoch, &state, cfg.max_steps);
        let bar = progress_bar(show_progress, len, state.epoch, cfg.epochs, cfg.max_seconds);
        bar.set_position(state.step_in_epoch);
        let epoch_start = Instant::now();
        let mut samples = 0usize;
        while state.step_in_epoch < per_epoch {
            if let Some(max) = cfg.max_steps {
                if state.global_step >= max {
                    stopped_by = "max-steps";
                    break 'epochs;
                }
            }
            if let Some(max) = cfg.max_seconds {
                if started.elapsed().as_secs_f64() >= max {
                    stopped_by = "max-seconds";
                    break 'epochs;
                }
            }
            let task = batcher.next_task();
            let batch = batcher.next_batch()?;
            samples += batch.len();
            let tensors = BatchTensors::from_batch(&batch, model.device())?;
            model
                .t5()
                .set_dropout_seed(dropout_seed(cfg.seed, state.global_step))?;
            let (grads, value) = batch_gradients(model, &tensors, cfg.batch_slices)?;
            ensure_finite("the loss", value, &state, task)?;
            let lr = cfg.optimizer.lr * cfg.lr_schedule.factor(state.global_step, schedule_steps);
            optimizer.set_learning_rate(lr);
            let norm = optimizer.step(&grads)?;
            ensure_finite("the gradient norm", norm, &state, task)?;
            state.epoch_loss_sum += value;
            state.step_in_epoch += 1;
            state.global_step += 1;
            state.record_loss(value);
            let rate = samples as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            let budget = cfg.max_seconds.map_or(String::new(), |limit| {
                let left = (limit - started.elapsed().as_secs_f64()).max(0.0);
                format!(" · {:.1} of {:.1} min left", left / 60.0, limit / 60.0)
            });
            bar.set_message(format!(
                "{} loss {value:.3} · lr {lr:.2e} · {rate:.0} samples/s{budget}",
                task.name()
            ));
            bar.inc(1);
            if state.global_step % cfg.checkpoint_every == 0 {
                let tensors = checkpoint_tensors(model, Some(&optimizer))?;
                save_checkpoint(&last_path, &tensors, &header(&state, &optimizer), None)?;
            }
        }
        bar.finish_and_clear();

        let valid_loss = validation_losses(model, &data.tokenizer, &valid, cfg.eval_batch_size)?;
        let mean_valid_loss = if valid_loss.is_empty() {
            f64::NAN
        } else {
            valid_loss.values().sum::<f64>() / valid_loss.len() as f64
        };
        let record = EpochRecord {
            epoch: state.epoch,
            step: state.global_step,
            train_loss: state.epoch_loss_sum / per_epoch.max(1) as f64,
            valid_loss,
            mean_valid_loss,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        let improved = match state.best_valid_loss {
            None => mean_valid_loss.is_finite(),
            Some(best) => mean_valid_loss < best,
        };
        state.history.push(record);
        state.epoch += 1;
        state.step_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        if improved {
            state.best_valid_loss = Some(mean_valid_loss);
            state.best_epoch = Some(state.epoch - 1);
            state.epochs_without_improvement = 0;
            let tensors = checkpoint_tensors(model, None)?;
            save_checkpoint(&best_path, &tensors, &header(&state, &optimizer), None)?;
        } else {
            state.epochs_without_improvement += 1;
        }
        if state.epochs_without_improvement >= cfg.patience {
            stopped_by = "early-stopping";
            state.finished = true;
        } else if state.epoch >= cfg.epochs {
            state.finished = true;
        }
        let tensors = checkpoint_tensors(model, Some(&optimizer))?;
        save_checkpoint(&last_path, &tensors, &header(&state, &optimizer), None)?;
        if state.finished {
            break;
        }
    }
    if !state.finished {
        let tensors = checkpoint_tensors(model, Some(&optimizer))?;
        save_checkpoint(&last_path, &tensors, &header(&state, &optimizer), None)?;
    }
    Ok(TrainOutcome {
        best_checkpoint: best_path.exists().then_some(best_path),
        last_checkpoint: last_path,
        state,
        stopped_by,
    })
}

/// Writes the model weights of the checkpoint at `src` to `dst` without the optimizer state,
/// as `dtype` (f16 halves a shipped checkpoint): what evaluation and fine-tuning need, a
/// fraction of the size. The header is kept, so the file still says which run, step and
/// settings produced it. Returns the number of bytes written.
pub fn export_weights(src: &Path, dst: &Path, dtype: DType) -> Result<u64, PeapodError> {
    let (tensors, header): (HashMap<String, Tensor>, CheckpointHeader) =
        load_checkpoint(src, &candle_core::Device::Cpu)?;
    let weights: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| !name.starts_with("adamw."))
        .collect();
    save_checkpoint(dst, &weights, &header, Some(dtype))?;
    std::fs::metadata(dst)
        .map(|m| m.len())
        .map_err(|e| PeapodError::io(dst, e))
}

/// The state of the run checkpointed at `last_path`, with its weights and optimizer state
/// loaded into `model` and `optimizer`, after checking that it is this run.
fn resume_state(
    model: &PeaPod,
    optimizer: &mut AdamW,
    data: &TrainingData,
    cfg: &TrainConfig,
    last_path: &Path,
) -> Result<TrainState, PeapodError> {
    let (tensors, header): (_, CheckpointHeader) = load_checkpoint(last_path, model.device())?;
    check_compatible(last_path, &header, model.config(), cfg)?;
    let mismatch = if header.indexing != data.indexing {
        Some(format!(
            "it numbers items by {}; this run by {}",
            header.indexing.describe(),
            data.indexing.describe()
        ))
    } else if header.dataset != data.dataset.name() {
        Some(format!(
            "it is a {} run; this one trains on {}",
            header.dataset,
            data.dataset.name()
        ))
    } else {
        None
    };
    if let Some(what) = mismatch {
        return Err(PeapodError::checkpoint(
            last_path,
            format!("{what}: use another output directory"),
        ));
    }
    model.set_weights(&tensors)?;
    optimizer.load_state(&tensors, header.optimizer_step)?;
    Ok(header.state)
}

/// A resumed run must continue the same model; the budget fields may change between calls.
fn check_compatible(
    path: &Path,
    header: &CheckpointHeader,
    model: &ModelConfig,
    cfg: &TrainConfig,
) -> Result<(), PeapodError> {
    if header.format != FORMAT {
        return Err(PeapodError::checkpoint(
            path,
            format!("format {} (this build reads {FORMAT})", header.format),
        ));
    }
    let same_model = serde_json::to_value(&header.model).ok() == serde_json::to_value(model).ok();
    if !same_model {
        return Err(PeapodError::checkpoint(
            path,
            "it was written for a different model configuration or variant; \
             use another output directory or the same settings",
        ));
    }
    let budgetless = |c: &TrainConfig| TrainConfig {
        max_steps: None,
        max_seconds: None,
        epochs: 0,
        checkpoint_every: 1,
        ..c.clone()
    };
    if budgetless(&header.train) != budgetless(cfg) {
        return Err(PeapodError::checkpoint(
            path,
            "it was written with different training settings (seed, batch, optimizer, users); \
             resuming would not reproduce the run",
        ));
    }
    Ok(())
}

/// The training loss of `batch` and its gradients, on the CPU from `slices` concurrent slices
/// of rows, each loss weighted by its share of the batch's target tokens so that the slices add
/// up to the batch's token-level NLL.
fn batch_gradients(
    model: &PeaPod,
    batch: &BatchTensors,
    slices: usize,
) -> Result<(GradStore, f64), PeapodError> {
    let slices = if model.device().is_cpu() {
        even_slices(batch.users.len(), slices.clamp(1, batch.users.len().max(1)))
    } else {
        even_slices(batch.users.len(), 1)
    };
    let tokens: Vec<f64> = batch
        .target_mask
        .to_dtype(DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect();
    let total: f64 = tokens.iter().sum();
    model.t5().backward_in_parts(slices.len(), |s| {
        let rows = slices[s].clone();
        let share = tokens[rows.clone()].iter().sum::<f64>() / total;
        let loss = model.loss(&batch.rows(rows.start, rows.len())?, true)?;
        Ok((loss * share)?)
    })
}

/// Steps the epoch's bar counts to: the epoch's, or fewer when the step budget ends the run
/// inside this epoch.
fn epoch_bar_len(per_epoch: u64, state: &TrainState, max_steps: Option<u64>) -> u64 {
    let steps_left = max_steps.map_or(u64::MAX, |m| m.saturating_sub(state.global_step));
    per_epoch.min(state.step_in_epoch.saturating_add(steps_left))
}

fn progress_bar(
    show: bool,
    len: u64,
    epoch: usize,
    epochs: usize,
    time_budget: Option<f64>,
) -> ProgressBar {
    let template = match time_budget {
        Some(_) => "epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
        None => "epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {msg}",
    };
    let bar = crate::progress::bar(len, template, show);
    bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
    if let Some(seconds) = time_budget {
        bar.set_message(format!(
            "(stops after a time budget of {:.1} min)",
            seconds / 60.0
        ));
    }
    bar
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use peapod_t5_rec::T5Config;

    use super::{batch_gradients, epoch_bar_len, TrainState};
    use crate::model::{BatchTensors, ModelConfig, PeaPod, Variant};
    use crate::PeapodError;

    #[test]
    fn the_epoch_bar_counts_to_the_step_budget() {
        let at = |step_in_epoch: u64, global_step: u64| TrainState {
            step_in_epoch,
            global_step,
            ..TrainState::default()
        };
        // A one-minute fine-tuning of 30 steps in a 1,398-step epoch shows 30, not 1,398.
        assert_eq!(epoch_bar_len(1398, &at(0, 0), Some(30)), 30);
        // Resumed 10 steps into the epoch, 100 steps into the run, budget 120: 30.
        assert_eq!(epoch_bar_len(1398, &at(10, 100), Some(120)), 30);
        assert_eq!(epoch_bar_len(1398, &at(10, 100), None), 1398);
        assert_eq!(epoch_bar_len(50, &at(0, 0), Some(500)), 50);
        assert_eq!(epoch_bar_len(50, &at(5, 600), Some(500)), 5);
    }

    /// Slices of a batch, weighted by their target tokens, give the batch's loss and gradients
    /// (without dropout, the only thing slicing changes).
    #[test]
    fn sliced_batches_have_the_batch_loss_and_gradients() -> Result<(), PeapodError> {
        let dev = Device::Cpu;
        let mut t5 = T5Config::tiny();
        (t5.vocab_size, t5.d_model, t5.d_kv, t5.d_ff, t5.num_heads) = (64, 16, 4, 32, 4);
        (
            t5.num_layers,
            t5.num_decoder_layers,
            t5.num_whole_word_embeddings,
        ) = (1, 1, 8);
        t5.dropout_rate = 0.0;
        let queries = Tensor::randn(0f32, 1.0, (10, 6), &dev)?;
        let model = PeaPod::new(
            ModelConfig::new(Variant::Peapod, t5, 6, 3),
            Some(&queries),
            &dev,
        )?;
        let ids: Vec<u32> = (0..3 * 5).map(|i| 2 + (i * 7 % 50)).collect();
        // 3, 1 and 2 target tokens: slices carry unequal shares of the loss.
        let tmask = vec![1u32, 1, 1, 1, 0, 0, 1, 1, 0];
        let batch = BatchTensors {
            task_ids: vec![0, 1, 2],
            users: vec![1, 4, 9],
            input_ids: Tensor::from_vec(ids, (3, 5), &dev)?,
            attention_mask: Tensor::ones((3, 5), DType::U32, &dev)?,
            whole_word_ids: Tensor::zeros((3, 5), DType::U32, &dev)?,
            target_ids: Tensor::from_vec(vec![7u32, 8, 1, 9, 1, 0, 5, 1, 0], (3, 3), &dev)?,
            target_mask: Tensor::from_vec(tmask, (3, 3), &dev)?,
        };
        let (whole, loss) = batch_gradients(&model, &batch, 1)?;
        for slices in [2, 3] {
            let (split, split_loss) = batch_gradients(&model, &batch, slices)?;
            assert!(
                (loss - split_loss).abs() < 1e-5,
                "{slices}: {loss} vs {split_loss}"
            );
            for (name, var) in model.named_vars() {
                let (Some(w), Some(g)) = (whole.get(var.as_tensor()), split.get(var.as_tensor()))
                else {
                    assert!(whole.get(var.as_tensor()).is_none(), "{name}");
                    continue;
                };
                let norm = |t: &Tensor| -> Result<f32, PeapodError> {
                    Ok(t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?)
                };
                let (diff, size) = (norm(&(w - g)?)?, norm(w)?.max(1e-3));
                assert!(
                    diff <= 1e-4 * size,
                    "{slices} slices, {name}: {diff} of {size}"
                );
            }
        }
        Ok(())
    }
}
