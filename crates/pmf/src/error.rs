use thiserror::Error;

/// Everything that can go wrong in `peapod-pmf`.
#[derive(Debug, Error)]
pub enum PmfError {
    /// A training hyperparameter is out of its domain (zero dimension, non-finite rate, …).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An interaction names a user row outside `0..num_users`.
    #[error("user index {index} out of range (num_users = {num_users})")]
    UserOutOfRange { index: u32, num_users: usize },
    /// An interaction names an item row outside `0..num_items`.
    #[error("item index {index} out of range (num_items = {num_items})")]
    ItemOutOfRange { index: u32, num_items: usize },
    /// The same user id appears twice in a list of sequences.
    #[error("user {0} appears more than once")]
    DuplicateUser(u32),
    /// There is nothing to learn from: no users, no items or no interactions.
    #[error("no training data: {0}")]
    Empty(String),
    /// A user id the model was not trained with.
    #[error("unknown user id {0}")]
    UnknownUser(u32),
    /// An item id the model was not trained with.
    #[error("unknown item id {0}")]
    UnknownItem(u32),
    /// A file that is not a model written by [`crate::MfModel::save`], or is inconsistent.
    #[error("invalid model file: {0}")]
    InvalidFile(String),
    /// A linear solve failed (non-finite factors).
    #[error("numerical failure: {0}")]
    Numerical(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("safetensors error: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PmfError>;
