//! Seeded initialisers computed on the host in f64, and the glue that writes them into freshly
//! created `VarBuilder` parameters.
//!
//! candle-nn's own `Init` draws from an unseeded generator, so every parameter of this crate is
//! drawn here from a ChaCha stream derived from `(seed, parameter)`: the same seed gives the
//! same parameters whatever order the parameters are created in.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::error::Result;

/// A generator dedicated to one parameter: streams keep parameters independent of each other
/// and of creation order.
pub(crate) fn param_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// A `rows × cols` matrix (row-major) with orthonormal rows when `rows <= cols`, orthonormal
/// columns otherwise: the Q factor of a QR decomposition of a Gaussian matrix, as
/// `torch.nn.init.orthogonal_` and the paper (§4.4) do.
///
/// The QR is modified Gram–Schmidt with a second orthogonalisation pass ("twice is enough"),
/// which keeps `Q Qᵀ = I` to ~1e-15 in f64. Every diagonal entry of R is positive, which is
/// the sign convention that makes Q uniformly (Haar) distributed.
pub fn orthonormal(rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<f64> {
    let long = rows.max(cols);
    let short = rows.min(cols);
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(short);
    while basis.len() < short {
        let mut v: Vec<f64> = (0..long).map(|_| rng.sample(StandardNormal)).collect();
        for _pass in 0..2 {
            for q in &basis {
                let dot: f64 = q.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(q).for_each(|(x, qi)| *x -= dot * qi);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        // A Gaussian draw lies in the span of the previous vectors with probability zero;
        // drawing again keeps the result well defined even then.
        if norm > 1e-8 {
            v.iter_mut().for_each(|x| *x /= norm);
            basis.push(v);
        }
    }
    let mut out = vec![0.0; rows * cols];
    for (j, q) in basis.iter().enumerate() {
        for (i, &x) in q.iter().enumerate() {
            if rows <= cols {
                out[j * cols + i] = x;
            } else {
                out[i * cols + j] = x;
            }
        }
    }
    out
}

/// `n` draws from U(lo, hi).
pub(crate) fn uniform(n: usize, lo: f64, hi: f64, rng: &mut impl Rng) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// Returns the parameter `name` of `vb`, writing `init()` into it when the builder had to
/// create it (a `VarMap` seeing the name for the first time). A parameter the builder already
/// holds (a checkpoint, or a `VarMap` entry created earlier) is returned untouched.
pub(crate) fn get_or_init(
    vb: &VarBuilder,
    shape: &[usize],
    name: &str,
    init: impl FnOnce() -> Vec<f64>,
) -> Result<Tensor> {
    let fresh = !vb.contains_tensor(name);
    let t = vb.get_with_hints(shape, name, candle_nn::Init::Const(0.0))?;
    if fresh {
        let values = Tensor::from_vec(init(), shape, vb.device())?.to_dtype(t.dtype())?;
        // `slice_set` writes into the storage the VarMap's `Var` shares with `t`, so the
        // variable itself (what optimisers and `VarMap::save` see) receives the values.
        t.slice_set(&values, 0, 0)?;
    }
    Ok(t)
}

/// A `Linear` initialised like PyTorch's `nn.Linear` (weight and bias from
/// U(-1/√in, 1/√in)), which is what the authors' released code uses for its attention layers.
pub(crate) fn linear(
    vb: &VarBuilder,
    in_dim: usize,
    out_dim: usize,
    seed: u64,
    stream: u64,
) -> Result<candle_nn::Linear> {
    let bound = 1.0 / (in_dim as f64).sqrt();
    let weight = get_or_init(vb, &[out_dim, in_dim], "weight", || {
        uniform(
            out_dim * in_dim,
            -bound,
            bound,
            &mut param_rng(seed, stream),
        )
    })?;
    let bias = get_or_init(vb, &[out_dim], "bias", || {
        uniform(out_dim, -bound, bound, &mut param_rng(seed, stream + 1))
    })?;
    Ok(candle_nn::Linear::new(weight, Some(bias)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(m: &[f64], rows: usize, cols: usize, by_rows: bool) -> Vec<f64> {
        let n = if by_rows { rows } else { cols };
        let at = |r: usize, c: usize| m[r * cols + c];
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                g[i * n + j] = if by_rows {
                    (0..cols).map(|c| at(i, c) * at(j, c)).sum()
                } else {
                    (0..rows).map(|r| at(r, i) * at(r, j)).sum()
                };
            }
        }
        g
    }

    fn max_dev_from_identity(g: &[f64], n: usize) -> f64 {
        let mut worst: f64 = 0.0;
        for i in 0..n {
            for j in 0..n {
                let target = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((g[i * n + j] - target).abs());
            }
        }
        worst
    }

    #[test]
    fn wide_matrices_have_orthonormal_rows() {
        for &(r, c) in &[(1, 1), (3, 7), (20, 20), (20, 96)] {
            let q = orthonormal(r, c, &mut param_rng(7, 0));
            assert!(
                max_dev_from_identity(&gram(&q, r, c, true), r) < 1e-12,
                "{r}x{c}"
            );
        }
    }

    #[test]
    fn tall_matrices_have_orthonormal_columns() {
        let (r, c) = (20, 6);
        let q = orthonormal(r, c, &mut param_rng(3, 1));
        assert!(max_dev_from_identity(&gram(&q, r, c, false), c) < 1e-12);
        // Rows of a tall matrix cannot all be orthonormal: the Gram matrix has rank 6 < 20.
        assert!(max_dev_from_identity(&gram(&q, r, c, true), r) > 0.1);
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a = uniform(8, -0.1, 0.1, &mut param_rng(1, 0));
        let b = uniform(8, -0.1, 0.1, &mut param_rng(1, 0));
        let c = uniform(8, -0.1, 0.1, &mut param_rng(1, 1));
        let d = uniform(8, -0.1, 0.1, &mut param_rng(2, 0));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert!(a.iter().all(|x| (-0.1..0.1).contains(x)));
    }
}
