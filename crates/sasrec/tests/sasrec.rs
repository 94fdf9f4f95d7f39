//! SASRec's behaviour: it learns what sequences show, its training is a function of the seed
//! and of the items' identities (not their ids), its scores do not depend on batch padding,
//! and bad input is refused with what was wrong.

use candle_core::Device;
use peapod_sasrec::{
    fit, Fitted, Loss, SasRec, SasRecConfig, SasRecError, TrainConfig, TrainingSet,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const ITEMS: usize = 24;

/// Users walk one of two rings of twelve items (1→2→…→12→1, 13→…→24→13), starting anywhere:
/// the next item is always the ring's successor. Sequences are shorter than a ring, so the
/// binary loss's negatives include items of the user's own ring.
fn ring_sequences(users: usize, len: usize) -> Vec<Vec<u32>> {
    (0..users)
        .map(|u| {
            let ring = (u % 2) as u32 * 12;
            (0..len)
                .map(|k| ring + ((u / 2 + k) % 12) as u32 + 1)
                .collect()
        })
        .collect()
}

fn small_config() -> SasRecConfig {
    SasRecConfig {
        hidden: 16,
        blocks: 2,
        heads: 2,
        max_len: 8,
        dropout: 0.2,
        ..SasRecConfig::paper(ITEMS)
    }
}

fn train_config(loss: Loss, epochs: usize) -> TrainConfig {
    TrainConfig {
        loss,
        epochs,
        batch_size: 16,
        learning_rate: 1e-2,
        patience: None,
        seed: 11,
        ..TrainConfig::default()
    }
}

fn train(sequences: &[Vec<u32>], draw_order: Option<&[u32]>, cfg: &TrainConfig) -> Fitted {
    let data = TrainingSet {
        sequences,
        validation_targets: &[],
        draw_order,
    };
    fit(&small_config(), cfg, &data, &Device::Cpu, |_| {}).expect("training runs")
}

fn as_refs(histories: &[Vec<u32>]) -> Vec<&[u32]> {
    histories.iter().map(Vec::as_slice).collect()
}

fn scores(model: &SasRec, histories: &[&[u32]]) -> Vec<Vec<f32>> {
    model
        .item_scores(histories)
        .and_then(|t| Ok(t.to_vec2::<f32>()?))
        .expect("scores")
}

#[test]
fn both_losses_learn_the_next_item_of_a_ring() {
    let sequences = ring_sequences(64, 7);
    for loss in [Loss::CrossEntropy, Loss::BinaryCrossEntropy] {
        let fitted = train(&sequences, None, &train_config(loss, 25));
        let histories: Vec<&[u32]> = vec![&[1, 2, 3], &[9, 10], &[13, 14], &[21, 22, 23, 24]];
        let top = fitted.model.recommend(&histories, 1, 8).expect("recommend");
        assert_eq!(top, vec![vec![4], vec![11], vec![15], vec![13]], "{loss:?}");
        let first = fitted.log.epochs[0].mean_loss;
        let last = fitted.log.epochs.last().expect("epochs").mean_loss;
        assert!(last < 0.5 * first, "{loss:?}: loss {first} → {last}");
    }
}

/// Renames every item by a permutation; with the draws made in the original items' order the
/// run is the same run, so every item keeps its score. Without it (draws by the new ids) the
/// initial embeddings land on other items and the scores differ: the check can fail.
#[test]
fn renaming_the_items_changes_nothing_when_draws_follow_the_items() {
    let sequences = ring_sequences(48, 7);
    let mut new_ids: Vec<u32> = (1..=ITEMS as u32).collect();
    new_ids.shuffle(&mut ChaCha8Rng::seed_from_u64(5));
    let rename = |i: u32| new_ids[i as usize - 1];
    let renamed: Vec<Vec<u32>> = sequences
        .iter()
        .map(|s| s.iter().map(|&i| rename(i)).collect())
        .collect();
    let histories: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![9, 10], vec![20, 21, 22, 23, 24]];
    let renamed_histories: Vec<Vec<u32>> = histories
        .iter()
        .map(|h| h.iter().map(|&i| rename(i)).collect())
        .collect();
    for loss in [Loss::CrossEntropy, Loss::BinaryCrossEntropy] {
        let cfg = train_config(loss, 6);
        let original = train(&sequences, None, &cfg);
        let same_run = train(&renamed, Some(&new_ids), &cfg);
        let other_run = train(&renamed, None, &cfg);
        let a = scores(&original.model, &as_refs(&histories));
        let b = scores(&same_run.model, &as_refs(&renamed_histories));
        let c = scores(&other_run.model, &as_refs(&renamed_histories));
        let (mut same, mut other) = (0f32, 0f32);
        for r in 0..a.len() {
            for item in 1..=ITEMS as u32 {
                let x = a[r][item as usize - 1];
                same = same.max((x - b[r][rename(item) as usize - 1]).abs());
                other = other.max((x - c[r][rename(item) as usize - 1]).abs());
            }
        }
        assert!(same < 1e-3, "{loss:?}: renamed run differs by {same}");
        assert!(
            other > 1e-2,
            "{loss:?}: draws by new id should differ, by {other}"
        );
        for (x, y) in original.log.epochs.iter().zip(&same_run.log.epochs) {
            assert!(
                (x.mean_loss - y.mean_loss).abs() < 1e-4,
                "{loss:?}: {x:?} vs {y:?}"
            );
        }
    }
}

#[test]
fn a_seed_gives_one_model_and_another_seed_another() {
    let sequences = ring_sequences(32, 6);
    let cfg = train_config(Loss::CrossEntropy, 2);
    let h: Vec<&[u32]> = vec![&[1, 2], &[7, 8, 9]];
    let a = scores(&train(&sequences, None, &cfg).model, &h);
    let b = scores(&train(&sequences, None, &cfg).model, &h);
    assert_eq!(a, b);
    let other = TrainConfig { seed: 12, ..cfg };
    let c = scores(&train(&sequences, None, &other).model, &h);
    assert_ne!(a, c);
}

/// A history's scores are the same alone and in a batch padded to a much longer history, and
/// items beyond `max_len` are not read.
#[test]
fn scores_do_not_depend_on_padding_or_on_items_beyond_the_window() {
    let sequences = ring_sequences(32, 6);
    let model = train(&sequences, None, &train_config(Loss::CrossEntropy, 2)).model;
    let short: &[u32] = &[3, 4];
    let long: Vec<u32> = (0..8).map(|k| 13 + k).collect();
    let alone = scores(&model, &[short]);
    let padded = scores(&model, &[short, &long]);
    let diff = alone[0]
        .iter()
        .zip(&padded[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "padding changed the scores by {diff}");
    let mut longer = vec![1, 2, 3];
    longer.extend(&long);
    assert_eq!(scores(&model, &[&long]), scores(&model, &[&longer]));
}

/// With validation targets and patience, the kept weights are those of the best validation
/// epoch, and training stops `patience` epochs after it.
#[test]
fn early_stopping_keeps_the_best_validation_epoch() {
    let sequences = ring_sequences(48, 8);
    let train_part: Vec<Vec<u32>> = sequences.iter().map(|s| s[..7].to_vec()).collect();
    let validation: Vec<u32> = sequences.iter().map(|s| s[7]).collect();
    let cfg = TrainConfig {
        patience: Some(2),
        ..train_config(Loss::CrossEntropy, 40)
    };
    let data = TrainingSet {
        sequences: &train_part,
        validation_targets: &validation,
        draw_order: None,
    };
    let fitted = fit(&small_config(), &cfg, &data, &Device::Cpu, |_| {}).expect("training");
    let log = &fitted.log;
    let best = log
        .epochs
        .iter()
        .map(|e| e.validation_ndcg10.expect("validation ran"))
        .fold(f64::MIN, f64::max);
    let kept = &log.epochs[log.kept_epoch - 1];
    assert_eq!(kept.validation_ndcg10, Some(best));
    assert!(
        log.epochs.len() == 40 || log.epochs.len() == log.kept_epoch + 2,
        "{} epochs, kept {}",
        log.epochs.len(),
        log.kept_epoch
    );
    // The returned model is the kept epoch's: its validation metric is the logged one.
    let histories: Vec<&[u32]> = train_part.iter().map(Vec::as_slice).collect();
    let top = fitted
        .model
        .recommend(&histories, 10, 64)
        .expect("recommend");
    let ndcg: f64 = top
        .iter()
        .zip(&validation)
        .filter_map(|(list, t)| list.iter().position(|i| i == t))
        .map(|rank| 1.0 / (rank as f64 + 2.0).log2())
        .sum::<f64>()
        / validation.len() as f64;
    assert!((ndcg - best).abs() < 1e-9, "{ndcg} vs {best}");
}

#[test]
fn bad_input_is_refused_with_what_was_wrong() {
    let cfg = train_config(Loss::CrossEntropy, 1);
    let err = |sequences: &[Vec<u32>], validation: &[u32], order: Option<&[u32]>| -> String {
        let data = TrainingSet {
            sequences,
            validation_targets: validation,
            draw_order: order,
        };
        fit(&small_config(), &cfg, &data, &Device::Cpu, |_| {})
            .expect_err("refused")
            .to_string()
    };
    let good = ring_sequences(8, 4);
    let mut bad = good.clone();
    bad[3][1] = ITEMS as u32 + 1;
    assert!(err(&bad, &[], None).contains("sequence 3 holds item 25, outside 1..=24"));
    assert!(err(&good, &[1, 2], None).contains("2 validation targets for 8 sequences"));
    let not_a_permutation: Vec<u32> = (1..=ITEMS as u32).map(|i| i.min(23)).collect();
    assert!(err(&good, &[], Some(&not_a_permutation)).contains("permutation of 1..=24"));
    assert!(err(&[vec![1]], &[], None).contains("no training sequence has two items"));

    let config = SasRecConfig {
        hidden: 10,
        heads: 3,
        ..small_config()
    };
    let msg = config.validate().expect_err("invalid").to_string();
    assert!(
        msg.contains("hidden (10) must be a positive multiple of heads (3)"),
        "{msg}"
    );
    let bad_lr = TrainConfig {
        learning_rate: f64::NAN,
        ..cfg.clone()
    };
    assert!(bad_lr.validate().is_err());
    assert!(matches!(Loss::parse("hinge"), Err(SasRecError::Config(m)) if m.contains("ce or bce")));

    // A diverging run stops with an error instead of returning NaN weights.
    let exploding = TrainConfig {
        learning_rate: 1e30,
        epochs: 5,
        ..cfg.clone()
    };
    let data = TrainingSet {
        sequences: &good,
        validation_targets: &[],
        draw_order: None,
    };
    let msg = fit(&small_config(), &exploding, &data, &Device::Cpu, |_| {})
        .expect_err("diverges")
        .to_string();
    assert!(msg.contains("the loss diverged"), "{msg}");

    let model = train(&good, None, &cfg).model;
    let msg = model
        .recommend(&[&[1, 99]], 3, 4)
        .expect_err("item 99")
        .to_string();
    assert!(
        msg.contains("item 99 is outside the model's items 1..=24"),
        "{msg}"
    );
    let msg = model
        .rank_candidates(&[&[1]], &[&[2, 0]], 4)
        .expect_err("candidate 0")
        .to_string();
    assert!(msg.contains("candidate 0"), "{msg}");
}

#[test]
fn a_saved_model_loads_identical_and_a_damaged_file_names_itself() {
    let model = train(
        &ring_sequences(16, 5),
        None,
        &train_config(Loss::CrossEntropy, 1),
    )
    .model;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    model.save(&path, &Default::default()).expect("save");
    let (loaded, meta) = SasRec::load(&path, &Device::Cpu).expect("load");
    assert!(meta.is_empty());
    assert_eq!(loaded.config(), model.config());
    let h: Vec<&[u32]> = vec![&[1, 2, 3]];
    assert_eq!(scores(&loaded, &h), scores(&model, &h));
    for w in model.named_weights().keys() {
        assert!(loaded.named_weights().contains_key(w), "{w}");
    }

    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let msg = SasRec::load(&path, &Device::Cpu)
        .expect_err("truncated")
        .to_string();
    assert!(msg.contains("m.safetensors"), "{msg}");
    let msg = SasRec::load(&dir.path().join("none"), &Device::Cpu)
        .expect_err("missing")
        .to_string();
    assert!(msg.contains("none"), "{msg}");
}
