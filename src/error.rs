use std::path::{Path, PathBuf};

/// Errors of the composed system: each crate's own error, plus what composing them adds
/// (checkpoints, configuration, numerical trouble during training).
#[derive(Debug, thiserror::Error)]
pub enum PeapodError {
    #[error(transparent)]
    Dataset(#[from] peapod_datasets::DatasetError),
    #[error(transparent)]
    Pmf(#[from] peapod_pmf::PmfError),
    #[error(transparent)]
    Prompt(#[from] peapod_prompt::PromptError),
    #[error(transparent)]
    T5(#[from] peapod_t5_rec::T5Error),
    #[error(transparent)]
    Beam(#[from] peapod_beam::BeamError),
    #[error(transparent)]
    Metrics(#[from] peapod_metrics::MetricsError),
    #[error(transparent)]
    SasRec(#[from] peapod_sasrec::SasRecError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "training diverged: {what} is {value} at epoch {epoch}, step {step} ({task} batch); \
         refusing to train on garbage — lower the learning rate or check the inputs"
    )]
    NonFinite {
        what: &'static str,
        value: f64,
        epoch: usize,
        step: u64,
        task: &'static str,
    },
}

impl PeapodError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn checkpoint(path: &Path, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
