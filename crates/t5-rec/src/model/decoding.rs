//! Incremental decoding for beam search: one token per beam per call, with a reorderable
//! self-attention cache and cross-attention keys/values computed once per input.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use peapod_kernels::ops::with_cpu_f32;
use peapod_kernels::PackedWeight;

use super::cache::{KvCache, StepRows};
use super::decoder::{DecoderPass, PackedBlock};
use super::live::LiveRows;
use super::{at_least_f32, embedding, T5ForRec};
use crate::error::{Result, T5Error};
use crate::layers::{padding_bias, Linear};

/// The decoder's state between decoding steps.
///
/// Rows are ordered input-major: row `i * beams + j` is beam `j` of input `i`. Two ways to
/// drive it: with every row each step ([`T5ForRec::decode_step`], [`DecoderState::reorder`]),
/// or with a beam search's live hypotheses only ([`T5ForRec::decode_live_step`],
/// [`DecoderState::reorder_live`]), where the state keeps track of which row each hypothesis
/// occupies.
#[derive(Clone, Debug)]
pub struct DecoderState {
    batch: usize,
    beams: usize,
    step: usize,
    /// Per layer, cross-attention keys and values (B, H, T, d_kv): one copy per input, shared by
    /// its beams.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// (B, 1, 1, T) additive encoder padding bias.
    cross_bias: Tensor,
    /// Self-attention keys and values of the decoded positions.
    cache: KvCache,
    /// The decoder's weights packed for the CPU (see [`PackedDecoder`]), if this state uses
    /// them.
    packed: Option<Arc<PackedDecoder>>,
    /// Where a beam search's live hypotheses sit in the rows.
    pub(super) live: LiveRows,
}

/// The decoder's weight matrices and the vocabulary projection, packed once for the matrix
/// products of incremental decoding on the CPU ([`T5ForRec::pack_decoder`]).
///
/// Why: every decoding step multiplies all live hypotheses by the same weights. A general gemm
/// call repacks its weight operand each time and, on the 32,128-wide vocabulary projection,
/// scatters its stores over the 41 MB output; the packed products keep a few weight panels in
/// cache while all rows pass over them (t5-small, 20 beams, batch 32: see
/// `docs/performance.md`, "Session 6"). The copy costs as much memory as the decoder and the
/// output embedding (≈ 150 MB at t5-small) and holds the weights as they were when packed:
/// pack again after changing them.
#[derive(Debug)]
pub struct PackedDecoder {
    blocks: Vec<PackedBlock>,
    output: PackedWeight,
    output_scale: f32,
    /// The packing model's [`T5ForRec::decoder_shapes`]: what [`T5ForRec::start_decoding_with`]
    /// compares with its own.
    shapes: Vec<(usize, usize)>,
}

impl DecoderState {
    /// Number of tokens decoded so far.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn batch_size(&self) -> usize {
        self.batch
    }

    pub fn beams_per_input(&self) -> usize {
        self.beams
    }

    /// Number of decoder rows (batch × beams).
    pub fn rows(&self) -> usize {
        self.batch * self.beams
    }

    /// Reorders the self-attention cache: new row `r` continues old row `beam_indices[r]`.
    /// A beam can only continue a beam of the same input (the cross-attention cache is per
    /// input), so `beam_indices[r] / beams` must equal `r / beams`.
    pub fn reorder(&mut self, beam_indices: &[usize]) -> Result<()> {
        let rows = self.rows();
        if beam_indices.len() != rows {
            return Err(T5Error::InvalidInput(format!(
                "reorder: {} indices for {rows} decoder rows",
                beam_indices.len()
            )));
        }
        if let Some((r, &src)) = beam_indices
            .iter()
            .enumerate()
            .find(|(r, &src)| src >= rows || src / self.beams != r / self.beams)
        {
            return Err(T5Error::InvalidInput(format!(
                "reorder: row {r} cannot continue row {src} (beams of input {} are rows {}..{})",
                r / self.beams,
                (r / self.beams) * self.beams,
                (r / self.beams + 1) * self.beams
            )));
        }
        self.cache.reorder(beam_indices, self.cross_bias.device())?;
        Ok(())
    }
}

impl T5ForRec {
    /// The decoder's weights and vocabulary projection packed for CPU decoding
    /// ([`PackedDecoder`]), or `None` when the model is not on the CPU in f32 (other devices
    /// decode with their own matrix products).
    pub fn pack_decoder(&self) -> Result<Option<Arc<PackedDecoder>>> {
        if !self.on_cpu_in_f32() {
            return Ok(None);
        }
        let (output, scale) = self.output_embedding();
        let pack = |l: &Linear| PackedWeight::from_tensor(&l.weight);
        let mut blocks = Vec::with_capacity(self.decoder.len());
        for block in &self.decoder {
            let (sa, ca) = (&block.self_attn, &block.cross_attn);
            blocks.push(PackedBlock {
                self_q: pack(&sa.q)?,
                self_k: pack(&sa.k)?,
                self_v: pack(&sa.v)?,
                self_o: pack(&sa.o)?,
                cross_q: pack(&ca.q)?,
                cross_o: pack(&ca.o)?,
                ff: block.ff.pack()?,
            });
        }
        Ok(Some(Arc::new(PackedDecoder {
            blocks,
            output: PackedWeight::from_tensor(output)?,
            output_scale: scale.unwrap_or(1.0) as f32,
            shapes: self.decoder_shapes(),
        })))
    }

    /// Prepares incremental decoding of `beams_per_input` beams for each encoded input
    /// (encoder_out B×T×d, encoder_mask B×T). Cross-attention keys and values are projected
    /// here, once per input. On the CPU in f32 the decoder's weights are packed for the steps
    /// ([`T5ForRec::pack_decoder`]); callers starting several states from the same weights can
    /// pack once and use [`T5ForRec::start_decoding_with`].
    pub fn start_decoding(
        &self,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        beams_per_input: usize,
    ) -> Result<DecoderState> {
        let packed = self.pack_decoder()?;
        self.start_decoding_with(encoder_out, encoder_mask, beams_per_input, packed)
    }

    /// [`T5ForRec::start_decoding`] with weights packed beforehand by this model's
    /// [`T5ForRec::pack_decoder`] (shared by any number of states), or with none: the steps then
    /// use the model's own matrix products.
    pub fn start_decoding_with(
        &self,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        beams_per_input: usize,
        packed: Option<Arc<PackedDecoder>>,
    ) -> Result<DecoderState> {
        if let Some(p) = &packed {
            let expected = self.decoder_shapes();
            if p.shapes != expected || !self.on_cpu_in_f32() {
                return Err(T5Error::InvalidInput(format!(
                    "start_decoding_with: packed weights of other shapes than this model's \
                     decoder ({} matrices), or a model that is not on the CPU in f32",
                    expected.len()
                )));
            }
        }
        let (b, t, _) = encoder_out.dims3()?;
        if beams_per_input == 0 || encoder_mask.dims() != [b, t] {
            return Err(T5Error::InvalidInput(format!(
                "start_decoding: {beams_per_input} beams, encoder output {:?}, mask {:?}",
                encoder_out.dims(),
                encoder_mask.dims()
            )));
        }
        let mut cross_kv = Vec::with_capacity(self.decoder.len());
        for block in &self.decoder {
            let att = &block.cross_attn;
            let k = att.split_heads(&att.k.forward(encoder_out)?)?;
            let v = att.split_heads(&att.v.forward(encoder_out)?)?;
            cross_kv.push((k, v));
        }
        Ok(DecoderState {
            batch: b,
            beams: beams_per_input,
            step: 0,
            cross_kv,
            cross_bias: padding_bias(encoder_mask, self.dtype)?,
            cache: KvCache::new(
                self.decoder.len(),
                b * beams_per_input,
                self.on_cpu_in_f32(),
            ),
            packed,
            live: LiveRows::one_per_input(b, beams_per_input),
        })
    }

    /// Where decoding packs its weights and keeps its self-attention cache per step.
    fn on_cpu_in_f32(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// Output × input features of the matrices [`T5ForRec::pack_decoder`] packs, in order.
    fn decoder_shapes(&self) -> Vec<(usize, usize)> {
        let c = &self.cfg;
        let (d, inner) = (c.d_model, c.inner_dim());
        let mut shapes = Vec::new();
        for block in &self.decoder {
            shapes.extend([
                (inner, d),
                (inner, d),
                (inner, d),
                (d, inner),
                (inner, d),
                (d, inner),
            ]);
            shapes.extend(block.ff.shapes());
        }
        shapes.push((c.vocab_size, d));
        shapes
    }

    /// The vocabulary logits of decoder states (rows × d, from
    /// [`T5ForRec::decode_step_hidden`] of `state`), written row-major into `out` (rows × V):
    /// through `state`'s packed projection when it has one, else
    /// [`T5ForRec::project_to_vocab_into`].
    pub fn project_step_into(
        &self,
        state: &DecoderState,
        hidden: &Tensor,
        out: &mut [f32],
    ) -> Result<()> {
        let Some(packed) = &state.packed else {
            return self.project_to_vocab_into(hidden, out);
        };
        let (d, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let rows = hidden.elem_count() / d;
        if hidden.dims().last() != Some(&d) || out.len() != rows * v {
            return Err(T5Error::InvalidInput(format!(
                "project_step_into: hidden {:?} and {} output values (d_model {d}, vocabulary {v})",
                hidden.dims(),
                out.len()
            )));
        }
        Ok(with_cpu_f32(hidden, "project_step_into", |values| {
            packed
                .output
                .matmul_into(values, rows, out, packed.output_scale)
        })?)
    }

    /// Feeds one token per row (`last_tokens`: B·beams u32; the decoder start token at step 0,
    /// where one per input also serves: see [`T5ForRec::decode_step_hidden`]) and returns the
    /// next-token log-probabilities, rows×V (f32 for a half-precision
    /// model). Inference only: no
    /// dropout, no gradient.
    pub fn decode_step(&self, state: &mut DecoderState, last_tokens: &Tensor) -> Result<Tensor> {
        let h = self.decode_step_hidden(state, last_tokens)?;
        let logits = if state.packed.is_some() {
            let rows = h.dim(0)?;
            let mut out = vec![0f32; rows * self.cfg.vocab_size];
            self.project_step_into(state, &h, &mut out)?;
            Tensor::from_vec(out, (rows, self.cfg.vocab_size), &self.device)?
        } else {
            at_least_f32(&self.project_to_vocab(&h)?)?
        };
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// Like [`T5ForRec::decode_step`], but returns the final decoder states (rows×d, after the
    /// last layer norm) instead of log-probabilities, so that a caller can project only the
    /// rows it will read and normalise them its own way.
    ///
    /// At the first step `last_tokens` may also hold one token per input (B instead of
    /// B·beams): all beams of an input then start from that token, the layers run once per
    /// input (B×d is returned), and the self-attention cache is copied to the input's beams.
    /// A beam search, whose first step has a single hypothesis per input, saves
    /// (beams − 1)/beams of that step's decoder work.
    pub fn decode_step_hidden(
        &self,
        state: &mut DecoderState,
        last_tokens: &Tensor,
    ) -> Result<Tensor> {
        let (b, beams, t) = (state.batch, state.beams, state.step);
        let per_input = t == 0 && beams > 1 && last_tokens.elem_count() == b;
        // Rows computed here, and how many of them each input has.
        let (n, beams) = if per_input {
            (b, 1)
        } else {
            (state.rows(), beams)
        };
        if last_tokens.elem_count() != n {
            return Err(T5Error::InvalidInput(format!(
                "decode_step: {} tokens for {} decoder rows ({b} inputs × {} beams)",
                last_tokens.elem_count(),
                state.rows(),
                state.beams
            )));
        }
        let rows = if per_input {
            StepRows::SpreadTo { beams: state.beams }
        } else {
            StepRows::Each
        };
        let position_bias = self
            .decoder_bias
            .forward(1, t + 1, t)?
            .to_dtype(self.dtype)?
            .contiguous()?;
        state.cache.begin_step(position_bias)?;
        let mut pass = DecoderPass::Step {
            cache: &mut state.cache,
            cross_kv: &state.cross_kv,
            cross_bias: &state.cross_bias,
            group: beams,
            rows,
            packed: state.packed.as_deref().map(|p| p.blocks.as_slice()),
        };
        let mut h = embedding(&self.shared, &last_tokens.flatten_all()?)?;
        for (layer, block) in self.decoder.iter().enumerate() {
            h = block.forward(layer, &h, &mut pass, &self.dropout)?;
        }
        state.cache.end_step(rows);
        state.step += 1;
        self.decoder_norm.forward_inference(&h)
    }
}
