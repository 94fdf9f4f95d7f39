//! The building blocks of T5. Softmax, RMS norm, linear layers and the loss are ops of
//! `peapod-kernels`, which choose their device path themselves.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Tensor};
use candle_nn::{Init, VarBuilder};
use peapod_kernels::{ops, PackedWeight};

use crate::config::T5Config;
use crate::error::{Result, T5Error};

/// Additive bias for masked attention positions: large but finite, so that a fully masked row
/// stays a uniform softmax instead of NaN (the fused attention's own).
pub(crate) const MASK_BIAS: f64 = ops::ATTENTION_MASK_BIAS;

/// A bias-free linear layer.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    /// (out, in), as in PyTorch.
    pub(crate) weight: Tensor,
}

impl Linear {
    pub(crate) fn new(vb: VarBuilder, d_in: usize, d_out: usize, stdev: f64) -> Result<Self> {
        let weight = vb.get_with_hints((d_out, d_in), "weight", Init::Randn { mean: 0., stdev })?;
        Ok(Self { weight })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(x, &self.weight)?)
    }

    /// Through `packed`, a copy of this layer's weight packed for CPU decoding, when given
    /// (rows × out); through the weight itself otherwise.
    pub(crate) fn forward_with(&self, x: &Tensor, packed: Option<&PackedWeight>) -> Result<Tensor> {
        match packed {
            Some(w) => Ok(w.forward(x)?),
            None => self.forward(x),
        }
    }
}

/// T5's layer norm: RMS scaling without mean subtraction or bias.
#[derive(Clone, Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(vb: VarBuilder, d: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(d, "weight", Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.weight, self.eps)?)
    }

    /// Fused kernel, no backward: for incremental decoding only.
    pub(crate) fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.weight,
            self.eps as f32,
        )?)
    }
}

/// Inverted dropout with its own counter-based generator, so a run is reproducible from a seed
/// on every device (candle's CPU `rand` cannot be seeded).
#[derive(Debug)]
pub(crate) struct SeededDropout {
    pub(crate) p: f64,
    counter: AtomicU64,
}

thread_local! {
    /// This thread's dropout counters while inside [`with_dropout_stream`].
    static STREAM: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the CPU dropout masks of this thread drawn from a stream of its own, starting
/// at `key`, instead of the model's shared counter: concurrent computations (the parts of a
/// split batch) then get masks that do not depend on how their calls interleave. Nested calls
/// restore the outer stream on return.
pub(crate) fn with_dropout_stream<R>(key: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STREAM.with(|stream| stream.set(self.0));
        }
    }
    let _restore = Restore(STREAM.with(|stream| stream.replace(Some(key))));
    f()
}

pub(crate) use ops::splitmix64;

impl SeededDropout {
    pub(crate) fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            counter: AtomicU64::new(splitmix64(seed)),
        }
    }

    pub(crate) fn reseed(&self, seed: u64) {
        self.counter.store(splitmix64(seed), Ordering::Relaxed);
    }

    /// A key for [`with_dropout_stream`], drawn from this generator's own stream so that a run
    /// stays reproducible from [`SeededDropout::reseed`].
    pub(crate) fn next_stream_key(&self) -> u64 {
        splitmix64(self.counter.fetch_add(1 << 32, Ordering::Relaxed))
    }

    /// The first counter of the next `n` mask values: the current thread's stream inside
    /// [`with_dropout_stream`], the shared one otherwise.
    fn take_counters(&self, n: u64) -> u64 {
        STREAM.with(|stream| match stream.get() {
            Some(base) => {
                stream.set(Some(base.wrapping_add(n)));
                base
            }
            None => self.counter.fetch_add(n, Ordering::Relaxed),
        })
    }

    /// The dropout of `n` values drawn next from this generator's counters; None when not
    /// training or at rate 0, an error for a rate of 1 or more.
    fn next_mask(&self, n: usize, train: bool) -> Result<Option<ops::CounterDropout>> {
        if !train || self.p <= 0.0 {
            return Ok(None);
        }
        if self.p >= 1.0 {
            return Err(T5Error::InvalidInput(format!(
                "dropout rate must be below 1, got {}",
                self.p
            )));
        }
        Ok(Some(ops::CounterDropout::new(
            self.p,
            self.take_counters(n as u64),
        )))
    }

    /// The dropout of `n` attention probabilities, for the fused attention (which draws the
    /// same masks from these counters as this dropout applied to its probabilities would).
    pub(crate) fn attention_dropout(
        &self,
        n: usize,
        train: bool,
    ) -> Result<Option<ops::CounterDropout>> {
        self.next_mask(n, train)
    }

    /// `h + dropout(a)` as one op (the residual connections of every block).
    pub(crate) fn residual(&self, h: &Tensor, a: &Tensor, train: bool) -> Result<Tensor> {
        match self.next_mask(a.elem_count(), train)? {
            Some(drop) => Ok(ops::residual_dropout(h, a, drop)?),
            None => Ok((h + a)?),
        }
    }

    /// `dropout(relu(x))` as one op (the feed-forward activation).
    pub(crate) fn relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.next_mask(x.elem_count(), train)? {
            Some(drop) => Ok(ops::relu_dropout(x, drop)?),
            None => Ok(x.relu()?),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.next_mask(x.elem_count(), train)? {
            Some(drop) => Ok(ops::dropout(x, drop)?),
            None => Ok(x.clone()),
        }
    }
}

/// Hugging Face's `_relative_position_bucket`, in the same f32 arithmetic.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let rp = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = num_buckets / 2;
    if rp < max_exact {
        bucket += rp;
    } else {
        let scaled = ((rp as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (num_buckets - max_exact) as f32) as i64;
        bucket += (max_exact + scaled).min(num_buckets - 1);
    }
    bucket as u32
}

/// Learned relative-position bias of one stack (held by its first block in HF's layout).
#[derive(Clone, Debug)]
pub(crate) struct RelativeBias {
    /// (num_buckets, num_heads)
    weight: Tensor,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
}

impl RelativeBias {
    pub(crate) fn new(vb: VarBuilder, cfg: &T5Config, bidirectional: bool) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "weight",
            Init::Randn {
                mean: 0.,
                stdev: (cfg.d_model as f64).powf(-0.5),
            },
        )?;
        Ok(Self {
            weight,
            bidirectional,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Bias (1, H, q_len, k_len) for queries at positions `q_offset..q_offset + q_len`.
    pub(crate) fn forward(&self, q_len: usize, k_len: usize, q_offset: usize) -> Result<Tensor> {
        let mut buckets = Vec::with_capacity(q_len * k_len);
        for i in 0..q_len {
            let context = (i + q_offset) as i64;
            for j in 0..k_len {
                buckets.push(relative_position_bucket(
                    j as i64 - context,
                    self.bidirectional,
                    self.num_buckets,
                    self.max_distance,
                ));
            }
        }
        let idx = Tensor::from_vec(buckets, q_len * k_len, self.weight.device())?;
        let heads = self.weight.dim(1)?;
        let bias = self
            .weight
            .index_select(&idx, 0)?
            .reshape((q_len, k_len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        Ok(bias)
    }
}

/// Multi-head attention without the 1/√d scaling (T5 folds it into the initialisation).
#[derive(Clone, Debug)]
pub(crate) struct Attention {
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) heads: usize,
    pub(crate) d_kv: usize,
}

impl Attention {
    pub(crate) fn new(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        // Hugging Face's T5 initialisation (factor 1).
        let q_std = ((d * cfg.d_kv) as f64).powf(-0.5);
        let kv_std = (d as f64).powf(-0.5);
        let o_std = (inner as f64).powf(-0.5);
        Ok(Self {
            q: Linear::new(vb.pp("q"), d, inner, q_std)?,
            k: Linear::new(vb.pp("k"), d, inner, kv_std)?,
            v: Linear::new(vb.pp("v"), d, inner, kv_std)?,
            o: Linear::new(vb.pp("o"), inner, d, o_std)?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// (B, T, H·d_kv) → (B, H, T, d_kv), contiguous for the batched matmul.
    pub(crate) fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Training / full-sequence attention through the fused op (`peapod_kernels::ops::
    /// attention`): keys and values come from one product with the two weights side by side.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        kv_input: Option<&Tensor>,
        bias: &AttentionBias,
        dropout: &SeededDropout,
        train: bool,
    ) -> Result<Tensor> {
        let (b, tq, _) = x.dims3()?;
        let kv_input = kv_input.unwrap_or(x);
        let tk = kv_input.dim(1)?;
        let q = self.q.forward(x)?;
        let kv_weight = Tensor::cat(&[&self.k.weight, &self.v.weight], 0)?;
        let kv = ops::linear(kv_input, &kv_weight)?;
        let masks = ops::AttentionMasks {
            key_keep: bias.key_keep.cloned(),
            causal: bias.causal,
            dropout: dropout.attention_dropout(b * self.heads * tq * tk, train)?,
        };
        let ctx = ops::attention(&q, &kv, bias.position, self.heads, &masks)?;
        self.o.forward(&ctx)
    }
}

/// What a full-sequence attention adds to its scores: a learned position bias (1, H, Tq, Tk),
/// a (B, Tk) keep mask over the keys, and the causal mask.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttentionBias<'a> {
    pub(crate) position: Option<&'a Tensor>,
    pub(crate) key_keep: Option<&'a Tensor>,
    pub(crate) causal: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum FeedForward {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    pub(crate) fn new(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let wi_std = (d as f64).powf(-0.5);
        let wo_std = (ff as f64).powf(-0.5);
        match cfg.feed_forward_proj.as_str() {
            "relu" => Ok(Self::Relu {
                wi: Linear::new(vb.pp("wi"), d, ff, wi_std)?,
                wo: Linear::new(vb.pp("wo"), ff, d, wo_std)?,
            }),
            "gated-gelu" => Ok(Self::GatedGelu {
                wi_0: Linear::new(vb.pp("wi_0"), d, ff, wi_std)?,
                wi_1: Linear::new(vb.pp("wi_1"), d, ff, wi_std)?,
                wo: Linear::new(vb.pp("wo"), ff, d, wo_std)?,
            }),
            other => Err(T5Error::UnsupportedActivation(other.to_string())),
        }
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        dropout: &SeededDropout,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_with(x, dropout, train, None)
    }

    /// [`FeedForward::forward`], through packed copies of the weights when given (inference).
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        dropout: &SeededDropout,
        train: bool,
        packed: Option<&PackedFeedForward>,
    ) -> Result<Tensor> {
        let packed = packed.map(|p| &p.0);
        let at = |i: usize| packed.and_then(|p| p.get(i));
        match self {
            Self::Relu { wi, wo } => {
                let h = dropout.relu(&wi.forward_with(x, at(0))?, train)?;
                wo.forward_with(&h, at(1))
            }
            Self::GatedGelu { wi_0, wi_1, wo } => {
                // HF's "gated-gelu" uses gelu_new, the tanh approximation (candle's `gelu`).
                let h = wi_0
                    .forward_with(x, at(0))?
                    .gelu()?
                    .mul(&wi_1.forward_with(x, at(1))?)?;
                wo.forward_with(&dropout.forward(&h, train)?, at(2))
            }
        }
    }

    /// The layer's weights packed for CPU decoding, in the order `forward_with` reads them.
    pub(crate) fn pack(&self) -> Result<PackedFeedForward> {
        let linears: Vec<&Linear> = match self {
            Self::Relu { wi, wo } => vec![wi, wo],
            Self::GatedGelu { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        };
        Ok(PackedFeedForward(
            linears
                .into_iter()
                .map(|l| PackedWeight::from_tensor(&l.weight))
                .collect::<std::result::Result<_, _>>()?,
        ))
    }

    /// Output × input features of each weight, in the order [`FeedForward::pack`] packs them.
    pub(crate) fn shapes(&self) -> Vec<(usize, usize)> {
        let linears: Vec<&Linear> = match self {
            Self::Relu { wi, wo } => vec![wi, wo],
            Self::GatedGelu { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        };
        linears
            .iter()
            .map(|l| {
                let d = l.weight.dims();
                (d[0], d[1])
            })
            .collect()
    }
}

/// A feed-forward layer's weights packed for CPU decoding ([`FeedForward::pack`]).
#[derive(Debug)]
pub(crate) struct PackedFeedForward(Vec<PackedWeight>);

/// `(B, T)` keep-mask (any dtype, 1 = keep) → additive `(B, 1, 1, T)` bias.
pub(crate) fn padding_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let keep = mask.to_dtype(DType::F32)?;
    let bias = ((keep - 1.0)? * -MASK_BIAS)?;
    Ok(bias.reshape((b, 1, 1, t))?.to_dtype(dtype)?)
}
