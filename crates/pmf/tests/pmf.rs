//! Behaviour of peapod-pmf on small synthetic data.

use ndarray::Array1;
use peapod_pmf::{Interactions, MfConfig, MfModel, PmfError, LEAVE_ONE_OUT_HELD_OUT};

fn small_config() -> MfConfig {
    MfConfig {
        dim: 8,
        iterations: 60,
        learning_rate: 0.02,
        seed: 7,
        ..MfConfig::default()
    }
}

/// Two disjoint tastes: users 0..n/2 like items 0..10, the others items 10..20; every user has
/// 6 items of its cluster, chosen by a fixed arithmetic pattern.
fn clustered_sequences(num_users: u32) -> Vec<(u32, Vec<u32>)> {
    (0..num_users)
        .map(|u| {
            let base = if u < num_users / 2 { 0 } else { 10 };
            let items = (0..6)
                .map(|k| base + (u * 3 + k * 7) % 10)
                .collect::<Vec<_>>();
            let mut distinct = Vec::new();
            for i in items {
                if !distinct.contains(&i) {
                    distinct.push(i);
                }
            }
            // 1-based ids as in the data files
            (u + 1, distinct.into_iter().map(|i| i + 1).collect())
        })
        .collect()
}

#[test]
fn training_split_drops_the_last_two_items_and_keeps_ids() {
    let sequences = vec![
        (5, vec![10, 20, 30, 40]),
        (2, vec![30, 50, 60]),
        (9, vec![70]),
    ];
    let train = Interactions::training_split(&sequences, LEAVE_ONE_OUT_HELD_OUT).unwrap();
    assert_eq!(train.user_ids(), &[2, 5, 9]);
    // Held-out items keep a row (they must be scoreable) but no interaction.
    assert_eq!(train.item_ids(), &[10, 20, 30, 40, 50, 60, 70]);
    let items_of = |user: u32| -> Vec<u32> {
        let row = train.user_row(user).unwrap();
        train
            .user_items(row)
            .iter()
            .map(|&r| train.item_ids()[r as usize])
            .collect()
    };
    assert_eq!(items_of(5), vec![10, 20]);
    assert_eq!(items_of(2), vec![30]);
    assert_eq!(items_of(9), Vec::<u32>::new());
    assert_eq!(train.num_interactions(), 3);
    assert_eq!(train.item_popularity(), vec![1, 1, 1, 0, 0, 0, 0]);
    assert!(matches!(
        Interactions::training_split(&[(1, vec![1, 2, 3]), (1, vec![4])], 2),
        Err(PmfError::DuplicateUser(1))
    ));
}

#[test]
fn new_validates_rows_and_merges_repeated_pairs() {
    let x = Interactions::new(2, 3, &[(0, 2), (0, 1), (0, 2), (1, 0)]).unwrap();
    assert_eq!(x.user_items(0), &[1, 2]);
    assert_eq!(x.user_items(1), &[0]);
    assert_eq!(x.num_interactions(), 3);
    assert_eq!(x.user_ids(), &[0, 1]);
    assert!(matches!(
        Interactions::new(2, 3, &[(2, 0)]),
        Err(PmfError::UserOutOfRange { index: 2, .. })
    ));
    assert!(matches!(
        Interactions::new(2, 3, &[(0, 3)]),
        Err(PmfError::ItemOutOfRange { index: 3, .. })
    ));
}

#[test]
fn held_out_items_never_reach_training() {
    let sequences = clustered_sequences(12);
    let config = MfConfig {
        iterations: 5,
        ..small_config()
    };
    let model = MfModel::train(
        &Interactions::training_split(&sequences, LEAVE_ONE_OUT_HELD_OUT).unwrap(),
        &config,
    )
    .unwrap();

    // Rewriting every user's two held-out items (within the same item universe) must leave
    // the model bit-identical: the trainer cannot have seen them.
    let rewritten: Vec<(u32, Vec<u32>)> = sequences
        .iter()
        .map(|(u, s)| {
            let mut s = s.clone();
            let n = s.len();
            s[n - 1] = 20 - (s[n - 1] - 1); // another valid 1-based id in 1..=20
            s[n - 2] = 20 - (s[n - 2] - 1);
            (*u, s)
        })
        .collect();
    let mut universe: Vec<u32> = rewritten.iter().flat_map(|(_, s)| s.clone()).collect();
    universe.sort_unstable();
    universe.dedup();
    assert_eq!(universe, (1..=20).collect::<Vec<_>>());
    let rewritten_model = MfModel::train(
        &Interactions::training_split(&rewritten, LEAVE_ONE_OUT_HELD_OUT).unwrap(),
        &config,
    )
    .unwrap();
    assert_eq!(model, rewritten_model);

    // Whereas letting them in (held_out = 0) changes the factors: the test above has teeth.
    let leaky = MfModel::train(
        &Interactions::training_split(&sequences, 0).unwrap(),
        &config,
    )
    .unwrap();
    assert_ne!(model.user_factors(), leaky.user_factors());
}

#[test]
fn same_seed_gives_identical_factors_whatever_the_thread_count() {
    let train = Interactions::training_split(&clustered_sequences(16), 2).unwrap();
    let config = MfConfig {
        iterations: 10,
        negatives: 2,
        ..small_config()
    };
    let in_pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| MfModel::train(&train, &config).unwrap())
    };
    let one = in_pool(1);
    let three = in_pool(3);
    assert_eq!(one, three);
    assert_eq!(one, MfModel::train(&train, &config).unwrap());
    let other_seed = MfModel::train(
        &train,
        &MfConfig {
            seed: 8,
            ..config.clone()
        },
    )
    .unwrap();
    assert_ne!(one.user_factors(), other_seed.user_factors());
}

/// With 2 items and one interaction the negative is forced, so one iteration is computable by
/// hand: Adam's first step moves every coordinate by −lr·sign(gradient) (m̂ = g, v̂ = g²).
#[test]
fn first_iteration_is_one_adam_step_on_the_bpr_gradient() {
    let train = Interactions::new(1, 2, &[(0, 0)]).unwrap();
    let config = MfConfig {
        dim: 4,
        iterations: 0,
        learning_rate: 0.01,
        l2: 0.1,
        init_std: 0.5,
        seed: 3,
        ..MfConfig::default()
    };
    let init = MfModel::train(&train, &config).unwrap();
    let mut reported = Vec::new();
    let step = MfModel::train_with_progress(
        &train,
        &MfConfig {
            iterations: 1,
            ..config.clone()
        },
        |p| reported.push(p),
    )
    .unwrap();
    let p = init.user_factors().row(0).to_owned();
    let qi = init.item_factors().row(0).to_owned();
    let qj = init.item_factors().row(1).to_owned();
    // Training gathers rows through a bfloat16 copy (round to nearest even), so the
    // hand computation does too for the gathered rows.
    let bf = |a: &Array1<f32>| {
        a.mapv(|x| {
            let b = x.to_bits();
            f32::from_bits((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
        })
    };
    let x = p.dot(&bf(&qi)) - p.dot(&bf(&qj));
    let g = 1.0 / (1.0 + x.exp()); // σ(−x)
    let grad_p = -g * (&bf(&qi) - &bf(&qj)) + config.l2 * &p;
    let grad_qi = -g * &bf(&p) + config.l2 * &qi;
    let grad_qj = g * &bf(&p) + config.l2 * &qj;
    let expect = |before: &Array1<f32>, grad: &Array1<f32>| {
        before - &grad.mapv(|v| config.learning_rate * v.signum())
    };
    let close = |a: Array1<f32>, b: ndarray::ArrayView1<f32>| {
        a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() < 1e-6)
    };
    assert!(close(expect(&p, &grad_p), step.user_factors().row(0)));
    assert!(close(expect(&qi, &grad_qi), step.item_factors().row(0)));
    assert!(close(expect(&qj, &grad_qj), step.item_factors().row(1)));
    assert_eq!(reported.len(), 1);
    let loss = (1.0 + (-x as f64).exp()).ln();
    assert!((reported[0].loss - loss).abs() < 1e-5);
}

/// Mean over users of the fraction of (held-out item of the user's cluster, item of the other
/// cluster) pairs that `score` orders correctly: a per-user AUC on unseen items.
fn held_out_auc(
    sequences: &[(u32, Vec<u32>)],
    mut score: impl FnMut(u32, &[u32], u32) -> f32,
) -> f64 {
    let mut total = 0.0;
    for (user, sequence) in sequences {
        let half = sequences.len() as u32 / 2;
        let other: Vec<u32> = if *user <= half {
            (11..=20).collect()
        } else {
            (1..=10).collect()
        };
        let history = &sequence[..sequence.len() - 2];
        let (mut right, mut pairs) = (0, 0);
        for &held in &sequence[sequence.len() - 2..] {
            let s = score(*user, history, held);
            for &o in &other {
                pairs += 1;
                if s > score(*user, history, o) {
                    right += 1;
                }
            }
        }
        total += right as f64 / pairs as f64;
    }
    total / sequences.len() as f64
}

#[test]
fn training_learns_the_planted_clusters_and_loss_falls() {
    let sequences = clustered_sequences(40);
    let train = Interactions::training_split(&sequences, 2).unwrap();
    let mut losses = Vec::new();
    let model = MfModel::train_with_progress(&train, &small_config(), |p| {
        losses.push((p.iteration, p.loss))
    })
    .unwrap();
    assert_eq!(losses.len(), 60);
    assert!(losses.iter().enumerate().all(|(k, (it, _))| *it == k + 1));
    assert!(losses[59].1 < 0.5 * losses[0].1);
    let auc = held_out_auc(&sequences, |u, _, i| model.score(u, i).unwrap());
    // Chance is 0.5; the seeded run gives 0.92.
    assert!(auc > 0.85, "{auc}");
}

#[test]
fn a_diverging_run_is_an_error_not_nan_factors() {
    let train = Interactions::training_split(&clustered_sequences(40), 2).unwrap();
    let config = MfConfig {
        learning_rate: 1e30,
        ..small_config()
    };
    match MfModel::train(&train, &config) {
        Err(PmfError::Numerical(message)) => {
            assert!(message.contains("lower the learning rate"), "{message}")
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(model) => panic!(
            "trained to factors such as {:?}",
            model.embedding(1).map(|e| e[0])
        ),
    }
}

#[test]
fn fold_in_ranks_like_the_learned_embedding() {
    let sequences = clustered_sequences(40);
    let train = Interactions::training_split(&sequences, 2).unwrap();
    let model = MfModel::train(&train, &small_config()).unwrap();
    let items: Vec<u32> = (1..=20).collect();
    let mut agreement = 0.0;
    for (user, sequence) in &sequences {
        let folded = model.fold_in(&sequence[..sequence.len() - 2]).unwrap();
        let learned = model
            .score_embedding(model.embedding(*user).unwrap(), &items)
            .unwrap();
        let fresh = model.score_embedding(folded.view(), &items).unwrap();
        // Fraction of item pairs the two embeddings order the same way.
        let (mut agree, mut pairs) = (0, 0);
        for a in 0..items.len() {
            for b in a + 1..items.len() {
                pairs += 1;
                if (learned[a] - learned[b]) * (fresh[a] - fresh[b]) > 0.0 {
                    agree += 1;
                }
            }
        }
        agreement += agree as f64 / pairs as f64;
    }
    agreement /= sequences.len() as f64;
    let auc = held_out_auc(&sequences, |_, history, i| {
        let p = model.fold_in(history).unwrap();
        model.score_embedding(p.view(), &[i]).unwrap()[0]
    });
    // Chance is 0.5 for both; the seeded run gives 0.84 and 1.0.
    assert!(agreement > 0.75, "{agreement}");
    assert!(auc > 0.9, "{auc}");
}

#[test]
fn fold_in_solves_the_primal_ridge_problem() {
    let train = Interactions::training_split(&clustered_sequences(40), 2).unwrap();
    let model = MfModel::train(
        &train,
        &MfConfig {
            iterations: 3,
            fold_in_l2: 0.3,
            ..small_config()
        },
    )
    .unwrap();
    let history = [3u32, 5, 3, 9];
    let folded = model.fold_in(&history).unwrap();
    // Primal normal equations (Q_Hᵀ Q_H + λI) p = Q_Hᵀ 1, checked through the residual.
    let rows = [3u32, 5, 9].map(|i| model.item_embedding(i).unwrap().mapv(f64::from));
    let p = folded.mapv(f64::from);
    let d = model.dim();
    let mut residual = p.mapv(|v| 0.3 * v);
    for q in &rows {
        residual = residual + q * (q.dot(&p) - 1.0);
    }
    assert_eq!(residual.len(), d);
    assert!(residual.iter().all(|r| r.abs() < 1e-4), "{residual}");
    assert!(matches!(model.fold_in(&[]), Err(PmfError::Empty(_))));
    assert!(matches!(
        model.fold_in(&[3, 99]),
        Err(PmfError::UnknownItem(99))
    ));
}

#[test]
fn save_and_load_round_trip() {
    let train = Interactions::training_split(&clustered_sequences(6), 2).unwrap();
    let model = MfModel::train(
        &train,
        &MfConfig {
            iterations: 2,
            ..small_config()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mf.safetensors");
    model.save(&path).unwrap();
    let loaded = MfModel::load(&path).unwrap();
    assert_eq!(loaded, model);
    assert_eq!(loaded.config(), model.config());
    assert_eq!(loaded.embedding(3).unwrap(), model.embedding(3).unwrap());
    assert_eq!(loaded.score(3, 4).unwrap(), model.score(3, 4).unwrap());
    assert!(matches!(loaded.embedding(0), Err(PmfError::UnknownUser(0))));

    // A truncated file and a foreign safetensors file are rejected, not misread.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(MfModel::load(&cut).is_err());
    let foreign = dir.path().join("foreign.safetensors");
    let data = [0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    safetensors::serialize_to_file([("x", view)], None, &foreign).unwrap();
    assert!(matches!(
        MfModel::load(&foreign),
        Err(PmfError::InvalidFile(_))
    ));
}

#[test]
fn invalid_configs_and_empty_data_are_errors() {
    let train = Interactions::new(2, 2, &[(0, 1)]).unwrap();
    for bad in [
        MfConfig {
            dim: 0,
            ..MfConfig::default()
        },
        MfConfig {
            negatives: 0,
            ..MfConfig::default()
        },
        MfConfig {
            learning_rate: f32::NAN,
            ..MfConfig::default()
        },
        MfConfig {
            l2: -1.0,
            ..MfConfig::default()
        },
        MfConfig {
            beta2: 1.0,
            ..MfConfig::default()
        },
    ] {
        assert!(matches!(
            MfModel::train(&train, &bad),
            Err(PmfError::InvalidConfig(_))
        ));
    }
    let empty = Interactions::new(2, 2, &[]).unwrap();
    assert!(matches!(
        MfModel::train(&empty, &small_config()),
        Err(PmfError::Empty(_))
    ));
    // A user with every item has nobody to contrast with: nothing to learn.
    let full = Interactions::new(1, 2, &[(0, 0), (0, 1)]).unwrap();
    assert!(matches!(
        MfModel::train(&full, &small_config()),
        Err(PmfError::Empty(_))
    ));
}

#[test]
fn paper_defaults() {
    let c = MfConfig::default();
    assert_eq!((c.dim, c.iterations), (512, 100));
    assert_eq!((c.learning_rate, c.l2), (1e-3, 1e-3));
}
