//! `scripts/gpu_figures.py` (run by `scripts/gpu_check.sh` on the GPU host) pairs our timings
//! with PyTorch's for the same job from one run's log, keeps the parity checks, and leaves out
//! our CPU lines and anything that is not a figure.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_gpu_check_log_becomes_one_json_of_paired_figures() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("gpu-check.json");
    let run = Command::new("python3")
        .arg(root.join("scripts/gpu_figures.py"))
        .arg(root.join("tests/fixtures/gpu_check_sample.log"))
        .arg(&json)
        .args(["--gpu", "NVIDIA H200", "--commit", "0123abc"])
        .output()
        .expect("python3 runs (CI machines have it)");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let table = String::from_utf8_lossy(&run.stdout);
    assert!(
        table.contains("| train t5-small, batch 64, 40 -> 6 | 0.096 | 0.049 | 1.96 |"),
        "{table}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("written")).expect("JSON");
    assert_eq!(doc["gpu"], "NVIDIA H200");
    assert_eq!(doc["commit"], "0123abc");
    assert_eq!(doc["parity"].as_array().map(Vec::len), Some(1));
    let compare = doc["compare"].as_array().expect("compare");
    let jobs: Vec<(&str, f64)> = compare
        .iter()
        .map(|r| {
            (
                r["job"].as_str().unwrap_or(""),
                r["ours_over_pytorch"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert_eq!(
        jobs,
        vec![
            ("train t5-small, batch 64, 40 -> 6", 1.959),
            ("train t5-small, batch 64, 420 -> 6", 3.618),
            ("20-beam decoding t5-small, batch 32", 2.667),
        ]
    );

    // A log without figures is an error, not an empty file.
    let empty = out.path().join("empty.log");
    std::fs::write(&empty, "=== nothing ran\n").expect("write");
    let run = Command::new("python3")
        .arg(root.join("scripts/gpu_figures.py"))
        .arg(&empty)
        .arg(out.path().join("none.json"))
        .output()
        .expect("python3 runs");
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("no figures found"));
}
