//! Attention kernels of incremental decoding.

use rayon::prelude::*;

use super::contiguous_f32;
use crate::error::{KernelError, Result};
use crate::rows::exp_non_positive;
use candle_core::Tensor;

/// Single-query self-attention of incremental decoding over a cache kept per step (CPU f32):
/// row `r`, head `h` attends, at each earlier step `s`, to row `origin[s][r]` of that step's keys
/// and values `kv[s]` (rows × H·d_kv), and at the current (last) step to row `current[r]`;
/// `bias` is the position bias, H × steps. Returns the context, rows × H·d_kv.
///
/// Why: with the cache stored per step, reordering beams is a permutation of `origin` and
/// appending a step stores one tensor; the dense cache was concatenated and copied every step.
/// And with a single query per beam, candle's CPU matmul would run one parallel gemm call per
/// (row, head) — 5,120 calls of a 1 × 64 by 64 × t product per layer and step at 20 beams ×
/// 32 inputs × 8 heads, dominated by call and thread hand-off costs; here each (row, head) is a
/// few hundred flops in a plain loop, rows in parallel.
pub fn cached_attention(
    q: &Tensor,
    kv: &[(Tensor, Tensor)],
    origin: &[Vec<u32>],
    current: &[u32],
    bias: &[f32],
    (heads, dk): (usize, usize),
) -> Result<Vec<f32>> {
    let width = heads * dk;
    let steps = kv.len();
    let bad = |what: String| KernelError::invalid("cached_attention", what);
    if steps != origin.len() + 1 || bias.len() != heads * steps {
        return Err(bad(format!(
            "{steps} cached steps, {} origins, bias of {} for {heads} heads",
            origin.len(),
            bias.len()
        )));
    }
    let q_guard = q.storage_and_layout();
    let candle_core::Storage::Cpu(q_cpu) = &*q_guard.0 else {
        return Err(bad("the query is not on the CPU".into()));
    };
    let q = contiguous_f32(q_cpu, q_guard.1, "cached_attention")?;
    let rows = q.len() / width.max(1);
    let guards: Vec<_> = kv
        .iter()
        .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
        .collect();
    let mut keys = Vec::with_capacity(steps);
    let mut values = Vec::with_capacity(steps);
    for ((k_storage, k_layout), (v_storage, v_layout)) in &guards {
        let (candle_core::Storage::Cpu(k), candle_core::Storage::Cpu(v)) =
            (&**k_storage, &**v_storage)
        else {
            return Err(bad("the cache is not on the CPU".into()));
        };
        let (k, v) = (
            contiguous_f32(k, k_layout, "cached_attention")?,
            contiguous_f32(v, v_layout, "cached_attention")?,
        );
        if k.len() != v.len() || k.len() % width != 0 {
            return Err(bad(format!(
                "keys of {} and values of {}",
                k.len(),
                v.len()
            )));
        }
        keys.push(k);
        values.push(v);
    }
    let source = |s: usize| -> &[u32] {
        if s + 1 == steps {
            current
        } else {
            &origin[s]
        }
    };
    for (s, step_keys) in keys.iter().enumerate() {
        let src = source(s);
        let available = step_keys.len() / width;
        if src.len() != rows || src.iter().any(|&i| i as usize >= available) {
            return Err(bad(format!(
                "step {s}: {} source rows for {rows} queries, {available} cached",
                src.len()
            )));
        }
    }
    let mut out = vec![0f32; rows * width];
    out.par_chunks_mut(width)
        .enumerate()
        .with_min_len(16)
        .for_each(|(r, ctx)| {
            let mut scores = vec![0f32; steps];
            for h in 0..heads {
                let query = &q[r * width + h * dk..r * width + (h + 1) * dk];
                let mut max = f32::NEG_INFINITY;
                for (s, score) in scores.iter_mut().enumerate() {
                    let at = source(s)[r] as usize * width + h * dk;
                    let key = &keys[s][at..at + dk];
                    *score = query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>()
                        + bias[h * steps + s];
                    max = max.max(*score);
                }
                let mut sum = 0f32;
                for score in scores.iter_mut() {
                    *score = exp_non_positive(*score - max);
                    sum += *score;
                }
                let inv = 1.0 / sum;
                let ctx = &mut ctx[h * dk..(h + 1) * dk];
                for (s, &w) in scores.iter().enumerate() {
                    let at = source(s)[r] as usize * width + h * dk;
                    let w = w * inv;
                    for (c, x) in ctx.iter_mut().zip(&values[s][at..at + dk]) {
                        *c += w * x;
                    }
                }
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::max_diff;
    use candle_core::{Device, D};

    #[test]
    fn cached_attention_matches_matmul_attention_over_gathered_keys() -> Result<()> {
        let dev = Device::Cpu;
        // 4 query rows, 3 heads of width 5; two earlier steps with 2 and 4 cached rows that the
        // queries reach through (repeating) origins, then the current step, row for row.
        let (n, heads, dk) = (4, 3, 5);
        let rows_per_step = [2usize, 4, n];
        let origin: Vec<Vec<u32>> = vec![vec![1, 0, 0, 1], vec![3, 3, 0, 2]];
        let current: Vec<u32> = (0..n as u32).collect();
        let kv: Vec<(Tensor, Tensor)> = rows_per_step
            .iter()
            .map(|&r| {
                Ok((
                    Tensor::randn(0f32, 1.0, (r, heads * dk), &dev)?,
                    Tensor::randn(0f32, 1.0, (r, heads * dk), &dev)?,
                ))
            })
            .collect::<Result<_>>()?;
        let q = Tensor::randn(0f32, 1.0, (n, heads * dk), &dev)?;
        let mut b = vec![0f32; heads * 3];
        b[1] = -1e9; // head 0 never sees step 1
        b[5] = 0.5;
        let got = cached_attention(&q, &kv, &origin, &current, &b, (heads, dk))?;
        let got = Tensor::from_vec(got, (n, heads * dk), &dev)?;

        // The same through matmuls: gather each row's keys and values step by step.
        let gather = |which: usize| -> Result<Tensor> {
            let per_step = (0..3)
                .map(|s| {
                    let src = if s < 2 { &origin[s] } else { &current };
                    let idx = Tensor::new(src.as_slice(), &dev)?;
                    let t = if which == 0 { &kv[s].0 } else { &kv[s].1 };
                    Ok(t.index_select(&idx, 0)?.reshape((n, heads, 1, dk))?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&per_step, 2)?)
        };
        let (k, v) = (gather(0)?, gather(1)?);
        let bias = Tensor::from_vec(b.clone(), (1, heads, 1, 3), &dev)?;
        let scores = q
            .reshape((n, heads, 1, dk))?
            .matmul(&k.t()?)?
            .broadcast_add(&bias)?;
        let want = candle_nn::ops::softmax(&scores, D::Minus1)?
            .matmul(&v)?
            .reshape((n, heads * dk))?;
        assert!(max_diff(&got, &want) < 1e-5);

        let short = vec![origin[0].clone(), vec![0, 1]];
        assert!(cached_attention(&q, &kv, &short, &current, &b, (heads, dk)).is_err());
        let outside = vec![vec![2, 0, 0, 1], origin[1].clone()];
        assert!(cached_attention(&q, &kv, &outside, &current, &b, (heads, dk)).is_err());
        assert!(cached_attention(&q, &kv, &origin, &current, &b[1..], (heads, dk)).is_err());
        Ok(())
    }
}
