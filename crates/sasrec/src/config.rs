use serde::{Deserialize, Serialize};

use crate::error::{Result, SasRecError};

/// The model's shape. Defaults are the original paper's for the Amazon datasets (Kang &
/// McAuley, 2018, §4): sequences of the last 50 items, 64 hidden units, two blocks, one head,
/// dropout 0.5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SasRecConfig {
    /// Items are the ids `1..=num_items`; 0 is padding.
    pub num_items: usize,
    /// How many of the most recent items the model reads (and how many learned positions).
    pub max_len: usize,
    pub hidden: usize,
    pub blocks: usize,
    pub heads: usize,
    /// Dropout on the embeddings, the attention weights and both feed-forward layers.
    pub dropout: f64,
}

impl SasRecConfig {
    /// The original paper's settings for `num_items` items.
    pub fn paper(num_items: usize) -> Self {
        Self {
            num_items,
            max_len: 50,
            hidden: 64,
            blocks: 2,
            heads: 1,
            dropout: 0.5,
        }
    }

    /// Checks every setting's domain, naming the first that is out of it.
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (
                self.num_items > 0,
                format!("num_items must be at least 1, not {}", self.num_items),
            ),
            (
                self.max_len > 0,
                format!("max_len must be at least 1, not {}", self.max_len),
            ),
            (
                self.hidden > 0 && self.heads > 0 && self.hidden % self.heads == 0,
                format!(
                    "hidden ({}) must be a positive multiple of heads ({})",
                    self.hidden, self.heads
                ),
            ),
            (
                self.blocks > 0,
                format!("blocks must be at least 1, not {}", self.blocks),
            ),
            (
                (0.0..1.0).contains(&self.dropout),
                format!("dropout must lie in [0, 1), not {}", self.dropout),
            ),
            (
                u32::try_from(self.num_items).is_ok(),
                format!("num_items {} does not fit item ids (u32)", self.num_items),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(SasRecError::Config(what)),
            None => Ok(()),
        }
    }
}

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Cross-entropy of the next item over all items (a full softmax at every position).
    /// Much stronger than the original objective at the same budget (see the crate docs).
    #[default]
    CrossEntropy,
    /// The original objective: binary cross-entropy of the next item against one negative
    /// item per position, drawn uniformly from the items the user never interacted with.
    BinaryCrossEntropy,
}

impl Loss {
    /// `ce` or `bce` (also the long names `cross-entropy`, `binary-cross-entropy`).
    pub fn parse(name: &str) -> Result<Loss> {
        match name {
            "ce" | "cross-entropy" => Ok(Loss::CrossEntropy),
            "bce" | "binary-cross-entropy" => Ok(Loss::BinaryCrossEntropy),
            other => Err(SasRecError::Config(format!(
                "unknown loss `{other}`: expected ce or bce"
            ))),
        }
    }

    /// The short name `parse` takes.
    pub fn name(&self) -> &'static str {
        match self {
            Loss::CrossEntropy => "ce",
            Loss::BinaryCrossEntropy => "bce",
        }
    }
}

/// How the model is trained. Defaults: the original's Adam (lr 1e-3, β = (0.9, 0.98)) and batch
/// of 128 users, cross-entropy, at most 200 epochs, stopping after 5 epochs without a better
/// validation nDCG@10 (when validation targets are given), seed 2022.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub loss: Loss,
    pub learning_rate: f64,
    pub betas: (f64, f64),
    pub batch_size: usize,
    /// Passes over all users; each user contributes one sequence per epoch.
    pub epochs: usize,
    /// Stop after this many epochs without a better validation nDCG@10 and keep the best
    /// weights; `None` trains every epoch and keeps the last.
    pub patience: Option<usize>,
    /// Seeds the initial weights, the order of users, dropout and negative sampling.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: Loss::CrossEntropy,
            learning_rate: 1e-3,
            betas: (0.9, 0.98),
            batch_size: 128,
            epochs: 200,
            patience: Some(5),
            seed: 2022,
        }
    }
}

impl TrainConfig {
    /// Checks every setting's domain, naming the first that is out of it.
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let checks = [
            (
                self.learning_rate.is_finite() && self.learning_rate > 0.0,
                format!("learning_rate must be positive, not {}", self.learning_rate),
            ),
            (
                (0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2),
                format!("betas must lie in [0, 1), not ({b1}, {b2})"),
            ),
            (
                self.batch_size > 0,
                format!("batch_size must be at least 1, not {}", self.batch_size),
            ),
            (
                self.epochs > 0,
                format!("epochs must be at least 1, not {}", self.epochs),
            ),
            (
                self.patience != Some(0),
                "patience must be at least 1 epoch (or none)".to_string(),
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, what)) => Err(SasRecError::Config(what)),
            None => Ok(()),
        }
    }
}
