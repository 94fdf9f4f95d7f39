use thiserror::Error;

/// Everything that can go wrong in `peapod-beam`.
#[derive(Debug, Error)]
pub enum BeamError {
    /// A [`crate::BeamConfig`] field is out of range.
    #[error("invalid beam configuration: {field} {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// `Constraint::PerInput` must hold exactly one trie per input.
    #[error("per-input constraints: expected {expected} tries (one per input), got {got}")]
    ConstraintCount {
        /// The batch size.
        expected: usize,
        /// The number of tries given.
        got: usize,
    },
    /// A prefix trie cannot be used with this model or configuration.
    #[error("invalid constraint: {0}")]
    InvalidConstraint(String),
    /// A sequence given to [`crate::PrefixTrie::new`] is unusable.
    #[error("allowed sequence {index}: {reason}")]
    InvalidSequence {
        /// Position of the sequence in the input.
        index: usize,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The step function wrote the wrong number of log-probabilities.
    #[error("step output has {got} values, expected {rows} rows x {vocab} vocabulary = {}", rows * vocab)]
    StepOutputSize {
        /// Rows (live hypotheses) in this step.
        rows: usize,
        /// Vocabulary size reported by the model.
        vocab: usize,
        /// Values actually written.
        got: usize,
    },
    /// A buffer length is not a multiple of the row width.
    #[error("buffer of {len} values is not a whole number of rows of {width}")]
    RaggedRows {
        /// Buffer length.
        len: usize,
        /// Row width.
        width: usize,
    },
    /// The step model failed.
    #[error("step model failed: {0}")]
    Model(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}
