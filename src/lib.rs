//! PeaPOD composed from the `peapod-*` crates: the model (soft prompts + T5), its training loop,
//! checkpoints, beam-search decoding and evaluation against the protocol's metrics.

pub mod checkpoint;
pub mod decode;
mod error;
pub mod eval;
pub mod model;
pub use peapod_t5_rec::optim;
pub use peapod_t5_rec::{limit_worker_spinning, retain_freed_memory};
pub mod pipeline;
mod progress;
pub mod train;

pub use error::PeapodError;
pub use model::{BatchTensors, ModelConfig, PeaPod, Variant};

/// `0..len` cut into `parts` contiguous ranges whose lengths differ by at most one (at least one
/// range; empty ones only when `parts > len`).
pub(crate) fn even_slices(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    (0..parts)
        .map(|p| p * len / parts..(p + 1) * len / parts)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn even_slices_cover_the_range_in_order() {
        assert_eq!(super::even_slices(5, 2), vec![0..2, 2..5]);
        assert_eq!(super::even_slices(6, 3), vec![0..2, 2..4, 4..6]);
        assert_eq!(super::even_slices(4, 1), vec![0..4]);
        assert_eq!(super::even_slices(0, 0), vec![0..0]);
        assert_eq!(super::even_slices(2, 3), vec![0..0, 0..1, 1..2]);
    }
}
