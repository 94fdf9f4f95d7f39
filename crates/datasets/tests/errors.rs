//! Bad input gets an error naming the file, the line and what was wrong.

use std::path::Path;

use peapod_datasets::{Dataset, Explanations, Templates};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

const MAPS: &str = r#"{"id2user": {"1": "A", "2": "B", "3": "C"}, "id2item": {"1": "i1", "2": "i2", "3": "i3", "4": "i4", "5": "i5"}}"#;

fn write_dataset(dir: &Path, sequences: &str, maps: &str) {
    std::fs::write(dir.join("sequential_data.txt"), sequences).unwrap();
    std::fs::write(dir.join("datamaps.json"), maps).unwrap();
}

/// The error message for a dataset, with the temporary directory replaced by `DIR`.
fn load_error(sequences: &str, maps: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), sequences, maps);
    let err = Dataset::load(dir.path()).unwrap_err();
    err.to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn sequence_file_errors_name_file_line_and_problem() {
    assert_eq!(
        load_error("1 1 2 3\n2 1 x 3\n3 1 2 3\n", MAPS),
        r#"DIR/sequential_data.txt:2: item (position 2) "x" is not a positive integer id"#
    );
    assert_eq!(
        load_error("1 1 2 3\n2.5 1 2 3\n3 1 2 3\n", MAPS),
        r#"DIR/sequential_data.txt:2: user "2.5" is not a positive integer id"#
    );
    assert_eq!(
        load_error("1 1 2 3\n2 1 2 3\n2 3 4 5\n", MAPS),
        "DIR/sequential_data.txt:3: duplicate user 2 (first seen at line 2)"
    );
    assert_eq!(
        load_error("1 1 2 3\n2 1 2\n3 1 2 3\n", MAPS),
        "DIR/sequential_data.txt:2: user 2 has 2 item(s); at least 3 are needed (training, validation, test)"
    );
    assert_eq!(
        load_error("1 1 2 3\n2 1 2 3\n3 1 9 3\n", MAPS),
        "DIR/sequential_data.txt:3: item 9 (position 2) out of range 1..=5"
    );
    assert_eq!(
        load_error("1 1 2 3\n\n3 1 2 3\n", MAPS),
        "DIR/sequential_data.txt:2: empty line"
    );
    assert_eq!(
        load_error("1 1 2 3\n2 1 2 3\n", MAPS),
        "DIR/datamaps.json: id2user has 3 users but DIR/sequential_data.txt has 2"
    );
    assert_eq!(
        load_error("1 1 2 3\n2 1 2 3\n7 1 2 3\n", MAPS),
        "DIR/sequential_data.txt:3: user 7 out of range: with 3 users, ids must be 1..=3"
    );
    assert_eq!(
        load_error(
            "1 1 2 3\n",
            "{\"id2user\": {\"1\": \"A\"},\n \"id2item\": [1, 2]}"
        ),
        "DIR/datamaps.json:2:12: invalid type: sequence, expected a map"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = Dataset::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("sequential_data.txt: No such file"), "{err}");
}

#[test]
fn negatives_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path(), "1 1 2 3\n2 1 2 3\n3 1 2 3\n", MAPS);
    std::fs::write(
        dir.path().join("negative_samples.txt"),
        "1 4 5\n2 4 5\n2 4 5\n",
    )
    .unwrap();
    let err = Dataset::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("negative_samples.txt:3: duplicate user 2"),
        "{err}"
    );
    std::fs::write(dir.path().join("negative_samples.txt"), "1 4 5\n2 4 5\n").unwrap();
    let err = Dataset::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("negative_samples.txt: user 3 has no line"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("negative_samples.txt"),
        "1 4 5\n2 4 6\n3 4 5\n",
    )
    .unwrap();
    let err = Dataset::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("negative_samples.txt:2: item 6 (position 2) out of range 1..=5"),
        "{err}"
    );
}

fn explanation_error(json: &str) -> String {
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.json");
    std::fs::write(&path, json).unwrap();
    let err = Explanations::load(&path, &toys).unwrap_err();
    err.to_string()
        .replace(&dir.path().display().to_string(), "DIR")
}

#[test]
fn explanation_errors_name_the_line_of_the_record() {
    let ok = r#"{"user": 1, "item": 2, "explanation": "nice", "feature": "f"}"#;
    let bad_user =
        "{\n  \"user\": 19413,\n  \"item\": 2,\n  \"explanation\": \"x\",\n  \"feature\": \"f\"\n}";
    assert_eq!(
        explanation_error(&format!(
            "{{\"train\": [\n{ok},\n{bad_user}\n], \"val\": [], \"test\": []}}"
        )),
        "DIR/exp.json:9:1: explanation record train[1]: user 19413 out of range 1..=19412"
    );
    assert_eq!(
        explanation_error(&format!(
            "{{\"test\": [{ok},\n{{\"user\": 3, \"item\": 0, \"explanation\": \"x\"}}]}}"
        )),
        "DIR/exp.json:2:43: explanation record test[1]: item 0 out of range 1..=11924"
    );
    assert_eq!(
        explanation_error("{\"train\": [{\"user\": \"u7\", \"item\": 2, \"explanation\": \"x\"}]}"),
        "DIR/exp.json:1:57: explanation record train[0]: user \"u7\" is not a positive integer id"
    );
    // Floats and negative ids name their record too.
    assert_eq!(
        explanation_error("{\"val\": [{\"user\": 1.5, \"item\": 2, \"explanation\": \"x\"}]}"),
        "DIR/exp.json:1:54: explanation record val[0]: user 1.5 is not a positive integer id"
    );
    assert_eq!(
        explanation_error(&format!(
            "{{\"val\": [{ok}, {{\"user\": 4, \"item\": -2, \"explanation\": \"x\"}}]}}"
        )),
        "DIR/exp.json:1:116: explanation record val[1]: item -2 is not a positive integer id"
    );
    // An empty explanation, a misspelled or unknown list, a missing list: errors.
    assert_eq!(
        explanation_error(&format!(
            "{{\"train\": [{ok}, {{\"user\": 4, \"item\": 2, \"explanation\": \" \"}}], \"val\": [], \"test\": []}}"
        )),
        "DIR/exp.json:1:117: explanation record train[1]: empty explanation"
    );
    for key in ["validation", "testing", "note"] {
        let err = explanation_error(&format!("{{\"train\": [], \"{key}\": []}}"));
        assert!(err.contains(&format!("unknown key \"{key}\"")), "{err}");
    }
    let err = explanation_error("{}");
    assert!(err.contains("no \"train\" list"), "{err}");
    let err = explanation_error("{\"train\": [], \"test\": []}");
    assert!(err.contains("no \"val\" list"), "{err}");
    let err = explanation_error("{\"train\": [], \"val\": [], \"train\": [], \"test\": []}");
    assert!(err.contains("appears twice"), "{err}");
    assert_eq!(
        explanation_error(&format!(
            "{{\"train\": [{ok},\n {{\"user\": 1, \"item\": 2 \"explanation\": \"x\"}}]}}"
        )),
        "DIR/exp.json:2:24: expected `,` or `}`"
    );
    assert_eq!(
        explanation_error("{\"train\": [{\"user\": 1, \"item\": 2}]}"),
        "DIR/exp.json:1:33: missing field `explanation`"
    );
    // Ids as digit strings are accepted; lists may be empty.
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.json");
    std::fs::write(
        &path,
        r#"{"train": [{"user": "5", "item": "6", "explanation": "e"}], "val": [], "test": []}"#,
    )
    .unwrap();
    let exp = Explanations::load(&path, &toys).unwrap();
    assert_eq!(
        (exp.train[0].user, exp.train[0].item, exp.test.len()),
        (5, 6, 0)
    );
}

#[test]
fn template_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    std::fs::write(&path, r#"{"sequential": ["user_{} only"], "topn": ["user_{} item_{}"], "explanation": ["user_{} item_{}"]}"#).unwrap();
    let err = Templates::load(&path).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "t.json: sequential template 0 has 1 slots, expected 2 (user, items): \"user_{} only\""
        ),
        "{err}"
    );
    let templates = Templates::load(format!("{DATA}/templates.json")).unwrap();
    let err = templates
        .render(peapod_datasets::Task::TopN, 5, 1, &[2])
        .unwrap_err();
    assert_eq!(err.to_string(), "topn has 5 templates, no index 5");
}
