//! The PeaPOD model: soft prompts (task and/or user) prepended to T5's input embeddings.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod_datasets::Batch;
use peapod_kernels::CpuPolicy;
use peapod_prompt::{
    prepend_prompts, NeighbourLists, PromptComposer, PromptCondition, QueryTable,
    SimilarUserPrompt, SimilarUserPromptConfig, TaskPrompt, TaskPromptConfig, UserPrompt,
    UserPromptConfig,
};
use peapod_t5_rec::{T5Config, T5ForRec};
use serde::{Deserialize, Serialize};

use crate::PeapodError;

/// Which soft prompts the encoder input carries: each is a row of the paper's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Task prompt + user prompt (the paper's model).
    Peapod,
    /// User prompt only (appendix B ablation).
    PeapodX,
    /// Task prompt only (the POD baseline).
    Pod,
    /// No soft prompt: discrete prompt + whole-word embeddings (P5).
    P5,
    /// Task prompt + the released code's user prompt (attention over similar users).
    SimilarUsers,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Peapod,
        Variant::PeapodX,
        Variant::Pod,
        Variant::P5,
        Variant::SimilarUsers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Peapod => "peapod",
            Variant::PeapodX => "peapod-x",
            Variant::Pod => "pod",
            Variant::P5 => "p5",
            Variant::SimilarUsers => "similar-users",
        }
    }

    pub fn parse(s: &str) -> Result<Variant, PeapodError> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                PeapodError::Config(format!(
                    "unknown variant `{s}` (expected one of peapod, peapod-x, pod, p5, similar-users)"
                ))
            })
    }

    pub fn has_task_prompt(self) -> bool {
        matches!(self, Variant::Peapod | Variant::Pod | Variant::SimilarUsers)
    }

    /// Whether the variant reads the users' MF queries.
    pub fn needs_user_queries(self) -> bool {
        matches!(
            self,
            Variant::Peapod | Variant::PeapodX | Variant::SimilarUsers
        )
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything needed to rebuild a [`PeaPod`] (stored in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub variant: Variant,
    pub t5: T5Config,
    /// L: vectors per soft prompt (paper: 3).
    pub prompt_len: usize,
    /// M: decomposed prompt components (paper: 20).
    pub num_components: usize,
    /// D_q: dimension of the user queries (the MF embedding size).
    pub query_dim: usize,
    /// Train the query table end to end, initialised from MF (the paper freezes it).
    pub trainable_queries: bool,
    /// Neighbours per user for the similar-users variant.
    pub num_neighbours: usize,
    pub seed: u64,
}

impl ModelConfig {
    pub fn new(variant: Variant, t5: T5Config, query_dim: usize, seed: u64) -> Self {
        Self {
            variant,
            t5,
            prompt_len: 3,
            num_components: 20,
            query_dim,
            trainable_queries: false,
            num_neighbours: 20,
            seed,
        }
    }

    /// Soft prompt vectors in front of the tokens.
    pub fn soft_prompt_len(&self) -> usize {
        let task = if self.variant.has_task_prompt() { 1 } else { 0 };
        let user = if self.variant.needs_user_queries() {
            1
        } else {
            0
        };
        (task + user) * self.prompt_len
    }
}

/// A batch as tensors on the model's device.
#[derive(Debug, Clone)]
pub struct BatchTensors {
    pub task_ids: Vec<u32>,
    /// 1-based user ids, as in the data files.
    pub users: Vec<u32>,
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub whole_word_ids: Tensor,
    pub target_ids: Tensor,
    pub target_mask: Tensor,
}

impl BatchTensors {
    /// Rows `start .. start + len` of the batch (padding widths unchanged).
    pub fn rows(&self, start: usize, len: usize) -> Result<Self, PeapodError> {
        if start + len > self.users.len() {
            return Err(PeapodError::Config(format!(
                "rows {start}..{} of a batch of {}",
                start + len,
                self.users.len()
            )));
        }
        Ok(Self {
            task_ids: self.task_ids[start..start + len].to_vec(),
            users: self.users[start..start + len].to_vec(),
            input_ids: self.input_ids.narrow(0, start, len)?,
            attention_mask: self.attention_mask.narrow(0, start, len)?,
            whole_word_ids: self.whole_word_ids.narrow(0, start, len)?,
            target_ids: self.target_ids.narrow(0, start, len)?,
            target_mask: self.target_mask.narrow(0, start, len)?,
        })
    }

    pub fn from_batch(batch: &Batch, device: &Device) -> Result<Self, PeapodError> {
        let to = |a: &ndarray::Array2<u32>| -> Result<Tensor, PeapodError> {
            let a = a.as_standard_layout();
            let data = a.as_slice().unwrap_or(&[]);
            Ok(Tensor::from_slice(data, a.dim(), device)?)
        };
        Ok(Self {
            task_ids: vec![batch.task.id(); batch.users.len()],
            users: batch.users.clone(),
            input_ids: to(&batch.input_ids)?,
            attention_mask: to(&batch.attention_mask)?,
            whole_word_ids: to(&batch.whole_word_ids)?,
            target_ids: to(&batch.target_ids)?,
            target_mask: to(&batch.target_mask)?,
        })
    }
}

/// PeaPOD: prompt composer(s) + T5.
pub struct PeaPod {
    config: ModelConfig,
    varmap: VarMap,
    t5: T5ForRec,
    /// The soft prompts, in encoder order (task prompt, then the user's).
    composers: Vec<Box<dyn PromptComposer + Send + Sync>>,
    device: Device,
    cpu_policy: CpuPolicy,
}

impl PeaPod {
    /// Builds a freshly initialised model. `user_queries` (num_users × D_q, row u−1 = user u)
    /// is required by the variants with a user prompt.
    pub fn new(
        config: ModelConfig,
        user_queries: Option<&Tensor>,
        device: &Device,
    ) -> Result<Self, PeapodError> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let t5 = T5ForRec::new(&config.t5, vb.clone())?;
        // candle's own initialisers draw from an unseeded generator: redraw reproducibly.
        t5.reset_parameters(&varmap, "", config.seed)?;
        let d_model = config.t5.d_model;
        let mut composers: Vec<Box<dyn PromptComposer + Send + Sync>> = Vec::new();
        if config.variant.has_task_prompt() {
            let mut c = TaskPromptConfig::new(3, d_model);
            c.prompt_len = config.prompt_len;
            c.seed = config.seed;
            composers.push(Box::new(TaskPrompt::new(c, vb.clone())?));
        }
        let queries = match (config.variant.needs_user_queries(), user_queries) {
            (false, _) => None,
            (true, Some(q)) => {
                let q = q.to_device(device)?.to_dtype(DType::F32)?;
                if q.dim(1)? != config.query_dim {
                    return Err(PeapodError::Config(format!(
                        "user queries have dimension {}, the model expects {}",
                        q.dim(1)?,
                        config.query_dim
                    )));
                }
                Some(if config.trainable_queries {
                    QueryTable::trainable_in(&varmap, "user_queries", &q)?
                } else {
                    QueryTable::frozen(&q)
                })
            }
            (true, None) => {
                return Err(PeapodError::Config(format!(
                    "variant {} needs user query embeddings (train MF first)",
                    config.variant
                )))
            }
        };
        if let Some(table) = queries {
            if config.variant == Variant::SimilarUsers {
                let neighbours = NeighbourLists::compute(table.table(), config.num_neighbours)?;
                let mut c = SimilarUserPromptConfig::new(config.query_dim, d_model);
                c.prompt_len = config.prompt_len;
                c.num_neighbours = config.num_neighbours;
                c.seed = config.seed;
                composers.push(Box::new(SimilarUserPrompt::new(
                    c,
                    table,
                    neighbours,
                    vb.clone(),
                )?));
            } else {
                let mut c = UserPromptConfig::new(config.query_dim, d_model);
                c.prompt_len = config.prompt_len;
                c.num_components = config.num_components;
                c.seed = config.seed;
                composers.push(Box::new(UserPrompt::new(c, table, vb.clone())?));
            }
        }
        Ok(Self {
            config,
            varmap,
            t5,
            composers,
            device: device.clone(),
            cpu_policy: CpuPolicy::default(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn t5(&self) -> &T5ForRec {
        &self.t5
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable variables by name (sorted), for the optimizer and checkpoints.
    pub fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut vars: Vec<_> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.named_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Current weights by name.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    /// Overwrites every variable from `tensors` (converting dtype). A missing or misshapen
    /// tensor is an error naming it; extra tensors are ignored (optimizer state lives beside).
    pub fn set_weights(&self, tensors: &HashMap<String, Tensor>) -> Result<(), PeapodError> {
        for (name, var) in self.named_vars() {
            let t = tensors.get(&name).ok_or_else(|| {
                PeapodError::Config(format!("the weights lack `{name}` ({:?})", var.shape()))
            })?;
            if t.shape() != var.shape() {
                return Err(PeapodError::Config(format!(
                    "`{name}` has shape {:?} in the weights, the model needs {:?}",
                    t.shape(),
                    var.shape()
                )));
            }
            var.set(&t.to_device(&self.device)?.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn query_rows(&self, users: &[u32]) -> Result<Vec<u32>, PeapodError> {
        users
            .iter()
            .map(|&u| {
                u.checked_sub(1)
                    .ok_or_else(|| PeapodError::Config("user ids are 1-based; got 0".into()))
            })
            .collect()
    }

    /// The soft prompts of a batch in encoder order, each composer given the ids it is
    /// conditioned on (tasks, or users as rows of the query table).
    fn soft_prompts(&self, users: &[u32], tasks: &[u32]) -> Result<Vec<Tensor>, PeapodError> {
        let mut rows = None;
        let mut prompts = Vec::with_capacity(self.composers.len());
        for composer in &self.composers {
            let ids = match composer.condition() {
                PromptCondition::Task => tasks,
                PromptCondition::User => match &rows {
                    Some(rows) => rows,
                    None => rows.insert(self.query_rows(users)?),
                },
            };
            prompts.push(composer.compose(ids)?);
        }
        Ok(prompts)
    }

    /// The user prompt's component weights α (B × M) for 1-based user ids, when the variant
    /// has the paper's user prompt.
    pub fn component_weights(&self, users: &[u32]) -> Result<Option<Tensor>, PeapodError> {
        if !matches!(self.config.variant, Variant::Peapod | Variant::PeapodX) {
            return Ok(None);
        }
        match self
            .composers
            .iter()
            .find(|c| c.condition() == PromptCondition::User)
        {
            Some(c) => Ok(c.compose_with_weights(&self.query_rows(users)?)?.1),
            None => Ok(None),
        }
    }

    /// Encoder input: soft prompts ++ (token + whole-word embeddings), and its mask.
    pub fn encoder_input(&self, batch: &BatchTensors) -> Result<(Tensor, Tensor), PeapodError> {
        let embeds = self
            .t5
            .embed_input(&batch.input_ids, &batch.whole_word_ids)?;
        let mask = batch.attention_mask.to_dtype(DType::F32)?;
        let prompts = self.soft_prompts(&batch.users, &batch.task_ids)?;
        let refs: Vec<&Tensor> = prompts.iter().collect();
        Ok(prepend_prompts(&refs, &embeds, &mask)?)
    }

    /// Token-level NLL of the batch's targets (SPEC §6).
    pub fn loss(&self, batch: &BatchTensors, train: bool) -> Result<Tensor, PeapodError> {
        let (embeds, mask) = self.encoder_input(batch)?;
        Ok(self
            .t5
            .forward_loss(&embeds, &mask, &batch.target_ids, &batch.target_mask, train)?)
    }

    /// How inference uses the CPU (concurrent encoder pieces and searches): the measured
    /// defaults unless [`PeaPod::set_cpu_policy`] changed them.
    pub fn cpu_policy(&self) -> &CpuPolicy {
        &self.cpu_policy
    }

    /// Sets how inference uses the CPU; results only change by float rounding.
    pub fn set_cpu_policy(&mut self, policy: CpuPolicy) {
        self.cpu_policy = policy;
    }

    /// Encoder states and mask, for decoding.
    pub fn encode(&self, batch: &BatchTensors) -> Result<(Tensor, Tensor), PeapodError> {
        let (embeds, mask) = self.encoder_input(batch)?;
        let parts = self.cpu_policy.encode_parts_on(self.device.is_cpu());
        let out = self.t5.encode_in_parts(&embeds, &mask, parts)?;
        Ok((out, mask))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micro_t5() -> T5Config {
        let mut c = T5Config::tiny();
        c.vocab_size = 64;
        c.d_model = 16;
        c.d_kv = 4;
        c.d_ff = 32;
        c.num_heads = 4;
        c.num_layers = 1;
        c.num_decoder_layers = 1;
        c.num_whole_word_embeddings = 8;
        c
    }

    fn batch(users: Vec<u32>, dev: &Device) -> BatchTensors {
        let b = users.len();
        assert_eq!(b, 2);
        let ids: Vec<u32> = (0..b * 5).map(|i| 2 + (i as u32 % 50)).collect();
        let mut mask = vec![1u32; b * 5];
        mask[4] = 0;
        BatchTensors {
            task_ids: vec![1; b],
            users,
            input_ids: Tensor::from_vec(ids, (b, 5), dev).expect("ids"),
            attention_mask: Tensor::from_vec(mask, (b, 5), dev).expect("mask"),
            whole_word_ids: Tensor::zeros((b, 5), DType::U32, dev).expect("ww"),
            target_ids: Tensor::from_vec(vec![7u32, 1, 9, 1], (2, 2), dev).expect("targets"),
            target_mask: Tensor::ones((2, 2), DType::U32, dev).expect("tmask"),
        }
    }

    /// Every variant at the micro config, over 30 users' random 6-dimensional queries.
    fn every_variant() -> Result<Vec<(Variant, ModelConfig, PeaPod)>, PeapodError> {
        let queries = Tensor::randn(0f32, 1.0, (30, 6), &Device::Cpu)?;
        Variant::ALL
            .into_iter()
            .map(|variant| {
                let mut cfg = ModelConfig::new(variant, micro_t5(), 6, 3);
                cfg.num_neighbours = 4;
                let model = PeaPod::new(cfg.clone(), Some(&queries), &Device::Cpu)?;
                Ok((variant, cfg, model))
            })
            .collect()
    }

    #[test]
    fn every_variant_prepends_its_prompts_and_trains() -> Result<(), PeapodError> {
        let dev = Device::Cpu;
        for (variant, cfg, model) in every_variant()? {
            let b = batch(vec![1, 30], &dev);
            let (embeds, mask) = model.encoder_input(&b)?;
            assert_eq!(
                embeds.dims(),
                &[2, 5 + cfg.soft_prompt_len(), 16],
                "{variant}"
            );
            assert_eq!(mask.dims(), &[2, 5 + cfg.soft_prompt_len()]);
            let loss = model.loss(&b, true)?;
            let grads = loss.backward()?;
            // Every variable receives a gradient (the prompts included).
            for (name, var) in model.named_vars() {
                if name.contains("relative_attention_bias") {
                    continue;
                }
                let g = grads.get(var.as_tensor());
                assert!(g.is_some(), "{variant}: no gradient for {name}");
            }
        }
        Ok(())
    }

    #[test]
    fn component_weights_are_the_user_prompts_alpha_for_peapod_only() -> Result<(), PeapodError> {
        for (variant, cfg, model) in every_variant()? {
            let alpha = model.component_weights(&[3, 30])?;
            match variant {
                Variant::Peapod | Variant::PeapodX => {
                    let alpha = alpha.expect("the paper's user prompt has weights");
                    assert_eq!(alpha.dims(), &[2, cfg.num_components], "{variant}");
                    // α is a cosine: within [-1, 1], and user 3's row is query row 2's.
                    let again = model.component_weights(&[30, 3])?.expect("weights");
                    let (a, b) = (alpha.to_vec2::<f32>()?, again.to_vec2::<f32>()?);
                    assert_eq!(a[0], b[1]);
                    assert!(a.iter().flatten().all(|x| x.abs() <= 1.0 + 1e-6));
                }
                _ => assert!(alpha.is_none(), "{variant}"),
            }
        }
        let (_, _, peapod) = every_variant()?.swap_remove(0);
        assert!(
            peapod.component_weights(&[0]).is_err(),
            "user ids are 1-based"
        );
        Ok(())
    }

    #[test]
    fn user_prompt_variants_refuse_to_run_without_queries() {
        let dev = Device::Cpu;
        let cfg = ModelConfig::new(Variant::Peapod, micro_t5(), 6, 3);
        let err = PeaPod::new(cfg, None, &dev).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("needs user query"));
        let cfg = ModelConfig::new(Variant::Pod, micro_t5(), 6, 3);
        assert!(PeaPod::new(cfg, None, &dev).is_ok());
    }

    #[test]
    fn variants_round_trip_through_their_names() -> Result<(), PeapodError> {
        for v in Variant::ALL {
            assert_eq!(Variant::parse(v.name())?, v);
            let json = serde_json::to_string(&v).map_err(|e| PeapodError::Config(e.to_string()))?;
            assert_eq!(json, format!("\"{}\"", v.name()));
        }
        assert!(Variant::parse("p6").is_err());
        Ok(())
    }
}
