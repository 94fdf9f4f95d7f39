//! T5's layer norm (RMS scaling, no mean, no bias), differentiable.

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous_f32, fused_with_weight, row_len, MIN_ROWS_PER_TASK};
use crate::error::Result;

/// T5's layer norm x ⊙ w / √(mean(x²) + eps) over the last dimension, differentiable in `x`
/// and `w`: one pass forward and two backward on the CPU for f32, the composed ops elsewhere.
///
/// Why: composed, it is six tensor ops (square, mean, add, sqrt, divide, scale), each a pass, an
/// allocation and a graph node, and candle's backward adds a zero-filled gradient buffer and an
/// addition per node: ~25 passes over every normalised activation per step, with 32 norms in
/// t5-small.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    let op = RmsNorm { eps: eps as f32 };
    fused_with_weight("rms_norm", x, weight, &[d], op, || {
        let var = x.sqr()?.mean_keepdim(D::Minus1)?;
        let x = x.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(x.broadcast_mul(weight)?)
    })
}

/// Per row: 1 / √(mean(x²) + eps).
#[inline]
fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let sum = acc.iter().sum::<f32>() + tail;
    1.0 / (sum / row.len() as f32 + eps).sqrt()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "peapod-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "rms_norm")?;
        let w = contiguous_f32(w_storage, w_layout, "rms_norm")?;
        let n = row_len(x_layout);
        if w.len() != n {
            bail!("rms_norm: weight of {} for rows of {n}", w.len())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(y, row)| {
                let r = inverse_rms(row, self.eps);
                for ((y, &v), &w) in y.iter_mut().zip(row).zip(w) {
                    *y = v * r * w;
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let x = x.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormGradInput { eps: self.eps })?;
        let dw = x.apply_op2_no_bwd(&g, &RmsNormGradWeight { eps: self.eps })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, w, dy) ↦ dx = r · (dy⊙w − x̂ · mean(dy⊙w⊙x̂)) per row, with r = 1/rms(x), x̂ = r·x.
struct RmsNormGradInput {
    eps: f32,
}

impl CustomOp3 for RmsNormGradInput {
    fn name(&self) -> &'static str {
        "peapod-rms-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "rms_norm backward")?;
        let w = contiguous_f32(w_storage, w_layout, "rms_norm backward")?;
        let g = contiguous_f32(g_storage, g_layout, "rms_norm backward")?;
        let n = row_len(x_layout);
        if w.len() != n || g.len() != x.len() {
            bail!(
                "rms_norm backward: input {:?}, weight {:?}, gradient {:?}",
                x_layout.dims(),
                w_layout.dims(),
                g_layout.dims()
            )
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n).zip(g.par_chunks(n)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(dx, (row, g))| {
                let r = inverse_rms(row, self.eps);
                let dot: f32 = row
                    .iter()
                    .zip(g)
                    .zip(w)
                    .map(|((&v, &g), &w)| g * w * v * r)
                    .sum();
                let c = dot / n as f32;
                for (((dx, &v), &g), &w) in dx.iter_mut().zip(row).zip(g).zip(w) {
                    *dx = r * (g * w - v * r * c);
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }
}

/// (x, dy) ↦ dw = Σ over rows of dy ⊙ x̂.
struct RmsNormGradWeight {
    eps: f32,
}

impl CustomOp2 for RmsNormGradWeight {
    fn name(&self) -> &'static str {
        "peapod-rms-norm-grad-weight"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "rms_norm backward")?;
        let g = contiguous_f32(g_storage, g_layout, "rms_norm backward")?;
        let n = row_len(x_layout);
        if g.len() != x.len() {
            bail!("rms_norm backward: input and gradient sizes differ")
        }
        // Fixed blocks of rows summed in parallel, then the block sums in order: the result
        // does not depend on the thread count or on work stealing.
        let block = MIN_ROWS_PER_TASK * n;
        let partials: Vec<Vec<f32>> = x
            .par_chunks(block)
            .zip(g.par_chunks(block))
            .map(|(xs, gs)| {
                let mut acc = vec![0f32; n];
                for (row, g) in xs.chunks_exact(n).zip(gs.chunks_exact(n)) {
                    let r = inverse_rms(row, self.eps);
                    for ((a, &v), &g) in acc.iter_mut().zip(row).zip(g) {
                        *a += g * v * r;
                    }
                }
                acc
            })
            .collect();
        let mut dw = vec![0f32; n];
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(dw), Shape::from_dims(&[n])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{max_diff, weighted_sum_gradients};
    use candle_core::DType;
    use candle_core::{Device, Var};

    #[test]
    fn fused_rms_norm_matches_the_composed_norm_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // 150 rows (more than one block of the weight-gradient sum) of odd width, read
        // through a transpose; a row of zeros (eps matters) and rows of large values.
        let (rows, d) = (150, 37);
        let mut base = (Tensor::randn(0f32, 1.0, (d, rows), &dev)?.t()? * 3.0)?;
        base = base.slice_assign(&[0..1, 0..d], &Tensor::zeros((1, d), DType::F32, &dev)?)?;
        let x = Var::from_tensor(&base.reshape((3, 50, d))?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, d, &dev)?)?;
        let eps = 1e-6;
        let composed = {
            let var = x.as_tensor().sqr()?.mean_keepdim(D::Minus1)?;
            x.as_tensor()
                .broadcast_div(&(var + eps)?.sqrt()?)?
                .broadcast_mul(w.as_tensor())?
        };
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), eps)?;
        assert!(max_diff(&fused, &composed) < 1e-5);

        let weights = Tensor::randn(0f32, 1.0, (3, 50, d), &dev)?;
        // Relative to the largest gradient: the zero row's is w·g/√eps, in the thousands.
        for var in [&x, &w] {
            let (fused_g, composed_g) = weighted_sum_gradients(&fused, &composed, &weights, var)?;
            let scale = composed_g
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let diff = max_diff(&fused_g, &composed_g);
            assert!(diff < 1e-5 * scale.max(1.0), "{diff} at scale {scale}");
        }
        // Other dtypes take the composed path; a weight of the wrong width is refused.
        let half = rms_norm(
            &x.as_tensor().to_dtype(DType::F64)?,
            &w.as_tensor().to_dtype(DType::F64)?,
            eps,
        )?;
        assert!(max_diff(&half.to_dtype(DType::F32)?, &composed) < 1e-5);
        assert!(rms_norm(x.as_tensor(), &w.as_tensor().narrow(0, 0, 5)?, eps).is_err());
        Ok(())
    }
}
