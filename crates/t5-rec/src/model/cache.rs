//! The self-attention cache of incremental decoding: one type, two layouts.

use candle_core::{Device, Tensor};
use peapod_kernels::ops::cached_attention;

use crate::error::{Result, T5Error};

/// Keys and values of the positions decoded so far, per decoder layer, for rows that a beam
/// search reorders between steps.
///
/// The layout is a storage strategy, chosen by device and dtype; both give the same attention:
/// - **dense** (any device and dtype): per layer one (rows, H, steps, d_kv) tensor, grown by
///   concatenation and reordered by copying; attention is one batched product per step.
/// - **per step** (CPU f32): per layer and step the keys and values that step computed (its
///   rows × H·d_kv), never copied again; per step, the row of that step each current row
///   descends from. Reordering beams permutes these indices instead of copying the cache
///   (concatenating and reordering the dense cache was ~15% of a t5-small decoding batch, on
///   one thread), and attention is the `cached_attention` kernel.
#[derive(Clone, Debug)]
pub(crate) struct KvCache {
    layout: Layout,
    /// Rows of the next step's queries.
    rows: usize,
    /// The current step's position bias (1, H, 1, steps), and its values on the host for the
    /// per-step layout.
    position_bias: Option<(Tensor, Vec<f32>)>,
}

#[derive(Clone, Debug)]
enum Layout {
    Dense(Vec<Option<(Tensor, Tensor)>>),
    PerStep {
        kv: Vec<Vec<(Tensor, Tensor)>>,
        origin: Vec<Vec<u32>>,
    },
}

/// How this step's rows relate to the rows the cache holds afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepRows {
    /// One row per cached row.
    Each,
    /// One row per input, to be spread over that input's `beams` cached rows (a beam search's
    /// first step, where every beam of an input starts from the same token).
    SpreadTo { beams: usize },
}

impl KvCache {
    /// An empty cache for `layers` decoder layers and `rows` rows.
    pub(crate) fn new(layers: usize, rows: usize, per_step: bool) -> Self {
        let layout = if per_step {
            Layout::PerStep {
                kv: vec![Vec::new(); layers],
                origin: Vec::new(),
            }
        } else {
            Layout::Dense(vec![None; layers])
        };
        Self {
            layout,
            rows,
            position_bias: None,
        }
    }

    /// Starts a step whose queries see the position bias `bias` (1, H, 1, steps).
    pub(crate) fn begin_step(&mut self, bias: Tensor) -> Result<()> {
        let host = match self.layout {
            Layout::PerStep { .. } => bias.flatten_all()?.to_vec1::<f32>()?,
            Layout::Dense(_) => Vec::new(),
        };
        self.position_bias = Some((bias, host));
        Ok(())
    }

    /// Appends layer `layer`'s keys and values of this step (`n` rows × H·d_kv each, with `q`
    /// the queries) and returns the attention context, n × H·d_kv.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        (heads, dk): (usize, usize),
        rows: StepRows,
    ) -> Result<Tensor> {
        let Some((bias, bias_host)) = &self.position_bias else {
            return Err(T5Error::InvalidInput(
                "KvCache::attend before begin_step".into(),
            ));
        };
        let n = q.dim(0)?;
        match &mut self.layout {
            Layout::PerStep { kv, origin } => {
                kv[layer].push((k.contiguous()?, v.contiguous()?));
                // The rows computed now attend to this step's keys as they are.
                let this_step: Vec<u32> = (0..n as u32).collect();
                let ctx = cached_attention(
                    &q.contiguous()?,
                    &kv[layer],
                    origin,
                    &this_step,
                    bias_host,
                    (heads, dk),
                )?;
                Ok(Tensor::from_vec(ctx, (n, heads * dk), q.device())?)
            }
            Layout::Dense(layers) => {
                let q = q.reshape((n, heads, 1, dk))?;
                let k = k.reshape((n, heads, 1, dk))?;
                let v = v.reshape((n, heads, 1, dk))?;
                let (k, v) = match &layers[layer] {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    None => (k, v),
                };
                let scores = q.matmul(&k.t()?)?.broadcast_add(bias)?;
                let ctx = candle_nn::ops::softmax_last_dim(&scores)?
                    .matmul(&v)?
                    .reshape((n, heads * dk))?;
                layers[layer] = Some(match rows {
                    StepRows::SpreadTo { beams } => {
                        (repeat_rows(&k, beams)?, repeat_rows(&v, beams)?)
                    }
                    StepRows::Each => (k, v),
                });
                Ok(ctx)
            }
        }
    }

    /// Ends the step whose keys every layer has appended.
    pub(crate) fn end_step(&mut self, rows: StepRows) {
        self.position_bias = None;
        let all = self.rows;
        if let Layout::PerStep { origin, .. } = &mut self.layout {
            origin.push(match rows {
                // Every beam of an input descends from the input's single row of this step.
                StepRows::SpreadTo { beams } => (0..all).map(|r| (r / beams) as u32).collect(),
                StepRows::Each => (0..all as u32).collect(),
            });
        }
    }

    /// New row `r` continues old row `from[r]` (indices already checked by the caller).
    pub(crate) fn reorder(&mut self, from: &[usize], device: &Device) -> Result<()> {
        match &mut self.layout {
            Layout::Dense(layers) => {
                let idx: Vec<u32> = from.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, from.len(), device)?;
                for entry in layers.iter_mut() {
                    if let Some((k, v)) = entry {
                        *entry = Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?));
                    }
                }
            }
            Layout::PerStep { origin, .. } => {
                for rows_of_step in origin.iter_mut() {
                    *rows_of_step = from.iter().map(|&i| rows_of_step[i]).collect();
                }
            }
        }
        Ok(())
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
