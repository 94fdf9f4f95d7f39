//! The examples as a user meets them: every one answers `--help` with a description and
//! documented flags, and a bad argument ends in a one-line `error: …` (Display, not Debug) and
//! exit status 1. `cargo test` builds the examples beside the test binaries.

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/examples, from this test binary's path (target/<profile>/deps/…).
fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples"))
        .expect("target/<profile>/examples")
}

const ROOT_EXAMPLES: [&str; 11] = [
    "quickstart",
    "sasrec_baseline",
    "train_beauty",
    "train_sports",
    "train_toys",
    "evaluate",
    "compare_variants",
    "bench_decode",
    "bench_t5",
    "bench_checkpoint",
    "check_device",
];
/// Examples of the member crates: built when the whole workspace is tested.
const CRATE_EXAMPLES: [&str; 6] = [
    "rank_metrics",
    "text_metrics",
    "neighbour_bench",
    "mf_baseline",
    "negatives",
    "dataset_stats",
];

#[test]
fn every_example_answers_help() {
    let dir = examples_dir();
    let mut checked = 0;
    for name in ROOT_EXAMPLES.iter().chain(&CRATE_EXAMPLES) {
        let path = dir.join(name);
        if !path.exists() {
            assert!(
                !ROOT_EXAMPLES.contains(name),
                "{} was not built",
                path.display()
            );
            continue;
        }
        let out = Command::new(&path).arg("--help").output().expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help failed");
        assert!(text.contains("Usage:"), "{name}: {text}");
        // A description above the usage line, and help for every flag but --help.
        let first = text.lines().next().unwrap_or_default();
        assert!(!first.starts_with("Usage"), "{name} has no description");
        // clap prints a flag's help after two spaces on its line, or (when any help is long)
        // on the next, more indented line.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let spec = line.trim();
            if !(spec.starts_with("--") || spec.starts_with("-h, --help")) {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let below = lines.get(i + 1).copied().unwrap_or_default();
            let next_line_help = below.len() - below.trim_start().len() > indent
                && !below.trim().is_empty()
                && !below.trim_start().starts_with('-');
            let same_line = spec
                .split_once("  ")
                .is_some_and(|(_, help)| !help.trim_start().starts_with("[default"));
            assert!(same_line || next_line_help, "{name}: `{spec}` has no help");
        }
        checked += 1;
    }
    assert!(checked >= ROOT_EXAMPLES.len());
}

#[test]
fn errors_are_one_displayed_line_and_exit_status_1() {
    let dir = examples_dir();
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "evaluate",
            &["--checkpoint", "/nonexistent/run"],
            "is neither a run directory",
        ),
        (
            "evaluate",
            &["--checkpoint", "/nonexistent/run", "--beams", "0"],
            "--beams",
        ),
        (
            "compare_variants",
            &["--variants", "peapod,bogus"],
            "unknown variant `bogus`",
        ),
        (
            "train_beauty",
            &["--lr=-1", "--out", "/nonexistent/never"],
            "learning rate",
        ),
        (
            "sasrec_baseline",
            &["--loss", "hinge"],
            "unknown loss `hinge`",
        ),
        (
            "sasrec_baseline",
            &["--batch-size", "0"],
            "batch_size must be at least 1",
        ),
    ];
    for (name, args, want) in cases {
        let out = Command::new(dir.join(name))
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name} {args:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{name} {args:?}: {err}"
        );
        assert!(
            !err.contains("Config(") && !err.contains("Io {"),
            "Debug output: {err}"
        );
    }
}
