use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use peapod_kernels::ops::{adamw_step_in_place, is_cpu_f32, linear, nll_rows, AdamWStep};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::config::{Loss, SasRecConfig, TrainConfig};
use crate::error::{Result, SasRecError};
use crate::model::{rank_of, Dropout, SasRec, SequenceBatch};

/// The random streams of one training run, each drawn from the seed on its own so that, for
/// instance, the negatives of the binary loss do not shift the dropout masks.
const STREAM_WEIGHTS: u64 = 1;
const STREAM_ITEMS: u64 = 2;
const STREAM_ORDER: u64 = 3;
const STREAM_DROPOUT: u64 = 4;
const STREAM_NEGATIVES: u64 = 5;

fn stream(seed: u64, which: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(which);
    rng
}

/// What a model is trained on.
#[derive(Debug, Clone, Copy)]
pub struct TrainingSet<'a> {
    /// Each user's training items, oldest first, ids in `1..=num_items`. Every position but
    /// the first predicts the item after it; a sequence of fewer than two items teaches
    /// nothing and is skipped.
    pub sequences: &'a [Vec<u32>],
    /// Each user's validation item (the one after its training sequence), for early stopping;
    /// empty when there is none.
    pub validation_targets: &'a [u32],
    /// The order in which items take their random draws (initial embedding, the binary
    /// loss's negatives): `draw_order[k]` takes the k-th; a permutation of `1..=num_items`,
    /// `None` for id order. A caller that renamed the items (another item indexing) passes the
    /// new ids of the original items 1, 2, …, so that training under any renaming is the same
    /// run, up to floating-point summation order.
    pub draw_order: Option<&'a [u32]>,
}

/// One epoch of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// The training loss per target, over the epoch.
    pub mean_loss: f64,
    /// Validation HR@10 and nDCG@10 over all items, when validation targets were given.
    pub validation_hr10: Option<f64>,
    pub validation_ndcg10: Option<f64>,
    /// Seconds since training started, at the end of this epoch.
    pub seconds: f64,
}

/// What happened in a training run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainingLog {
    pub epochs: Vec<EpochLog>,
    /// The epoch whose weights were kept (1-based).
    pub kept_epoch: usize,
    pub seconds: f64,
}

/// Progress reported during training.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Step {
        epoch: usize,
        step: usize,
        steps_per_epoch: usize,
        loss: f32,
    },
    Epoch(EpochLog),
}

/// A trained model and how it was trained.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub model: SasRec,
    pub log: TrainingLog,
}

/// Trains SASRec on `data` (see [`TrainingSet`]); the same configuration, data and seed give
/// the same model.
pub fn fit(
    config: &SasRecConfig,
    train: &TrainConfig,
    data: &TrainingSet<'_>,
    device: &Device,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Fitted> {
    config.validate()?;
    train.validate()?;
    let n = config.num_items;
    check_items(data, n)?;
    let varmap = initial_weights(config, train.seed, data.draw_order, device)?;
    let model = SasRec::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| SasRecError::InvalidInput("weights lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut adam = Adam::new(&vars, train)?;

    let users: Vec<usize> = (0..data.sequences.len())
        .filter(|&u| data.sequences[u].len() >= 2)
        .collect();
    if users.is_empty() {
        return Err(SasRecError::InvalidInput(
            "no training sequence has two items or more".into(),
        ));
    }
    let steps_per_epoch = users.len().div_ceil(train.batch_size);
    // Batches group users of similar length (`epoch_batches`), so their target counts differ
    // by tens of times. Dividing each batch's summed loss by the same number, the targets of
    // an average batch, gives every target the same weight whatever batch it falls in; a
    // per-batch mean would weigh the targets of short sequences many times more (measured on
    // beauty: validation HR@10 0.063 instead of 0.072 after 8 epochs).
    let targets_per_batch = users
        .iter()
        .map(|&u| (data.sequences[u].len() - 1).min(config.max_len))
        .sum::<usize>() as f64
        / users.len() as f64
        * train.batch_size as f64;
    let mut order_rng = stream(train.seed, STREAM_ORDER);
    let mut drop = Dropout::new(config.dropout, stream(train.seed, STREAM_DROPOUT));
    let mut negatives = stream(train.seed, STREAM_NEGATIVES);
    let draw: Vec<u32> = match data.draw_order {
        Some(order) => order.to_vec(),
        None => (1..=n as u32).collect(),
    };
    let validation = !data.validation_targets.is_empty();
    let start = Instant::now();
    let mut log = TrainingLog::default();
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    for epoch in 1..=train.epochs {
        let order = epoch_batches(
            &users,
            data.sequences,
            config.max_len,
            train.batch_size,
            &mut order_rng,
        );
        let (mut total, mut counted) = (0.0, 0usize);
        for (step, chunk) in order.iter().enumerate() {
            let batch = TrainBatch::new(data.sequences, chunk, config.max_len);
            let states = model.states(&batch.inputs, Some(&mut drop))?;
            let d = config.hidden;
            let rows = states.reshape((batch.inputs.rows * batch.inputs.len, d))?;
            let slots = Tensor::from_slice(&batch.slots, batch.slots.len(), device)?;
            let h = rows.index_select(&slots, 0)?;
            let loss = match train.loss {
                Loss::CrossEntropy => {
                    let targets: Vec<u32> = batch.targets.iter().map(|&t| t - 1).collect();
                    let targets = Tensor::from_vec(targets, batch.targets.len(), device)?;
                    let logits = linear(&h, &model.item_table()?)?;
                    (nll_rows(&logits, &targets)?.sum_all()? / targets_per_batch)?
                }
                Loss::BinaryCrossEntropy => {
                    let negs = batch.negatives(data.sequences, &draw, &mut negatives);
                    let score = |items: &[u32]| -> Result<Tensor> {
                        let ids = Tensor::from_slice(items, items.len(), device)?;
                        let e = model.item_embeddings().index_select(&ids, 0)?;
                        Ok((&h * e)?.sum(1)?)
                    };
                    let pos = score(&batch.targets)?;
                    let neg = score(&negs)?;
                    ((softplus(&pos.neg()?)? + softplus(&neg)?)?.sum_all()? / targets_per_batch)?
                }
            };
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(SasRecError::InvalidInput(format!(
                    "the loss diverged ({value}) at epoch {epoch}, step {}: lower the learning rate",
                    step + 1
                )));
            }
            total += f64::from(value) * targets_per_batch;
            counted += batch.targets.len();
            let grads = loss.backward()?;
            adam.step(&vars, &grads)?;
            on_progress(&Progress::Step {
                epoch,
                step: step + 1,
                steps_per_epoch,
                loss: value,
            });
        }
        let (hr, ndcg) = if validation {
            let (hr, ndcg) = validation_metrics(&model, data)?;
            (Some(hr), Some(ndcg))
        } else {
            (None, None)
        };
        let entry = EpochLog {
            epoch,
            mean_loss: total / counted.max(1) as f64,
            validation_hr10: hr,
            validation_ndcg10: ndcg,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_progress(&Progress::Epoch(entry.clone()));
        log.epochs.push(entry);
        if let (Some(ndcg), Some(patience)) = (ndcg, train.patience) {
            let improved = best.as_ref().is_none_or(|(b, _, _)| ndcg > *b);
            if improved {
                let copy = vars
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                best = Some((ndcg, epoch, copy));
            } else if best.as_ref().is_some_and(|(_, e, _)| epoch - e >= patience) {
                break;
            }
        }
    }
    log.seconds = start.elapsed().as_secs_f64();
    let weights = match best {
        Some((_, epoch, weights)) => {
            log.kept_epoch = epoch;
            weights
        }
        None => {
            log.kept_epoch = log.epochs.len();
            vars.iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                .collect::<Result<HashMap<_, _>>>()?
        }
    };
    let model = SasRec::new(
        config,
        VarBuilder::from_tensors(weights, DType::F32, device),
    )?;
    Ok(Fitted { model, log })
}

/// How many batches' worth of shuffled users are sorted by length together.
const LENGTH_WINDOW: usize = 32;

/// One epoch's batches: every user once, in a random order, grouped into batches of similar
/// sequence length (sorted within windows of [`LENGTH_WINDOW`] batches, then the batches
/// shuffled) so that little of a batch is padding; attention never reads padding, so this
/// changes only which users share a batch.
fn epoch_batches(
    users: &[usize],
    sequences: &[Vec<u32>],
    max_len: usize,
    batch_size: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut order = users.to_vec();
    order.shuffle(rng);
    for window in order.chunks_mut(batch_size * LENGTH_WINDOW) {
        window.sort_by_key(|&u| sequences[u].len().min(max_len + 1));
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    batches.shuffle(rng);
    batches
}

fn check_items(data: &TrainingSet<'_>, n: usize) -> Result<()> {
    for (u, seq) in data.sequences.iter().enumerate() {
        if let Some(&bad) = seq.iter().find(|&&i| i == 0 || i as usize > n) {
            return Err(SasRecError::InvalidInput(format!(
                "sequence {u} holds item {bad}, outside 1..={n}"
            )));
        }
    }
    if !data.validation_targets.is_empty() {
        if data.validation_targets.len() != data.sequences.len() {
            return Err(SasRecError::InvalidInput(format!(
                "{} validation targets for {} sequences",
                data.validation_targets.len(),
                data.sequences.len()
            )));
        }
        if let Some(&bad) = data
            .validation_targets
            .iter()
            .find(|&&i| i == 0 || i as usize > n)
        {
            return Err(SasRecError::InvalidInput(format!(
                "validation target {bad} is outside 1..={n}"
            )));
        }
    }
    if let Some(order) = data.draw_order {
        let mut seen = vec![false; n + 1];
        let ok = order.len() == n
            && order.iter().all(|&i| {
                let fresh = i >= 1 && (i as usize) <= n && !seen[i as usize];
                if fresh {
                    seen[i as usize] = true;
                }
                fresh
            });
        if !ok {
            return Err(SasRecError::InvalidInput(format!(
                "draw_order must be a permutation of 1..={n}"
            )));
        }
    }
    Ok(())
}

/// ln(1 + eˣ), stable for large |x|.
fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// HR@10 and nDCG@10 of each sequence's validation target over all items.
fn validation_metrics(model: &SasRec, data: &TrainingSet<'_>) -> Result<(f64, f64)> {
    let (mut hr, mut ndcg, mut count) = (0.0, 0.0, 0usize);
    let pairs: Vec<(&[u32], u32)> = data
        .sequences
        .iter()
        .zip(data.validation_targets)
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, &t)| (s.as_slice(), t))
        .collect();
    for chunk in pairs.chunks(512) {
        let histories: Vec<&[u32]> = chunk.iter().map(|p| p.0).collect();
        let scores = model.item_scores(&histories)?.to_vec2::<f32>()?;
        for (row, &(_, target)) in scores.iter().zip(chunk) {
            let rank = rank_of(row, target);
            if rank < 10 {
                hr += 1.0;
                ndcg += 1.0 / (rank as f64 + 2.0).log2();
            }
            count += 1;
        }
    }
    let n = count.max(1) as f64;
    Ok((hr / n, ndcg / n))
}

/// Xavier-normal weights (as the reference code initialises every matrix), unit layer norms,
/// zero attention biases, PyTorch's default uniform convolution biases. Item `i`'s embedding is
/// the row drawn at its place in `draw_order`.
fn initial_weights(
    config: &SasRecConfig,
    seed: u64,
    draw_order: Option<&[u32]>,
    device: &Device,
) -> Result<VarMap> {
    let (n, d, l) = (config.num_items, config.hidden, config.max_len);
    let mut rng = stream(seed, STREAM_WEIGHTS);
    let xavier = |rng: &mut ChaCha8Rng, rows: usize, cols: usize| -> Result<Vec<f32>> {
        let std = (2.0 / (rows + cols) as f64).sqrt();
        let normal = Normal::new(0.0, std)
            .map_err(|e| SasRecError::Config(format!("initialisation: {e}")))?;
        Ok((0..rows * cols)
            .map(|_| normal.sample(rng) as f32)
            .collect())
    };
    let mut item_rng = stream(seed, STREAM_ITEMS);
    let drawn = xavier(&mut item_rng, n + 1, d)?;
    let mut items = vec![0f32; (n + 1) * d];
    for k in 0..n {
        let item = draw_order.map_or(k + 1, |o| o[k] as usize);
        items[item * d..(item + 1) * d].copy_from_slice(&drawn[k * d..(k + 1) * d]);
    }
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "item_emb.weight".into(),
            Tensor::from_vec(items, (n + 1, d), device)?,
        ),
        (
            "pos_emb.weight".into(),
            Tensor::from_vec(xavier(&mut rng, l, d)?, (l, d), device)?,
        ),
    ];
    let ones = Tensor::ones(d, DType::F32, device)?;
    let zeros = |len: usize| Tensor::zeros(len, DType::F32, device);
    let bound = 1.0 / (d as f64).sqrt();
    for i in 0..config.blocks {
        let a = format!("attention_layers.{i}");
        let f = format!("forward_layers.{i}");
        for norm in ["attention_layernorms", "forward_layernorms"] {
            tensors.push((format!("{norm}.{i}.weight"), ones.clone()));
            tensors.push((format!("{norm}.{i}.bias"), zeros(d)?));
        }
        tensors.push((
            format!("{a}.in_proj_weight"),
            Tensor::from_vec(xavier(&mut rng, 3 * d, d)?, (3 * d, d), device)?,
        ));
        tensors.push((format!("{a}.in_proj_bias"), zeros(3 * d)?));
        tensors.push((
            format!("{a}.out_proj.weight"),
            Tensor::from_vec(xavier(&mut rng, d, d)?, (d, d), device)?,
        ));
        tensors.push((format!("{a}.out_proj.bias"), zeros(d)?));
        for conv in ["conv1", "conv2"] {
            tensors.push((
                format!("{f}.{conv}.weight"),
                Tensor::from_vec(xavier(&mut rng, d, d)?, (d, d, 1), device)?,
            ));
            let bias: Vec<f32> = (0..d)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            tensors.push((
                format!("{f}.{conv}.bias"),
                Tensor::from_vec(bias, d, device)?,
            ));
        }
    }
    tensors.push(("last_layernorm.weight".into(), ones));
    tensors.push(("last_layernorm.bias".into(), zeros(d)?));
    let varmap = VarMap::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| SasRecError::InvalidInput("weights lock poisoned".into()))?;
        for (name, t) in tensors {
            // Each weight its own storage: the optimiser updates them in place.
            data.insert(name, Var::from_tensor(&t.copy()?)?);
        }
    }
    Ok(varmap)
}

/// One training batch: the users' sequences but their last item as inputs, and at every real
/// slot the item that follows it as target.
struct TrainBatch {
    inputs: SequenceBatch,
    /// Flat indices (row · len + slot) of the slots that have a target.
    slots: Vec<u32>,
    targets: Vec<u32>,
    /// Which user each entry of `slots` belongs to.
    owners: Vec<usize>,
}

impl TrainBatch {
    fn new(sequences: &[Vec<u32>], users: &[usize], max_len: usize) -> Self {
        let inputs: Vec<&[u32]> = users
            .iter()
            .map(|&u| &sequences[u][..sequences[u].len() - 1])
            .collect();
        let inputs = SequenceBatch::right_aligned(&inputs, max_len);
        let t = inputs.len;
        let (mut slots, mut targets, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        for (r, &u) in users.iter().enumerate() {
            let next = &sequences[u][1..];
            let window = &next[next.len().saturating_sub(max_len)..];
            let first = t - window.len();
            for (j, &item) in window.iter().enumerate() {
                slots.push((r * t + first + j) as u32);
                targets.push(item);
                owners.push(u);
            }
        }
        Self {
            inputs,
            slots,
            targets,
            owners,
        }
    }

    /// One negative per target: an item drawn uniformly (through `draw`) among those its user
    /// never interacted with in training.
    fn negatives(&self, sequences: &[Vec<u32>], draw: &[u32], rng: &mut ChaCha8Rng) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.owners.len());
        let mut seen: Vec<u32> = Vec::new();
        let mut owner = usize::MAX;
        for &u in &self.owners {
            if u != owner {
                owner = u;
                seen = sequences[u].clone();
                seen.sort_unstable();
            }
            // A user who has every item gets any item (nothing else exists).
            let mut item = draw[rng.random_range(0..draw.len())];
            for _ in 0..1000 {
                if seen.binary_search(&item).is_err() {
                    break;
                }
                item = draw[rng.random_range(0..draw.len())];
            }
            out.push(item);
        }
        out
    }
}

/// Adam (the reference code's optimiser; no weight decay), one fused in-place update per
/// weight on the CPU, composed elsewhere. (`peapod::optim::AdamW` is the same update with
/// weight decay, clipping and checkpointable state; this crate cannot depend on it.)
struct Adam {
    lr: f64,
    betas: (f64, f64),
    t: u64,
    moments: Vec<Moments>,
}

enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

const ADAM_EPS: f64 = 1e-8;

impl Adam {
    fn new(vars: &[(String, Var)], cfg: &TrainConfig) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|(_, v)| {
                Ok(if is_cpu_f32(v.as_tensor()) {
                    let n = v.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    let z = v.as_tensor().zeros_like()?;
                    Moments::Device { m: z.clone(), v: z }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            lr: cfg.learning_rate,
            betas: cfg.betas,
            t: 0,
            moments,
        })
    }

    fn step(
        &mut self,
        vars: &[(String, Var)],
        grads: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        self.t += 1;
        let step = AdamWStep::new(self.lr, self.betas, ADAM_EPS, 0.0, self.t, 1.0);
        for ((_, var), moments) in vars.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            match moments {
                Moments::Host { m, v } => adamw_step_in_place(var.as_tensor(), g, m, v, &step)?,
                Moments::Device { m, v } => {
                    let (b1, b2) = self.betas;
                    *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
                    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                    let denom = ((v.sqrt()? / f64::from(step.bias2_sqrt))? + ADAM_EPS)?;
                    let update = ((&*m / denom)? * f64::from(step.step_size))?;
                    var.set(&(var.as_tensor() - update)?)?;
                }
            }
        }
        Ok(())
    }
}
