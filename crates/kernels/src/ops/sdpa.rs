//! Full-sequence attention for training and teacher-forced scoring, differentiable, fused:
//! softmax(q·kᵀ + position bias + masks) with dropout, times v, for every (input, head) block
//! in turn, without ever holding the batch × heads × Tq × Tk scores or probabilities.
//!
//! Composed, one encoder attention at 426 tokens and batch 64 (tiny T5) built six tensors of
//! 64 × 4 × 426² floats (190 MB each: the combined bias, the scores, their sum, the softmax, the
//! dropout mask and its product) and as many in backward, each a full pass over memory. Here a
//! block's scores (Tq × Tk, under a megabyte) are computed by one gemm call, normalised and
//! dropped out in cache, and multiplied by v straight into the output; only each row's maximum
//! and inverse sum are kept, and the backward pass recomputes the block's probabilities from
//! them (the exact values of the forward pass) and its dropout mask from the counters.
//!
//! Layouts are the projections' own: q is (B, Tq, H·D), keys and values one tensor (B, Tk,
//! 2·H·D) — keys in the first H·D columns, values in the rest, as one linear layer over the
//! concatenated weights produces them — and the output (B, Tq, H·D), ready for the output
//! projection: no head-splitting copies either way. Other devices and dtypes run the composed
//! ops.

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous_f32, is_cpu_f32, CounterDropout};
use crate::error::{KernelError, Result};
use crate::rows::exp_non_positive;

/// The additive bias of a masked position: large but finite, so that a fully masked row is a
/// uniform softmax instead of NaN.
pub const ATTENTION_MASK_BIAS: f64 = -1e9;

/// What an attention call masks and drops, besides its learned position bias.
#[derive(Debug, Clone, Default)]
pub struct AttentionMasks {
    /// (B, Tk) keep flags (1 = attend, 0 = padding), any dtype.
    pub key_keep: Option<Tensor>,
    /// Query i attends to keys j ≤ i only.
    pub causal: bool,
    /// Dropout of the attention probabilities, element (b, h, i, j) from counter
    /// ((b·H + h)·Tq + i)·Tk + j — as a dropout applied to the (B, H, Tq, Tk) probabilities.
    pub dropout: Option<CounterDropout>,
}

/// softmax(q kᵀ + bias + masks) (dropped out) · v for `heads` heads: q (B, Tq, H·D), kv (B, Tk,
/// 2·H·D) with the keys first, `bias` (1, H, Tq, Tk) or none. Returns (B, Tq, H·D).
/// Differentiable in q, kv and bias. No 1/√D scaling (T5 folds it into the initialisation).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use peapod_kernels::ops::{attention, AttentionMasks};
/// let dev = Device::Cpu;
/// let q = Tensor::randn(0f32, 1.0, (2, 3, 8), &dev).unwrap();
/// let kv = Tensor::randn(0f32, 1.0, (2, 5, 16), &dev).unwrap();
/// let out = attention(&q, &kv, None, 2, &AttentionMasks::default()).unwrap();
/// assert_eq!(out.dims(), &[2, 3, 8]);
/// ```
pub fn attention(
    q: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    heads: usize,
    masks: &AttentionMasks,
) -> Result<Tensor> {
    let shape = Shapes::of(q, kv, bias, heads, masks)?;
    let fused = is_cpu_f32(q) && kv.dtype() == DType::F32;
    if !fused || bias.is_some_and(|b| b.dtype() != DType::F32) {
        return composed(q, kv, bias, &shape, masks);
    }
    let key_bias = match &masks.key_keep {
        Some(keep) => keep
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|k| {
                if k > 0.0 {
                    0.0
                } else {
                    ATTENTION_MASK_BIAS as f32
                }
            })
            .collect(),
        None => Vec::new(),
    };
    let (has_bias, bias_grad) = (bias.is_some(), bias.is_some_and(|b| b.track_op()));
    let bias = match bias {
        Some(b) => b.contiguous()?,
        // Unused: the op reads it only when `has_bias`.
        None => Tensor::zeros(1, DType::F32, q.device())?,
    };
    let op = FusedAttention {
        shape,
        has_bias,
        bias_grad,
        key_bias,
        causal: masks.causal,
        dropout: masks.dropout,
        row_stats: Mutex::new(Vec::new()),
    };
    Ok(q.contiguous()?.apply_op3(&kv.contiguous()?, &bias, op)?)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Shapes {
    batch: usize,
    tq: usize,
    tk: usize,
    heads: usize,
    d: usize,
}

impl Shapes {
    fn of(
        q: &Tensor,
        kv: &Tensor,
        bias: Option<&Tensor>,
        heads: usize,
        masks: &AttentionMasks,
    ) -> Result<Self> {
        let bad = |what: String| KernelError::invalid("attention", what);
        let (batch, tq, width) = q.dims3()?;
        let (kv_batch, tk, kv_width) = kv.dims3()?;
        if heads == 0 || width % heads != 0 || kv_batch != batch || kv_width != 2 * width {
            return Err(bad(format!(
                "q {:?} and keys/values {:?} for {heads} heads",
                q.dims(),
                kv.dims()
            )));
        }
        if let Some(b) = bias {
            if b.elem_count() != heads * tq * tk || b.dims().last() != Some(&tk) {
                return Err(bad(format!(
                    "a bias of {:?} for {heads} heads, {tq} queries and {tk} keys",
                    b.dims()
                )));
            }
        }
        if let Some(keep) = &masks.key_keep {
            if keep.dims() != [batch, tk] {
                return Err(bad(format!(
                    "a key mask of {:?} for {batch} inputs of {tk} keys",
                    keep.dims()
                )));
            }
        }
        Ok(Self {
            batch,
            tq,
            tk,
            heads,
            d: width / heads,
        })
    }

    fn width(&self) -> usize {
        self.heads * self.d
    }
}

/// The same attention from candle ops (other devices and dtypes, and the tests' reference).
fn composed(
    q: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    s: &Shapes,
    masks: &AttentionMasks,
) -> Result<Tensor> {
    let (b, h, d, w) = (s.batch, s.heads, s.d, s.width());
    let split = |x: Tensor, t: usize| -> Result<Tensor> {
        Ok(x.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()?)
    };
    let q4 = split(q.clone(), s.tq)?;
    let k4 = split(kv.narrow(2, 0, w)?, s.tk)?;
    let v4 = split(kv.narrow(2, w, w)?, s.tk)?;
    let mut additive = match bias {
        Some(bias) => bias.reshape((1, h, s.tq, s.tk))?.to_dtype(q.dtype())?,
        None => Tensor::zeros((1, h, s.tq, s.tk), q.dtype(), q.device())?,
    };
    if let Some(keep) = &masks.key_keep {
        let pad = ((keep.to_dtype(DType::F32)? - 1.0)? * -ATTENTION_MASK_BIAS)?
            .reshape((b, 1, 1, s.tk))?
            .to_dtype(q.dtype())?;
        additive = additive.broadcast_add(&pad)?;
    }
    if masks.causal {
        let causal: Vec<f32> = (0..s.tq)
            .flat_map(|i| {
                (0..s.tk).map(move |j| {
                    if j > i {
                        ATTENTION_MASK_BIAS as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let causal =
            Tensor::from_vec(causal, (1, 1, s.tq, s.tk), q.device())?.to_dtype(q.dtype())?;
        additive = additive.broadcast_add(&causal)?;
    }
    let scores = q4.matmul(&k4.t()?)?.broadcast_add(&additive)?;
    let mut probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    if let Some(drop) = masks.dropout {
        probs = super::dropout(&probs, drop)?;
    }
    Ok(probs.matmul(&v4)?.transpose(1, 2)?.reshape((b, s.tq, w))?)
}

struct FusedAttention {
    shape: Shapes,
    has_bias: bool,
    bias_grad: bool,
    /// (B, Tk) additive key bias (0 or the mask bias); empty without a key mask.
    key_bias: Vec<f32>,
    causal: bool,
    dropout: Option<CounterDropout>,
    /// Per (b, h, i): the row's maximum score and 1 / Σ exp — written by the forward pass,
    /// read by the backward one.
    row_stats: Mutex<Vec<(f32, f32)>>,
}

/// A pointer shared by tasks that write disjoint elements through it.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes elements no other task writes (see each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `out` (m×n, row stride `out_rs`) = Σ or += a (m×k) · b (k×n), given by (row, column)
/// strides; one thread (the callers run blocks in parallel).
///
/// # Safety
/// The pointers must address every element the strides reach.
#[allow(clippy::too_many_arguments)]
unsafe fn block_gemm(
    out: *mut f32,
    out_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    accumulate: bool,
) {
    gemm::gemm(
        m,
        n,
        k,
        out,
        1,
        out_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

impl FusedAttention {
    /// The scores of block (b, h) with bias and masks added, into `s` (Tq × Tk).
    fn scores(&self, q: &[f32], kv: &[f32], bias: &[f32], (b, h): (usize, usize), s: &mut [f32]) {
        let Shapes { tq, tk, d, .. } = self.shape;
        let w = self.shape.width();
        // SAFETY: q's block rows are b·Tq.. with stride w, columns h·d..; the keys' likewise
        // in kv with stride 2w; `s` holds Tq × Tk.
        unsafe {
            block_gemm(
                s.as_mut_ptr(),
                tk,
                (tq, tk, d),
                q.as_ptr().add(b * tq * w + h * d),
                (w, 1),
                kv.as_ptr().add(b * tk * 2 * w + h * d),
                (1, 2 * w),
                false,
            );
        }
        let key_bias = (!self.key_bias.is_empty()).then(|| &self.key_bias[b * tk..(b + 1) * tk]);
        for (i, row) in s.chunks_mut(tk).enumerate() {
            let pos = self
                .has_bias
                .then(|| &bias[(h * tq + i) * tk..(h * tq + i + 1) * tk]);
            match (pos, key_bias) {
                // The composed path adds position and key bias first, then the sum.
                (Some(p), Some(k)) => row
                    .iter_mut()
                    .zip(p.iter().zip(k))
                    .for_each(|(s, (p, k))| *s += p + k),
                (Some(p), None) => row.iter_mut().zip(p).for_each(|(s, p)| *s += p),
                (None, Some(k)) => row.iter_mut().zip(k).for_each(|(s, k)| *s += k),
                (None, None) => {}
            }
            if self.causal {
                row.iter_mut()
                    .skip(i + 1)
                    .for_each(|s| *s += ATTENTION_MASK_BIAS as f32);
            }
        }
    }

    /// The dropout factors of block (b, h) into `m`, or None without dropout.
    fn dropout_block(&self, (b, h): (usize, usize), m: &mut [f32]) -> bool {
        let Some(drop) = &self.dropout else {
            return false;
        };
        let Shapes { heads, tq, tk, .. } = self.shape;
        drop.fill(((b * heads + h) * tq * tk) as u64, m);
        true
    }

    fn forward_block(
        &self,
        (q, kv, bias): (&[f32], &[f32], &[f32]),
        (b, h): (usize, usize),
        out: Shared,
        stats: &mut [(f32, f32)],
    ) {
        let Shapes { tq, tk, d, .. } = self.shape;
        let w = self.shape.width();
        let mut s = vec![0f32; tq * tk];
        self.scores(q, kv, bias, (b, h), &mut s);
        for (row, stat) in s.chunks_mut(tk).zip(stats.iter_mut()) {
            *stat = crate::dispatch!(softmax_row_avx2(row), softmax_row(row));
        }
        let mut mask = vec![0f32; if self.dropout.is_some() { tq * tk } else { 0 }];
        if self.dropout_block((b, h), &mut mask) {
            crate::dispatch!(mul_assign_avx2(&mut s, &mask), mul_assign(&mut s, &mask));
        }
        // SAFETY: block (b, h) writes rows b·Tq.. columns h·d..(h+1)·d of the output only.
        unsafe {
            block_gemm(
                out.0.add(b * tq * w + h * d),
                w,
                (tq, d, tk),
                s.as_ptr(),
                (tk, 1),
                kv.as_ptr().add(b * tk * 2 * w + w + h * d),
                (2 * w, 1),
                false,
            );
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "peapod-attention"
    }

    fn cpu_fwd(
        &self,
        q_s: &CpuStorage,
        q_l: &Layout,
        kv_s: &CpuStorage,
        kv_l: &Layout,
        b_s: &CpuStorage,
        b_l: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let q = contiguous_f32(q_s, q_l, "attention")?;
        let kv = contiguous_f32(kv_s, kv_l, "attention")?;
        let bias = contiguous_f32(b_s, b_l, "attention")?;
        let Shapes {
            batch, heads, tq, ..
        } = self.shape;
        let mut out = vec![0f32; q.len()];
        let mut stats = vec![(0f32, 0f32); batch * heads * tq];
        let ptr = Shared(out.as_mut_ptr());
        stats
            .par_chunks_mut(tq)
            .enumerate()
            .for_each(|(bh, stats)| {
                self.forward_block((q, kv, bias), (bh / heads, bh % heads), ptr, stats)
            });
        *self
            .row_stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned row statistics".into()))? =
            stats;
        Ok((CpuStorage::F32(out), q_l.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .row_stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: poisoned row statistics".into()))?
            .clone();
        if stats.len() != self.shape.batch * self.shape.heads * self.shape.tq {
            bail!("attention backward: the forward pass kept no row statistics")
        }
        let bias_shape = bias.shape().clone();
        let read = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.contiguous()?.flatten_all()?.to_vec1::<f32>()
        };
        let (q, kv, bias, out, grad) = (
            read(q)?,
            read(kv)?,
            read(bias)?,
            read(res)?,
            read(grad_res)?,
        );
        let (dq, dkv, dbias) = self.backward(&q, &kv, &bias, &out, &grad, &stats);
        let dev = res.device();
        let Shapes {
            batch,
            tq,
            tk,
            heads,
            ..
        } = self.shape;
        let w = self.shape.width();
        let dq = Tensor::from_vec(dq, (batch, tq, w), dev)?;
        let dkv = Tensor::from_vec(dkv, (batch, tk, 2 * w), dev)?;
        let dbias = match dbias {
            Some(g) => Some(Tensor::from_vec(g, (heads, tq, tk), dev)?.reshape(bias_shape)?),
            None => None,
        };
        Ok((Some(dq), Some(dkv), dbias))
    }
}

impl FusedAttention {
    /// dq, dkv and (when asked) dbias. Tasks are (head, slice of the batch); each slice sums its
    /// heads' bias gradient into a buffer of its own, added up at the end.
    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        q: &[f32],
        kv: &[f32],
        bias: &[f32],
        out: &[f32],
        grad: &[f32],
        stats: &[(f32, f32)],
    ) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let Shapes {
            batch,
            tq,
            tk,
            heads,
            d,
        } = self.shape;
        let w = self.shape.width();
        // Dᵢ = ⟨dOᵢ, Oᵢ⟩ per (b, h, i): Σⱼ Pd_ij dPd_ij, dropout included.
        let mut row_dot = vec![0f32; batch * heads * tq];
        row_dot
            .par_chunks_mut(heads * tq)
            .enumerate()
            .for_each(|(b, dots)| {
                for (hi, dot) in dots.iter_mut().enumerate() {
                    let (h, i) = (hi / tq, hi % tq);
                    let at = (b * tq + i) * w + h * d;
                    *dot = out[at..at + d]
                        .iter()
                        .zip(&grad[at..at + d])
                        .map(|(o, g)| o * g)
                        .sum();
                }
            });
        let mut dq = vec![0f32; q.len()];
        let mut dkv = vec![0f32; kv.len()];
        let slices = if self.bias_grad {
            rayon::current_num_threads()
                .div_ceil(heads)
                .clamp(1, batch.max(1))
        } else {
            batch.max(1)
        };
        let per_slice = batch.div_ceil(slices).max(1);
        let slices = batch.div_ceil(per_slice).max(1);
        let bias_len = if self.bias_grad { tq * tk } else { 0 };
        let mut dbias = vec![0f32; slices * heads * bias_len];
        let (dq_ptr, dkv_ptr) = (Shared(dq.as_mut_ptr()), Shared(dkv.as_mut_ptr()));
        let ctx = BackwardInputs {
            q,
            kv,
            bias,
            grad,
            stats,
            row_dot: &row_dot,
        };
        // Task t = slice · H + h owns bias-gradient chunk t (empty when none is asked for).
        let chunks: Vec<&mut [f32]> = if self.bias_grad {
            dbias.chunks_mut(bias_len.max(1)).collect()
        } else {
            (0..slices * heads)
                .map(|_| <&mut [f32]>::default())
                .collect()
        };
        chunks.into_par_iter().enumerate().for_each(|(t, dbias)| {
            let (slice, h) = (t / heads, t % heads);
            let mut buffers = BlockBuffers::new(tq * tk, self.dropout.is_some());
            let end = ((slice + 1) * per_slice).min(batch);
            for b in slice * per_slice..end {
                self.backward_block(&ctx, (b, h), &mut buffers, dbias, (dq_ptr, dkv_ptr));
            }
        });
        let dbias = self.bias_grad.then(|| {
            let mut total = vec![0f32; heads * bias_len];
            for part in dbias.chunks((heads * bias_len).max(1)) {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
            }
            total
        });
        (dq, dkv, dbias)
    }

    fn backward_block(
        &self,
        x: &BackwardInputs,
        (b, h): (usize, usize),
        buf: &mut BlockBuffers,
        dbias: &mut [f32],
        (dq, dkv): (Shared, Shared),
    ) {
        let Shapes {
            heads, tq, tk, d, ..
        } = self.shape;
        let w = self.shape.width();
        let (q_at, k_at, v_at) = (
            b * tq * w + h * d,
            b * tk * 2 * w + h * d,
            b * tk * 2 * w + w + h * d,
        );
        // P, exactly as the forward pass computed it.
        let p = &mut buf.probs;
        self.scores(x.q, x.kv, x.bias, (b, h), p);
        let stats = &x.stats[(b * heads + h) * tq..(b * heads + h + 1) * tq];
        for (row, &stats) in p.chunks_mut(tk).zip(stats) {
            crate::dispatch!(probs_row_avx2(row, stats), probs_row(row, stats));
        }
        let dropped = self.dropout_block((b, h), &mut buf.mask);
        let other = &mut buf.other;
        // dV = Pdᵀ · dO.
        if dropped {
            other.copy_from_slice(p);
            crate::dispatch!(
                mul_assign_avx2(other, &buf.mask),
                mul_assign(other, &buf.mask)
            );
        }
        let pd: &[f32] = if dropped { other } else { p };
        // SAFETY (all products below): block (b, h) reads its own rows and head columns and
        // writes rows b·T.. columns h·d.. of dq and dkv, which no other block writes.
        unsafe {
            block_gemm(
                dkv.0.add(v_at),
                2 * w,
                (tk, d, tq),
                pd.as_ptr(),
                (1, tk),
                x.grad.as_ptr().add(q_at),
                (w, 1),
                false,
            );
            // dPd = dO · Vᵀ.
            block_gemm(
                other.as_mut_ptr(),
                tk,
                (tq, tk, d),
                x.grad.as_ptr().add(q_at),
                (w, 1),
                x.kv.as_ptr().add(v_at),
                (1, 2 * w),
                false,
            );
        }
        // dS = P ⊙ (dPd ⊙ M − D) into the probabilities' buffer.
        let dots = &x.row_dot[(b * heads + h) * tq..(b * heads + h + 1) * tq];
        if dropped {
            crate::dispatch!(
                mul_assign_avx2(other, &buf.mask),
                mul_assign(other, &buf.mask)
            );
        }
        for ((row, dp), &dot) in p.chunks_mut(tk).zip(other.chunks(tk)).zip(dots) {
            crate::dispatch!(
                score_grad_row_avx2(row, dp, dot),
                score_grad_row(row, dp, dot)
            );
        }
        if !dbias.is_empty() {
            crate::dispatch!(add_assign_avx2(dbias, p), add_assign(dbias, p));
        }
        unsafe {
            // dQ = dS · K.
            block_gemm(
                dq.0.add(q_at),
                w,
                (tq, d, tk),
                p.as_ptr(),
                (tk, 1),
                x.kv.as_ptr().add(k_at),
                (2 * w, 1),
                false,
            );
            // dK = dSᵀ · Q.
            block_gemm(
                dkv.0.add(k_at),
                2 * w,
                (tk, d, tq),
                p.as_ptr(),
                (1, tk),
                x.q.as_ptr().add(q_at),
                (w, 1),
                false,
            );
        }
    }
}

/// Softmax of one row in place (lane sums of the exponentials, then one scaling); returns the
/// row's maximum and inverse sum, from which [`probs_row`] recomputes the same values.
#[inline(always)]
fn softmax_row(row: &mut [f32]) -> (f32, f32) {
    const LANES: usize = 8;
    let mut peaks = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in peaks.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&peaks)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (acc, x) in sums.iter_mut().zip(c) {
            *x = exp_non_positive(*x - max);
            *acc += *x;
        }
    }
    let mut tail = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_non_positive(*x - max);
        tail += *x;
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + tail);
    row.iter_mut().for_each(|x| *x *= inv);
    (max, inv)
}

/// A row's probabilities from its scores and [`softmax_row`]'s statistics: the same operations,
/// so the same values.
#[inline(always)]
fn probs_row(row: &mut [f32], (max, inv): (f32, f32)) {
    row.iter_mut()
        .for_each(|x| *x = exp_non_positive(*x - max) * inv);
}

/// dS = P ⊙ (dP − D) for one row, in place of P.
#[inline(always)]
fn score_grad_row(p: &mut [f32], dp: &[f32], dot: f32) {
    p.iter_mut().zip(dp).for_each(|(p, g)| *p *= g - dot);
}

#[inline(always)]
fn mul_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x *= y);
}

#[inline(always)]
fn add_assign(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

crate::avx2_variant!(fn softmax_row_avx2(row: &mut [f32]) -> (f32, f32) = softmax_row);
crate::avx2_variant!(fn probs_row_avx2(row: &mut [f32], stats: (f32, f32)) = probs_row);
crate::avx2_variant!(fn score_grad_row_avx2(p: &mut [f32], dp: &[f32], dot: f32) = score_grad_row);
crate::avx2_variant!(fn mul_assign_avx2(x: &mut [f32], y: &[f32]) = mul_assign);
crate::avx2_variant!(fn add_assign_avx2(x: &mut [f32], y: &[f32]) = add_assign);

struct BackwardInputs<'a> {
    q: &'a [f32],
    kv: &'a [f32],
    bias: &'a [f32],
    grad: &'a [f32],
    stats: &'a [(f32, f32)],
    row_dot: &'a [f32],
}

/// One task's block-sized scratch, reused across its blocks.
struct BlockBuffers {
    probs: Vec<f32>,
    other: Vec<f32>,
    mask: Vec<f32>,
}

impl BlockBuffers {
    fn new(len: usize, dropout: bool) -> Self {
        Self {
            probs: vec![0.0; len],
            other: vec![0.0; len],
            mask: vec![0.0; if dropout { len } else { 0 }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn relative_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b
            .abs()
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar::<f32>())
            .unwrap_or(1.0)
            .max(1e-6);
        crate::ops::test_util::max_diff(a, b) / scale
    }

    /// The fused op against the composed ops: values and the gradients of q, kv and the bias.
    fn check(batch: usize, tq: usize, tk: usize, with_bias: bool, masks: AttentionMasks) {
        let dev = Device::Cpu;
        let (heads, d) = (3, 4);
        let w = heads * d;
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, tq, w), &dev).unwrap()).unwrap();
        let kv =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, tk, 2 * w), &dev).unwrap()).unwrap();
        let bias =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, heads, tq, tk), &dev).unwrap()).unwrap();
        let bias_arg = with_bias.then(|| bias.as_tensor());
        let shape = Shapes::of(q.as_tensor(), kv.as_tensor(), bias_arg, heads, &masks).unwrap();
        let fused = attention(q.as_tensor(), kv.as_tensor(), bias_arg, heads, &masks).unwrap();
        let reference = composed(q.as_tensor(), kv.as_tensor(), bias_arg, &shape, &masks).unwrap();
        let diff = relative_diff(&fused, &reference);
        assert!(diff < 1e-5, "forward differs by {diff} (relative)");
        let weights = Tensor::randn(0f32, 1.0, fused.shape(), &dev).unwrap();
        let g_fused = (&fused * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (&reference * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut vars = vec![("q", &q), ("kv", &kv)];
        if with_bias {
            vars.push(("bias", &bias));
        }
        for (name, var) in vars {
            let (a, b) = (
                g_fused.get(var.as_tensor()).expect("fused gradient"),
                g_ref.get(var.as_tensor()).expect("composed gradient"),
            );
            let diff = relative_diff(a, b);
            assert!(diff < 1e-5, "{name} gradient differs by {diff} (relative)");
        }
    }

    fn keep_mask(batch: usize, tk: usize) -> Tensor {
        // Input b keeps its first tk − b keys: rows of different padding.
        let keep: Vec<u32> = (0..batch)
            .flat_map(|b| (0..tk).map(move |j| u32::from(j + b < tk)))
            .collect();
        Tensor::from_vec(keep, (batch, tk), &Device::Cpu).unwrap()
    }

    #[test]
    fn encoder_self_attention_with_padding() {
        let masks = AttentionMasks {
            key_keep: Some(keep_mask(3, 9)),
            ..AttentionMasks::default()
        };
        check(3, 9, 9, true, masks);
        check(2, 7, 7, true, AttentionMasks::default());
    }

    #[test]
    fn causal_decoder_self_attention() {
        let masks = AttentionMasks {
            causal: true,
            ..AttentionMasks::default()
        };
        check(2, 6, 6, true, masks);
    }

    #[test]
    fn cross_attention_without_a_bias() {
        let masks = AttentionMasks {
            key_keep: Some(keep_mask(4, 11)),
            ..AttentionMasks::default()
        };
        check(4, 5, 11, false, masks);
    }

    #[test]
    fn dropout_inside_matches_a_dropout_of_the_probabilities() {
        let masks = AttentionMasks {
            key_keep: Some(keep_mask(3, 10)),
            dropout: Some(CounterDropout::new(0.25, 77)),
            ..AttentionMasks::default()
        };
        check(3, 10, 10, true, masks);
        // The mask drops about p of the entries and scales the rest.
        let drop = CounterDropout::new(0.25, 5);
        let mut m = vec![0f32; 20_000];
        drop.fill(0, &mut m);
        let dropped = m.iter().filter(|&&x| x == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        assert!(m.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
    }

    #[test]
    fn bad_shapes_are_named() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((2, 5, 12), DType::F32, &dev).unwrap();
        let err = attention(&q, &kv, None, 2, &AttentionMasks::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys/values [2, 5, 12] for 2 heads"), "{err}");
    }
}
