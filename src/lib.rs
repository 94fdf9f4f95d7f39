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
