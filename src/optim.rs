//! AdamW whose state can be checkpointed (used by `peapod`'s training loop and `bench_t5`).
//!
//! candle-nn's `AdamW` keeps its moments private, so a resumed run could not continue with the
//! same optimizer state and would end with different weights. This one exposes its state as named
//! tensors. On the CPU it updates each parameter in place in one fused pass
//! (`peapod_kernels::ops::adamw_step_in_place`).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use peapod_kernels::ops::{adamw_step_in_place, AdamWStep};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (decoupled weight decay, as in Loshchilov & Hutter and PyTorch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value before the update. POD's `pretrain.py`
    /// clips nothing, so the default is None; a recipe may turn it on.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            max_grad_norm: None,
        }
    }
}

enum Moments {
    /// CPU: plain buffers updated by the fused in-place kernel.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Other devices: tensors updated with ordinary tensor ops.
    Device { m: Tensor, v: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// AdamW over named variables, with `state`/`load_state` for checkpoints.
pub struct AdamW {
    slots: Vec<Slot>,
    step: u64,
    config: AdamWConfig,
}

impl AdamW {
    /// Optimises the given variables (non-float ones are skipped). Names must be unique: they key
    /// the optimizer state in checkpoints.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        let mut slots = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            if !var.dtype().is_float() {
                continue;
            }
            let moments = zero_moments(&var)?;
            slots.push(Slot { name, var, moments });
        }
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            slots,
            step: 0,
            config,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The global L2 norm of the gradients of the optimised variables.
    pub fn grad_norm(&self, grads: &GradStore) -> candle_core::Result<f64> {
        // One read of all the per-tensor sums: on a GPU each read is a synchronisation.
        let mut sums = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?.reshape(1)?);
            }
        }
        if sums.is_empty() {
            return Ok(0.0);
        }
        let sum: f64 = Tensor::cat(&sums, 0)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .sum();
        Ok(sum.sqrt())
    }

    /// One update from `grads`. Returns the gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore) -> candle_core::Result<f64> {
        let norm = self.grad_norm(grads)?;
        let clip = match self.config.max_grad_norm {
            Some(max) if norm > max => max / (norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let c = self.config;
        let hyper = AdamWStep::new(
            c.lr,
            (c.beta1, c.beta2),
            c.eps,
            c.weight_decay,
            self.step,
            clip,
        );
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    adamw_step_in_place(slot.var.as_tensor(), grad, m, v, &hyper)
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                }
                Moments::Device { m, v } => {
                    // The same operations as the CPU kernel, as tensor ops.
                    let g = (grad * clip)?;
                    let next_m = (&*m + ((&g - &*m)? * (1.0 - c.beta1))?)?;
                    let next_v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let t = i32::try_from(self.step).unwrap_or(i32::MAX);
                    let step_size = c.lr / (1.0 - c.beta1.powi(t));
                    let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
                    let denom = ((next_v.sqrt()? / bias2_sqrt)? + c.eps)?;
                    let update = ((&next_m / denom)? * step_size)?;
                    let decay = 1.0 - c.lr * c.weight_decay;
                    let theta = ((slot.var.as_tensor() * decay)? - update)?;
                    slot.var.set(&theta)?;
                    *m = next_m;
                    *v = next_v;
                }
            }
        }
        Ok(norm)
    }

    /// The optimizer state as named tensors (`adamw.m.<var>`, `adamw.v.<var>`) on the CPU, plus
    /// the step count, for a checkpoint.
    pub fn state(&self) -> candle_core::Result<(HashMap<String, Tensor>, u64)> {
        let mut out = HashMap::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            let shape = slot.var.shape().clone();
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, shape.clone(), &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ),
                Moments::Device { m, v } => {
                    (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?)
                }
            };
            out.insert(format!("adamw.m.{}", slot.name), m);
            out.insert(format!("adamw.v.{}", slot.name), v);
        }
        Ok((out, self.step))
    }

    /// Restores a state written by [`AdamW::state`]. Every optimised variable must have both
    /// moments in `tensors` with its shape; anything else is an error naming the variable.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> candle_core::Result<()> {
        for slot in &mut self.slots {
            let get = |kind: &str| -> candle_core::Result<Tensor> {
                let key = format!("adamw.{kind}.{}", slot.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks `{key}`"))
                })?;
                if t.shape() != slot.var.shape() {
                    candle_core::bail!(
                        "optimizer state `{key}` has shape {:?}, the variable has {:?}",
                        t.shape(),
                        slot.var.shape()
                    );
                }
                t.to_dtype(DType::F32)
            };
            let (m, v) = (get("m")?, get("v")?);
            slot.moments = match &slot.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_vec1::<f32>()?,
                },
                Moments::Device { .. } => {
                    let device = slot.var.device();
                    let dtype = slot.var.dtype();
                    Moments::Device {
                        m: m.to_device(device)?.to_dtype(dtype)?,
                        v: v.to_device(device)?.to_dtype(dtype)?,
                    }
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

fn zero_moments(var: &Var) -> candle_core::Result<Moments> {
    if var.device().is_cpu() && var.dtype() == DType::F32 {
        let n = var.elem_count();
        Ok(Moments::Host {
            m: vec![0.0; n],
            v: vec![0.0; n],
        })
    } else {
        let z = var.zeros_like()?;
        Ok(Moments::Device { m: z.clone(), v: z })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU path and the tensor path must compute the same AdamW, step after step.
    #[test]
    fn fused_update_matches_reference_formula() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let init = [0.5f32, -1.0, 2.0, 0.0];
        let var = Var::from_slice(&init, 4, &dev)?;
        let config = AdamWConfig {
            lr: 0.1,
            max_grad_norm: None,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], config)?;
        // loss = sum(w^2) → grad = 2w.
        let (mut m, mut v, mut w) = ([0f64; 4], [0f64; 4], init.map(|x| x as f64));
        for t in 1..=3 {
            let loss = var.as_tensor().sqr()?.sum_all()?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            for i in 0..4 {
                let g = 2.0 * w[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                w[i] = w[i] * (1.0 - 0.1 * 0.01) - 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>()?;
        for i in 0..4 {
            assert!(
                (got[i] as f64 - w[i]).abs() < 1e-5,
                "{i}: {} vs {}",
                got[i],
                w[i]
            );
        }
        Ok(())
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_max_norm() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_slice(&[3f32, 4.0], 2, &dev)?;
        let config = AdamWConfig {
            lr: 0.0,
            max_grad_norm: Some(1.0),
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], config)?;
        let grads = var.as_tensor().sqr()?.sum_all()?.backward()?;
        // grad = (6, 8): norm 10, reported before clipping.
        let norm = opt.step(&grads)?;
        assert!((norm - 10.0).abs() < 1e-5);
        let (state, step) = opt.state()?;
        assert_eq!(step, 1);
        // m = 0.1 * clipped grad = 0.1 * (0.6, 0.8).
        let m = state["adamw.m.w"].to_vec1::<f32>()?;
        assert!(
            (m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6,
            "{m:?}"
        );
        Ok(())
    }

    #[test]
    fn grad_norm_spans_every_variable_with_a_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_slice(&[1f32, 2.0], 2, &dev)?;
        let b = Var::from_slice(&[2f32], 1, &dev)?;
        let unused = Var::from_slice(&[5f32], 1, &dev)?;
        let opt = AdamW::new(
            vec![
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("unused".into(), unused),
            ],
            AdamWConfig::default(),
        )?;
        // grads (2, 4) and (4): norm 6.
        let loss = (a.as_tensor().sqr()?.sum_all()? + b.as_tensor().sqr()?.sum_all()?)?;
        assert!((opt.grad_norm(&loss.backward()?)? - 6.0).abs() < 1e-6);
        // A loss that touches none of them: no gradients, norm 0.
        let other = Var::from_slice(&[1f32], 1, &dev)?;
        let grads = other.as_tensor().sqr()?.sum_all()?.backward()?;
        assert_eq!(opt.grad_norm(&grads)?, 0.0);
        Ok(())
    }

    #[test]
    fn state_round_trip_continues_identically() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let run = |split: Option<usize>| -> candle_core::Result<Vec<f32>> {
            let var = Var::from_slice(&[1f32, -2.0, 0.5], 3, &dev)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default())?;
            for i in 0..6 {
                if Some(i) == split {
                    let (state, step) = opt.state()?;
                    let mut fresh =
                        AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default())?;
                    fresh.load_state(&state, step)?;
                    opt = fresh;
                }
                let grads = (var.as_tensor().sqr()?.sum_all()? * 3.0)?.backward()?;
                opt.step(&grads)?;
            }
            var.as_tensor().to_vec1::<f32>()
        };
        assert_eq!(run(None)?, run(Some(3))?);
        Ok(())
    }

    #[test]
    fn missing_state_is_named() -> candle_core::Result<()> {
        let var = Var::from_slice(&[1f32], 1, &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("enc.w".into(), var)], AdamWConfig::default())?;
        let err = opt.load_state(&HashMap::new(), 1).unwrap_err().to_string();
        assert!(err.contains("adamw.m.enc.w"), "{err}");
        Ok(())
    }
}
