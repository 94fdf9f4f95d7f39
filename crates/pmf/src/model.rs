use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{PmfError, Result};
use crate::interactions::Interactions;
use crate::kernels::{axpy, dot};
use crate::train::{fit, MfConfig, Progress};

const FORMAT: &str = "peapod-pmf";
const FORMAT_VERSION: &str = "1";

/// Trained user and item embeddings with their id mapping.
///
/// Every method takes the ids the model was trained with (see [`Interactions`]): 0-based rows
/// for [`Interactions::new`], the data files' ids for [`Interactions::training_split`].
#[derive(Debug, Clone, PartialEq)]
pub struct MfModel {
    user_ids: Vec<u32>,
    item_ids: Vec<u32>,
    user_factors: Array2<f32>,
    item_factors: Array2<f32>,
    config: MfConfig,
}

impl MfModel {
    /// Trains on `interactions` (and nothing else) with `config`.
    pub fn train(interactions: &Interactions, config: &MfConfig) -> Result<Self> {
        Self::train_with_progress(interactions, config, |_| {})
    }

    /// Like [`MfModel::train`], calling `progress` after every iteration.
    pub fn train_with_progress(
        interactions: &Interactions,
        config: &MfConfig,
        mut progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let factors = fit(interactions, config, &mut progress)?;
        Ok(Self {
            user_ids: interactions.user_ids().to_vec(),
            item_ids: interactions.item_ids().to_vec(),
            user_factors: factors.users,
            item_factors: factors.items,
            config: config.clone(),
        })
    }

    /// Embedding size.
    pub fn dim(&self) -> usize {
        self.user_factors.ncols()
    }

    /// The configuration the model was trained with.
    pub fn config(&self) -> &MfConfig {
        &self.config
    }

    /// User ids, in row order (ascending).
    pub fn user_ids(&self) -> &[u32] {
        &self.user_ids
    }

    /// Item ids, in row order (ascending).
    pub fn item_ids(&self) -> &[u32] {
        &self.item_ids
    }

    /// All user embeddings, one row per entry of [`MfModel::user_ids`].
    pub fn user_factors(&self) -> &Array2<f32> {
        &self.user_factors
    }

    /// All item embeddings, one row per entry of [`MfModel::item_ids`].
    pub fn item_factors(&self) -> &Array2<f32> {
        &self.item_factors
    }

    /// The row of a user id.
    pub fn user_row(&self, user: u32) -> Result<usize> {
        self.user_ids
            .binary_search(&user)
            .map_err(|_| PmfError::UnknownUser(user))
    }

    /// The row of an item id.
    pub fn item_row(&self, item: u32) -> Result<usize> {
        self.item_ids
            .binary_search(&item)
            .map_err(|_| PmfError::UnknownItem(item))
    }

    /// The user's embedding: PeaPOD's query vector q.
    pub fn embedding(&self, user: u32) -> Result<ArrayView1<'_, f32>> {
        Ok(self.user_factors.row(self.user_row(user)?))
    }

    /// An item's embedding.
    pub fn item_embedding(&self, item: u32) -> Result<ArrayView1<'_, f32>> {
        Ok(self.item_factors.row(self.item_row(item)?))
    }

    /// Preference score p_u · q_i; higher ranks first.
    pub fn score(&self, user: u32, item: u32) -> Result<f32> {
        let u = self.embedding(user)?;
        self.score_embedding(u, &[item]).map(|s| s[0])
    }

    /// Scores of `items` for any user embedding (a learned one or a [`MfModel::fold_in`]).
    pub fn score_embedding(&self, user: ArrayView1<'_, f32>, items: &[u32]) -> Result<Vec<f32>> {
        if user.len() != self.dim() {
            return Err(PmfError::InvalidConfig(format!(
                "embedding has {} dimensions, the model {}",
                user.len(),
                self.dim()
            )));
        }
        let u = user.to_vec();
        items
            .iter()
            .map(|&item| {
                let row = self.item_factors.row(self.item_row(item)?);
                Ok(match row.as_slice() {
                    Some(q) => dot(&u, q),
                    None => row.dot(&user),
                })
            })
            .collect()
    }

    /// This model with users it has not seen added, each embedded by [`MfModel::fold_in`] of
    /// their history (`(user id, item ids)`); items the model does not know are left out of a
    /// history. Known users keep their learned rows. Fails, naming the user, on a history with
    /// no known item or on a user given twice.
    pub fn with_folded_in(&self, users: &[(u32, Vec<u32>)]) -> Result<MfModel> {
        let mut rows: Vec<(u32, Array1<f32>)> = Vec::with_capacity(users.len());
        for (user, history) in users {
            if self.user_row(*user).is_ok() || rows.iter().any(|(u, _)| u == user) {
                return Err(PmfError::DuplicateUser(*user));
            }
            let known: Vec<u32> = history
                .iter()
                .copied()
                .filter(|&i| self.item_row(i).is_ok())
                .collect();
            let p = self.fold_in(&known).map_err(|e| match e {
                PmfError::Empty(_) => PmfError::Empty(format!(
                    "user {user}: no item of the history is known to the model, nothing to fold in"
                )),
                other => other,
            })?;
            rows.push((*user, p));
        }
        let mut all: Vec<(u32, ArrayView1<'_, f32>)> = self
            .user_ids
            .iter()
            .zip(self.user_factors.rows())
            .map(|(&u, r)| (u, r))
            .chain(rows.iter().map(|(u, p)| (*u, p.view())))
            .collect();
        all.sort_by_key(|(u, _)| *u);
        let dim = self.dim();
        let mut user_factors = Array2::zeros((all.len(), dim));
        for (mut out, (_, row)) in user_factors.rows_mut().into_iter().zip(&all) {
            out.assign(row);
        }
        Ok(MfModel {
            user_ids: all.iter().map(|(u, _)| *u).collect(),
            item_ids: self.item_ids.clone(),
            user_factors,
            item_factors: self.item_factors.clone(),
            config: self.config.clone(),
        })
    }

    /// An embedding for a user the model has not seen (or a fresh one for a known user), from
    /// the ids of the items in their history: the ridge regression
    /// `argmin_p Σ_{i∈H} (1 − p·q_i)² + λ‖p‖²` with λ = `config().fold_in_l2`, solved in its
    /// dual form `p = Q_Hᵀ (Q_H Q_Hᵀ + λI)⁻¹ 1` (an |H|×|H| system instead of dim×dim).
    /// Repeated items count once. Fails on an unknown item or an empty history.
    pub fn fold_in(&self, history: &[u32]) -> Result<Array1<f32>> {
        let mut rows = history
            .iter()
            .map(|&i| self.item_row(i))
            .collect::<Result<Vec<_>>>()?;
        rows.sort_unstable();
        rows.dedup();
        if rows.is_empty() {
            return Err(PmfError::Empty("fold-in needs a non-empty history".into()));
        }
        let h = rows.len();
        let q: Vec<Vec<f32>> = rows
            .iter()
            .map(|&r| self.item_factors.row(r).to_vec())
            .collect();
        let lambda = self.config.fold_in_l2 as f64;
        let mut gram = vec![0.0f64; h * h];
        for a in 0..h {
            for b in 0..=a {
                let g = dot(&q[a], &q[b]) as f64;
                gram[a * h + b] = g;
                gram[b * h + a] = g;
            }
            gram[a * h + a] += lambda;
        }
        let alpha = cholesky_solve(&mut gram, h, vec![1.0; h])
            .ok_or_else(|| PmfError::Numerical("fold-in system is not positive definite".into()))?;
        let mut p = vec![0.0f32; self.dim()];
        for (a, qa) in alpha.iter().zip(&q) {
            axpy(*a as f32, qa, &mut p);
        }
        Ok(Array1::from(p))
    }

    /// Writes the model as safetensors: F32 `user_factors` [users, dim] and `item_factors`
    /// [items, dim], U32 `user_ids` and `item_ids` (the id of each row), and metadata
    /// `format = "peapod-pmf"`, `format_version`, `config` (JSON of [`MfConfig`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let le_f32 = |a: &Array2<f32>| a.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let le_u32 = |a: &[u32]| a.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let users = le_f32(&self.user_factors);
        let items = le_f32(&self.item_factors);
        let user_ids = le_u32(&self.user_ids);
        let item_ids = le_u32(&self.item_ids);
        let (nu, ni, d) = (self.user_ids.len(), self.item_ids.len(), self.dim());
        let tensors = vec![
            (
                "user_factors",
                TensorView::new(Dtype::F32, vec![nu, d], &users)?,
            ),
            (
                "item_factors",
                TensorView::new(Dtype::F32, vec![ni, d], &items)?,
            ),
            (
                "user_ids",
                TensorView::new(Dtype::U32, vec![nu], &user_ids)?,
            ),
            (
                "item_ids",
                TensorView::new(Dtype::U32, vec![ni], &item_ids)?,
            ),
        ];
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("config".to_string(), serde_json::to_string(&self.config)?),
        ]);
        safetensors::serialize_to_file(tensors, Some(metadata), path.as_ref())?;
        Ok(())
    }

    /// Reads a model written by [`MfModel::save`], checking shapes and ids.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let bytes = std::fs::read(path)?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(PmfError::InvalidFile("not a peapod-pmf model".into()));
        }
        if metadata.get("format_version").map(String::as_str) != Some(FORMAT_VERSION) {
            return Err(PmfError::InvalidFile("unsupported format_version".into()));
        }
        let config: MfConfig = serde_json::from_str(
            metadata
                .get("config")
                .ok_or_else(|| PmfError::InvalidFile("missing config".into()))?,
        )?;
        let st = SafeTensors::deserialize(&bytes)?;
        let user_ids = read_u32(&st, "user_ids")?;
        let item_ids = read_u32(&st, "item_ids")?;
        let user_factors = read_f32_matrix(&st, "user_factors", user_ids.len())?;
        let item_factors = read_f32_matrix(&st, "item_factors", item_ids.len())?;
        if user_factors.ncols() != item_factors.ncols() || user_factors.ncols() != config.dim {
            return Err(PmfError::InvalidFile("factor dimensions disagree".into()));
        }
        for ids in [&user_ids, &item_ids] {
            if ids.windows(2).any(|w| w[0] >= w[1]) {
                return Err(PmfError::InvalidFile(
                    "ids are not strictly increasing".into(),
                ));
            }
        }
        Ok(Self {
            user_ids,
            item_ids,
            user_factors,
            item_factors,
            config,
        })
    }
}

fn read_u32(st: &SafeTensors<'_>, name: &str) -> Result<Vec<u32>> {
    let t = st.tensor(name)?;
    if t.dtype() != Dtype::U32 || t.shape().len() != 1 {
        return Err(PmfError::InvalidFile(format!(
            "{name}: expected a U32 vector"
        )));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn read_f32_matrix(st: &SafeTensors<'_>, name: &str, rows: usize) -> Result<Array2<f32>> {
    let t = st.tensor(name)?;
    let shape = t.shape();
    if t.dtype() != Dtype::F32 || shape.len() != 2 || shape[0] != rows {
        return Err(PmfError::InvalidFile(format!(
            "{name}: expected F32 [{rows}, dim], found {:?} {shape:?}",
            t.dtype()
        )));
    }
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Array2::from_shape_vec((shape[0], shape[1]), data)
        .map_err(|e| PmfError::InvalidFile(format!("{name}: {e}")))
}

/// Solves `A x = b` for symmetric positive-definite `A` (row-major n×n, overwritten by its
/// Cholesky factor). `None` when `A` is not positive definite.
fn cholesky_solve(a: &mut [f64], n: usize, mut b: Vec<f64>) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        if diag.is_nan() || diag <= 0.0 || diag.is_infinite() {
            return None;
        }
        let l_jj = diag.sqrt();
        a[j * n + j] = l_jj;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / l_jj;
        }
    }
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= a[k * n + i] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::cholesky_solve;

    #[test]
    fn cholesky_solves_a_hand_computed_system() {
        // [[4, 2], [2, 3]] x = [2, 1]  →  x = [0.5, 0]
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, 2, vec![2.0, 1.0]).unwrap_or_default();
        assert_eq!(x.len(), 2);
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
        let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky_solve(&mut not_pd, 2, vec![1.0, 1.0]).is_none());
    }
}
