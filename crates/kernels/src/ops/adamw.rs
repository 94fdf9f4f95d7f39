//! One AdamW update of a parameter, in place.
//!
//! Composed of tensor ops, an AdamW step allocates about ten temporaries per parameter (which
//! dominates small models); on the CPU this is one pass over the parameter, its gradient and its
//! two moments.

use std::sync::Mutex;

use candle_core::{CpuStorage, Layout, Tensor};
use rayon::prelude::*;

use crate::error::{KernelError, Result};

/// The scalars of one AdamW step (decoupled weight decay, as in Loshchilov & Hutter and
/// PyTorch), in the precision the kernel computes in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The weight-decay factor applied to the parameter, 1 − lr · weight_decay.
    pub decay: f32,
    /// Bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub bias1: f32,
    pub bias2: f32,
    /// Gradient scale from global-norm clipping (1 when not clipped).
    pub clip: f32,
}

/// Updates `theta` (a CPU f32 tensor, contiguous) and its moments `m`, `v` (one value per
/// element) from `grad`: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ·decay − lr·m̂/(√v̂ + ε),
/// with g the clipped gradient.
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
                    let mi = h.beta1 * m[i] + (1.0 - h.beta1) * g;
                    let vi = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
                    m[i] = mi;
                    v[i] = vi;
                    let update = (mi / h.bias1) / ((vi / h.bias2).sqrt() + h.eps);
                    theta[i] = theta[i] * h.decay - h.lr * update;
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
    fn one_step_matches_the_formula_and_refuses_mismatched_moments() -> Result<()> {
        let theta = Var::from_slice(&[0.5f32, -1.0, 2.0], 3, &Device::Cpu)?;
        let grad = Tensor::new(&[0.1f32, -0.2, 0.0], &Device::Cpu)?;
        let (mut m, mut v) = (vec![0.01f32, 0.0, -0.02], vec![1e-4f32, 0.0, 4e-4]);
        let step = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            decay: 1.0 - 1e-2 * 0.1,
            bias1: 1.0 - 0.9f32.powi(2),
            bias2: 1.0 - 0.999f32.powi(2),
            clip: 0.5,
        };
        let (m0, v0) = (m.clone(), v.clone());
        adamw_step_in_place(theta.as_tensor(), &grad, &mut m, &mut v, &step)?;
        let got = theta.as_tensor().to_vec1::<f32>()?;
        for (i, (t, g)) in [0.5f32, -1.0, 2.0]
            .iter()
            .zip([0.1f32, -0.2, 0.0])
            .enumerate()
        {
            let g = g * 0.5;
            let mi = step.beta1 * m0[i] + (1.0 - step.beta1) * g;
            let vi = step.beta2 * v0[i] + (1.0 - step.beta2) * g * g;
            let want =
                t * step.decay - 1e-2 * (mi / step.bias1) / ((vi / step.bias2).sqrt() + 1e-8);
            assert!((got[i] - want).abs() < 1e-6, "{i}: {} vs {want}", got[i]);
            assert!(
                (m[i] - mi).abs() <= 1e-6 * mi.abs(),
                "{i}: m {} vs {mi}",
                m[i]
            );
            assert!(
                (v[i] - vi).abs() <= 1e-6 * vi.abs(),
                "{i}: v {} vs {vi}",
                v[i]
            );
        }
        let mut short = vec![0f32; 2];
        assert!(adamw_step_in_place(theta.as_tensor(), &grad, &mut short, &mut v, &step).is_err());
        Ok(())
    }
}
