//! BPR matrix factorisation trained with full-batch Adam; see the crate docs for the why.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{PmfError, Result};
use crate::interactions::Interactions;
use crate::kernels::{axpy, axpy_bf16, axpy_diff_bf16, dot_bf16, prefetch, to_bf16};

/// Hyperparameters of [`crate::MfModel::train`]. `Default` gives the paper's (§5.4): 512
/// dimensions, 100 iterations, learning rate 1e-3, L2 λ = 1e-3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfConfig {
    /// Embedding size of users and items.
    pub dim: usize,
    /// Training iterations; each one is a full pass over the training interactions (one
    /// sampled BPR triple per interaction and negative) followed by ONE Adam step.
    pub iterations: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// L2 weight λ: every triple (u, i, j) adds λ/2 (‖p_u‖² + ‖q_i‖² + ‖q_j‖²) to the loss, so
    /// rows are regularised in proportion to how often they are used, as in per-sample BPR.
    pub l2: f32,
    /// Negatives sampled per training interaction and iteration (uniform over items the
    /// user has no training interaction with).
    pub negatives: usize,
    /// Candidates drawn per negative; the highest-scoring one is used (dynamic negative
    /// sampling). 1 = plain uniform BPR.
    pub negative_candidates: usize,
    /// Standard deviation of the Gaussian initialisation of all factors.
    pub init_std: f32,
    /// Adam β₁.
    pub beta1: f32,
    /// Adam β₂.
    pub beta2: f32,
    /// Adam ε.
    pub epsilon: f32,
    /// Ridge weight of [`crate::MfModel::fold_in`].
    pub fold_in_l2: f32,
    /// Seed of the initialisation and of the negative sampling.
    pub seed: u64,
}

impl Default for MfConfig {
    fn default() -> Self {
        Self {
            dim: 512,
            iterations: 100,
            learning_rate: 1e-3,
            l2: 1e-3,
            negatives: 1,
            negative_candidates: 2,
            init_std: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            fold_in_l2: 1.0,
            seed: 2022,
        }
    }
}

impl MfConfig {
    /// Checks every field's domain.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(PmfError::InvalidConfig(what.to_string()));
        if self.dim == 0 {
            return bad("dim must be positive");
        }
        if self.negatives == 0 {
            return bad("negatives must be positive");
        }
        if self.negative_candidates == 0 {
            return bad("negative_candidates must be positive");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be finite and positive");
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return bad("l2 must be finite and non-negative");
        }
        if !(self.fold_in_l2.is_finite() && self.fold_in_l2 > 0.0) {
            return bad("fold_in_l2 must be finite and positive");
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return bad("init_std must be finite and positive");
        }
        if !((0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2)) {
            return bad("beta1 and beta2 must lie in [0, 1)");
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("epsilon must be finite and positive");
        }
        Ok(())
    }
}

/// Reported to the progress callback after every iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based number of the iteration just finished.
    pub iteration: usize,
    /// Total number of iterations.
    pub iterations: usize,
    /// Mean BPR loss −ln σ(x_ui − x_uj) over the iteration's triples, before its Adam step
    /// (the L2 term excluded).
    pub loss: f64,
}

/// Adam moments of one parameter matrix.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(len: usize) -> Self {
        Self {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// One Adam step; also refreshes `shadow`, the bfloat16 copy the gathers read.
    fn step(
        &mut self,
        params: &mut [f32],
        shadow: &mut [u16],
        grads: &[f32],
        config: &MfConfig,
        t: i32,
    ) {
        let (b1, b2) = (config.beta1, config.beta2);
        let step = config.learning_rate / (1.0 - b1.powi(t));
        let inv_bc2 = 1.0 / (1.0 - b2.powi(t));
        let eps = config.epsilon;
        const CHUNK: usize = 1 << 14;
        params
            .par_chunks_mut(CHUNK)
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .zip(grads.par_chunks(CHUNK))
            .zip(shadow.par_chunks_mut(CHUNK))
            .for_each(|((((p, m), v), g), sh)| {
                for k in 0..p.len() {
                    let gk = g[k];
                    m[k] = b1 * m[k] + (1.0 - b1) * gk;
                    v[k] = b2 * v[k] + (1.0 - b2) * gk * gk;
                    p[k] -= step * m[k] / ((v[k] * inv_bc2).sqrt() + eps);
                    sh[k] = to_bf16(p[k]);
                }
            });
    }
}

/// Splits `data` into consecutive parts of `(offsets[r + 1] − offsets[r]) · width` elements.
fn split_rows<'a, T>(mut data: &'a mut [T], offsets: &[usize], width: usize) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (head, tail) = std::mem::take(&mut data).split_at_mut((w[1] - w[0]) * width);
        parts.push(head);
        data = tail;
    }
    parts
}

/// Stable counting sort of positions `0..keys.len()` by key: returns (ptr, list) such that the
/// positions with key `k` are `list[ptr[k]..ptr[k + 1]]`, ascending.
fn group_by_key(keys: &[u32], num_keys: usize) -> (Vec<usize>, Vec<u32>) {
    let mut ptr = vec![0usize; num_keys + 1];
    for &k in keys {
        ptr[k as usize + 1] += 1;
    }
    for k in 0..num_keys {
        ptr[k + 1] += ptr[k];
    }
    let mut fill = ptr.clone();
    let mut list = vec![0u32; keys.len()];
    for (pos, &k) in keys.iter().enumerate() {
        list[fill[k as usize]] = pos as u32;
        fill[k as usize] += 1;
    }
    (ptr, list)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of the negative sampler of one user in one iteration: derived, not drawn from a shared
/// stream, so that the samples do not depend on which thread handles which user.
fn sampler_seed(seed: u64, iteration: usize, user: usize) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ iteration as u64) ^ user as u64)
}

/// Uniform item row outside the user's (sorted) history; the caller guarantees one exists.
fn sample_negative(rng: &mut ChaCha8Rng, num_items: usize, history: &[u32]) -> u32 {
    loop {
        let j = rng.random_range(0..num_items as u32);
        if history.binary_search(&j).is_err() {
            return j;
        }
    }
}

fn softplus(x: f32) -> f64 {
    let x = x as f64;
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Trained factors, rows aligned with the interactions' user and item rows.
pub(crate) struct Factors {
    pub users: Array2<f32>,
    pub items: Array2<f32>,
}

pub(crate) fn fit(
    interactions: &Interactions,
    config: &MfConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<Factors> {
    config.validate()?;
    let (nu, ni, d, k, c) = (
        interactions.num_users(),
        interactions.num_items(),
        config.dim,
        config.negatives,
        config.negative_candidates,
    );
    if nu == 0 || ni == 0 {
        return Err(PmfError::Empty("no users or no items".into()));
    }
    if interactions.num_interactions() == 0 {
        return Err(PmfError::Empty("no interactions".into()));
    }
    if interactions.num_interactions().saturating_mul(k) > u32::MAX as usize {
        return Err(PmfError::InvalidConfig(
            "interactions × negatives exceeds u32::MAX".into(),
        ));
    }
    let offsets = interactions.offsets();
    let positives = interactions.item_rows();
    let num_pos = positives.len();

    let mut pos_user = vec![0u32; num_pos];
    for u in 0..nu {
        pos_user[offsets[u]..offsets[u + 1]].fill(u as u32);
    }
    let (pos_ptr, pos_list) = group_by_key(positives, ni);
    // A user who interacted with every item has no negative to contrast with: no triples.
    let active: Vec<bool> = (0..nu).map(|u| offsets[u + 1] - offsets[u] < ni).collect();
    let num_triples: usize = (0..nu)
        .filter(|&u| active[u])
        .map(|u| (offsets[u + 1] - offsets[u]) * k)
        .sum();
    if num_triples == 0 {
        return Err(PmfError::Empty(
            "no user has an item to contrast with".into(),
        ));
    }

    let normal = Normal::new(0.0f32, config.init_std)
        .map_err(|e| PmfError::InvalidConfig(format!("init_std: {e}")))?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut users = Array2::from_shape_simple_fn((nu, d), || normal.sample(&mut rng));
    let mut items = Array2::from_shape_simple_fn((ni, d), || normal.sample(&mut rng));

    // The gathers of random rows below are bound by memory traffic, so they read a bfloat16
    // copy of the factors (half the bytes); parameters, gradients and moments stay f32.
    let mut shadow_users: Vec<u16> = users.iter().map(|&x| to_bf16(x)).collect();
    let mut shadow_items: Vec<u16> = items.iter().map(|&x| to_bf16(x)).collect();
    let mut adam_users = Adam::new(nu * d);
    let mut adam_items = Adam::new(ni * d);
    let mut grad_users = vec![0.0f32; nu * d];
    let mut grad_items = vec![0.0f32; ni * d];
    let mut negatives = vec![0u32; num_pos * k];
    let mut neg_coef = vec![0.0f32; num_pos * k];
    let mut pos_coef = vec![0.0f32; num_pos];
    let mut user_loss = vec![0.0f64; nu];

    for iteration in 0..config.iterations {
        let (Some(u_all), Some(v_all)) = (users.as_slice(), items.as_slice()) else {
            return Err(PmfError::InvalidConfig("non-contiguous factors".into()));
        };
        let (u_half, v_half) = (&shadow_users[..], &shadow_items[..]);

        // Users: sample the negatives, score the triples, and accumulate each user's gradient.
        // Every user writes only its own rows, so the result is independent of scheduling.
        let neg_parts = split_rows(&mut negatives, offsets, k);
        let coef_parts = split_rows(&mut neg_coef, offsets, k);
        let pos_parts = split_rows(&mut pos_coef, offsets, 1);
        grad_users
            .par_chunks_mut(d)
            .zip(neg_parts)
            .zip(coef_parts)
            .zip(pos_parts)
            .zip(user_loss.par_iter_mut())
            .enumerate()
            .for_each(|(u, ((((grad, negs), coefs), pcoefs), loss))| {
                let history = &positives[offsets[u]..offsets[u + 1]];
                let p_u = &u_all[u * d..(u + 1) * d];
                *loss = 0.0;
                grad.fill(0.0);
                if !active[u] {
                    coefs.fill(0.0);
                    pcoefs.fill(0.0);
                    negs.fill(history.first().copied().unwrap_or(0));
                    return;
                }
                axpy(config.l2 * (history.len() * k) as f32, p_u, grad);
                let mut rng = ChaCha8Rng::seed_from_u64(sampler_seed(config.seed, iteration, u));
                // Draw all candidates first so that their rows can be prefetched ahead of use:
                // this loop is bound by fetching random item rows, not by arithmetic.
                let per_pos = k * c;
                let candidates: Vec<u32> = (0..history.len() * per_pos)
                    .map(|_| sample_negative(&mut rng, ni, history))
                    .collect();
                let row = |j: u32| &v_half[j as usize * d..(j as usize + 1) * d];
                let prefetch_positive = |p: usize| {
                    if let Some(&i) = history.get(p) {
                        prefetch(row(i));
                        for &j in &candidates[p * per_pos..(p + 1) * per_pos] {
                            prefetch(row(j));
                        }
                    }
                };
                prefetch_positive(0);
                if u + 1 < nu {
                    prefetch(&u_all[(u + 1) * d..(u + 2) * d]);
                }
                for (p, &i) in history.iter().enumerate() {
                    prefetch_positive(p + 1);
                    let q_i = row(i);
                    let score_i = dot_bf16(p_u, q_i);
                    let mut sum = 0.0;
                    for s in 0..k {
                        let drawn = &candidates[(p * k + s) * c..(p * k + s + 1) * c];
                        // Dynamic negative sampling: keep the highest-scoring candidate.
                        let mut j = drawn[0];
                        let mut score_j = dot_bf16(p_u, row(j));
                        for &cand in &drawn[1..] {
                            let sc = dot_bf16(p_u, row(cand));
                            if sc > score_j {
                                score_j = sc;
                                j = cand;
                            }
                        }
                        let x = score_i - score_j;
                        // d(−ln σ(x))/dx = −σ(−x)
                        let g = sigmoid(-x);
                        *loss += softplus(-x);
                        negs[p * k + s] = j;
                        coefs[p * k + s] = g;
                        sum += g;
                        axpy_diff_bf16(-g, q_i, row(j), grad);
                    }
                    pcoefs[p] = sum;
                }
            });

        // Items: gather the contributions of the triples each item appears in, in triple
        // order, so that the sums do not depend on the number of threads.
        let (neg_ptr, neg_list) = group_by_key(&negatives, ni);
        grad_items
            .par_chunks_mut(d)
            .enumerate()
            .for_each(|(i, grad)| {
                grad.fill(0.0);
                let as_pos = &pos_list[pos_ptr[i]..pos_ptr[i + 1]];
                let as_neg = &neg_list[neg_ptr[i]..neg_ptr[i + 1]];
                let user_row = |u: u32| &u_half[u as usize * d..(u as usize + 1) * d];
                // Random user rows dominate here: keep a few fetches in flight.
                const AHEAD: usize = 3;
                for &p in as_pos.iter().take(AHEAD) {
                    prefetch(user_row(pos_user[p as usize]));
                }
                for &n in as_neg.iter().take(AHEAD) {
                    prefetch(user_row(pos_user[n as usize / k]));
                }
                let mut uses = 0usize;
                for (x, &p) in as_pos.iter().enumerate() {
                    if let Some(&ahead) = as_pos.get(x + AHEAD) {
                        prefetch(user_row(pos_user[ahead as usize]));
                    }
                    let u = pos_user[p as usize];
                    if active[u as usize] {
                        axpy_bf16(-pos_coef[p as usize], user_row(u), grad);
                        uses += k;
                    }
                }
                for (x, &n) in as_neg.iter().enumerate() {
                    if let Some(&ahead) = as_neg.get(x + AHEAD) {
                        prefetch(user_row(pos_user[ahead as usize / k]));
                    }
                    let u = pos_user[n as usize / k];
                    if active[u as usize] {
                        axpy_bf16(neg_coef[n as usize], user_row(u), grad);
                        uses += 1;
                    }
                }
                if uses > 0 {
                    axpy(config.l2 * uses as f32, &v_all[i * d..(i + 1) * d], grad);
                }
            });

        let mean_loss = user_loss.iter().sum::<f64>() / num_triples as f64;
        if !mean_loss.is_finite() {
            return Err(diverged(iteration + 1, mean_loss, config));
        }
        let t = i32::try_from(iteration + 1).unwrap_or(i32::MAX);
        if let Some(p) = users.as_slice_mut() {
            adam_users.step(p, &mut shadow_users, &grad_users, config, t);
        }
        if let Some(p) = items.as_slice_mut() {
            adam_items.step(p, &mut shadow_items, &grad_items, config, t);
        }
        progress(Progress {
            iteration: iteration + 1,
            iterations: config.iterations,
            loss: mean_loss,
        });
    }
    // A step can overflow without the loss (computed before it) showing it yet.
    if users.iter().chain(items.iter()).any(|v| !v.is_finite()) {
        return Err(diverged(config.iterations, f64::NAN, config));
    }
    Ok(Factors { users, items })
}

fn diverged(iteration: usize, loss: f64, config: &MfConfig) -> PmfError {
    PmfError::Numerical(format!(
        "MF training diverged at iteration {iteration} (loss {loss}, or non-finite factors): \
         lower the learning rate (now {})",
        config.learning_rate
    ))
}
