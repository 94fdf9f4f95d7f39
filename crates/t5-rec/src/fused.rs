//! Fused, differentiable softmax, cross-entropy, RMS norm and linear layers for CPU training.
//!
//! candle-nn's `ops::softmax` is differentiable but composed of five tensor ops (max, sub, exp,
//! sum, div), each a full pass and allocation over the attention scores (batch × heads × T × T,
//! 90 MB at batch 32 and 420 tokens), with as many more in backward; its fused
//! `softmax_last_dim` has no backward at all. Here one pass computes the forward and one the
//! backward, dy ↦ y ⊙ (dy − ⟨dy, y⟩), parallel over rows. Other devices and dtypes keep the
//! composed op.
//!
//! The loss is the same story at vocabulary width: composed, the token NLL over 384 × 32,128
//! logits (batch 64, 6 target tokens) is about thirteen full passes over a 49 MB tensor between
//! forward and backward. [`nll_rows`] reads the logits once forward (log-sum-exp and the target's
//! logit) and writes the gradient once backward, g ⊙ (softmax − one-hot).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D,
};
use peapod_beam::{exp_non_positive, log_sum_exp};
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

pub(crate) fn contiguous_f32<'a>(
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

/// Per-row negative log-likelihood −log softmax(logits)[target] of an N×V `logits` matrix and
/// N `targets`, as an N-vector; differentiable with respect to `logits`. Fused on the CPU for
/// f32, composed of candle ops elsewhere (the max shift detached: its gradient cancels).
pub(crate) fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.dims() != [n] {
        return Err(crate::error::T5Error::InvalidInput(format!(
            "nll_rows: logits {:?} and targets {:?}",
            logits.dims(),
            targets.dims()
        )));
    }
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= v) {
            return Err(crate::error::T5Error::InvalidInput(format!(
                "nll_rows: target {bad} outside a vocabulary of {v}"
            )));
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
        "t5-rec-nll-rows"
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
        "t5-rec-nll-rows-grad"
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

/// x · wᵀ for `x` (…, d_in) and `w` (d_out, d_in), differentiable in both: one graph node on
/// the CPU for f32 (`None` elsewhere: the caller keeps reshape + matmul).
///
/// Why: composed, a linear layer on a (B, T, d) input is four graph nodes (reshape to rows,
/// transpose of the weight, matmul, reshape back), and candle's backward gives every node a
/// zero-filled gradient buffer plus an addition — three extra passes over the activations per
/// layer, 96 layers in t5-small. Here the forward is one gemm call and the backward two
/// (dx = dy · w, dw = dyᵀ · x), all written straight into their outputs.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let d_in = x.dims().last().copied().unwrap_or(0);
    let fusable = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.rank() == 2
        && w.dim(1)? == d_in
        && d_in > 0
        && x.rank() >= 1;
    if !fusable {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(
        &w.contiguous()?,
        RowsTimesWeight { transposed: true },
    )?))
}

/// out (m×n, row-major) = scale · a · b, where a is m×k and b is k×n, each given by its slice
/// and its (row, column) strides in elements. One gemm call over all threads, written straight
/// into `out` (nothing allocated or zeroed).
///
/// # Safety
/// The slices must hold every element the strides address, and `out` must have m·n entries.
pub(crate) unsafe fn gemm_into(
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        out.as_mut_ptr(),
        1,
        n as isize,
        false,
        a.as_ptr(),
        a_cs as isize,
        a_rs as isize,
        b.as_ptr(),
        b_cs as isize,
        b_rs as isize,
        0.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
    )
}

/// Rows of `x` (…×k) times a weight matrix `w`, read as wᵀ when `transposed` (w: n×k, the
/// forward of a linear layer) or as is (w: k×n, the input gradient dy · w): …×n. One gemm call.
struct RowsTimesWeight {
    transposed: bool,
}

impl CustomOp2 for RowsTimesWeight {
    fn name(&self) -> &'static str {
        if self.transposed {
            "t5-rec-linear"
        } else {
            "t5-rec-linear-grad-input"
        }
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let w = contiguous_f32(w_storage, w_layout, self.name())?;
        let (w_rows, w_cols) = w_layout.shape().dims2()?;
        let (k, n) = if self.transposed {
            (w_cols, w_rows)
        } else {
            (w_rows, w_cols)
        };
        if row_len(x_layout) != k || w.len() != n * k {
            bail!(
                "{}: input {:?}, weight {:?}",
                self.name(),
                x_layout.dims(),
                w_layout.dims()
            )
        }
        let rows = x.len() / k;
        let mut out = vec![0f32; rows * n];
        // w's strides as the k×n right-hand side: transposed, its rows are w's columns.
        let w_strides = if self.transposed { (1, k) } else { (n, 1) };
        // SAFETY: x is rows×k and w holds n·k values addressed by those strides, both checked.
        unsafe {
            gemm_into(&mut out, (rows, n, k), x, (k, 1), w, w_strides, 1.0);
        }
        let mut dims = x_layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let dx = g.apply_op2_no_bwd(
            w,
            &RowsTimesWeight {
                transposed: !self.transposed,
            },
        )?;
        // y = x·wᵀ: dw = dyᵀ·x; y = x·w: dw = xᵀ·dy.
        let dw = if self.transposed {
            g.apply_op2_no_bwd(x, &LinearGradWeight)?
        } else {
            x.contiguous()?.apply_op2_no_bwd(&g, &LinearGradWeight)?
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// (dy: …×d_out, x: …×d_in) ↦ dw = dyᵀ · x, d_out×d_in.
struct LinearGradWeight;

impl CustomOp2 for LinearGradWeight {
    fn name(&self) -> &'static str {
        "t5-rec-linear-grad-weight"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        x_storage: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(g_storage, g_layout, "linear backward")?;
        let x = contiguous_f32(x_storage, x_layout, "linear backward")?;
        let (d_out, d_in) = (row_len(g_layout), row_len(x_layout));
        let rows = g.len() / d_out;
        if x.len() != rows * d_in {
            bail!(
                "linear backward: gradient {:?}, input {:?}",
                g_layout.dims(),
                x_layout.dims()
            )
        }
        let mut out = vec![0f32; d_out * d_in];
        // SAFETY: dyᵀ reads g (rows×d_out) with swapped strides; x is rows×d_in; both checked.
        unsafe {
            gemm_into(
                &mut out,
                (d_out, d_in, rows),
                g,
                (1, d_out),
                x,
                (d_in, 1),
                1.0,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[d_out, d_in])))
    }
}

/// T5's layer norm x ⊙ w / √(mean(x²) + eps) over the last dimension, differentiable in `x`
/// and `w`: one pass forward and two backward on the CPU for f32 (`None` elsewhere: the caller
/// keeps the composed op).
///
/// Why: composed, it is six tensor ops (square, mean, add, sqrt, divide, scale), each a pass, an
/// allocation and a graph node, and candle's backward adds a zero-filled gradient buffer and an
/// addition per node: ~25 passes over every normalised activation per step, with 32 norms in
/// t5-small.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let d = x.dims().last().copied().unwrap_or(0);
    let fusable = x.device().is_cpu()
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && weight.dims() == [d]
        && d > 0;
    if !fusable {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        RmsNorm { eps: eps as f32 },
    )?))
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
        "t5-rec-rms-norm"
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
        "t5-rec-rms-norm-grad-input"
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
        "t5-rec-rms-norm-grad-weight"
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
pub(crate) fn cached_attention(
    q: &Tensor,
    kv: &[(Tensor, Tensor)],
    origin: &[Vec<u32>],
    current: &[u32],
    bias: &[f32],
    (heads, dk): (usize, usize),
) -> Result<Vec<f32>> {
    let width = heads * dk;
    let steps = kv.len();
    let bad =
        |what: String| crate::error::T5Error::InvalidInput(format!("cached_attention: {what}"));
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
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// Gradients with respect to `x` of Σ w ⊙ fused and of Σ w ⊙ composed.
    fn weighted_sum_gradients(
        fused: &Tensor,
        composed: &Tensor,
        w: &Tensor,
        x: &Var,
    ) -> Result<(Tensor, Tensor)> {
        let g_fused = (fused * w)?.sum_all()?.backward()?;
        let g_composed = (composed * w)?.sum_all()?.backward()?;
        Ok((
            g_fused.get(x.as_tensor()).expect("fused gradient").clone(),
            g_composed
                .get(x.as_tensor())
                .expect("composed gradient")
                .clone(),
        ))
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

        let (a, b) = weighted_sum_gradients(&fused, &composed, &w, &x)?;
        assert!(
            max_diff(&a, &b) < 1e-5,
            "gradients differ by {}",
            max_diff(&a, &b)
        );
        Ok(())
    }

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
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), eps)?.expect("cpu f32");
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
        // Not fusable: the caller keeps the composed op.
        assert!(rms_norm(&x.as_tensor().to_dtype(DType::F16)?, w.as_tensor(), eps)?.is_none());
        assert!(rms_norm(x.as_tensor(), &w.as_tensor().narrow(0, 0, 5)?, eps)?.is_none());
        Ok(())
    }

    #[test]
    fn fused_linear_matches_matmul_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // A 3-D input read through a transpose, and a weight read through one too.
        let (b, t, d_in, d_out) = (3, 5, 7, 4);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, d_in, t), &dev)?.transpose(1, 2)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (d_in, d_out), &dev)?.t()?)?;
        let composed = x
            .as_tensor()
            .reshape((b * t, d_in))?
            .matmul(&w.as_tensor().t()?)?
            .reshape((b, t, d_out))?;
        let fused = linear(x.as_tensor(), w.as_tensor())?.expect("cpu f32");
        assert_eq!(fused.dims(), &[b, t, d_out]);
        assert!(max_diff(&fused, &composed) < 1e-5);
        let weights = Tensor::randn(0f32, 1.0, (b, t, d_out), &dev)?;
        for var in [&x, &w] {
            let (a, c) = weighted_sum_gradients(&fused, &composed, &weights, var)?;
            assert_eq!(a.dims(), var.dims());
            assert!(max_diff(&a, &c) < 1e-4, "{}", max_diff(&a, &c));
        }
        assert!(
            linear(x.as_tensor(), &w.as_tensor().t()?)?.is_none(),
            "wrong width"
        );
        assert!(linear(&x.as_tensor().to_dtype(DType::F16)?, w.as_tensor())?.is_none());
        Ok(())
    }

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
