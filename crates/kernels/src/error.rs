/// A flat buffer whose length is not a whole number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer of {len} values is not a whole number of rows of {width}")]
pub struct RaggedRows {
    /// Buffer length.
    pub len: usize,
    /// Row width.
    pub width: usize,
}

/// Everything that can go wrong in a `peapod-kernels` op.
#[cfg(feature = "candle")]
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The arguments of an op do not fit together (shapes, indices, devices).
    #[error("{op}: {what}")]
    InvalidInput { op: &'static str, what: String },
}

#[cfg(feature = "candle")]
impl KernelError {
    pub(crate) fn invalid(op: &'static str, what: impl Into<String>) -> Self {
        Self::InvalidInput {
            op,
            what: what.into(),
        }
    }
}

#[cfg(feature = "candle")]
pub type Result<T> = std::result::Result<T, KernelError>;
