use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Init, VarBuilder};
use peapod_kernels::ops;
use peapod_kernels::runtime::even_slices;
use rayon::prelude::*;

use crate::config::T5Config;
use crate::error::{Result, T5Error};
use crate::layers::{
    splitmix64, with_dropout_stream, Attention, AttentionBias, FeedForward, RelativeBias, RmsNorm,
    SeededDropout,
};

mod cache;
mod decoder;
mod decoding;
mod live;

use decoder::{DecoderBlock, DecoderPass};

pub use decoding::{DecoderState, PackedDecoder};

/// Name of PeaPOD's whole-word embedding table (absent from Hugging Face checkpoints).
pub const WHOLE_WORD_EMBEDDINGS: &str = "whole_word_embeddings.weight";

#[derive(Clone, Debug)]
struct EncoderBlock {
    self_norm: RmsNorm,
    self_attn: Attention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// T5 with PeaPOD's whole-word embeddings, taking the encoder input as embeddings so that soft
/// prompts can be prepended.
///
/// Parameters carry Hugging Face's names (`shared.weight`, `encoder.block.{i}.layer.0.
/// SelfAttention.q.weight`, …, `lm_head.weight` when untied) plus ours,
/// [`WHOLE_WORD_EMBEDDINGS`]; build it from a `VarBuilder` over a `VarMap` to train it.
#[derive(Debug)]
pub struct T5ForRec {
    cfg: T5Config,
    shared: Tensor,
    whole_word: Tensor,
    encoder: Vec<EncoderBlock>,
    encoder_bias: RelativeBias,
    encoder_norm: RmsNorm,
    decoder: Vec<DecoderBlock>,
    decoder_bias: RelativeBias,
    decoder_norm: RmsNorm,
    lm_head: Option<Tensor>,
    dropout: SeededDropout,
    device: Device,
    dtype: DType,
}

fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
    let rows = table.index_select(&flat, 0)?;
    dims.push(table.dim(1)?);
    Ok(rows.reshape(dims)?)
}

impl T5ForRec {
    /// Builds (or, from a loaded `VarBuilder`, reads) all parameters.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        if cfg.d_model == 0 || cfg.num_heads == 0 || cfg.d_kv == 0 || cfg.vocab_size == 0 {
            return Err(T5Error::InvalidInput(format!(
                "degenerate T5 config: {cfg:?}"
            )));
        }
        let shared = vb.get_with_hints(
            (cfg.vocab_size, d),
            "shared.weight",
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        let whole_word = vb.get_with_hints(
            (cfg.num_whole_word_embeddings, d),
            WHOLE_WORD_EMBEDDINGS,
            Init::Randn {
                mean: 0.,
                stdev: 1.,
            },
        )?;
        let eps = cfg.layer_norm_epsilon;
        let enc_vb = vb.pp("encoder");
        let mut encoder = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let b = enc_vb.pp(format!("block.{i}"));
            encoder.push(EncoderBlock {
                self_norm: RmsNorm::new(b.pp("layer.0.layer_norm"), d, eps)?,
                self_attn: Attention::new(b.pp("layer.0.SelfAttention"), cfg)?,
                ff_norm: RmsNorm::new(b.pp("layer.1.layer_norm"), d, eps)?,
                ff: FeedForward::new(b.pp("layer.1.DenseReluDense"), cfg)?,
            });
        }
        let encoder_bias = RelativeBias::new(
            enc_vb.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            cfg,
            true,
        )?;
        let encoder_norm = RmsNorm::new(enc_vb.pp("final_layer_norm"), d, eps)?;
        let dec_vb = vb.pp("decoder");
        let mut decoder = Vec::with_capacity(cfg.num_decoder_layers);
        for i in 0..cfg.num_decoder_layers {
            let b = dec_vb.pp(format!("block.{i}"));
            decoder.push(DecoderBlock {
                self_norm: RmsNorm::new(b.pp("layer.0.layer_norm"), d, eps)?,
                self_attn: Attention::new(b.pp("layer.0.SelfAttention"), cfg)?,
                cross_norm: RmsNorm::new(b.pp("layer.1.layer_norm"), d, eps)?,
                cross_attn: Attention::new(b.pp("layer.1.EncDecAttention"), cfg)?,
                ff_norm: RmsNorm::new(b.pp("layer.2.layer_norm"), d, eps)?,
                ff: FeedForward::new(b.pp("layer.2.DenseReluDense"), cfg)?,
            });
        }
        let decoder_bias = RelativeBias::new(
            dec_vb.pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
            cfg,
            false,
        )?;
        let decoder_norm = RmsNorm::new(dec_vb.pp("final_layer_norm"), d, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(vb.get_with_hints(
                (cfg.vocab_size, d),
                "lm_head.weight",
                Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            )?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            shared,
            whole_word,
            encoder,
            encoder_bias,
            encoder_norm,
            decoder,
            decoder_bias,
            decoder_norm,
            lm_head,
            dropout: SeededDropout::new(cfg.dropout_rate, 0),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Restarts the dropout mask stream: training is reproducible from this seed. On the CPU
    /// the masks come from a counter-based stream (independent of threading); on a GPU from
    /// the device's generator, which this reseeds.
    pub fn set_dropout_seed(&self, seed: u64) -> Result<()> {
        self.dropout.reseed(seed);
        if !self.device.is_cpu() {
            self.device.set_seed(seed)?;
        }
        Ok(())
    }

    /// Gradients of a batch loss computed as the sum of `parts` pieces, `loss_of_part(p)` for
    /// `p` in `0..parts` (the caller slices the batch and weights each slice's loss so that the
    /// pieces add up to the batch loss), with the pieces' forward and backward passes run
    /// concurrently on the rayon pool. Returns the summed gradients and the summed loss value.
    ///
    /// Why: one backward pass on a CPU alternates multi-threaded matrix products with
    /// single-threaded graph bookkeeping, during which the other cores wait; independent pieces
    /// keep them busy (t5-small, batch 64, 40 → 6, 2 cores: 6.6–7.1 s per step in one piece,
    /// 6.0–6.8 s in two; `bench_t5`). Off the CPU the pieces run one after another (same
    /// result, no gain: use one piece there); with `parts` ≤ 1 it is one plain forward and
    /// backward pass of `loss_of_part(0)`.
    ///
    /// Each piece draws its CPU dropout masks from its own stream, keyed by the model's
    /// dropout generator and the piece's index: a split step is reproducible from
    /// [`T5ForRec::set_dropout_seed`], but its masks differ from those of the unsplit batch
    /// (and of another number of pieces).
    pub fn backward_in_parts<E, F>(
        &self,
        parts: usize,
        loss_of_part: F,
    ) -> std::result::Result<(GradStore, f64), E>
    where
        E: From<T5Error> + Send,
        F: Fn(usize) -> std::result::Result<Tensor, E> + Sync,
    {
        let backward = |loss: Tensor| -> std::result::Result<(GradStore, f64), E> {
            let value = loss
                .to_dtype(DType::F32)
                .and_then(|l| l.to_scalar::<f32>())
                .map_err(T5Error::from)?;
            let grads = loss.backward().map_err(T5Error::from)?;
            Ok((grads, f64::from(value)))
        };
        if parts <= 1 {
            return backward(loss_of_part(0)?);
        }
        let key = self.dropout.next_stream_key();
        let piece = |p: usize| {
            let loss = with_dropout_stream(splitmix64(key ^ p as u64), || loss_of_part(p))?;
            backward(loss)
        };
        // Concurrency only pays where the pieces' serial stretches would idle CPU cores.
        let pieces: Vec<std::result::Result<(GradStore, f64), E>> = if self.device.is_cpu() {
            (0..parts).into_par_iter().map(piece).collect()
        } else {
            (0..parts).map(piece).collect()
        };
        let mut pieces = pieces.into_iter();
        let (mut grads, mut total) = match pieces.next() {
            Some(first) => first?,
            None => return Err(T5Error::InvalidInput("no parts to backpropagate".into()).into()),
        };
        for piece in pieces {
            let (more, value) = piece?;
            grads.extend(more).map_err(T5Error::from)?;
            total += value;
        }
        Ok((grads, total))
    }

    /// The shared token embedding table (vocab × d_model).
    pub fn shared_embeddings(&self) -> &Tensor {
        &self.shared
    }

    /// Token embeddings only (B×T u32 → B×T×d).
    pub fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        embedding(&self.shared, input_ids)
    }

    /// Token embeddings plus whole-word embeddings (SPEC §3): the encoder input after the
    /// soft prompts.
    pub fn embed_input(&self, input_ids: &Tensor, whole_word_ids: &Tensor) -> Result<Tensor> {
        if input_ids.dims() != whole_word_ids.dims() {
            return Err(T5Error::InvalidInput(format!(
                "input_ids {:?} and whole_word_ids {:?} differ in shape",
                input_ids.dims(),
                whole_word_ids.dims()
            )));
        }
        let tokens = self.embed_tokens(input_ids)?;
        let words = embedding(&self.whole_word, whole_word_ids)?;
        Ok((tokens + words)?)
    }

    /// Runs the encoder over `input_embeds` (B×T×d) with a B×T keep-mask (1 = attend).
    /// Dropout is active only when `train`.
    pub fn encode(
        &self,
        input_embeds: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, d) = input_embeds.dims3()?;
        if d != self.cfg.d_model || attention_mask.dims() != [b, t] {
            return Err(T5Error::InvalidInput(format!(
                "encode: embeddings {:?} / mask {:?}, expected (B, T, {}) / (B, T)",
                input_embeds.dims(),
                attention_mask.dims(),
                self.cfg.d_model
            )));
        }
        self.encode_rows(input_embeds, attention_mask, train)
    }

    /// [`T5ForRec::encode`] at inference (no dropout), with the batch split into `parts`
    /// pieces encoded concurrently on the CPU (elsewhere, or with `parts` ≤ 1, one pass): one
    /// piece's single-threaded stretches (attention's small products, element-wise passes)
    /// overlap another's matrix products. Each input is encoded exactly as alone. The count
    /// comes from the program's policy (`peapod_kernels::CpuPolicy::encode_parts_on`).
    pub fn encode_in_parts(
        &self,
        input_embeds: &Tensor,
        attention_mask: &Tensor,
        parts: usize,
    ) -> Result<Tensor> {
        let b = input_embeds.dim(0)?;
        let parts = parts.min(b);
        if parts <= 1 || !self.device.is_cpu() {
            return self.encode(input_embeds, attention_mask, false);
        }
        let pieces: Vec<Result<Tensor>> = even_slices(b, parts)
            .into_par_iter()
            .map(|r| {
                self.encode(
                    &input_embeds.narrow(0, r.start, r.len())?,
                    &attention_mask.narrow(0, r.start, r.len())?,
                    false,
                )
            })
            .collect();
        let pieces = pieces.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pieces, 0)?)
    }

    /// [`T5ForRec::encode`] of the whole batch in one pass.
    fn encode_rows(
        &self,
        input_embeds: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let t = input_embeds.dim(1)?;
        let position = self.encoder_bias.forward(t, t, 0)?.to_dtype(self.dtype)?;
        let bias = AttentionBias {
            position: Some(&position),
            key_keep: Some(attention_mask),
            causal: false,
        };
        let drop = &self.dropout;
        let mut h = drop.forward(input_embeds, train)?;
        for block in &self.encoder {
            let a =
                block
                    .self_attn
                    .forward(&block.self_norm.forward(&h)?, None, &bias, drop, train)?;
            h = drop.residual(&h, &a, train)?;
            let f = block.ff.forward(&block.ff_norm.forward(&h)?, drop, train)?;
            h = drop.residual(&h, &f, train)?;
        }
        drop.forward(&self.encoder_norm.forward(&h)?, train)
    }

    /// Teacher-forced decoder: final hidden states (B×S×d) before the vocabulary projection.
    ///
    /// `encoder_out` (E×T×d) may hold fewer inputs than there are decoder rows: when B = E·G,
    /// rows `e·G .. (e+1)·G` all read input `e`. Scoring many continuations of one input (top-n
    /// candidates) then projects that input's cross-attention keys and values once instead of
    /// once per row.
    pub fn decode_hidden(
        &self,
        decoder_input_ids: &Tensor,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (rows, s) = decoder_input_ids.dims2()?;
        let (inputs, t, _) = encoder_out.dims3()?;
        if inputs == 0 || rows % inputs != 0 || encoder_mask.dims() != [inputs, t] {
            return Err(T5Error::InvalidInput(format!(
                "decode: {rows} decoder rows for encoder output {:?} / mask {:?}; the rows must \
                 be a whole multiple of the inputs",
                encoder_out.dims(),
                encoder_mask.dims()
            )));
        }
        let self_bias = self.decoder_bias.forward(s, s, 0)?.to_dtype(self.dtype)?;
        let mut pass = DecoderPass::Sequence {
            self_bias: &self_bias,
            encoder_out,
            encoder_mask,
            group: rows / inputs,
            train,
        };
        let drop = &self.dropout;
        let mut h = drop.forward(&self.embed_tokens(decoder_input_ids)?, train)?;
        for (layer, block) in self.decoder.iter().enumerate() {
            h = block.forward(layer, &h, &mut pass, drop)?;
        }
        drop.forward(&self.decoder_norm.forward(&h)?, train)
    }

    /// The output embedding (V×d) and the factor applied to hidden states before it: Hugging
    /// Face's d^-0.5 when the head is tied to the shared embeddings, none otherwise.
    fn output_embedding(&self) -> (&Tensor, Option<f64>) {
        match &self.lm_head {
            Some(w) => (w, None),
            None => (&self.shared, Some((self.cfg.d_model as f64).powf(-0.5))),
        }
    }

    /// Vocabulary projection of hidden states (…×d → …×V), with Hugging Face's d^-0.5 scaling
    /// when the head is tied to the shared embeddings. The input is flattened to 2-D first.
    pub fn project_to_vocab(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = self.cfg.d_model;
        let rows = hidden.elem_count() / d;
        let flat = hidden.reshape((rows, d))?;
        let (weight, scale) = self.output_embedding();
        let flat = match scale {
            Some(scale) => (flat * scale)?,
            None => flat,
        };
        let logits = flat.matmul(&weight.t()?)?;
        let mut out = dims[..dims.len() - 1].to_vec();
        out.push(self.cfg.vocab_size);
        Ok(logits.reshape(out)?)
    }

    /// [`T5ForRec::project_to_vocab`] of `hidden` (N×d, or any shape with d last) written
    /// row-major into `out` (exactly N·V values), for callers that own the buffer the logits
    /// end up in (beam search).
    ///
    /// At 20 beams × 32 inputs the logits are 82 MB per step: the kernel writes them straight
    /// into `out` on the CPU (see `peapod_kernels::ops::linear_into`).
    pub fn project_to_vocab_into(&self, hidden: &Tensor, out: &mut [f32]) -> Result<()> {
        let d = self.cfg.d_model;
        let v = self.cfg.vocab_size;
        if hidden.dims().last() != Some(&d) || out.len() != hidden.elem_count() / d * v {
            return Err(T5Error::InvalidInput(format!(
                "project_to_vocab_into: hidden {:?} and {} output values (d_model {d}, vocabulary {v})",
                hidden.dims(),
                out.len()
            )));
        }
        let (weight, scale) = self.output_embedding();
        Ok(ops::linear_into(hidden, weight, scale.unwrap_or(1.0), out)?)
    }

    /// Teacher-forced decoding: logits (B×S×V) for every position (causal self-attention).
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        encoder_out: &Tensor,
        encoder_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.decode_hidden(decoder_input_ids, encoder_out, encoder_mask, train)?;
        self.project_to_vocab(&h)
    }

    /// Token-level NLL of `target_ids` under `logits` (B×S×V), averaged over the positions
    /// where `target_mask` is 1 (SPEC §6, eq. 4).
    pub fn loss(
        &self,
        logits: &Tensor,
        target_ids: &Tensor,
        target_mask: &Tensor,
    ) -> Result<Tensor> {
        let v = logits.dim(D::Minus1)?;
        let rows = logits.elem_count() / v;
        let keep = kept_rows(target_mask)?;
        let idx = Tensor::from_vec(keep.clone(), keep.len(), logits.device())?;
        let logits = logits.reshape((rows, v))?.index_select(&idx, 0)?;
        let targets = target_ids
            .flatten_all()?
            .to_dtype(DType::U32)?
            .index_select(&idx, 0)?;
        masked_nll(&logits, &targets)
    }

    /// Right-shifts targets behind the decoder start token (teacher forcing inputs).
    pub fn shift_right(&self, target_ids: &Tensor) -> Result<Tensor> {
        let (b, s) = target_ids.dims2()?;
        let start = Tensor::full(self.cfg.decoder_start_token_id, (b, 1), target_ids.device())?;
        let body = target_ids
            .to_dtype(DType::U32)?
            .narrow(1, 0, s.saturating_sub(1))?;
        Ok(Tensor::cat(&[&start, &body], 1)?)
    }

    /// Encoder + teacher-forced decoder + loss. Only the non-padding target positions go
    /// through the vocabulary projection.
    pub fn forward_loss(
        &self,
        input_embeds: &Tensor,
        attention_mask: &Tensor,
        target_ids: &Tensor,
        target_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        if target_ids.dims() != target_mask.dims() {
            return Err(T5Error::InvalidInput(format!(
                "target_ids {:?} and target_mask {:?} differ in shape",
                target_ids.dims(),
                target_mask.dims()
            )));
        }
        let enc = self.encode(input_embeds, attention_mask, train)?;
        let dec_in = self.shift_right(target_ids)?;
        let hidden = self.decode_hidden(&dec_in, &enc, attention_mask, train)?;
        let d = self.cfg.d_model;
        let rows = hidden.elem_count() / d;
        let keep = kept_rows(target_mask)?;
        let idx = Tensor::from_vec(keep.clone(), keep.len(), &self.device)?;
        let hidden = hidden.reshape((rows, d))?.index_select(&idx, 0)?;
        let logits = self.project_to_vocab(&hidden)?;
        let targets = target_ids
            .flatten_all()?
            .to_dtype(DType::U32)?
            .index_select(&idx, 0)?;
        masked_nll(&logits, &targets)
    }
}

/// Half-precision logits are upcast for the softmax; f32 and f64 stay as they are.
pub(crate) fn at_least_f32(x: &Tensor) -> Result<Tensor> {
    Ok(match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32)?,
        _ => x.clone(),
    })
}

/// Row indices (into the flattened B·S positions) whose mask is non-zero.
fn kept_rows(mask: &Tensor) -> Result<Vec<u32>> {
    let m: Vec<f32> = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let keep: Vec<u32> = m
        .iter()
        .enumerate()
        .filter(|(_, &x)| x != 0.0)
        .map(|(i, _)| i as u32)
        .collect();
    if keep.is_empty() {
        return Err(T5Error::InvalidInput(
            "target_mask selects no token: the loss is undefined".to_string(),
        ));
    }
    Ok(keep)
}

/// Mean of −log softmax(logits)[target] over rows (N×V logits, N targets).
fn masked_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = at_least_f32(logits)?;
    Ok(ops::nll_rows(&logits, targets)?.mean_all()?)
}
