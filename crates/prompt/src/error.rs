use std::path::PathBuf;

/// Everything that can go wrong while building or applying a prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A tensor operation failed (device, dtype, shape inside candle).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration value is unusable (zero sizes, heads not dividing `d_model`, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A user or task index does not name a row of its table.
    #[error("{kind} index {index} out of range: the table has {len} rows")]
    IndexOutOfRange {
        /// `"user"` or `"task"`.
        kind: &'static str,
        /// The offending index.
        index: u32,
        /// Number of rows in the table.
        len: usize,
    },
    /// An input tensor has the wrong shape or dtype for the operation.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A batch had no examples; a prompt for nobody has no meaningful shape.
    #[error("empty batch")]
    EmptyBatch,
    /// Reading or writing a neighbour-list cache failed.
    #[error("neighbour cache {path}: {source}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A neighbour-list cache file is not one this crate wrote, or is truncated.
    #[error("neighbour cache {path}: {reason}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, PromptError>;
