//! Behaviour of the prompt composers against hand computations and brute force.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use peapod_prompt::{
    prepend_prompts, NeighbourLists, PromptComposer, PromptCondition, PromptError, QueryTable,
    SimilarUserPrompt, SimilarUserPromptConfig, TaskPrompt, TaskPromptConfig, UserPrompt,
    UserPromptConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn random_table(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol, "entry {i}: {x} vs {y}");
    }
}

fn cosine(x: &[f64], y: &[f64]) -> f64 {
    let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
    let nx = x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let ny = y.iter().map(|a| a * a).sum::<f64>().sqrt();
    if nx == 0.0 || ny == 0.0 {
        0.0
    } else {
        dot / (nx * ny)
    }
}

/// A user prompt whose A, K, P are given, loaded by name from a plain tensor map.
fn hand_made_user_prompt(dev: &Device) -> Result<UserPrompt, Box<dyn std::error::Error>> {
    let mut params = HashMap::new();
    let a = Tensor::new(&[[1f32, 0.], [1., 1.], [2., -1.]], dev)?;
    let k = Tensor::new(&[[3f32, 4.], [1., 0.], [0., 1.]], dev)?;
    let p = Tensor::new(&[[[1f32, 0.]], [[0., 1.]], [[1., 1.]]], dev)?;
    params.insert("user_prompt.attention".to_string(), a);
    params.insert("user_prompt.keys".to_string(), k);
    params.insert("user_prompt.components".to_string(), p);
    let vb = VarBuilder::from_tensors(params, DType::F32, dev);
    let config = UserPromptConfig {
        num_components: 3,
        prompt_len: 1,
        query_dim: 2,
        d_model: 2,
        seed: 0,
    };
    let queries = Tensor::new(&[[1f32, 2.], [0., 0.], [-2., 0.5]], dev)?;
    Ok(UserPrompt::new(config, QueryTable::frozen(&queries), vb)?)
}

#[test]
fn alpha_is_the_hand_computed_cosine_and_prompt_the_weighted_sum() -> TestResult {
    let dev = Device::Cpu;
    let up = hand_made_user_prompt(&dev)?;
    let (prompt, alpha) = up.compose_with_alpha(&[0])?;
    // q = (1, 2): λ = (1,0), (1,2), (2,-2) against K = (3,4), (1,0), (0,1).
    let expected_alpha = [0.6, 1.0 / 5f64.sqrt(), -2.0 / 8f64.sqrt()];
    assert_close(&flat(&alpha), &expected_alpha, 1e-6);
    // P = (1,0), (0,1), (1,1).
    let a = expected_alpha;
    assert_close(&flat(&prompt), &[a[0] + a[2], a[1] + a[2]], 1e-6);
    assert_eq!(prompt.dims(), &[1, 1, 2]);

    // Against an explicit λ = q ⊙ A_m for a less round query.
    let alpha = up.compose_with_alpha(&[2])?.1;
    let q = [-2.0, 0.5];
    let a_rows = [[1.0, 0.0], [1.0, 1.0], [2.0, -1.0]];
    let k_rows = [[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]];
    let expected: Vec<f64> = (0..3)
        .map(|m| {
            let lambda = [q[0] * a_rows[m][0], q[1] * a_rows[m][1]];
            cosine(&lambda, &k_rows[m])
        })
        .collect();
    assert_close(&flat(&alpha), &expected, 1e-6);
    Ok(())
}

#[test]
fn zero_queries_give_zero_weights_and_finite_gradients() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = UserPromptConfig {
        num_components: 4,
        seed: 3,
        ..UserPromptConfig::new(6, 5)
    };
    let mut rows = random_table(3, 6, 1);
    rows[6..12].iter_mut().for_each(|x| *x = 0.0);
    let table = Tensor::from_vec(rows, (3, 6), &dev)?;
    let up = UserPrompt::new(
        config,
        QueryTable::trainable_in(&varmap, "query", &table)?,
        vb,
    )?;
    let (prompt, alpha) = up.compose_with_alpha(&[1, 0, 1])?;
    let alpha = vec2(&alpha);
    assert_eq!(alpha[0], vec![0.0; 4]);
    assert_eq!(alpha[2], vec![0.0; 4]);
    assert!(alpha[1].iter().all(|a| a.abs() > 0.0 && a.abs() <= 1.0));
    assert!(flat(&prompt).iter().all(|x| x.is_finite()));

    let grads = prompt.sqr()?.sum_all()?.backward()?;
    for t in [
        up.attention(),
        up.keys(),
        up.components(),
        up.query().table(),
    ] {
        let g = grads.get(t).ok_or("missing gradient")?;
        assert!(flat(g).iter().all(|x| x.is_finite()));
    }
    Ok(())
}

#[test]
fn gradients_reach_a_k_p_but_not_a_frozen_query() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = UserPromptConfig {
        num_components: 6,
        prompt_len: 2,
        seed: 11,
        ..UserPromptConfig::new(5, 4)
    };
    // The query table is a variable of some other model; frozen means no gradient anyway.
    let mf = Var::from_tensor(&Tensor::from_vec(random_table(4, 5, 2), (4, 5), &dev)?)?;
    let up = UserPrompt::new(config, QueryTable::frozen(mf.as_tensor()), vb)?;
    let prompt = up.compose(&[3, 0, 2])?;
    let target = Tensor::from_vec(random_table(3, 8, 9), (3, 2, 4), &dev)?;
    let grads = (prompt - target)?.sqr()?.sum_all()?.backward()?;
    for (name, t) in [
        ("A", up.attention()),
        ("K", up.keys()),
        ("P", up.components()),
    ] {
        let g = grads
            .get(t)
            .ok_or_else(|| format!("no gradient for {name}"))?;
        let norm: f32 = flat(g).iter().map(|x| x * x).sum();
        assert!(norm > 1e-8, "zero gradient for {name}");
    }
    assert!(grads.get(mf.as_tensor()).is_none());
    assert!(grads.get(up.query().table()).is_none());
    // Exactly the three prompt parameters are trainable.
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "user_prompt.attention",
            "user_prompt.components",
            "user_prompt.keys"
        ]
    );
    Ok(())
}

#[test]
fn a_trainable_query_table_learns_and_is_saved_by_name() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let init = Tensor::from_vec(random_table(4, 3, 5), (4, 3), &dev)?;
    let query = QueryTable::trainable_in(&varmap, "user_prompt.query", &init)?;
    assert!(query.is_trainable());
    let up = UserPrompt::new(UserPromptConfig::new(3, 6), query, vb)?;
    let prompt = up.compose(&[1, 1, 2])?;
    let grads = prompt.sum_all()?.backward()?;
    let g = vec2(
        grads
            .get(up.query().table())
            .ok_or("no gradient for the query")?,
    );
    // Only the rows of users in the batch get a gradient.
    assert!(g[0].iter().chain(&g[3]).all(|x| *x == 0.0));
    assert!(g[1].iter().any(|x| *x != 0.0) && g[2].iter().any(|x| *x != 0.0));
    assert!(varmap
        .data()
        .lock()
        .unwrap()
        .contains_key("user_prompt.query"));
    // Re-registering under the same name reuses the variable (e.g. before loading a checkpoint).
    let again = QueryTable::trainable_in(&varmap, "user_prompt.query", &init.zeros_like()?)?;
    assert_eq!(flat(again.table()), flat(&init));
    Ok(())
}

fn max_identity_deviation(m: &Tensor) -> Result<f32, Box<dyn std::error::Error>> {
    let (r, c) = m.dims2()?;
    let gram = if r <= c {
        m.matmul(&m.t()?)?
    } else {
        m.t()?.matmul(m)?
    };
    let n = r.min(c);
    let eye = Tensor::eye(n, DType::F32, m.device())?;
    Ok((gram - eye)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn initialisation_is_orthonormal() -> TestResult {
    let dev = Device::Cpu;
    // D_q = 32 >= M: rows of A and K orthonormal; P as 20 × (3·8) = 20 × 24: rows orthonormal.
    // D_q = 12 < M: A and K cannot have 20 orthonormal rows, their columns are orthonormal.
    for (dq, d_model) in [(32, 8), (12, 16)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let table = Tensor::zeros((2, dq), DType::F32, &dev)?;
        let config = UserPromptConfig {
            seed: 5,
            ..UserPromptConfig::new(dq, d_model)
        };
        let up = UserPrompt::new(config, QueryTable::frozen(&table), vb)?;
        let p = up.components().reshape((20, 3 * d_model))?;
        for (name, m) in [("A", up.attention()), ("K", up.keys()), ("P", &p)] {
            let dev = max_identity_deviation(m)?;
            assert!(
                dev < 1e-5,
                "{name} deviates from orthonormal by {dev} (D_q = {dq})"
            );
        }
        if dq >= 20 {
            let aat = up.attention().matmul(&up.attention().t()?)?;
            assert_eq!(aat.dims(), &[20, 20]);
        }
        // A, K and P are not the same matrix (independent streams).
        assert_ne!(flat(up.attention()), flat(up.keys()));
    }
    Ok(())
}

fn user_prompt_params(seed: u64) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let table = Tensor::zeros((2, 7), DType::F32, &dev)?;
    let config = UserPromptConfig {
        num_components: 5,
        seed,
        ..UserPromptConfig::new(7, 4)
    };
    let up = UserPrompt::new(config, QueryTable::frozen(&table), vb)?;
    Ok(vec![
        flat(up.attention()),
        flat(up.keys()),
        flat(up.components()),
    ])
}

#[test]
fn same_seed_same_parameters() -> TestResult {
    assert_eq!(user_prompt_params(9)?, user_prompt_params(9)?);
    let (a, b) = (user_prompt_params(9)?, user_prompt_params(10)?);
    for (x, y) in a.iter().zip(&b) {
        assert_ne!(x, y);
    }
    Ok(())
}

#[test]
fn query_dim_can_differ_from_d_model() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let table = Tensor::from_vec(random_table(5, 7, 4), (5, 7), &dev)?;
    let config = UserPromptConfig::new(7, 10);
    let up = UserPrompt::new(config, QueryTable::frozen(&table), vb)?;
    assert_eq!(up.attention().dims(), &[20, 7]);
    assert_eq!(up.components().dims(), &[20, 3, 10]);
    let (prompt, alpha) = up.compose_with_alpha(&[4, 0])?;
    assert_eq!(prompt.dims(), &[2, 3, 10]);
    assert_eq!(alpha.dims(), &[2, 20]);
    // forward_queries on the raw rows is the same computation as compose.
    let (direct, _) = up.forward_queries(&table.narrow(0, 4, 1)?)?;
    assert_eq!(flat(&direct), flat(&prompt.narrow(0, 0, 1)?));
    // Queries of the wrong width are rejected, not broadcast.
    let wrong = Tensor::zeros((2, 10), DType::F32, &dev)?;
    assert!(matches!(
        up.forward_queries(&wrong),
        Err(PromptError::Shape(_))
    ));
    // So is a table whose width disagrees with the configuration.
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    let bad = UserPrompt::new(UserPromptConfig::new(8, 10), QueryTable::frozen(&table), vb);
    assert!(matches!(bad, Err(PromptError::Shape(_))));
    Ok(())
}

#[test]
fn checkpoints_load_by_name() -> TestResult {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("prompts.safetensors");
    let table = Tensor::from_vec(random_table(3, 4, 8), (3, 4), &dev)?;
    let config = UserPromptConfig {
        num_components: 4,
        seed: 1,
        ..UserPromptConfig::new(4, 6)
    };
    let trained = {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let up = UserPrompt::new(config, QueryTable::frozen(&table), vb.clone())?;
        TaskPrompt::new(TaskPromptConfig::new(3, 6), vb)?;
        varmap.save(&path)?;
        up.compose(&[0, 1, 2])?
    };
    // A model rebuilt with another seed, then loaded: same prompts.
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let other = UserPromptConfig { seed: 2, ..config };
    let up = UserPrompt::new(other, QueryTable::frozen(&table), vb.clone())?;
    let tp = TaskPrompt::new(TaskPromptConfig::new(3, 6), vb)?;
    assert_ne!(flat(&up.compose(&[0, 1, 2])?), flat(&trained));
    varmap.load(&path)?;
    assert_eq!(flat(&up.compose(&[0, 1, 2])?), flat(&trained));
    assert_eq!(tp.prompts().dims(), &[3, 3, 6]);
    // A read-only builder over the file works too (inference).
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path)?, DType::F32, &dev)?;
    let up = UserPrompt::new(other, QueryTable::frozen(&table), vb)?;
    assert_eq!(flat(&up.compose(&[0, 1, 2])?), flat(&trained));
    Ok(())
}

#[test]
fn an_existing_parameter_is_never_reinitialised() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let table = Tensor::zeros((1, 4), DType::F32, &dev)?;
    let first = UserPrompt::new(
        UserPromptConfig::new(4, 4),
        QueryTable::frozen(&table),
        vb.clone(),
    )?;
    let config = UserPromptConfig {
        seed: 99,
        ..UserPromptConfig::new(4, 4)
    };
    let second = UserPrompt::new(config, QueryTable::frozen(&table), vb)?;
    assert_eq!(flat(first.components()), flat(second.components()));
    Ok(())
}

#[test]
fn task_prompt_selects_each_examples_block() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = TaskPromptConfig {
        seed: 4,
        ..TaskPromptConfig::new(3, 5)
    };
    let tp = TaskPrompt::new(config, vb)?;
    let all = flat(tp.prompts());
    assert_eq!(all.len(), 3 * 3 * 5);
    assert!(all.iter().all(|x| (-0.1..0.1).contains(x)));
    let mean = all.iter().sum::<f32>() / all.len() as f32;
    let var = all.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / all.len() as f32;
    // U(-0.1, 0.1) has variance 0.2² / 12 ≈ 0.0033.
    assert!(var > 0.001 && var < 0.007, "variance {var}");

    let out = tp.compose(&[2, 0, 2])?;
    assert_eq!(out.dims(), &[3, 3, 5]);
    let block = |t: usize| all[t * 15..(t + 1) * 15].to_vec();
    let got = flat(&out);
    assert_eq!(got[..15], block(2)[..]);
    assert_eq!(got[15..30], block(0)[..]);
    assert_eq!(got[30..], block(2)[..]);
    assert!(matches!(
        tp.forward(&[3]),
        Err(PromptError::IndexOutOfRange {
            kind: "task",
            index: 3,
            len: 3
        })
    ));
    assert!(varmap
        .data()
        .lock()
        .unwrap()
        .contains_key("task_prompt.prompts"));
    // Gradients reach the task prompts.
    let grads = out.sum_all()?.backward()?;
    let g = flat(grads.get(tp.prompts()).ok_or("no gradient")?);
    assert_eq!(g[..15], vec![1.0; 15][..]);
    assert_eq!(g[30..], vec![2.0; 15][..]);
    Ok(())
}

#[test]
fn prepend_puts_prompts_first_and_unmasks_them() -> TestResult {
    let dev = Device::Cpu;
    let task = Tensor::from_vec(vec![1f32; 2 * 2 * 3], (2, 2, 3), &dev)?;
    let user = Tensor::from_vec(vec![2f32; 2 * 3], (2, 1, 3), &dev)?;
    let embeds = Tensor::from_vec(vec![3f32; 2 * 4 * 3], (2, 4, 3), &dev)?;
    let mask = Tensor::new(&[[1u32, 1, 0, 0], [1, 1, 1, 1]], &dev)?;
    let (inputs, mask) = prepend_prompts(&[&task, &user], &embeds, &mask)?;
    assert_eq!(inputs.dims(), &[2, 7, 3]);
    let first_column: Vec<f32> = inputs.get(0)?.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
    assert_eq!(first_column, [1., 1., 2., 3., 3., 3., 3.]);
    assert_eq!(
        mask.to_vec2::<u32>()?,
        [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    );
    // No prompts: unchanged (the p5 variant).
    let (same, _) = prepend_prompts(&[], &embeds, &mask.narrow(1, 0, 4)?)?;
    assert_eq!(same.dims(), embeds.dims());
    // Mismatched batch or width is an error.
    let wrong = Tensor::zeros((3, 1, 3), DType::F32, &dev)?;
    assert!(prepend_prompts(&[&wrong], &embeds, &mask.narrow(1, 0, 4)?).is_err());
    let wrong = Tensor::zeros((2, 1, 4), DType::F32, &dev)?;
    assert!(prepend_prompts(&[&wrong], &embeds, &mask.narrow(1, 0, 4)?).is_err());
    Ok(())
}

#[test]
fn bad_batches_are_errors_not_panics() -> TestResult {
    let dev = Device::Cpu;
    let up = hand_made_user_prompt(&dev)?;
    assert!(matches!(
        up.compose(&[3]),
        Err(PromptError::IndexOutOfRange {
            kind: "user",
            index: 3,
            len: 3
        })
    ));
    assert!(matches!(up.compose(&[]), Err(PromptError::EmptyBatch)));
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    let config = UserPromptConfig {
        num_components: 0,
        ..UserPromptConfig::new(2, 2)
    };
    let table = Tensor::zeros((1, 2), DType::F32, &dev)?;
    assert!(matches!(
        UserPrompt::new(config, QueryTable::frozen(&table), vb),
        Err(PromptError::Config(_))
    ));
    Ok(())
}

/// Brute force: all pairwise ε-cosines in f64, sorted by (similarity desc, index asc).
fn brute_force_neighbours(rows: &[Vec<f64>], k: usize) -> Vec<Vec<(u32, f64)>> {
    let eps2 = peapod_prompt::COSINE_EPS.powi(2);
    let norm = |x: &[f64]| (x.iter().map(|a| a * a).sum::<f64>() + eps2).sqrt();
    (0..rows.len())
        .map(|u| {
            let mut all: Vec<(u32, f64)> = (0..rows.len())
                .filter(|&v| v != u)
                .map(|v| {
                    let dot: f64 = rows[u].iter().zip(&rows[v]).map(|(a, b)| a * b).sum();
                    (v as u32, dot / (norm(&rows[u]) * norm(&rows[v])))
                })
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            all
        })
        .collect()
}

#[test]
fn chunked_neighbour_search_matches_brute_force() -> TestResult {
    let dev = Device::Cpu;
    let (n, d, k) = (61, 6, 5);
    let mut values = random_table(n, d, 21);
    values[7 * d..8 * d].iter_mut().for_each(|x| *x = 0.0); // a zero embedding
    let copy = values[3 * d..4 * d].to_vec();
    values[40 * d..41 * d].copy_from_slice(&copy); // an exact duplicate of user 3
    let table = Tensor::from_vec(values.clone(), (n, d), &dev)?;
    let rows: Vec<Vec<f64>> = values
        .chunks(d)
        .map(|r| r.iter().map(|&x| x as f64).collect())
        .collect();
    let expected = brute_force_neighbours(&rows, k);
    for lists in [
        NeighbourLists::compute_chunked(&table, k, 7)?,
        NeighbourLists::compute_chunked(&table, k, 1)?,
        NeighbourLists::compute(&table, k)?,
    ] {
        assert_eq!((lists.num_users(), lists.k()), (n, k));
        for (u, want) in expected.iter().enumerate() {
            let ids: Vec<u32> = want.iter().map(|p| p.0).collect();
            let sims: Vec<f64> = want.iter().map(|p| p.1).collect();
            assert_eq!(
                lists.neighbours(u as u32).ok_or("missing")?,
                &ids[..],
                "user {u}"
            );
            assert_close(lists.similarities(u as u32).ok_or("missing")?, &sims, 1e-5);
        }
    }
    let lists = NeighbourLists::compute(&table, k)?;
    assert_eq!(lists.neighbours(3).ok_or("missing")?[0], 40);
    assert!((lists.similarities(3).ok_or("missing")?[0] - 1.0).abs() < 1e-5);
    assert!(lists
        .similarities(7)
        .ok_or("missing")?
        .iter()
        .all(|s| *s == 0.0));
    assert!(lists.neighbours(n as u32).is_none());
    assert!(matches!(
        NeighbourLists::compute(&table, n),
        Err(PromptError::Config(_))
    ));
    Ok(())
}

#[test]
fn neighbour_cache_round_trips_and_is_refreshed_for_other_embeddings() -> TestResult {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("neighbours.bin");
    let table = Tensor::from_vec(random_table(30, 4, 1), (30, 4), &dev)?;
    let lists = NeighbourLists::load_or_compute(&path, &table, 3)?;
    assert_eq!(lists, NeighbourLists::load(&path)?);
    assert_eq!(lists, NeighbourLists::compute(&table, 3)?);
    assert_eq!(lists, NeighbourLists::load_or_compute(&path, &table, 3)?);
    // 30 users × 3 neighbours × (4 + 4 bytes) + a 36-byte header.
    assert_eq!(std::fs::metadata(&path)?.len(), 36 + 30 * 3 * 8);

    let other = Tensor::from_vec(random_table(30, 4, 2), (30, 4), &dev)?;
    let refreshed = NeighbourLists::load_or_compute(&path, &other, 3)?;
    assert_ne!(refreshed.fingerprint(), lists.fingerprint());
    assert_eq!(refreshed, NeighbourLists::compute(&other, 3)?);
    assert_eq!(NeighbourLists::load(&path)?, refreshed);

    std::fs::write(&path, b"not a cache")?;
    assert!(matches!(
        NeighbourLists::load(&path),
        Err(PromptError::Cache { .. })
    ));
    assert_eq!(
        NeighbourLists::load_or_compute(&path, &other, 3)?,
        refreshed
    );
    Ok(())
}

fn linear_host(w: &[Vec<f32>], b: &[f32], x: &[f64]) -> Vec<f64> {
    w.iter()
        .zip(b)
        .map(|(row, bias)| {
            row.iter().zip(x).map(|(a, b)| *a as f64 * b).sum::<f64>() + *bias as f64
        })
        .collect()
}

#[test]
fn similar_user_prompt_is_multi_head_attention_over_neighbours() -> TestResult {
    let dev = Device::Cpu;
    let (n, dq, d, heads, k, l) = (6, 3, 4, 2, 2, 2);
    let values = random_table(n, dq, 13);
    let table = Tensor::from_vec(values.clone(), (n, dq), &dev)?;
    let lists = NeighbourLists::compute(&table, 3)?; // more than needed: the first 2 are used
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = SimilarUserPromptConfig {
        num_neighbours: k,
        num_heads: heads,
        prompt_len: l,
        query_dim: dq,
        d_model: d,
        seed: 8,
    };
    let sp = SimilarUserPrompt::new(config, QueryTable::frozen(&table), lists.clone(), vb)?;
    assert_eq!(sp.prompt_len(), l);
    let users = [4u32, 1];
    let (prompt, weights) = sp.forward_with_weights(&users)?;
    assert_eq!(prompt.dims(), &[2, l, d]);
    assert_eq!(weights.dims(), &[2, heads, k]);

    let param = |name: &str| -> Tensor {
        varmap.data().lock().unwrap()[&format!("similar_user_prompt.{name}")]
            .as_tensor()
            .clone()
    };
    let lin = |name: &str| {
        (
            vec2(&param(&format!("{name}.weight"))),
            flat(&param(&format!("{name}.bias"))),
        )
    };
    let (wq, bq) = lin("query");
    let (wk, bk) = lin("key");
    let (wv, bv) = lin("value");
    let (wo, bo) = lin("projector");
    let row = |u: u32| -> Vec<f64> {
        values[u as usize * dq..(u as usize + 1) * dq]
            .iter()
            .map(|&x| x as f64)
            .collect()
    };
    let hd = d / heads;
    let mut expected = Vec::new();
    let mut expected_weights = Vec::new();
    for &u in &users {
        let q = linear_host(&wq, &bq, &row(u));
        let nbrs = &lists.neighbours(u).ok_or("missing")?[..k];
        let keys: Vec<Vec<f64>> = nbrs
            .iter()
            .map(|&v| linear_host(&wk, &bk, &row(v)))
            .collect();
        let vals: Vec<Vec<f64>> = nbrs
            .iter()
            .map(|&v| linear_host(&wv, &bv, &row(v)))
            .collect();
        let mut context = vec![0.0; d];
        for h in 0..heads {
            let span = h * hd..(h + 1) * hd;
            let scores: Vec<f64> = keys
                .iter()
                .map(|key| {
                    q[span.clone()]
                        .iter()
                        .zip(&key[span.clone()])
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let z: f64 = scores.iter().map(|s| s.exp()).sum();
            let w: Vec<f64> = scores.iter().map(|s| s.exp() / z).collect();
            for (j, wj) in w.iter().enumerate() {
                for c in span.clone() {
                    context[c] += wj * vals[j][c];
                }
            }
            expected_weights.extend(w);
        }
        expected.extend(linear_host(&wo, &bo, &context));
    }
    assert_close(&flat(&prompt), &expected, 1e-5);
    assert_close(&flat(&weights), &expected_weights, 1e-6);

    // Every projection learns; the frozen embeddings do not.
    let grads = prompt.sqr()?.sum_all()?.backward()?;
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = flat(
            grads
                .get(var.as_tensor())
                .ok_or("a parameter got no gradient")?,
        );
        if name.ends_with("key.bias") {
            // The key bias shifts every score of a head by the same q·b: softmax ignores it.
            assert!(g.iter().all(|x| x.abs() < 1e-5), "{name}: {g:?}");
        } else {
            assert!(g.iter().any(|x| *x != 0.0), "{name} got a zero gradient");
        }
    }
    assert_eq!(varmap.all_vars().len(), 8);
    assert!(grads.get(&table).is_none());

    // Heads must divide d_model; lists must cover the table.
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev);
    let bad = SimilarUserPromptConfig {
        num_heads: 3,
        ..config
    };
    assert!(
        SimilarUserPrompt::new(bad, QueryTable::frozen(&table), lists.clone(), vb.clone()).is_err()
    );
    let bad = SimilarUserPromptConfig {
        num_neighbours: 4,
        ..config
    };
    assert!(SimilarUserPrompt::new(bad, QueryTable::frozen(&table), lists, vb).is_err());
    Ok(())
}

#[test]
fn composers_are_interchangeable_behind_the_trait() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let table = Tensor::from_vec(random_table(8, 4, 3), (8, 4), &dev)?;
    let lists = NeighbourLists::compute(&table, 3)?;
    let composers: Vec<Box<dyn PromptComposer>> = vec![
        Box::new(TaskPrompt::new(TaskPromptConfig::new(3, 8), vb.clone())?),
        Box::new(UserPrompt::new(
            UserPromptConfig::new(4, 8),
            QueryTable::frozen(&table),
            vb.clone(),
        )?),
        Box::new(SimilarUserPrompt::new(
            SimilarUserPromptConfig {
                num_neighbours: 3,
                ..SimilarUserPromptConfig::new(4, 8)
            },
            QueryTable::frozen(&table),
            lists,
            vb,
        )?),
    ];
    // Each composer gets the ids it is conditioned on.
    let (users, tasks) = ([7u32, 0], [1u32, 2]);
    let prompts: Vec<Tensor> = composers
        .iter()
        .map(|c| match c.condition() {
            PromptCondition::User => c.compose(&users),
            PromptCondition::Task => c.compose(&tasks),
        })
        .collect::<Result<_, _>>()?;
    // Weights come with the composers that mix their prompts: α for the user prompt (B × M),
    // the attention over neighbours for the similar-user prompt; none for the task prompt.
    let weights: Vec<Option<Vec<usize>>> = composers
        .iter()
        .map(|c| {
            let ids = if c.condition() == PromptCondition::User {
                &users
            } else {
                &tasks
            };
            c.compose_with_weights(ids)
                .map(|(_, w)| w.map(|w| w.dims().to_vec()))
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(weights[0], None);
    assert_eq!(
        weights[1],
        Some(vec![2, UserPromptConfig::new(4, 8).num_components])
    );
    assert_eq!(weights[2].as_ref().map(|d| (d[0], d[2])), Some((2, 3)));
    let refs: Vec<&Tensor> = prompts.iter().collect();
    let embeds = Tensor::zeros((2, 5, 8), DType::F32, &dev)?;
    let mask = Tensor::ones((2, 5), DType::F32, &dev)?;
    let (inputs, mask) = prepend_prompts(&refs, &embeds, &mask)?;
    assert_eq!(inputs.dims(), &[2, 3 + 3 + 3 + 5, 8]);
    assert_eq!(mask.sum_all()?.to_scalar::<f32>()?, 2.0 * 14.0);
    Ok(())
}
