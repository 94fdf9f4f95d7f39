//! Run directories are bound to what made them: a run of other data, model or settings is
//! refused before it writes anything, and an evaluation refuses data that changed since
//! training.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use peapod::eval::EvalConfig;
use peapod::model::Variant;
use peapod::optim::AdamWConfig;
use peapod::pipeline::ColdStart;
use peapod::run::mf_config;
use peapod::run::{
    evaluation_run, starting_checkpoint, train_run, EvalRun, RunDir, TrainRun, RUN_MANIFEST,
};
use peapod::train::{TrainConfig, TrainingData};
use peapod_datasets::{ItemIndexing, Split, Task};
use peapod_pmf::{Interactions, MfModel, LEAVE_ONE_OUT_HELD_OUT};
use peapod_t5_rec::T5Config;

fn data_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// One optimizer step on 8 users, MF for one iteration.
fn tiny_run(dataset: &str, data_root: &Path, dir: &Path) -> TrainRun {
    TrainRun {
        dataset: dataset.to_string(),
        data_root: data_root.to_path_buf(),
        explanations: None,
        indexing: ItemIndexing::Sequential,
        variant: Variant::Peapod,
        trainable_queries: false,
        t5: T5Config::micro(),
        pretrained: None,
        train: TrainConfig {
            epochs: 1,
            batch_size: 4,
            optimizer: AdamWConfig {
                lr: 1e-2,
                ..AdamWConfig::default()
            },
            seed: 7,
            max_users: Some(8),
            valid_users: Some(4),
            max_steps: Some(1),
            eval_batch_size: 4,
            ..TrainConfig::default()
        },
        mf_iterations: 1,
        run_dir: RunDir::new(dir),
        resume: true,
        export_f16: None,
        eval_users: None,
        constrained: false,
        sasrec: None,
        show: false,
    }
}

/// An evaluation of the run in `dir` on 2 validation users' sequential task, 2 beams.
fn tiny_eval(dir: &Path, data_root: &Path, report: Option<PathBuf>) -> EvalRun {
    EvalRun {
        checkpoint: dir.to_path_buf(),
        data_root: data_root.to_path_buf(),
        explanations: None,
        indexing: None,
        split: Split::Validation,
        tasks: vec![Task::Sequential],
        users: 2,
        decoding: EvalConfig {
            num_beams: 2,
            num_return_sequences: 2,
            ..EvalConfig::default()
        },
        cold_start: Default::default(),
        report,
        sasrec: None,
        show: false,
    }
}

/// Every file of a directory with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("run directory")
        .filter_map(Result::ok)
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("file");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from)
        .expect("read_dir")
        .filter_map(Result::ok)
    {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_run_directory_refuses_other_runs_before_writing_and_evaluations_of_changed_data(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("beauty-run");
    let device = candle_core::Device::Cpu;
    let done = train_run(&tiny_run("beauty", &data_root(), &dir), &device, |_| {})?;
    assert!(dir.join(RUN_MANIFEST).exists());
    assert_eq!(done.curves, dir.join("curves.svg"));
    assert!(std::fs::read_to_string(&done.curves)?.starts_with("<svg"));
    let before = snapshot(&dir);

    // Another dataset, another variant, other MF settings: each refused, nothing touched.
    let toys = tiny_run("toys", &data_root(), &dir);
    let err = train_run(&toys, &device, |_| {})
        .err()
        .map(|e| e.to_string());
    let err = err.expect("a toys run into a beauty run directory must be refused");
    assert!(err.contains("dataset beauty (this run: toys)"), "{err}");
    let mut pod = tiny_run("beauty", &data_root(), &dir);
    pod.variant = Variant::Pod;
    assert!(train_run(&pod, &device, |_| {}).is_err());
    let mut more_mf = tiny_run("beauty", &data_root(), &dir);
    more_mf.mf_iterations = 2;
    let err = train_run(&more_mf, &device, |_| {})
        .err()
        .map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("MF settings"));
    let mut random = tiny_run("beauty", &data_root(), &dir);
    random.indexing = ItemIndexing::Random { seed: 7 };
    let err = train_run(&random, &device, |_| {})
        .err()
        .map(|e| e.to_string());
    assert!(err
        .unwrap_or_default()
        .contains("indexing sequential (this run: random (seed 7))"));
    // --no-resume does not make another run's directory writable either.
    let mut afresh = tiny_run("toys", &data_root(), &dir);
    afresh.resume = false;
    assert!(train_run(&afresh, &device, |_| {}).is_err());
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused run changed the directory"
    );

    // The same run again is accepted (it resumes, already finished).
    train_run(&tiny_run("beauty", &data_root(), &dir), &device, |_| {})?;

    // A corrupted checkpoint stops the resumed run, and stays as it was.
    let last_path = RunDir::new(&dir).last_checkpoint();
    let mut bytes = std::fs::read(&last_path)?;
    let at = bytes.len() - 5;
    bytes[at] ^= 0x01;
    std::fs::write(&last_path, &bytes)?;
    let err = train_run(&tiny_run("beauty", &data_root(), &dir), &device, |_| {})
        .err()
        .map(|e| e.to_string())
        .expect("a corrupted checkpoint must stop the run");
    assert!(err.contains("does not match its checksum"), "{err}");
    assert_eq!(
        std::fs::read(&last_path)?,
        bytes,
        "the corrupted checkpoint was overwritten"
    );
    bytes[at] ^= 0x01;
    std::fs::write(&last_path, &bytes)?;

    // A checkpoint to start from: a named one must exist and be of the run's dataset; only
    // the default may be absent.
    let last = RunDir::new(&dir).last_checkpoint();
    let missing = dir.join("missing.safetensors");
    assert_eq!(
        starting_checkpoint(Some(&last), &missing, "beauty")?,
        Some(last.clone())
    );
    assert_eq!(
        starting_checkpoint(None, &last, "beauty")?,
        Some(last.clone())
    );
    assert_eq!(starting_checkpoint(None, &missing, "beauty")?, None);
    let err = starting_checkpoint(Some(&missing), &last, "beauty")
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = starting_checkpoint(Some(&last), &missing, "toys")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is a beauty checkpoint; this run is on toys"),
        "{err}"
    );

    // Evaluation refuses data that changed since training: a copy of the data root with one
    // more user line.
    let copy = tmp.path().join("data");
    for part in ["beauty", "tokenizer"] {
        copy_dir(&data_root().join(part), &copy.join(part));
    }
    std::fs::copy(
        data_root().join("templates.json"),
        copy.join("templates.json"),
    )?;
    let eval = |root: &Path| tiny_eval(&dir, root, Some(tmp.path().join("report.json")));
    evaluation_run(&eval(&copy), &device)?;
    // A checkpoint trained under one indexing refuses to evaluate under another.
    let err = evaluation_run(
        &EvalRun {
            indexing: Some("random".into()),
            ..eval(&copy)
        },
        &device,
    )
    .err()
    .map(|e| e.to_string());
    assert!(err
        .unwrap_or_default()
        .contains("cannot be evaluated under random"));
    // Beside report.json, report.md: the model, the baselines and the paper's row per task,
    // with the indexing, the users and the checkpoint step stated.
    let md = std::fs::read_to_string(tmp.path().join("report.md"))?;
    for want in [
        "# beauty · peapod · validation split",
        "- users evaluated: 2",
        "- item indexing: sequential",
        "(step 1)",
        "## sequential (2 users)",
        "| popularity |",
        "| ID order (leak) |",
        "| MF (BPR) |",
        "| paper: PeaPOD (T5-small, all test users) | 0.0588 | 0.0445 | 0.0738 | 0.0493 |",
    ] {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }

    // Users the run's MF model never saw (here: MF retrained without users 1..=40) are folded
    // in from their histories, counted in the report; or refused on request.
    let data = TrainingData::load(&data_root(), "beauty", None)?;
    let known: Vec<(u32, Vec<u32>)> = data
        .dataset
        .users()
        .filter(|&u| u > 40)
        .map(|u| (u, data.dataset.sequence(u).to_vec()))
        .collect();
    let mf = MfModel::train(
        &Interactions::training_split(&known, LEAVE_ONE_OUT_HELD_OUT)?,
        &mf_config(1, 7),
    )?;
    mf.save(RunDir::new(&dir).mf_cache())?;
    let (report, _) = evaluation_run(&eval(&data_root()), &device)?;
    assert_eq!(report.cold_start_users, 40);
    let strict = EvalRun {
        cold_start: ColdStart::Error,
        ..eval(&data_root())
    };
    let err = evaluation_run(&strict, &device)
        .err()
        .map(|e| e.to_string());
    assert!(err
        .unwrap_or_default()
        .contains("40 users of beauty are unknown to the MF model"));

    let sequences = copy.join("beauty/sequential_data.txt");
    let mut text = std::fs::read_to_string(&sequences)?;
    text.push_str("22364 1 2 3\n");
    std::fs::write(&sequences, text)?;
    let err = evaluation_run(&eval(&copy), &device)
        .err()
        .map(|e| e.to_string());
    let err = err.expect("changed data must be refused");
    assert!(err.contains("beauty/sequential_data.txt"), "{err}");
    Ok(())
}

#[test]
fn a_random_indexing_run_trains_resumes_and_evaluates_under_its_own_permutation(
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("random-run");
    let device = candle_core::Device::Cpu;
    let mut run = tiny_run("beauty", &data_root(), &dir);
    run.indexing = ItemIndexing::Random { seed: 7 };
    train_run(&run, &device, |_| {})?;
    let header: peapod::train::CheckpointHeader =
        peapod::checkpoint::read_checkpoint_header(&RunDir::new(&dir).last_checkpoint())?;
    assert_eq!(header.indexing, ItemIndexing::Random { seed: 7 });
    // Resuming under the same permutation is the same run.
    train_run(&run, &device, |_| {})?;
    let eval = EvalRun {
        indexing: Some("random".into()),
        tasks: vec![Task::Sequential, Task::TopN],
        users: 4,
        ..tiny_eval(&dir, &data_root(), Some(tmp.path().join("report.json")))
    };
    let (report, _) = evaluation_run(&eval, &device)?;
    assert_eq!(report.indexing, "random (seed 7)");
    assert!(report.baselines.id_order.contains_key("topn"));
    let err = evaluation_run(
        &EvalRun {
            indexing: Some("sequential".into()),
            ..eval
        },
        &device,
    )
    .err()
    .map(|e| e.to_string());
    assert!(err
        .unwrap_or_default()
        .contains("random (seed 7) item indexing"));
    Ok(())
}

#[test]
fn settings_out_of_their_domain_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("never");
    let device = candle_core::Device::Cpu;
    for (what, edit) in [
        (
            "learning rate",
            (|r: &mut TrainRun| r.train.optimizer.lr = -1.0) as fn(&mut TrainRun),
        ),
        ("learning rate", |r| r.train.optimizer.lr = f64::NAN),
        ("batch_size", |r| r.train.batch_size = 0),
        ("weight_decay", |r| r.train.optimizer.weight_decay = -0.5),
    ] {
        let mut run = tiny_run("beauty", &data_root(), &dir);
        edit(&mut run);
        let err = train_run(&run, &device, |_| {})
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains(what), "{what}");
        assert!(!dir.exists(), "{what}: the run directory was created");
    }
    let mut eval = EvalRun {
        split: Split::Test,
        decoding: EvalConfig {
            num_beams: 0,
            ..EvalConfig::default()
        },
        ..tiny_eval(&dir, &data_root(), None)
    };
    let err = evaluation_run(&eval, &device).err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("num_beams (--beams)"));
    eval.decoding = EvalConfig {
        batch_size: 0,
        ..EvalConfig::default()
    };
    let err = evaluation_run(&eval, &device).err().map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("batch_size"));
}

/// `--trainable-queries`: the query table starts from MF's embeddings, is trained with the
/// model and saved in its checkpoints, and is part of what binds the run directory.
#[test]
fn trainable_queries_are_trained_saved_and_bind_the_run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("tuned");
    let device = candle_core::Device::Cpu;
    let mut run = tiny_run("beauty", &data_root(), &dir);
    run.trainable_queries = true;
    let done = train_run(&run, &device, |_| {})?;
    let checkpoint = &done.outcome.last_checkpoint;
    let header: peapod::train::CheckpointHeader =
        peapod::checkpoint::read_checkpoint_header(checkpoint)?;
    assert!(header.model.trainable_queries);
    let weights = candle_core::safetensors::load(checkpoint, &device)?;
    let tuned = weights
        .get("user_queries")
        .expect("a trainable query table is saved with the model");
    let data = TrainingData::load(&data_root(), "beauty", None)?;
    let mf = MfModel::load(dir.join("mf.safetensors"))?;
    let initial = peapod::pipeline::user_queries(&mf, &data.dataset, &device)?;
    assert_eq!(tuned.dims(), initial.dims());
    let moved = (tuned - &initial)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        moved > 0.0,
        "one optimizer step left the queries where MF put them"
    );

    // The same run with frozen queries is another model: refused in this directory.
    let frozen = tiny_run("beauty", &data_root(), &dir);
    assert!(train_run(&frozen, &device, |_| {}).is_err());
    Ok(())
}
