use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;

use crate::error::{PromptError, Result};

/// The query function q(x) of paper §4.1: one row per user (N × D_q), e.g. the
/// matrix-factorisation user embeddings.
///
/// The variant is the single switch between the paper's setting and end-to-end tuning:
/// - [`QueryTable::Frozen`]: the rows are constants; no gradient ever reaches them, even when
///   the tensor given is itself a variable of another model (it is detached on use).
/// - [`QueryTable::Trainable`]: the rows are a [`Var`] (typically initialised from the MF
///   embeddings) that receives gradients like any other parameter. Create it with
///   [`QueryTable::trainable_in`] so that it lives in your `VarMap` under a stable name (then
///   optimisers built from `varmap.all_vars()` update it and checkpoints save it).
#[derive(Debug, Clone)]
pub enum QueryTable {
    /// Constant query vectors (the paper).
    Frozen(Tensor),
    /// Learnable query vectors.
    Trainable(Var),
}

impl QueryTable {
    /// A frozen table holding `table` (N × D_q).
    pub fn frozen(table: &Tensor) -> Self {
        Self::Frozen(table.detach())
    }

    /// A trainable table registered in `varmap` under `name` and initialised from `init`
    /// (N × D_q). When `varmap` already holds `name` (a model rebuilt before loading a
    /// checkpoint, say) that variable is reused and `init` is ignored apart from its shape.
    pub fn trainable_in(varmap: &VarMap, name: &str, init: &Tensor) -> Result<Self> {
        check_rank2(init)?;
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| PromptError::Config("the VarMap's lock is poisoned".into()))?;
        if let Some(var) = data.get(name) {
            if var.shape() != init.shape() {
                return Err(PromptError::Shape(format!(
                    "{name} is {:?} in the VarMap but the initial table is {:?}",
                    var.shape(),
                    init.shape()
                )));
            }
            return Ok(Self::Trainable(var.clone()));
        }
        let var = Var::from_tensor(&init.detach())?;
        data.insert(name.to_string(), var.clone());
        Ok(Self::Trainable(var))
    }

    /// The whole table as a tensor (the variable itself for a trainable table).
    pub fn table(&self) -> &Tensor {
        match self {
            Self::Frozen(t) => t,
            Self::Trainable(v) => v.as_tensor(),
        }
    }

    /// Whether gradients flow into the table.
    pub fn is_trainable(&self) -> bool {
        matches!(self, Self::Trainable(_))
    }

    /// Number of users (rows).
    pub fn num_users(&self) -> usize {
        self.table().dims().first().copied().unwrap_or(0)
    }

    /// Query dimension D_q (columns).
    pub fn dim(&self) -> usize {
        self.table().dims().get(1).copied().unwrap_or(0)
    }

    /// The rows of `users`, B × D_q, detached for a frozen table.
    pub fn gather(&self, users: &[u32]) -> Result<Tensor> {
        if users.is_empty() {
            return Err(PromptError::EmptyBatch);
        }
        let len = self.num_users();
        if let Some(&index) = users.iter().find(|&&u| u as usize >= len) {
            return Err(PromptError::IndexOutOfRange {
                kind: "user",
                index,
                len,
            });
        }
        let table = match self {
            Self::Frozen(t) => t.detach(),
            Self::Trainable(v) => v.as_tensor().clone(),
        };
        let ids = Tensor::from_slice(users, users.len(), table.device())?;
        Ok(table.index_select(&ids, 0)?)
    }

    /// Checks the table against the dimension, dtype and device a composer expects, converting
    /// a frozen table when needed (a trainable one must already match: converting would create
    /// a copy that the optimiser never sees).
    pub(crate) fn prepared(self, dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        check_rank2(self.table())?;
        if self.dim() != dim {
            return Err(PromptError::Shape(format!(
                "the query table has {} columns but the configuration says query_dim = {dim}",
                self.dim()
            )));
        }
        match self {
            Self::Frozen(t) => Ok(Self::Frozen(t.to_device(device)?.to_dtype(dtype)?.detach())),
            Self::Trainable(v) => {
                if v.dtype() != dtype || !v.device().same_device(device) {
                    return Err(PromptError::Shape(format!(
                        "the trainable query table is {:?} on {:?} but the prompt's parameters are {dtype:?} on {device:?}",
                        v.dtype(),
                        v.device().location()
                    )));
                }
                Ok(Self::Trainable(v))
            }
        }
    }
}

fn check_rank2(t: &Tensor) -> Result<()> {
    if t.rank() != 2 {
        return Err(PromptError::Shape(format!(
            "a query table is N × D_q, got {:?}",
            t.shape()
        )));
    }
    Ok(())
}
