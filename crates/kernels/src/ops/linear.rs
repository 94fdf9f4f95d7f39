//! Linear layers (x · wᵀ) and the raw product they are built on.

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};

use super::{contiguous_f32, fused_with_weight, is_cpu_f32, row_len};
use crate::error::{KernelError, Result};

/// x · wᵀ for `x` (…, d_in) and `w` (d_out, d_in), differentiable in both: one graph node on
/// the CPU for f32; elsewhere the input is flattened to rows and multiplied by wᵀ (candle's
/// broadcast matmul would materialise one weight gradient per batch row in backward).
///
/// Why: composed, a linear layer on a (B, T, d) input is four graph nodes (reshape to rows,
/// transpose of the weight, matmul, reshape back), and candle's backward gives every node a
/// zero-filled gradient buffer plus an addition — three extra passes over the activations per
/// layer, 96 layers in t5-small. Here the forward is one gemm call and the backward two
/// (dx = dy · w, dw = dyᵀ · x), all written straight into their outputs.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let d_in = x.dims().last().copied().unwrap_or(0);
    let d_out = w.dims().first().copied().unwrap_or(0);
    let op = RowsTimesWeight { transposed: true };
    fused_with_weight("linear", x, w, &[d_out, d_in], op, || {
        let dims = x.dims();
        let rows = x.elem_count() / d_in.max(1);
        let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
        let mut out_dims = dims[..dims.len() - 1].to_vec();
        out_dims.push(d_out);
        Ok(y.reshape(out_dims)?)
    })
}

/// `scale` · x · wᵀ for `x` (…, d_in) and `w` (d_out, d_in), written row-major into `out`
/// (exactly rows · d_out values), for callers that own the buffer the result ends up in (the
/// beam search's logits). Not differentiable.
///
/// Why: at 20 beams × 32 inputs the vocabulary logits are 82 MB per step. On the CPU in f32 the
/// product is written straight into `out` by one gemm call: no allocation, zeroing or copy of
/// that matrix. Elsewhere it is computed as a tensor and copied to the host.
pub fn linear_into(x: &Tensor, w: &Tensor, scale: f64, out: &mut [f32]) -> Result<()> {
    let (d_out, d_in) = w.dims2()?;
    let rows = x.elem_count() / d_in.max(1);
    if x.dims().last() != Some(&d_in) || out.len() != rows * d_out {
        return Err(KernelError::invalid(
            "linear_into",
            format!(
                "input {:?}, weight {:?}, {} output values",
                x.dims(),
                w.dims(),
                out.len()
            ),
        ));
    }
    let x = x.reshape((rows, d_in))?.contiguous()?;
    if rows > 0 && is_cpu_f32(&x) && is_cpu_f32(w) {
        let w = w.contiguous()?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = w.storage_and_layout();
        if let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*x_storage, &*w_storage) {
            let xs = contiguous_f32(xs, x_layout, "linear_into")?;
            let ws = contiguous_f32(ws, w_layout, "linear_into")?;
            // out (rows×d_out) = scale · x (rows×d_in) · wᵀ; wᵀ is w read with swapped strides.
            // SAFETY: x is rows×d_in and w d_out×d_in (contiguous, checked above), and `out`
            // holds rows·d_out values without aliasing them (a unique borrow).
            unsafe {
                gemm_into(
                    out,
                    (rows, d_out, d_in),
                    xs,
                    (d_in, 1),
                    ws,
                    (1, d_in),
                    scale as f32,
                );
            }
            return Ok(());
        }
    }
    let y = linear(&(x * scale)?, w)?.to_dtype(DType::F32)?;
    out.copy_from_slice(&y.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

/// out (m×n, row-major) = scale · a · b, where a is m×k and b is k×n, each given by its slice
/// and its (row, column) strides in elements. One gemm call over all threads, written straight
/// into `out` (nothing allocated or zeroed).
///
/// # Safety
/// The slices must hold every element the strides address, and `out` must have m·n entries.
pub unsafe fn gemm_into(
    out: &mut [f32],
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        out.as_mut_ptr(),
        1,
        n as isize,
        false,
        a.as_ptr(),
        a_cs as isize,
        a_rs as isize,
        b.as_ptr(),
        b_cs as isize,
        b_rs as isize,
        0.0,
        scale,
        false,
        false,
        false,
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
    )
}

/// Rows of `x` (…×k) times a weight matrix `w`, read as wᵀ when `transposed` (w: n×k, the
/// forward of a linear layer) or as is (w: k×n, the input gradient dy · w): …×n. One gemm call.
struct RowsTimesWeight {
    transposed: bool,
}

impl CustomOp2 for RowsTimesWeight {
    fn name(&self) -> &'static str {
        if self.transposed {
            "peapod-linear"
        } else {
            "peapod-linear-grad-input"
        }
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, self.name())?;
        let w = contiguous_f32(w_storage, w_layout, self.name())?;
        let (w_rows, w_cols) = w_layout.shape().dims2()?;
        let (k, n) = if self.transposed {
            (w_cols, w_rows)
        } else {
            (w_rows, w_cols)
        };
        if row_len(x_layout) != k || w.len() != n * k {
            bail!(
                "{}: input {:?}, weight {:?}",
                self.name(),
                x_layout.dims(),
                w_layout.dims()
            )
        }
        let rows = x.len() / k;
        let mut out = vec![0f32; rows * n];
        // w's strides as the k×n right-hand side: transposed, its rows are w's columns.
        let w_strides = if self.transposed { (1, k) } else { (n, 1) };
        // SAFETY: x is rows×k and w holds n·k values addressed by those strides, both checked.
        unsafe {
            gemm_into(&mut out, (rows, n, k), x, (k, 1), w, w_strides, 1.0);
        }
        let mut dims = x_layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let dx = g.apply_op2_no_bwd(
            w,
            &RowsTimesWeight {
                transposed: !self.transposed,
            },
        )?;
        // y = x·wᵀ: dw = dyᵀ·x; y = x·w: dw = xᵀ·dy.
        let dw = if self.transposed {
            g.apply_op2_no_bwd(x, &LinearGradWeight)?
        } else {
            x.contiguous()?.apply_op2_no_bwd(&g, &LinearGradWeight)?
        };
        Ok((Some(dx), Some(dw)))
    }
}

/// (dy: …×d_out, x: …×d_in) ↦ dw = dyᵀ · x, d_out×d_in.
struct LinearGradWeight;

impl CustomOp2 for LinearGradWeight {
    fn name(&self) -> &'static str {
        "peapod-linear-grad-weight"
    }

    fn cpu_fwd(
        &self,
        g_storage: &CpuStorage,
        g_layout: &Layout,
        x_storage: &CpuStorage,
        x_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(g_storage, g_layout, "linear backward")?;
        let x = contiguous_f32(x_storage, x_layout, "linear backward")?;
        let (d_out, d_in) = (row_len(g_layout), row_len(x_layout));
        let rows = g.len() / d_out;
        if x.len() != rows * d_in {
            bail!(
                "linear backward: gradient {:?}, input {:?}",
                g_layout.dims(),
                x_layout.dims()
            )
        }
        let mut out = vec![0f32; d_out * d_in];
        // SAFETY: dyᵀ reads g (rows×d_out) with swapped strides; x is rows×d_in; both checked.
        unsafe {
            gemm_into(
                &mut out,
                (d_out, d_in, rows),
                g,
                (1, d_out),
                x,
                (d_in, 1),
                1.0,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[d_out, d_in])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{max_diff, weighted_sum_gradients};
    use candle_core::DType;
    use candle_core::{Device, Var};

    #[test]
    fn fused_linear_matches_matmul_and_its_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // A 3-D input read through a transpose, and a weight read through one too.
        let (b, t, d_in, d_out) = (3, 5, 7, 4);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, d_in, t), &dev)?.transpose(1, 2)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (d_in, d_out), &dev)?.t()?)?;
        let composed = x
            .as_tensor()
            .reshape((b * t, d_in))?
            .matmul(&w.as_tensor().t()?)?
            .reshape((b, t, d_out))?;
        let fused = linear(x.as_tensor(), w.as_tensor())?;
        assert_eq!(fused.dims(), &[b, t, d_out]);
        assert!(max_diff(&fused, &composed) < 1e-5);
        let weights = Tensor::randn(0f32, 1.0, (b, t, d_out), &dev)?;
        for var in [&x, &w] {
            let (a, c) = weighted_sum_gradients(&fused, &composed, &weights, var)?;
            assert_eq!(a.dims(), var.dims());
            assert!(max_diff(&a, &c) < 1e-4, "{}", max_diff(&a, &c));
        }
        assert!(
            linear(x.as_tensor(), &w.as_tensor().t()?).is_err(),
            "wrong width"
        );
        // Other dtypes take the composed path.
        let wide = linear(
            &x.as_tensor().to_dtype(DType::F64)?,
            &w.as_tensor().to_dtype(DType::F64)?,
        )?;
        assert!(max_diff(&wide.to_dtype(DType::F32)?, &composed) < 1e-5);
        Ok(())
    }
}
