//! Softmax over the last dimension, differentiable.
//!
//! candle-nn's `ops::softmax` is differentiable but composed of five tensor ops (max, sub, exp,
//! sum, div), each a full pass and allocation over the attention scores (batch × heads × T × T,
//! 90 MB at batch 32 and 420 tokens), with as many more in backward; its fused
//! `softmax_last_dim` has no backward at all. Here one pass computes the forward and one the
//! backward, dy ↦ y ⊙ (dy − ⟨dy, y⟩), parallel over rows. Other devices and dtypes keep the
//! composed op.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous_f32, is_cpu_f32, row_len, MIN_ROWS_PER_TASK};
use crate::error::Result;
use crate::rows::exp_non_positive;

/// Softmax over the last dimension, differentiable, one pass each way on the CPU for f32.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_cpu_f32(x) {
        Ok(x.contiguous()?.apply_op1(Softmax)?)
    } else {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "peapod-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "softmax")?;
        let n = row_len(layout);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(y, row)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (y, &v) in y.iter_mut().zip(row) {
                    *y = exp_non_positive(v - max);
                    sum += *y;
                }
                let inv = 1.0 / sum;
                y.iter_mut().for_each(|y| *y *= inv);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(
            res.contiguous()?.apply_op2_no_bwd(&grad, &SoftmaxGrad)?,
        ))
    }
}

/// (y, dy) ↦ y ⊙ (dy − ⟨dy, y⟩) per row.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "peapod-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        y_storage: &CpuStorage,
        y_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(y_storage, y_layout, "softmax backward")?;
        let g = contiguous_f32(g_storage, g_layout, "softmax backward")?;
        if y_layout.dims() != g_layout.dims() {
            bail!(
                "softmax backward: output {:?} and gradient {:?} differ",
                y_layout.dims(),
                g_layout.dims()
            )
        }
        let n = row_len(y_layout);
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dx, (y, g))| {
                let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *dx = y * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{max_diff, weighted_sum_gradients};
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_softmax_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        // Rows with large magnitudes and a masked (-1e9) entry, on a non-contiguous view.
        let base = (Tensor::randn(0f32, 4.0, (3, 5, 7, 6), &dev)? * 3.0)?;
        let mask = Tensor::from_vec(vec![0f32, 0., 0., 0., 0., -1e9, 0.], (1, 1, 7, 1), &dev)?;
        let x = Var::from_tensor(&base.broadcast_add(&mask)?.transpose(2, 3)?)?;
        let w = Tensor::randn(0f32, 1.0, (3, 5, 6, 7), &dev)?;

        let fused = softmax_last_dim(x.as_tensor())?;
        let composed = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
        assert!(max_diff(&fused, &composed) < 1e-6);
        let sums = fused.sum(D::Minus1)?;
        assert!(max_diff(&sums, &Tensor::ones_like(&sums)?) < 1e-5);

        let (a, b) = weighted_sum_gradients(&fused, &composed, &w, &x)?;
        assert!(
            max_diff(&a, &b) < 1e-5,
            "gradients differ by {}",
            max_diff(&a, &b)
        );
        Ok(())
    }
}
