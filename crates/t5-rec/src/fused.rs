//! A fused, differentiable softmax for CPU training.
//!
//! candle-nn's `ops::softmax` is differentiable but composed of five tensor ops (max, sub, exp,
//! sum, div), each a full pass and allocation over the attention scores (batch × heads × T × T,
//! 90 MB at batch 32 and 420 tokens), with as many more in backward; its fused
//! `softmax_last_dim` has no backward at all. Here one pass computes the forward and one the
//! backward, dy ↦ y ⊙ (dy − ⟨dy, y⟩), parallel over rows. Other devices and dtypes keep the
//! composed op.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;

/// Rows per rayon task: enough work to amortise scheduling on short rows.
const MIN_ROWS_PER_TASK: usize = 64;

/// Softmax over the last dimension, differentiable, one pass each way on the CPU for f32.
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        Ok(x.contiguous()?.apply_op1(Softmax)?)
    } else {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    }
}

fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: f32 only")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

fn row_len(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "t5-rec-softmax"
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
                    *y = (v - max).exp();
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
        "t5-rec-softmax-grad"
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

/// Attention for incremental decoding on the CPU: `q` (G, Q, d), `k` and `v` (G, T, d), `bias`
/// (G, T) added to every query's scores; returns softmax(q·kᵀ + bias)·v as (G, Q, d). `None`
/// when the tensors are not f32 on the CPU (the caller keeps candle's batched matmul).
///
/// Why: one decoding step attends with a single query per beam, and candle's CPU matmul runs
/// one parallel gemm call per batch entry — 20 beams × 32 inputs × 8 heads = 5,120 calls of a
/// 1 × 64 by 64 × t product per layer and step, dominated by call and thread hand-off costs.
/// Here each (group, query) row is a few hundred flops in a plain loop, groups in parallel.
/// (Cross-attention, 20 queries per group, stays with the batched gemm: measured faster there.)
pub(crate) fn small_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
) -> Result<Option<Tensor>> {
    let all_cpu_f32 = [q, k, v, bias]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if !all_cpu_f32 {
        return Ok(None);
    }
    let (g, nq, d) = q.dims3()?;
    let (gk, t, dk) = k.dims3()?;
    if gk != g || dk != d || v.dims() != [g, t, d] || bias.dims() != [g, t] {
        return Err(crate::error::T5Error::InvalidInput(format!(
            "small_attention: q {:?}, k {:?}, v {:?}, bias {:?}",
            q.dims(),
            k.dims(),
            v.dims(),
            bias.dims()
        )));
    }
    let (q, k, v, bias) = (
        q.contiguous()?,
        k.contiguous()?,
        v.contiguous()?,
        bias.contiguous()?,
    );
    // Borrow the storages instead of copying them out: the self-attention cache is read whole
    // at every step.
    let guards = [&q, &k, &v, &bias].map(|t| t.storage_and_layout());
    let mut slices = Vec::with_capacity(4);
    for (storage, layout) in &guards {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            return Ok(None);
        };
        slices.push(contiguous_f32(cpu, layout, "small_attention")?);
    }
    let (q, k, v, bias) = (slices[0], slices[1], slices[2], slices[3]);
    let mut out = vec![0f32; g * nq * d];
    out.par_chunks_mut(nq * d)
        .enumerate()
        .with_min_len(16)
        .for_each(|(group, out)| {
            let keys = &k[group * t * d..(group + 1) * t * d];
            let values = &v[group * t * d..(group + 1) * t * d];
            let bias = &bias[group * t..(group + 1) * t];
            let mut scores = vec![0f32; t];
            for (qi, ctx) in out.chunks_exact_mut(d).enumerate() {
                let query = &q[(group * nq + qi) * d..(group * nq + qi + 1) * d];
                let mut max = f32::NEG_INFINITY;
                for ((s, key), b) in scores.iter_mut().zip(keys.chunks_exact(d)).zip(bias) {
                    *s = query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() + b;
                    max = max.max(*s);
                }
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                for (w, value) in scores.iter().zip(values.chunks_exact(d)) {
                    let w = w * inv;
                    for (c, x) in ctx.iter_mut().zip(value) {
                        *c += w * x;
                    }
                }
            }
        });
    Ok(Some(Tensor::from_vec(
        out,
        (g, nq, d),
        &candle_core::Device::Cpu,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

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

        let g_fused = (fused * &w)?.sum_all()?.backward()?;
        let g_composed = (composed * &w)?.sum_all()?.backward()?;
        let (a, b) = (
            g_fused.get(x.as_tensor()).expect("fused gradient"),
            g_composed.get(x.as_tensor()).expect("composed gradient"),
        );
        assert!(
            max_diff(a, b) < 1e-5,
            "gradients differ by {}",
            max_diff(a, b)
        );
        Ok(())
    }

    #[test]
    fn small_attention_matches_matmul_attention() -> Result<()> {
        let dev = Device::Cpu;
        let (g, nq, t, d) = (6, 3, 5, 4);
        let q = Tensor::randn(0f32, 1.0, (g, nq, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (g, t, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (g, t, d), &dev)?;
        let mut b = vec![0f32; g * t];
        b[3] = -1e9; // a masked key
        b[7] = 0.5;
        let bias = Tensor::from_vec(b, (g, t), &dev)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(&bias.unsqueeze(1)?)?;
        let want = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?;
        let got = small_attention(&q, &k, &v, &bias)?.expect("cpu f32");
        assert!(max_diff(&got, &want) < 1e-5);
        let half = q.to_dtype(DType::F16)?;
        assert!(small_attention(&half, &k, &v, &bias)?.is_none());
        assert!(small_attention(&q, &k.narrow(0, 0, 5)?, &v, &bias).is_err());
        Ok(())
    }
}
