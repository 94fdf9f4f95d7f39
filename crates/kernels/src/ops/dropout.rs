//! Inverted dropout from counters, differentiable: the keep decision of element i is a hash of
//! a counter, so the mask needs no storage (backward recomputes it), does not depend on
//! threading, and a run is reproducible from a seed on the CPU (candle's CPU `rand` cannot be
//! seeded).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, is_cpu_f32};
use crate::error::Result;

/// Inverted dropout whose keep decisions come from a counter: element `i` of a tensor dropped
/// from `base` is kept when the top 24 bits of splitmix64(base + i) reach p·2²⁴. The mask then
/// needs no storage, a backward pass recomputes it, and it does not depend on threading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterDropout {
    p: f64,
    base: u64,
    threshold: u64,
    keep_scale: f32,
}

impl CounterDropout {
    /// Dropout with rate `p` (in [0, 1)) from counter `base`.
    pub fn new(p: f64, base: u64) -> Self {
        Self {
            p,
            base,
            threshold: (p * (1u64 << 24) as f64) as u64,
            keep_scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// The factor of element `i`: 1/(1 − p) if kept, 0 if dropped.
    #[inline]
    pub fn factor(&self, i: u64) -> f32 {
        if (splitmix64(self.base.wrapping_add(i)) >> 40) >= self.threshold {
            self.keep_scale
        } else {
            0.0
        }
    }

    /// The factors of elements `offset..offset + out.len()`.
    pub fn fill(&self, offset: u64, out: &mut [f32]) {
        for (i, m) in out.iter_mut().enumerate() {
            *m = self.factor(offset + i as u64);
        }
    }
}

/// The splitmix64 finaliser (Steele, Lea and Flood), the dropout counters' hash.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counters per rayon task: the mask's values do not depend on how the work is cut.
const CHUNK: usize = 1 << 16;

/// `x` with dropout `drop` applied (element i scaled by `drop.factor(i)`), differentiable. On the
/// CPU in f32 one pass each way, the mask never stored; on the CPU in other dtypes the same mask
/// as a tensor; on other devices a mask from the device's own generator (a host mask would be
/// built and uploaded at the size of `x` on every call), so there the counters do not decide.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use peapod_kernels::ops::{dropout, CounterDropout};
/// let x = Tensor::ones(1000, candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = dropout(&x, CounterDropout::new(0.5, 3)).unwrap().to_vec1::<f32>().unwrap();
/// assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
/// ```
pub fn dropout(x: &Tensor, drop: CounterDropout) -> Result<Tensor> {
    if is_cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(Dropout(drop))?);
    }
    let mask = if x.device().is_cpu() {
        let mut mask = vec![0f32; x.elem_count()];
        fill_parallel(&drop, &mut mask);
        Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    } else {
        let uniform = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        (uniform.ge(drop.p as f32)?.to_dtype(x.dtype())? * f64::from(drop.keep_scale))?
    };
    Ok(x.mul(&mask)?)
}

/// out[i] = f(inputs[·][i], the factor of element i), in parallel chunks of counters. The inputs
/// have one length (checked by the callers).
fn masked_map<const N: usize>(
    drop: &CounterDropout,
    inputs: [&[f32]; N],
    f: impl Fn([f32; N], f32) -> f32 + Sync,
) -> Vec<f32> {
    let len = inputs.first().map_or(0, |x| x.len());
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(k, chunk)| {
            let start = k * CHUNK;
            let parts = inputs.map(|x| &x[start..start + chunk.len()]);
            for (i, y) in chunk.iter_mut().enumerate() {
                *y = f(parts.map(|x| x[i]), drop.factor((start + i) as u64));
            }
        });
    out
}

fn fill_parallel(drop: &CounterDropout, mask: &mut [f32]) {
    mask.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(k, chunk)| drop.fill((k * CHUNK) as u64, chunk));
}

/// `h + dropout(a)`: a residual connection after dropout, one graph node instead of two (and
/// one pass over memory instead of three on the CPU in f32); the mask is the one
/// [`dropout`] would draw for `a`. Other devices and dtypes compose the two.
pub fn residual_dropout(h: &Tensor, a: &Tensor, drop: CounterDropout) -> Result<Tensor> {
    if is_cpu_f32(h) && is_cpu_f32(a) && h.shape() == a.shape() {
        return Ok(h
            .contiguous()?
            .apply_op2(&a.contiguous()?, ResidualDropout(drop))?);
    }
    Ok((h + dropout(a, drop)?)?)
}

struct ResidualDropout(CounterDropout);

impl CustomOp2 for ResidualDropout {
    fn name(&self) -> &'static str {
        "peapod-residual-dropout"
    }

    fn cpu_fwd(
        &self,
        h_storage: &CpuStorage,
        h_layout: &Layout,
        a_storage: &CpuStorage,
        a_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = contiguous_f32(h_storage, h_layout, "residual dropout")?;
        let a = contiguous_f32(a_storage, a_layout, "residual dropout")?;
        if h.len() != a.len() {
            bail!("residual dropout: {} and {} elements", h.len(), a.len())
        }
        let out = masked_map(&self.0, [h, a], |[h, a], m| h + a * m);
        Ok((CpuStorage::F32(out), h_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _h: &Tensor,
        _a: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let da = grad.apply_op1_no_bwd(&Dropout(self.0))?;
        Ok((Some(grad), Some(da)))
    }
}

/// `dropout(relu(x))`, one graph node: the feed-forward layer's activation. Composed, candle's
/// relu backward alone makes four passes over the layer's widest tensor (zeros, a comparison,
/// a cast, a product); here backward is one: dx = dy ⊙ mask where the output is positive (a
/// kept element is positive exactly where x is, and a dropped one has no gradient).
pub fn relu_dropout(x: &Tensor, drop: CounterDropout) -> Result<Tensor> {
    if is_cpu_f32(x) {
        return Ok(x.contiguous()?.apply_op1(ReluDropout(drop))?);
    }
    dropout(&x.relu()?, drop)
}

struct ReluDropout(CounterDropout);

impl CustomOp1 for ReluDropout {
    fn name(&self) -> &'static str {
        "peapod-relu-dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "relu dropout")?;
        let out = masked_map(&self.0, [x], |[x], m| x.max(0.0) * m);
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
            res.contiguous()?
                .apply_op2_no_bwd(&grad, &ReluDropoutGrad(self.0))?,
        ))
    }
}

/// (y, dy) ↦ dy ⊙ mask where y > 0, else 0.
struct ReluDropoutGrad(CounterDropout);

impl CustomOp2 for ReluDropoutGrad {
    fn name(&self) -> &'static str {
        "peapod-relu-dropout-grad"
    }

    fn cpu_fwd(
        &self,
        y_storage: &CpuStorage,
        y_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(y_storage, y_layout, "relu dropout backward")?;
        let g = contiguous_f32(g_storage, g_layout, "relu dropout backward")?;
        if y.len() != g.len() {
            bail!(
                "relu dropout backward: {} and {} elements",
                y.len(),
                g.len()
            )
        }
        let out = masked_map(
            &self.0,
            [y, g],
            |[y, g], m| if y > 0.0 { g * m } else { 0.0 },
        );
        Ok((CpuStorage::F32(out), y_layout.shape().clone()))
    }
}

/// y = x ⊙ mask (the op), and dy ↦ dy ⊙ mask (its backward, the same op without a graph).
struct Dropout(CounterDropout);

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "peapod-dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "dropout")?;
        let out = masked_map(&self.0, [x], |[x], m| x * m);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        if grad.dtype() != DType::F32 || !grad.device().is_cpu() {
            candle_core::bail!("dropout backward: f32 on the CPU only")
        }
        Ok(Some(grad.apply_op1_no_bwd(&Dropout(self.0))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_fused_dropout_is_the_mask_product_both_ways() -> Result<()> {
        let dev = Device::Cpu;
        let drop = CounterDropout::new(0.3, 11);
        let n = 3 * CHUNK + 17;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev)?)?;
        let mut mask = vec![0f32; n];
        drop.fill(0, &mut mask);
        let mask = Tensor::from_vec(mask, n, &dev)?;
        let fused = dropout(x.as_tensor(), drop)?;
        let composed = x.as_tensor().mul(&mask)?;
        assert_eq!(fused.to_vec1::<f32>()?, composed.to_vec1::<f32>()?);
        let w = Tensor::randn(0f32, 1.0, n, &dev)?;
        let (a, b) = crate::ops::test_util::weighted_sum_gradients(&fused, &composed, &w, &x)?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        // The residual form: h + dropout(a), values and both gradients.
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev)?)?;
        let fused = residual_dropout(h.as_tensor(), x.as_tensor(), drop)?;
        let composed = (h.as_tensor() + x.as_tensor().mul(&mask)?)?;
        assert_eq!(fused.to_vec1::<f32>()?, composed.to_vec1::<f32>()?);
        let g_fused = (&fused * &w)?.sum_all()?.backward()?;
        let g_composed = (&composed * &w)?.sum_all()?.backward()?;
        for var in [&h, &x] {
            let (a, b) = (
                g_fused.get(var.as_tensor()),
                g_composed.get(var.as_tensor()),
            );
            assert_eq!(
                a.map(|t| t.to_vec1::<f32>()).transpose()?,
                b.map(|t| t.to_vec1::<f32>()).transpose()?
            );
        }
        // The activation form: dropout(relu(x)), values and gradient.
        let fused = relu_dropout(x.as_tensor(), drop)?;
        let composed = x.as_tensor().relu()?.mul(&mask)?;
        assert_eq!(fused.to_vec1::<f32>()?, composed.to_vec1::<f32>()?);
        let (a, b) = crate::ops::test_util::weighted_sum_gradients(&fused, &composed, &w, &x)?;
        assert_eq!(a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        // Another base, another mask.
        let other = dropout(x.as_tensor(), CounterDropout::new(0.3, 12))?;
        assert_ne!(other.to_vec1::<f32>()?, fused.to_vec1::<f32>()?);
        Ok(())
    }
}
