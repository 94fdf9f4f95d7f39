//! Incremental decoding for beam search: one token per beam per call, with a reorderable
//! self-attention cache and cross-attention keys/values computed once per input.

use candle_core::{DType, Tensor, D};

use super::{at_least_f32, embedding, T5ForRec};
use crate::error::{Result, T5Error};
use crate::fused::cached_attention;
use crate::layers::padding_bias;

/// The decoder's state between [`T5ForRec::decode_step`] calls.
///
/// Rows are ordered input-major: row `i * beams + j` is beam `j` of input `i`.
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
    self_kv: SelfCache,
}

/// The decoder's self-attention cache.
#[derive(Clone, Debug)]
enum SelfCache {
    /// Per layer, (B·beams, H, step, d_kv), grown by concatenation and reordered by copying:
    /// any device and dtype.
    Dense(Vec<Option<(Tensor, Tensor)>>),
    /// CPU f32: per layer and step, the keys and values that step computed (its rows × H·d_kv),
    /// never copied again; per step, the row of that step each current row descends from.
    /// Reordering beams permutes these indices instead of copying the cache (concatenating and
    /// reordering the dense cache was ~15% of a t5-small decoding batch, on one thread).
    Steps {
        kv: Vec<Vec<(Tensor, Tensor)>>,
        origin: Vec<Vec<u32>>,
    },
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
        match &mut self.self_kv {
            SelfCache::Dense(layers) => {
                let idx: Vec<u32> = beam_indices.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, rows, self.cross_bias.device())?;
                for entry in layers.iter_mut() {
                    if let Some((k, v)) = entry {
                        *entry = Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?));
                    }
                }
            }
            SelfCache::Steps { origin, .. } => {
                for rows_of_step in origin.iter_mut() {
                    *rows_of_step = beam_indices.iter().map(|&i| rows_of_step[i]).collect();
                }
            }
        }
        Ok(())
    }
}

impl T5ForRec {
    /// Prepares incremental decoding of `beams_per_input` beams for each encoded input
    /// (encoder_out B×T×d, encoder_mask B×T). Cross-attention keys and values are projected
    /// here, once per input.
    pub fn start_decoding(
        &self,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        beams_per_input: usize,
    ) -> Result<DecoderState> {
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
            self_kv: if self.device.is_cpu() && self.dtype == DType::F32 {
                SelfCache::Steps {
                    kv: vec![Vec::new(); self.decoder.len()],
                    origin: Vec::new(),
                }
            } else {
                SelfCache::Dense(vec![None; self.decoder.len()])
            },
        })
    }

    /// Feeds one token per row (`last_tokens`: B·beams u32; the decoder start token at step 0,
    /// where one per input also serves: see [`T5ForRec::decode_step_hidden`]) and returns the
    /// next-token log-probabilities, rows×V (f32 for a half-precision
    /// model). Inference only: no
    /// dropout, no gradient.
    pub fn decode_step(&self, state: &mut DecoderState, last_tokens: &Tensor) -> Result<Tensor> {
        let h = self.decode_step_hidden(state, last_tokens)?;
        let logits = at_least_f32(&self.project_to_vocab(&h)?)?;
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
        let heads = self.cfg.num_heads;
        let dk = self.cfg.d_kv;
        let mut h = embedding(&self.shared, &last_tokens.flatten_all()?)?;
        let pos = self
            .decoder_bias
            .forward(1, t + 1, t)?
            .to_dtype(self.dtype)?
            .contiguous()?;
        // The rows computed now attend to this step's keys as they are.
        let this_step: Vec<u32> = (0..n as u32).collect();
        let pos_host = match &state.self_kv {
            SelfCache::Steps { .. } => pos.flatten_all()?.to_vec1::<f32>()?,
            SelfCache::Dense(_) => Vec::new(),
        };
        for (l, block) in self.decoder.iter().enumerate() {
            let att = &block.self_attn;
            let x = block.self_norm.forward_inference(&h)?;
            let q = att.q.forward(&x)?;
            let k = att.k.forward(&x)?;
            let v = att.v.forward(&x)?;
            let ctx = match &mut state.self_kv {
                SelfCache::Steps { kv, origin } => {
                    kv[l].push((k.contiguous()?, v.contiguous()?));
                    let ctx = cached_attention(
                        &q.contiguous()?,
                        &kv[l],
                        origin,
                        &this_step,
                        &pos_host,
                        (heads, dk),
                    )?;
                    Tensor::from_vec(ctx, (n, heads * dk), &self.device)?
                }
                SelfCache::Dense(layers) => {
                    let q = q.reshape((n, heads, 1, dk))?;
                    let k = k.reshape((n, heads, 1, dk))?;
                    let v = v.reshape((n, heads, 1, dk))?;
                    let (k, v) = match &layers[l] {
                        Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                        None => (k, v),
                    };
                    // Other devices and dtypes: one batched product per step.
                    let scores = q.matmul(&k.t()?)?.broadcast_add(&pos)?;
                    let ctx = candle_nn::ops::softmax_last_dim(&scores)?
                        .matmul(&v)?
                        .reshape((n, heads * dk))?;
                    layers[l] = Some(if per_input {
                        (repeat_rows(&k, state.beams)?, repeat_rows(&v, state.beams)?)
                    } else {
                        (k, v)
                    });
                    ctx
                }
            };
            h = (h + att.o.forward(&ctx)?)?;

            let ca = &block.cross_attn;
            let x = block.cross_norm.forward_inference(&h)?;
            // Beams become query positions of their input: the shared keys are never repeated.
            let q =
                ca.q.forward(&x)?
                    .reshape((b, beams, heads, dk))?
                    .transpose(1, 2)?
                    .contiguous()?;
            let (ck, cv) = &state.cross_kv[l];
            // Here each (input, head) is one 20 × d by d × T product: few enough calls that
            // candle's batched gemm serves.
            let scores = q.matmul(&ck.t()?)?.broadcast_add(&state.cross_bias)?;
            let ctx = candle_nn::ops::softmax_last_dim(&scores)?.matmul(cv)?;
            let ctx = ctx.transpose(1, 2)?.reshape((n, heads * dk))?;
            h = (h + ca.o.forward(&ctx)?)?;

            let f =
                block
                    .ff
                    .forward(&block.ff_norm.forward_inference(&h)?, &self.dropout, false)?;
            h = (h + f)?;
        }
        let h = self.decoder_norm.forward_inference(&h)?;
        let (all_rows, beams_per_input) = (state.rows(), state.beams);
        if let SelfCache::Steps { origin, .. } = &mut state.self_kv {
            // Every beam of an input descends from the input's single row of a per-input step.
            origin.push(if per_input {
                (0..all_rows)
                    .map(|r| (r / beams_per_input) as u32)
                    .collect()
            } else {
                this_step
            });
        }
        state.step += 1;
        Ok(h)
    }
}

/// Each row of `x` (first dimension) `times` times in a row: rows r·times .. (r+1)·times of the
/// result are copies of row r.
fn repeat_rows(x: &Tensor, times: usize) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let rows = dims[0];
    let mut wide = dims.clone();
    wide.insert(1, times);
    dims[0] = rows * times;
    Ok(x.unsqueeze(1)?
        .broadcast_as(wide)?
        .contiguous()?
        .reshape(dims)?)
}
