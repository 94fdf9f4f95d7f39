use std::path::PathBuf;

/// What can go wrong in building, training, scoring or storing a SASRec model.
#[derive(Debug, thiserror::Error)]
pub enum SasRecError {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("kernel error: {0}")]
    Kernel(#[from] peapod_kernels::KernelError),
    #[error("invalid SASRec setting: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable SASRec model file: {what}")]
    File { path: PathBuf, what: String },
}

impl SasRecError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn file(path: &std::path::Path, what: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.to_path_buf(),
            what: what.to_string(),
        }
    }
}

pub type Result<T, E = SasRecError> = std::result::Result<T, E>;
