//! Fused, differentiable candle ops: one graph node each, with hand-written backward passes.
//!
//! Each op chooses its device path inside: a fused kernel on the CPU in f32 (`cpu_fwd`), and the
//! composed candle ops elsewhere (the GPU work adds `cuda_fwd` here, not in model code). Callers
//! never branch on the device.

mod adamw;
mod attention;
mod dropout;
mod linear;
mod nll;
mod rms_norm;
mod sdpa;
mod softmax;

pub use adamw::{adamw_step_in_place, AdamWStep};
pub use attention::cached_attention;
pub use dropout::{dropout, relu_dropout, residual_dropout, splitmix64, CounterDropout};
pub use linear::{gemm_into, linear, linear_into};
pub use nll::nll_rows;
pub use rms_norm::rms_norm;
pub use sdpa::{attention, AttentionMasks, ATTENTION_MASK_BIAS};
pub use softmax::softmax_last_dim;

use candle_core::{bail, CpuStorage, DType, Layout, Storage, Tensor};

use crate::error::{KernelError, Result};

/// Rows per rayon task: enough work to amortise scheduling on short rows.
const MIN_ROWS_PER_TASK: usize = 64;

/// Whether a tensor takes the fused CPU path: on the CPU, in f32.
pub fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// The f32 values of a contiguous CPU storage, or a candle error naming `what`.
pub fn contiguous_f32<'a>(
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

/// Runs `f` over the values of a CPU f32 tensor (made contiguous first); an error naming
/// `what` for any other device or dtype.
pub fn with_cpu_f32<R>(x: &Tensor, what: &'static str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) if x.dtype() == DType::F32 => Ok(f(contiguous_f32(cpu, layout, what)?)),
        _ => Err(KernelError::invalid(
            what,
            "expects an f32 tensor on the CPU",
        )),
    }
}

/// `op` applied to `x` and a weight `w` whose width must be `expected` (checked, naming `name`):
/// the fused CPU kernel for f32 rows of non-zero width, `composed` everywhere else.
fn fused_with_weight<C: candle_core::CustomOp2 + Send + Sync + 'static>(
    name: &'static str,
    x: &Tensor,
    w: &Tensor,
    expected: &[usize],
    op: C,
    composed: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    if w.dims() != expected {
        return Err(KernelError::invalid(
            name,
            format!("input {:?} for a weight {:?}", x.dims(), w.dims()),
        ));
    }
    if is_cpu_f32(x) && w.dtype() == DType::F32 && x.dims().last().is_some_and(|&d| d > 0) {
        return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, op)?);
    }
    composed()
}

fn row_len(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Tensor, Var};

    use crate::error::Result;

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// Gradients with respect to `x` of Σ w ⊙ fused and of Σ w ⊙ composed.
    pub fn weighted_sum_gradients(
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
}
