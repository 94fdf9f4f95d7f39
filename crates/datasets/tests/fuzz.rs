//! Every parser a user's file reaches, fed arbitrary bytes and mutations of valid files: it
//! never panics, and an error names the file. `CASES` inputs per parser and strategy per run
//! (`docs/reliability.md`); proptest draws new ones every run.

use std::path::Path;

use peapod_datasets::{Dataset, Explanations, Templates, DATAMAPS_FILE, NEGATIVES_FILE};
use proptest::prelude::*;

const CASES: u32 = 256;

const SEQUENCES: &str = "1 1 2 3 4\n2 2 3 4 5\n3 5 4 1\n";
const DATAMAPS: &str = r#"{"id2user": {"1": "a", "2": "b", "3": "c"}, "id2item": {"1": "i1", "2": "i2", "3": "i3", "4": "i4", "5": "i5"}}"#;
const NEGATIVES: &str = "1 5\n2 1\n3 2 3\n";
const EXPLANATIONS: &str = r#"{"train": [{"user": 1, "item": 2, "explanation": "nice", "feature": "f"}], "val": [], "test": [{"user": "3", "item": "5", "explanation": "ok"}]}"#;
const TEMPLATES: &str = r#"{"sequential": ["user_{} history item_{}"], "topn": ["user_{} candidates item_{}"], "explanation": ["user_{} item_{}"]}"#;

/// Byte replacements at positions (taken modulo the length), then a cut at `cut` (modulo
/// length + 1, so the whole file survives sometimes), then an insertion.
fn mutate(base: &str, edits: &[(usize, u8)], cut: usize, insert: &[u8]) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for &(at, b) in edits {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = b;
        }
    }
    bytes.truncate(cut % (bytes.len() + 1));
    let at = cut % (bytes.len() + 1);
    bytes.splice(at..at, insert.iter().copied());
    bytes
}

fn mutations() -> impl Strategy<Value = (Vec<(usize, u8)>, usize, Vec<u8>)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
        prop::collection::vec(any::<u8>(), 0..6),
    )
}

/// A dataset directory with the given files (the others valid).
fn dataset_dir(dir: &Path, sequences: &[u8], datamaps: &[u8], negatives: Option<&[u8]>) {
    std::fs::write(dir.join("sequential_data.txt"), sequences).expect("write");
    std::fs::write(dir.join(DATAMAPS_FILE), datamaps).expect("write");
    if let Some(n) = negatives {
        std::fs::write(dir.join(NEGATIVES_FILE), n).expect("write");
    }
}

/// Loads the dataset; an error must name one of its files.
fn check_dataset(dir: &Path) {
    if let Err(e) = Dataset::load(dir) {
        let msg = e.to_string();
        assert!(
            msg.contains(&dir.display().to_string()),
            "an error that names no file: {msg}"
        );
    }
}

fn valid_dataset(dir: &Path) -> Dataset {
    dataset_dir(dir, SEQUENCES.as_bytes(), DATAMAPS.as_bytes(), None);
    Dataset::load(dir).expect("the valid dataset loads")
}

fn check_file_error(path: &Path, result: Result<(), String>) {
    if let Err(msg) = result {
        assert!(
            msg.contains(&path.display().to_string()),
            "an error that names no file: {msg}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sequential_data_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().expect("tempdir");
        dataset_dir(dir.path(), &bytes, DATAMAPS.as_bytes(), None);
        check_dataset(dir.path());
    }

    #[test]
    fn sequential_data_mutated((edits, cut, insert) in mutations()) {
        let dir = tempfile::tempdir().expect("tempdir");
        dataset_dir(dir.path(), &mutate(SEQUENCES, &edits, cut, &insert), DATAMAPS.as_bytes(), None);
        check_dataset(dir.path());
    }

    #[test]
    fn datamaps_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().expect("tempdir");
        dataset_dir(dir.path(), SEQUENCES.as_bytes(), &bytes, None);
        check_dataset(dir.path());
    }

    #[test]
    fn datamaps_mutated((edits, cut, insert) in mutations()) {
        let dir = tempfile::tempdir().expect("tempdir");
        dataset_dir(dir.path(), SEQUENCES.as_bytes(), &mutate(DATAMAPS, &edits, cut, &insert), None);
        check_dataset(dir.path());
    }

    #[test]
    fn negatives_from_arbitrary_bytes_and_mutations(
        bytes in prop::collection::vec(any::<u8>(), 0..120),
        (edits, cut, insert) in mutations(),
    ) {
        for negatives in [bytes.clone(), mutate(NEGATIVES, &edits, cut, &insert)] {
            let dir = tempfile::tempdir().expect("tempdir");
            dataset_dir(dir.path(), SEQUENCES.as_bytes(), DATAMAPS.as_bytes(), Some(&negatives));
            check_dataset(dir.path());
        }
    }

    #[test]
    fn explanations_from_arbitrary_bytes_and_mutations(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        (edits, cut, insert) in mutations(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let dataset = valid_dataset(dir.path());
        let path = dir.path().join("explanations.json");
        for content in [bytes.clone(), mutate(EXPLANATIONS, &edits, cut, &insert)] {
            std::fs::write(&path, &content).expect("write");
            let result = Explanations::load(&path, &dataset).map(|_| ()).map_err(|e| e.to_string());
            check_file_error(&path, result);
        }
    }

    #[test]
    fn templates_from_arbitrary_bytes_and_mutations(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        (edits, cut, insert) in mutations(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("templates.json");
        for content in [bytes.clone(), mutate(TEMPLATES, &edits, cut, &insert)] {
            std::fs::write(&path, &content).expect("write");
            let result = Templates::load(&path).map(|_| ()).map_err(|e| e.to_string());
            check_file_error(&path, result);
        }
    }
}

#[test]
fn the_seeds_of_the_mutations_are_valid() {
    // The mutation strategies start from valid files: check that they are.
    let dir = tempfile::tempdir().expect("tempdir");
    dataset_dir(
        dir.path(),
        SEQUENCES.as_bytes(),
        DATAMAPS.as_bytes(),
        Some(NEGATIVES.as_bytes()),
    );
    let dataset = Dataset::load(dir.path()).expect("valid dataset");
    assert_eq!(dataset.test_negatives().expect("negatives").of(3), &[2, 3]);
    let path = dir.path().join("e.json");
    std::fs::write(&path, EXPLANATIONS).expect("write");
    Explanations::load(&path, &dataset).expect("valid explanations");
    std::fs::write(&path, TEMPLATES).expect("write");
    Templates::load(&path).expect("valid templates");
}
