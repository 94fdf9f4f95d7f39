//! PeaPOD composed from the `peapod-*` crates: the model (soft prompts + T5), its training loop,
//! checkpoints, beam-search decoding and evaluation against the protocol's metrics.

pub mod checkpoint;
pub mod curves;
pub mod decode;
mod error;
pub mod eval;
pub mod model;
pub mod optim;
pub mod paper;
pub mod pipeline;
pub mod progress;
pub mod run;
pub mod sasrec;
pub mod schedule;
pub mod train;

pub use error::PeapodError;
pub use model::{BatchTensors, ModelConfig, PeaPod, Variant};
pub use peapod_kernels::{AppliedPolicy, CpuPolicy};

pub(crate) use peapod_kernels::runtime::even_slices;
