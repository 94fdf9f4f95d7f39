//! SASRec (Kang & McAuley, *Self-Attentive Sequential Recommendation*, ICDM 2018) on candle:
//! the sequential-recommendation baseline of PeaPOD's reports, usable on any item sequences.
//!
//! The model reads the last `max_len` items of a history (item embeddings scaled by √d plus
//! learned positions), passes them through causal self-attention blocks (the reference code's
//! layout: queries from the layer-normalised input, point-wise feed-forward, dropout), and
//! scores every item by the dot product of the last state with that item's embedding — the
//! input embeddings are shared with the output. Every position predicts the next item during
//! training.
//!
//! Two objectives ([`Loss`]): the full-softmax cross-entropy over all items (default), and the
//! original binary cross-entropy against one sampled negative per position. At the same CPU
//! budget the first is far stronger: on beauty, a PyTorch SASRec with the paper's settings
//! reached test HR@10 0.083 in 4 minutes with cross-entropy and stayed near 0.050 after 12 with
//! the binary loss — the binary-loss SASRec is the weak row (0.0605) that P5-style papers
//! compare against.
//!
//! For speed on a CPU, each epoch's batches group users of similar sequence length (so little
//! of a batch is padding), and every target weighs the same in the loss whatever batch it falls
//! in. Two deliberate departures from the reference code, neither of which changes what the
//! model can learn: attention never looks at padding (there, padded slots still had a key), so
//! a sequence scores the same however its batch is padded; and every random draw can be made
//! in a caller-given item order ([`TrainingSet::draw_order`]), so that renaming the items
//! (another item indexing) leaves the whole training run unchanged — a model that sees ids
//! only as embeddings cannot depend on their order, and the tests check that it does not.
//!
//! ```
//! use candle_core::Device;
//! use peapod_sasrec::{fit, SasRec, SasRecConfig, TrainConfig, TrainingSet};
//!
//! // Six items in two cycles: after 1 comes 2, after 2 comes 3, …, after 6 comes 4.
//! let sequences: Vec<Vec<u32>> = (0..40)
//!     .map(|u| {
//!         let base = if u % 2 == 0 { 0 } else { 3 };
//!         (0..8).map(|k| base + (u + k) % 3 + 1).collect()
//!     })
//!     .collect();
//! let config = SasRecConfig { hidden: 16, dropout: 0.1, ..SasRecConfig::paper(6) };
//! let train = TrainConfig { epochs: 30, batch_size: 8, patience: None, ..TrainConfig::default() };
//! let data = TrainingSet { sequences: &sequences, validation_targets: &[], draw_order: None };
//! let fitted = fit(&config, &train, &data, &Device::Cpu, |_| {})?;
//! assert!(fitted.log.epochs.last().unwrap().mean_loss < fitted.log.epochs[0].mean_loss);
//!
//! // The next item after …, 1, 2 is 3; after …, 5, 6 it is 4.
//! let top = fitted.model.recommend(&[&[1, 2], &[5, 6]], 1, 32)?;
//! assert_eq!(top, vec![vec![3], vec![4]]);
//! let ranked = fitted.model.rank_candidates(&[&[3, 1]], &[&[5, 2, 6]], 32)?;
//! assert_eq!(ranked[0][0], 2);
//!
//! // Saved with whatever metadata the caller needs to recognise it later.
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("sasrec.safetensors");
//! let meta = [("trained_on".to_string(), "toy cycles".to_string())].into();
//! fitted.model.save(&path, &meta)?;
//! let (loaded, read) = SasRec::load(&path, &Device::Cpu)?;
//! assert_eq!(read, meta);
//! assert_eq!(loaded.recommend(&[&[1, 2]], 3, 32)?, fitted.model.recommend(&[&[1, 2]], 3, 32)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod model;
mod train;

pub use config::{Loss, SasRecConfig, TrainConfig};
pub use error::{Result, SasRecError};
pub use model::SasRec;
pub use train::{fit, EpochLog, Fitted, Progress, TrainingLog, TrainingSet};
