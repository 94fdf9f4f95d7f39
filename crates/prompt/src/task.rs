use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{PromptError, Result};
use crate::init::{get_or_init, param_rng, uniform};
use crate::{PromptComposer, PromptCondition};

/// Sizes of a [`TaskPrompt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPromptConfig {
    /// Number of tasks (PeaPOD: 3, explanation / sequential / top-n).
    pub num_tasks: usize,
    /// Prompt vectors per task (POD and PeaPOD: 3).
    pub prompt_len: usize,
    /// The embedding size of the model receiving the prompt.
    pub d_model: usize,
    /// Seed of the U(-0.1, 0.1) initialisation.
    pub seed: u64,
}

impl TaskPromptConfig {
    /// `num_tasks` prompts of length 3, seed 0.
    pub fn new(num_tasks: usize, d_model: usize) -> Self {
        Self {
            num_tasks,
            prompt_len: 3,
            d_model,
            seed: 0,
        }
    }
}

/// POD's task prompt: one learned L × d_model block per task, shared by all users,
/// initialised from U(-0.1, 0.1) as POD does.
///
/// Parameter: `task_prompt.prompts` (T × L × d_model) under the builder's prefix.
#[derive(Debug, Clone)]
pub struct TaskPrompt {
    config: TaskPromptConfig,
    prompts: Tensor,
}

impl TaskPrompt {
    /// The name segment under which the parameter lives.
    pub const PREFIX: &'static str = "task_prompt";

    /// Creates (or loads, from a builder that holds it) the task prompts.
    pub fn new(config: TaskPromptConfig, vb: VarBuilder) -> Result<Self> {
        let TaskPromptConfig {
            num_tasks: t,
            prompt_len: l,
            d_model: d,
            seed,
        } = config;
        if t == 0 || l == 0 || d == 0 {
            return Err(PromptError::Config(
                "num_tasks, prompt_len and d_model must be positive".into(),
            ));
        }
        let prompts = get_or_init(&vb.pp(Self::PREFIX), &[t, l, d], "prompts", || {
            uniform(t * l * d, -0.1, 0.1, &mut param_rng(seed, 0))
        })?;
        Ok(Self { config, prompts })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &TaskPromptConfig {
        &self.config
    }

    /// All prompts (T × L × d_model).
    pub fn prompts(&self) -> &Tensor {
        &self.prompts
    }

    /// The prompt of each example's task, B × L × d_model.
    pub fn forward(&self, task_ids: &[u32]) -> Result<Tensor> {
        if task_ids.is_empty() {
            return Err(PromptError::EmptyBatch);
        }
        let len = self.config.num_tasks;
        if let Some(&index) = task_ids.iter().find(|&&t| t as usize >= len) {
            return Err(PromptError::IndexOutOfRange {
                kind: "task",
                index,
                len,
            });
        }
        let ids = Tensor::from_slice(task_ids, task_ids.len(), self.prompts.device())?;
        Ok(self.prompts.index_select(&ids, 0)?)
    }
}

impl PromptComposer for TaskPrompt {
    fn prompt_len(&self) -> usize {
        self.config.prompt_len
    }

    fn d_model(&self) -> usize {
        self.config.d_model
    }

    fn condition(&self) -> PromptCondition {
        PromptCondition::Task
    }

    fn compose(&self, ids: &[u32]) -> Result<Tensor> {
        self.forward(ids)
    }
}
