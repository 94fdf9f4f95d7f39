//! One AdamW update of a parameter, in place.
//!
//! Composed of tensor ops, an AdamW step allocates about ten temporaries per parameter (which
//! dominates small models); on the CPU this is one pass over the parameter, its gradient and its
//! two moments.

use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Tensor};
use rayon::prelude::*;

use crate::error::{KernelError, Result};

/// The scalars of one AdamW step (decoupled weight decay, as in Loshchilov & Hutter), in the
/// precision the kernel computes in. Build it with [`AdamWStep::new`], which derives every
/// scalar in f64 and rounds once, as PyTorch does: rounding β₂ to f32 first and then taking
/// 1 − β₂ in f32 would make 1 − 0.999 come out 1.3e-5 relative too small.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// The weight-decay factor applied to the parameter first, 1 − lr · weight_decay.
    pub decay: f32,
    /// lr / (1 − β₁ᵗ).
    pub step_size: f32,
    /// √(1 − β₂ᵗ).
    pub bias2_sqrt: f32,
    /// Gradient scale from global-norm clipping (1 when not clipped).
    pub clip: f32,
}

impl AdamWStep {
    /// The scalars of step `t` (1-based) from the hyper-parameters, computed in f64.
    pub fn new(
        lr: f64,
        (beta1, beta2): (f64, f64),
        eps: f64,
        weight_decay: f64,
        t: u64,
        clip: f64,
    ) -> Self {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        Self {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            eps: eps as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
            bias2_sqrt: (1.0 - beta2.powi(t)).sqrt() as f32,
            clip: clip as f32,
        }
    }
}

/// Updates `theta` (a CPU f32 tensor, contiguous) and its moments `m`, `v` (one value per
/// element) from `grad`, in PyTorch's order of operations (`torch.optim.AdamW`, single-tensor
/// path): θ ← θ·decay; g ← clip·grad; m ← m + (1−β₁)(g − m); v ← β₂v + (1−β₂)·g·g;
/// θ ← θ − step_size · m / (√v / √(1−β₂ᵗ) + ε).
pub fn adamw_step_in_place(
    theta: &Tensor,
    grad: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    step: &AdamWStep,
) -> Result<()> {
    if theta.dims() != grad.dims() || m.len() != theta.elem_count() || v.len() != m.len() {
        return Err(KernelError::invalid(
            "adamw",
            format!(
                "parameter {:?}, gradient {:?}, moments of {} and {}",
                theta.dims(),
                grad.dims(),
                m.len(),
                v.len()
            ),
        ));
    }
    let op = FusedAdamW {
        step: *step,
        moments: Mutex::new((m, v)),
    };
    theta.inplace_op2(&grad.contiguous()?, &op)?;
    Ok(())
}

struct FusedAdamW<'a> {
    step: AdamWStep,
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl candle_core::InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "peapod-adamw"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        theta_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (theta, grad) else {
            candle_core::bail!("adamw: parameters and gradients must be f32");
        };
        let (Some((t0, t1)), Some((g0, g1))) = (
            theta_layout.contiguous_offsets(),
            grad_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("adamw: parameters and gradients must be contiguous");
        };
        let theta = &mut theta[t0..t1];
        let grad = &grad[g0..g1];
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: poisoned state".into()))?;
        let (m, v) = &mut *guard;
        if theta.len() != grad.len() || m.len() != theta.len() {
            candle_core::bail!("adamw: size mismatch");
        }
        let h = self.step;
        const CHUNK: usize = 1 << 14;
        theta
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((theta, grad), m), v)| {
                for i in 0..theta.len() {
                    let g = grad[i] * h.clip;
                    let mi = m[i] + h.one_minus_beta1 * (g - m[i]);
                    let vi = v[i] * h.beta2 + h.one_minus_beta2 * g * g;
                    m[i] = mi;
                    v[i] = vi;
                    let denom = vi.sqrt() / h.bias2_sqrt + h.eps;
                    theta[i] = theta[i] * h.decay - h.step_size * (mi / denom);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn one_step_matches_pytorchs_formula_and_refuses_mismatched_moments() -> Result<()> {
        let theta = Var::from_slice(&[0.5f32, -1.0, 2.0], 3, &Device::Cpu)?;
        let grad = Tensor::new(&[0.1f32, -0.2, 0.0], &Device::Cpu)?;
        let (mut m, mut v) = (vec![0.01f32, 0.0, -0.02], vec![1e-4f32, 0.0, 4e-4]);
        let step = AdamWStep::new(1e-2, (0.9, 0.999), 1e-8, 0.1, 2, 0.5);
        // The scalars are rounded once from f64: 1 − 0.999 is 0.001 to f32 precision.
        assert_eq!(step.one_minus_beta2, 0.001f32);
        assert_ne!(step.one_minus_beta2, 1.0 - 0.999f32);
        let (m0, v0) = (m.clone(), v.clone());
        adamw_step_in_place(theta.as_tensor(), &grad, &mut m, &mut v, &step)?;
        let got = theta.as_tensor().to_vec1::<f32>()?;
        for (i, (t, g)) in [0.5f64, -1.0, 2.0]
            .iter()
            .zip([0.1f64, -0.2, 0.0])
            .enumerate()
        {
            // The same step in f64.
            let g = g * 0.5;
            let mi = f64::from(m0[i]) * 0.9 + 0.1 * g;
            let vi = f64::from(v0[i]) * 0.999 + 0.001 * g * g;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
            let want = t * (1.0 - 1e-3) - 1e-2 / bc1 * mi / (vi.sqrt() / bc2.sqrt() + 1e-8);
            assert!(
                (f64::from(got[i]) - want).abs() < 1e-6,
                "{i}: {} vs {want}",
                got[i]
            );
            assert!(
                (f64::from(m[i]) - mi).abs() <= 1e-6 * mi.abs().max(1e-9),
                "{i}: m"
            );
            assert!(
                (f64::from(v[i]) - vi).abs() <= 1e-6 * vi.abs().max(1e-12),
                "{i}: v"
            );
        }
        let mut short = vec![0f32; 2];
        assert!(adamw_step_in_place(theta.as_tensor(), &grad, &mut short, &mut v, &step).is_err());
        Ok(())
    }
}
