//! The SASRec baseline as the reports use it: invariant to the item indexing (its figures under
//! random indexing are its figures under P5's), and cached per data, indexing and settings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;
use peapod::eval::ranking_metrics;
use peapod::sasrec::{sasrec_lists, train_or_load_sasrec};
use peapod::train::TrainingData;
use peapod_datasets::{evaluation_examples, Dataset, ItemIndexing, Split, Task};
use peapod_sasrec::{Loss, TrainConfig};

/// The first 300 users of the shipped beauty data (all 12,101 items, so that P5's 99 test
/// negatives can be drawn).
fn beauty_head() -> TrainingData {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let full = TrainingData::load(&root, "beauty", None).expect("shipped beauty data");
    let sequences = full
        .dataset
        .users()
        .take(300)
        .map(|u| full.dataset.sequence(u).to_vec())
        .collect();
    let dataset =
        Dataset::from_sequences("beauty", sequences, full.dataset.num_items()).expect("subset");
    TrainingData { dataset, ..full }
}

fn training(loss: Loss) -> TrainConfig {
    TrainConfig {
        loss,
        epochs: 3,
        batch_size: 64,
        patience: None,
        seed: 3,
        ..TrainConfig::default()
    }
}

type Metrics = BTreeMap<String, BTreeMap<String, f64>>;

/// Test metrics of both tasks, and each task's lists in P5's item ids.
fn evaluate(data: &TrainingData, loss: Loss) -> (Metrics, Vec<Vec<u32>>) {
    let baseline =
        train_or_load_sasrec(data, &training(loss), None, &Device::Cpu, |_| {}).expect("training");
    let to_p5 = data
        .indexing
        .permutation(data.dataset.num_items())
        .map(|p| move |i: u32| p.old_id(i));
    let (mut metrics, mut lists) = (BTreeMap::new(), Vec::new());
    for task in [Task::Sequential, Task::TopN] {
        let examples =
            evaluation_examples(task, Split::Test, &data.dataset, &data.templates, None, 3)
                .expect("examples");
        let ranked =
            sasrec_lists(&baseline.model, &data.dataset, &examples, Split::Test).expect("lists");
        metrics.insert(
            task.name().to_string(),
            ranking_metrics(&examples, &ranked, task).expect("metrics"),
        );
        lists.extend(ranked.into_iter().map(|l| match &to_p5 {
            Some(f) => l.into_iter().map(f).collect(),
            None => l,
        }));
    }
    (metrics, lists)
}

/// Under random indexing every draw is made in P5's item order (`draw_order`), so the model
/// is the same model with its items renamed: the same items recommended to every user, the same
/// metrics. A wiring mistake (draws by new id, candidates not mapped, ids not mapped back)
/// would make the lists differ.
#[test]
fn sasrec_recommends_the_same_items_under_random_indexing() {
    let sequential = beauty_head();
    let random = beauty_head()
        .with_indexing(ItemIndexing::Random { seed: 99 })
        .expect("random indexing");
    for loss in [Loss::CrossEntropy, Loss::BinaryCrossEntropy] {
        let (m_seq, l_seq) = evaluate(&sequential, loss);
        let (m_rand, l_rand) = evaluate(&random, loss);
        let differing = l_seq.iter().zip(&l_rand).filter(|(a, b)| a != b).count();
        // Floating-point summation order differs between the two runs; allow a near tie to
        // swap in a handful of the 600 lists, and the metrics to move by as much.
        assert!(
            differing <= 6,
            "{loss:?}: {differing} of {} lists differ",
            l_seq.len()
        );
        for (task, m) in &m_seq {
            for (name, x) in m {
                let y = m_rand[task][name];
                assert!(
                    (x - y).abs() <= 6.0 / 300.0,
                    "{loss:?} {task} {name}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn the_cache_is_reused_for_the_same_run_and_retrained_for_another() {
    let data = beauty_head();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("sasrec.safetensors");
    let cfg = TrainConfig {
        epochs: 1,
        ..training(Loss::CrossEntropy)
    };
    let first =
        train_or_load_sasrec(&data, &cfg, Some(&cache), &Device::Cpu, |_| {}).expect("trained");
    assert!(!first.from_cache && cache.exists());
    let again =
        train_or_load_sasrec(&data, &cfg, Some(&cache), &Device::Cpu, |_| {}).expect("cached");
    assert!(again.from_cache);
    assert_eq!(again.log, first.log);
    let h: Vec<&[u32]> = vec![data.dataset.sequence(1)];
    assert_eq!(
        again.model.recommend(&h, 20, 8).expect("lists"),
        first.model.recommend(&h, 20, 8).expect("lists")
    );
    // Another seed, or other data, trains anew.
    let reseeded = TrainConfig {
        seed: 4,
        ..cfg.clone()
    };
    let other = train_or_load_sasrec(&data, &reseeded, Some(&cache), &Device::Cpu, |_| {})
        .expect("retrained");
    assert!(!other.from_cache);
    let random = beauty_head()
        .with_indexing(ItemIndexing::Random { seed: 1 })
        .expect("random");
    let other = train_or_load_sasrec(&random, &reseeded, Some(&cache), &Device::Cpu, |_| {})
        .expect("retrained");
    assert!(!other.from_cache);
}

/// `evaluate` puts SASRec's metrics on the same examples beside the model, and the Markdown
/// report shows them with the paper's SASRec row.
#[test]
fn reports_carry_the_sasrec_row() {
    use peapod::eval::EvalConfig;
    use peapod::model::{ModelConfig, PeaPod, Variant};
    use peapod::pipeline::{evaluate, EvalRequest, TrainedBaselines};

    let data = beauty_head();
    let sasrec = train_or_load_sasrec(
        &data,
        &TrainConfig {
            epochs: 1,
            ..training(Loss::CrossEntropy)
        },
        None,
        &Device::Cpu,
        |_| {},
    )
    .expect("trained");
    let model = PeaPod::new(
        ModelConfig::new(Variant::P5, peapod_t5_rec::T5Config::micro(), 8, 7),
        None,
        &Device::Cpu,
    )
    .expect("model");
    let users = vec![1, 2, 3, 4];
    let request = EvalRequest {
        split: Split::Validation,
        users: Some(users.clone()),
        tasks: vec![Task::Sequential, Task::TopN],
        decoding: EvalConfig {
            num_beams: 2,
            num_return_sequences: 2,
            max_item_length: 4,
            ..EvalConfig::default()
        },
    };
    let trained = TrainedBaselines {
        mf: None,
        sasrec: Some(&sasrec.model),
    };
    let report = evaluate(&model, &data, trained, &request, "test", false).expect("evaluated");
    for task in [Task::Sequential, Task::TopN] {
        let mut examples = evaluation_examples(
            task,
            Split::Validation,
            &data.dataset,
            &data.templates,
            None,
            model.config().seed,
        )
        .expect("examples");
        examples.retain(|e| users.contains(&e.user));
        let lists = sasrec_lists(&sasrec.model, &data.dataset, &examples, Split::Validation)
            .expect("lists");
        let expected = ranking_metrics(&examples, &lists, task).expect("metrics");
        assert_eq!(report.baselines.sasrec.get(task.name()), Some(&expected));
    }
    let md = report.markdown();
    assert!(md.contains("| SASRec (cross-entropy) |"), "{md}");
    assert!(
        md.contains("| paper: SASRec (its baseline table) | 0.0387 |"),
        "{md}"
    );
}
