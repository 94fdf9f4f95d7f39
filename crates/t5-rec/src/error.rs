use std::path::PathBuf;

/// Everything that can go wrong in `peapod-t5-rec`.
#[derive(Debug, thiserror::Error)]
pub enum T5Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Kernel(#[from] peapod_kernels::KernelError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse the T5 config {path}: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("unsupported feed_forward_proj {0:?} (expected \"relu\" or \"gated-gelu\")")]
    UnsupportedActivation(String),
    #[error(
        "weights in {path} do not match the model: missing from the file {missing:?}; \
         in the file but not in the model {unexpected:?}"
    )]
    WeightMismatch {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("tensor {name} in {path} has shape {file:?}, the model expects {model:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        file: Vec<usize>,
        model: Vec<usize>,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[cfg(feature = "hub")]
    #[error("downloading from the Hugging Face hub: {0}")]
    Hub(String),
}

pub type Result<T> = std::result::Result<T, T5Error>;
