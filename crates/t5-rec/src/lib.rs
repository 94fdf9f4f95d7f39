//! A trainable candle T5 for generative recommendation (PeaPOD, SPEC §3–§7).
//!
//! The encoder takes its input as embeddings plus a padding mask, so that callers can prepend
//! soft prompts to the token + whole-word embeddings; the decoder runs teacher-forced for
//! training (all positions, causal) or one token at a time for beam search, with a
//! reorderable self-attention cache and cross-attention keys/values shared by the beams of an
//! input. Parameters use Hugging Face's names, so `t5-small`'s `model.safetensors` loads as is.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use peapod_t5_rec::{T5Config, T5ForRec};
//!
//! # fn main() -> Result<(), peapod_t5_rec::T5Error> {
//! let cfg = T5Config { vocab_size: 100, d_model: 16, d_kv: 4, d_ff: 32, ..T5Config::tiny() };
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let model = T5ForRec::new(&cfg, vb)?;
//!
//! // Two inputs of 4 tokens; the second is padded.
//! let ids = Tensor::new(&[[5u32, 6, 7, 1], [8, 9, 1, 0]], &Device::Cpu)?;
//! let whole_words = Tensor::new(&[[1u32, 1, 0, 0], [1, 1, 0, 0]], &Device::Cpu)?;
//! let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu)?;
//! // A soft prompt (here one vector, shared by both inputs) goes in front of the embeddings.
//! let prompt = Tensor::randn(0f32, 1.0, (2, 1, 16), &Device::Cpu)?;
//! let embeds = Tensor::cat(&[&prompt, &model.embed_input(&ids, &whole_words)?], 1)?;
//! let mask = Tensor::cat(&[&Tensor::ones((2, 1), candle_core::DType::U32, &Device::Cpu)?, &mask], 1)?;
//!
//! let targets = Tensor::new(&[[10u32, 11, 1], [12, 1, 0]], &Device::Cpu)?;
//! let target_mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu)?;
//! let loss = model.forward_loss(&embeds, &mask, &targets, &target_mask, true)?;
//! assert!(loss.to_scalar::<f32>()? > 0.0);
//!
//! // Beam search: encode once, 3 beams per input, one token per call.
//! let enc = model.encode(&embeds, &mask, false)?;
//! let mut state = model.start_decoding(&enc, &mask, 3)?;
//! let start = Tensor::zeros(6, DType::U32, &Device::Cpu)?;
//! let log_probs = model.decode_step(&mut state, &start)?;
//! assert_eq!(log_probs.dims(), &[6, 100]);
//! state.reorder(&[0, 0, 1, 5, 4, 3])?; // beams continue beams of their own input
//! # Ok(())
//! # }
//! ```

mod config;
mod error;
mod init;
mod layers;
mod model;
mod weights;

pub use config::T5Config;
pub use error::{Result, T5Error};
pub use init::parameter_names;
pub use layers::relative_position_bucket;
pub use model::{DecoderState, PackedDecoder, T5ForRec, WHOLE_WORD_EMBEDDINGS};
#[cfg(feature = "hub")]
pub use weights::download_from_hub;
pub use weights::{load_weights, save_checkpoint, HubFiles, LoadOptions, LoadReport};
