//! The decoder block, written once for every pass: training and teacher-forced scoring (all
//! positions at once) and incremental decoding (one position per row, over a cache).

use candle_core::Tensor;
use peapod_kernels::PackedWeight;

use super::cache::{KvCache, StepRows};
use crate::error::Result;
use crate::layers::{
    Attention, AttentionBias, FeedForward, PackedFeedForward, RmsNorm, SeededDropout,
};

#[derive(Clone, Debug)]
pub(crate) struct DecoderBlock {
    pub(crate) self_norm: RmsNorm,
    pub(crate) self_attn: Attention,
    pub(crate) cross_norm: RmsNorm,
    pub(crate) cross_attn: Attention,
    pub(crate) ff_norm: RmsNorm,
    pub(crate) ff: FeedForward,
}

/// One block's weights packed for CPU decoding (cross-attention keys and values are projected
/// once per input, so they are not packed).
#[derive(Debug)]
pub(crate) struct PackedBlock {
    pub(crate) self_q: PackedWeight,
    pub(crate) self_k: PackedWeight,
    pub(crate) self_v: PackedWeight,
    pub(crate) self_o: PackedWeight,
    pub(crate) cross_q: PackedWeight,
    pub(crate) cross_o: PackedWeight,
    pub(crate) ff: PackedFeedForward,
}

/// What a pass through the decoder attends to.
pub(crate) enum DecoderPass<'a> {
    /// Every target position at once (training, teacher-forced scoring): differentiable, with
    /// dropout when `train`. Rows `e·group .. (e+1)·group` all read input `e` of `encoder_out`.
    Sequence {
        /// Position bias (1, H, S, S); the causal mask is the attention's.
        self_bias: &'a Tensor,
        encoder_out: &'a Tensor,
        /// (E, T) keep mask of the encoder positions.
        encoder_mask: &'a Tensor,
        group: usize,
        train: bool,
    },
    /// One position per row of incremental decoding (inference): self-attention over `cache`,
    /// cross-attention over keys and values projected once per input. `group` rows per input.
    Step {
        cache: &'a mut KvCache,
        /// Per layer, (E, H, T, d_kv).
        cross_kv: &'a [(Tensor, Tensor)],
        cross_bias: &'a Tensor,
        group: usize,
        rows: StepRows,
        packed: Option<&'a [PackedBlock]>,
    },
}

impl DecoderBlock {
    /// Block `layer` applied to `h` (rows × S × d for a sequence pass, rows × d for a step).
    pub(crate) fn forward(
        &self,
        layer: usize,
        h: &Tensor,
        pass: &mut DecoderPass,
        dropout: &SeededDropout,
    ) -> Result<Tensor> {
        let train = matches!(pass, DecoderPass::Sequence { train: true, .. });
        let packed = match pass {
            DecoderPass::Step {
                packed: Some(p), ..
            } => Some(&p[layer]),
            _ => None,
        };
        let x = self.norm(&self.self_norm, h, pass)?;
        let a = self.self_attention(layer, &x, pass, packed, dropout)?;
        let h = dropout.residual(h, &a, train)?;
        let x = self.norm(&self.cross_norm, &h, pass)?;
        let c = self.cross_attention(layer, &x, pass, packed, dropout)?;
        let h = dropout.residual(&h, &c, train)?;
        let x = self.norm(&self.ff_norm, &h, pass)?;
        let f = self
            .ff
            .forward_with(&x, dropout, train, packed.map(|p| &p.ff))?;
        dropout.residual(&h, &f, train)
    }

    /// A step needs no gradient: candle-nn's fused norm (no backward) serves it.
    fn norm(&self, norm: &RmsNorm, x: &Tensor, pass: &DecoderPass) -> Result<Tensor> {
        match pass {
            DecoderPass::Sequence { .. } => norm.forward(x),
            DecoderPass::Step { .. } => norm.forward_inference(x),
        }
    }

    fn self_attention(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &mut DecoderPass,
        packed: Option<&PackedBlock>,
        dropout: &SeededDropout,
    ) -> Result<Tensor> {
        let att = &self.self_attn;
        match pass {
            DecoderPass::Sequence {
                self_bias, train, ..
            } => {
                let bias = AttentionBias {
                    position: Some(self_bias),
                    key_keep: None,
                    causal: true,
                };
                att.forward(x, None, &bias, dropout, *train)
            }
            DecoderPass::Step { cache, rows, .. } => {
                let q = att.q.forward_with(x, packed.map(|p| &p.self_q))?;
                let k = att.k.forward_with(x, packed.map(|p| &p.self_k))?;
                let v = att.v.forward_with(x, packed.map(|p| &p.self_v))?;
                let ctx = cache.attend(layer, (&q, &k, &v), (att.heads, att.d_kv), *rows)?;
                att.o.forward_with(&ctx, packed.map(|p| &p.self_o))
            }
        }
    }

    fn cross_attention(
        &self,
        layer: usize,
        x: &Tensor,
        pass: &DecoderPass,
        packed: Option<&PackedBlock>,
        dropout: &SeededDropout,
    ) -> Result<Tensor> {
        let att = &self.cross_attn;
        match pass {
            DecoderPass::Sequence {
                encoder_out,
                encoder_mask,
                group,
                train,
                ..
            } => {
                let bias = AttentionBias {
                    position: None,
                    key_keep: Some(encoder_mask),
                    causal: false,
                };
                // Cross-attention has no position bias, so an input's rows can attend as one
                // sequence of group·S queries: its keys and values are projected once.
                let (rows, s, d) = x.dims3()?;
                let grouped = x.reshape((rows / group, group * s, d))?;
                Ok(att
                    .forward(&grouped, Some(encoder_out), &bias, dropout, *train)?
                    .reshape((rows, s, d))?)
            }
            DecoderPass::Step {
                cross_kv,
                cross_bias,
                group,
                ..
            } => {
                let (heads, dk) = (att.heads, att.d_kv);
                let n = x.dim(0)?;
                // Rows become query positions of their input: the shared keys are never
                // repeated.
                let q = att
                    .q
                    .forward_with(x, packed.map(|p| &p.cross_q))?
                    .reshape((n / group, *group, heads, dk))?
                    .transpose(1, 2)?
                    .contiguous()?;
                let (ck, cv) = &cross_kv[layer];
                // Each (input, head) is one group × d by d × T product: few enough calls that
                // candle's batched gemm serves (a plain-loop version was no faster).
                let scores = q.matmul(&ck.t()?)?.broadcast_add(cross_bias)?;
                let ctx = candle_nn::ops::softmax_last_dim(&scores)?.matmul(cv)?;
                let ctx = ctx.transpose(1, 2)?.reshape((n, heads * dk))?;
                att.o.forward_with(&ctx, packed.map(|p| &p.cross_o))
            }
        }
    }
}
