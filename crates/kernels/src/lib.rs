//! The numeric kernels of PeaPOD, kept out of the model code.
//!
//! - [`rows`]: row scans over f32 slices (log-sum-exp, in-place log-softmax, a vectorisable
//!   `exp`), dependency-free, shared by the beam search and the ops; built twice, portable and
//!   AVX2, and picked at run time ([`dispatch!`], [`avx2_variant!`]).
//! - [`ops`] (feature `candle`, on by default): fused, differentiable candle ops — softmax, RMS
//!   norm, linear, per-row NLL, full-sequence attention for training (block by block, never
//!   holding the batch's scores), single-query cached attention, an in-place AdamW update — each
//!   choosing its device path inside (a fused kernel on the CPU in f32, composed candle ops
//!   elsewhere), so a model calls the op and never branches on the device.
//! - [`PackedWeight`] (feature `candle`): weights packed once for the repeated products of
//!   incremental decoding, with an AVX2+FMA micro-kernel.
//! - [`runtime`]: the CPU runtime policy ([`CpuPolicy`]) — allocator and worker-pool settings a
//!   program applies once, and the concurrency each splitting call site is given.
//!
//! ```
//! # #[cfg(feature = "candle")]
//! # fn main() -> Result<(), peapod_kernels::KernelError> {
//! use candle_core::{Device, Tensor, Var};
//! use peapod_kernels::ops::{linear, nll_rows, rms_norm};
//!
//! let dev = Device::Cpu;
//! let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 8), &dev)?)?;
//! let w = Tensor::randn(0f32, 0.1, (5, 8), &dev)?;
//! let h = rms_norm(x.as_tensor(), &Tensor::ones(8, candle_core::DType::F32, &dev)?, 1e-6)?;
//! let logits = linear(&h, &w)?.reshape((6, 5))?; // one graph node, fused backward on the CPU
//! let loss = nll_rows(&logits, &Tensor::new(&[0u32, 1, 2, 3, 4, 0], &dev)?)?.mean_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(x.as_tensor()).map(|g| g.dims().to_vec()), Some(vec![2, 3, 8]));
//!
//! // The row scans need no tensors.
//! let lse = peapod_kernels::rows::log_sum_exp(&[0.0, 0.0]);
//! assert!((lse - std::f32::consts::LN_2).abs() < 1e-6);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "candle"))]
//! # fn main() {}
//! ```

// `dispatch!` expands its call's arguments inside `unsafe` on purpose: they are plain function
// arguments, and the only unsafe operation is calling the AVX2 variant after the CPU check.
#![allow(clippy::macro_metavars_in_unsafe)]

mod error;
pub mod rows;
pub mod runtime;
#[doc(hidden)]
pub mod simd;

#[cfg(feature = "candle")]
pub mod ops;
#[cfg(feature = "candle")]
mod packed;

pub use error::RaggedRows;
#[cfg(feature = "candle")]
pub use error::{KernelError, Result};
#[cfg(feature = "candle")]
pub use packed::PackedWeight;
pub use runtime::{AppliedPolicy, CpuPolicy};

/// `len` values uniform in ±spread/2 from a linear congruential generator: test inputs.
#[cfg(test)]
pub(crate) fn pseudo_random(seed: u64, len: usize, spread: f32) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}
