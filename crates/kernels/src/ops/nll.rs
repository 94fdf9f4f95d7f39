//! The per-row negative log-likelihood of a vocabulary-wide logits matrix, differentiable.
//!
//! Composed, the token NLL over 384 × 32,128 logits (batch 64, 6 target tokens) is about
//! thirteen full passes over a 49 MB tensor between forward and backward. [`nll_rows`] reads the
//! logits once forward (log-sum-exp and the target's logit) and writes the gradient once
//! backward, g ⊙ (softmax − one-hot).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous_f32, is_cpu_f32, row_len};
use crate::error::{KernelError, Result};
use crate::rows::{exp_non_positive, log_sum_exp};

/// Per-row negative log-likelihood −log softmax(logits)[target] of an N×V `logits` matrix and
/// N `targets`, as an N-vector; differentiable with respect to `logits`. Fused on the CPU for
/// f32, composed of candle ops elsewhere (the max shift detached: its gradient cancels).
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.dims() != [n] {
        return Err(KernelError::invalid(
            "nll_rows",
            format!(
                "logits {:?} and targets {:?}",
                logits.dims(),
                targets.dims()
            ),
        ));
    }
    if is_cpu_f32(logits) {
        let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
            return Err(KernelError::invalid(
                "nll_rows",
                format!("target {bad} outside a vocabulary of {v}"),
            ));
        }
        return Ok(logits.contiguous()?.apply_op1(NllRows { targets })?);
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum_exp = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok((log_sum_exp - picked)?.squeeze(1)?)
}

struct NllRows {
    targets: Vec<u32>,
}

impl CustomOp1 for NllRows {
    fn name(&self) -> &'static str {
        "peapod-nll-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "nll")?;
        let v = row_len(layout);
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - row[t as usize])
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(self.targets.len())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad,
            &NllRowsGrad {
                targets: &self.targets,
            },
        )?))
    }
}

/// (logits, nll, g) ↦ g ⊙ (softmax(logits) − one-hot(target)) per row; the row's log-sum-exp
/// is recovered as nll + logit[target], so backward makes a single pass.
struct NllRowsGrad<'a> {
    targets: &'a [u32],
}

impl CustomOp3 for NllRowsGrad<'_> {
    fn name(&self) -> &'static str {
        "peapod-nll-rows-grad"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        nll_storage: &CpuStorage,
        nll_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "nll backward")?;
        let nll = contiguous_f32(nll_storage, nll_layout, "nll backward")?;
        let g = contiguous_f32(g_storage, g_layout, "nll backward")?;
        let v = row_len(x_layout);
        let n = self.targets.len();
        if x.len() != n * v || nll.len() != n || g.len() != n {
            bail!(
                "nll backward: logits {:?}, nll {:?}, gradient {:?} for {n} targets",
                x_layout.dims(),
                nll_layout.dims(),
                g_layout.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .enumerate()
            .for_each(|(r, (dx, row))| {
                let t = self.targets[r] as usize;
                let lse = nll[r] + row[t];
                let g = g[r];
                for (d, &x) in dx.iter_mut().zip(row) {
                    *d = g * exp_non_positive(x - lse);
                }
                dx[t] -= g;
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{max_diff, weighted_sum_gradients};
    use candle_core::{Device, Var};

    #[test]
    fn fused_nll_matches_log_softmax_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        // Vocabulary-wide rows with a large spread, through a transposed (non-contiguous) view.
        let (n, v) = (5, 3001);
        let base = (Tensor::randn(0f32, 1.0, (v, n), &dev)? * 8.0)?;
        let x = Var::from_tensor(&base.t()?)?;
        let targets = Tensor::new(&[0u32, 3000, 17, 17, 2999], &dev)?;
        let weights = Tensor::new(&[1f32, 0.5, -2.0, 0.25, 3.0], &dev)?;

        let fused = nll_rows(x.as_tensor(), &targets)?;
        let log_p = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1)?;
        let composed = log_p.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
        assert!(max_diff(&fused, &composed) < 1e-4);

        let (a, b) = weighted_sum_gradients(&fused, &composed, &weights, &x)?;
        assert!(
            max_diff(&a, &b) < 1e-5,
            "gradients differ by {}",
            max_diff(&a, &b)
        );
        // Each row's gradient is w · (softmax − one-hot): it sums to zero, up to the rounding
        // of 3,001 f32 terms scaled by |w| ≤ 3 (random logits: 1e-5 was occasionally exceeded).
        let row_sums = a.sum(D::Minus1)?;
        assert!(max_diff(&row_sums, &row_sums.zeros_like()?) < 1e-4);

        let outside = Tensor::new(&[0u32, 1, 2, 3, 3001], &dev)?;
        assert!(nll_rows(x.as_tensor(), &outside).is_err());
        assert!(nll_rows(x.as_tensor(), &targets.narrow(0, 0, 4)?).is_err());
        Ok(())
    }
}
