//! The SASRec baseline of the reports: trained on a dataset's training split (every user's
//! items but the last two), early-stopped on the validation items, cached beside the run like
//! the MF model, and ranking the same examples as the generative model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use peapod_datasets::{history_before, Dataset, Example, ItemIndexing, Split};
use peapod_sasrec::{
    fit, EpochLog, Progress, SasRec, SasRecConfig, TrainConfig, TrainingLog, TrainingSet,
};

use crate::eval::RankedLists;
use crate::train::TrainingData;
use crate::PeapodError;

/// A trained SASRec and how it came to be.
#[derive(Debug, Clone)]
pub struct SasRecBaseline {
    pub model: SasRec,
    pub training: TrainConfig,
    pub log: TrainingLog,
    /// Read from the cache rather than trained now.
    pub from_cache: bool,
}

/// Every user's training items and validation item, in user order.
pub fn sasrec_training_data(dataset: &Dataset) -> (Vec<Vec<u32>>, Vec<u32>) {
    dataset
        .users()
        .map(|u| (dataset.train_history(u).to_vec(), dataset.valid_item(u)))
        .unzip()
}

/// The order in which SASRec's items take their random draws under `indexing`: the new ids of
/// P5's items 1, 2, …, so that a run under any permutation is the run under P5's ids, renamed.
pub fn draw_order(indexing: &ItemIndexing, num_items: usize) -> Option<Vec<u32>> {
    indexing
        .permutation(num_items)
        .map(|p| (1..=num_items as u32).map(|old| p.new_id(old)).collect())
}

/// What a cached model must have been trained on to be reused: the dataset's name, size and
/// content, its indexing, and the training configuration.
fn cache_key(
    data: &TrainingData,
    training: &TrainConfig,
) -> Result<BTreeMap<String, String>, PeapodError> {
    let dataset = &data.dataset;
    // FNV-1a over every user's sequence: any change of the data changes the key.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for u in dataset.users() {
        for &x in std::iter::once(&u).chain(dataset.sequence(u)) {
            for byte in x.to_le_bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let training = serde_json::to_string(training)
        .map_err(|e| PeapodError::Config(format!("SASRec training settings: {e}")))?;
    Ok(BTreeMap::from([
        ("dataset".to_string(), dataset.name().to_string()),
        ("data_hash".to_string(), format!("{hash:016x}")),
        ("indexing".to_string(), data.indexing.describe()),
        ("training".to_string(), training),
    ]))
}

/// The SASRec model in `path` when that file was trained on `data` (same dataset content and
/// indexing) with `training`'s settings; `None` when it was not, or is not a SASRec file.
pub fn load_cached_sasrec(
    data: &TrainingData,
    training: &TrainConfig,
    path: &Path,
    device: &Device,
) -> Result<Option<SasRecBaseline>, PeapodError> {
    let key = cache_key(data, training)?;
    let Ok((model, meta)) = SasRec::load(path, device) else {
        return Ok(None);
    };
    let same = key.iter().all(|(k, v)| meta.get(k) == Some(v));
    let log = meta
        .get("log")
        .and_then(|l| serde_json::from_str::<TrainingLog>(l).ok());
    Ok(match (same, log) {
        (true, Some(log)) => Some(SasRecBaseline {
            model,
            training: training.clone(),
            log,
            from_cache: true,
        }),
        _ => None,
    })
}

/// Trains SASRec (the paper's shape for the dataset's items, `training`'s settings) on
/// `data`, or reads it from `cache` when that file was trained on the same data, indexing and
/// settings; a newly trained model is written there.
pub fn train_or_load_sasrec(
    data: &TrainingData,
    training: &TrainConfig,
    cache: Option<&Path>,
    device: &Device,
    on_progress: impl FnMut(&Progress),
) -> Result<SasRecBaseline, PeapodError> {
    if let Some(path) = cache.filter(|p| p.exists()) {
        if let Some(cached) = load_cached_sasrec(data, training, path, device)? {
            return Ok(cached);
        }
    }
    let (sequences, validation) = sasrec_training_data(&data.dataset);
    let order = draw_order(&data.indexing, data.dataset.num_items());
    let set = TrainingSet {
        sequences: &sequences,
        validation_targets: &validation,
        draw_order: order.as_deref(),
    };
    let config = SasRecConfig::paper(data.dataset.num_items());
    let fitted = fit(&config, training, &set, device, on_progress)?;
    if let Some(path) = cache {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PeapodError::io(dir, e))?;
        }
        let mut meta = cache_key(data, training)?;
        meta.insert(
            "log".into(),
            serde_json::to_string(&fitted.log)
                .map_err(|e| PeapodError::Config(format!("SASRec training log: {e}")))?,
        );
        fitted.model.save(path, &meta)?;
    }
    Ok(SasRecBaseline {
        model: fitted.model,
        training: training.clone(),
        log: fitted.log,
        from_cache: false,
    })
}

/// [`train_or_load_sasrec`] with a progress bar (when `show`) of the epoch's steps and loss;
/// `on_epoch` sees every finished epoch (printing from it does not garble the bar).
pub fn train_or_load_sasrec_shown(
    data: &TrainingData,
    training: &TrainConfig,
    cache: Option<&Path>,
    device: &Device,
    show: bool,
    mut on_epoch: impl FnMut(&EpochLog),
) -> Result<SasRecBaseline, PeapodError> {
    let bar = crate::progress::bar(
        0,
        "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}",
        show,
    );
    let baseline = train_or_load_sasrec(data, training, cache, device, |p| match p {
        Progress::Step {
            epoch,
            step,
            steps_per_epoch,
            loss,
        } => {
            bar.set_length(*steps_per_epoch as u64);
            bar.set_position(*step as u64);
            bar.set_prefix(format!("SASRec {epoch}"));
            bar.set_message(format!("loss {loss:.4}"));
        }
        Progress::Epoch(e) => bar.suspend(|| on_epoch(e)),
    })?;
    bar.finish_and_clear();
    Ok(baseline)
}

/// SASRec's ranked list for each example: the top 20 of all items after the user's history
/// before the split's target (SASRec reads its own last `max_len` items of it, not the
/// generative model's 20), or the example's candidates in score order (top-n).
pub fn sasrec_lists(
    model: &SasRec,
    dataset: &Dataset,
    examples: &[Example],
    split: Split,
) -> Result<RankedLists, PeapodError> {
    const BATCH: usize = 256;
    let histories = examples
        .iter()
        .map(|e| history_before(dataset, e.user, split, model.config().max_len))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lists = Vec::with_capacity(examples.len());
    for (es, hs) in examples.chunks(BATCH).zip(histories.chunks(BATCH)) {
        match es
            .iter()
            .map(|e| e.candidates.as_deref())
            .collect::<Option<Vec<_>>>()
        {
            Some(candidates) => lists.extend(model.rank_candidates(hs, &candidates, BATCH)?),
            None => lists.extend(model.recommend(hs, 20, BATCH)?),
        }
    }
    Ok(lists)
}
