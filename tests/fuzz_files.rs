//! The binary files a run reads back — checkpoints (and their headers) and the cached MF model
//! — fed arbitrary bytes and mutations of valid files: no panic, and an error names the file.
//! `CASES` inputs per strategy per run (`docs/reliability.md`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use peapod::checkpoint::{load_checkpoint, read_checkpoint_header, save_checkpoint};
use peapod_pmf::{Interactions, MfConfig, MfModel};
use proptest::prelude::*;

const CASES: u32 = 256;

fn valid_checkpoint(dir: &Path) -> Vec<u8> {
    let path = dir.join("valid.safetensors");
    let tensors = HashMap::from([
        (
            "a".to_string(),
            Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).expect("t"),
        ),
        (
            "b".to_string(),
            Tensor::new(&[[4u32, 5], [6, 7]], &Device::Cpu).expect("t"),
        ),
    ]);
    let header = serde_json::json!({"dataset": "beauty", "step": 3});
    save_checkpoint(&path, &tensors, &header, None).expect("save");
    std::fs::read(&path).expect("read")
}

fn valid_mf(dir: &Path) -> Vec<u8> {
    let sequences: Vec<(u32, Vec<u32>)> =
        (1..=4u32).map(|u| (u, vec![u, u + 1, u + 2, 1])).collect();
    let config = MfConfig {
        dim: 2,
        iterations: 1,
        ..MfConfig::default()
    };
    let mf = MfModel::train(
        &Interactions::training_split(&sequences, 2).expect("split"),
        &config,
    )
    .expect("mf");
    let path = dir.join("mf.safetensors");
    mf.save(&path).expect("save");
    std::fs::read(&path).expect("read")
}

fn mutate(base: &[u8], edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for &(at, b) in edits {
        let at = at % bytes.len();
        bytes[at] = b;
    }
    // Most cuts keep the file whole: a cut file fails early, edits reach deeper.
    if cut % 4 == 0 {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn names_the_file(path: &Path, result: Result<(), String>) {
    if let Err(msg) = result {
        assert!(
            msg.contains(&path.display().to_string()) || msg.contains("invalid model file"),
            "an error that names no file: {msg}"
        );
    }
}

fn check_checkpoint(path: &Path) {
    let full = load_checkpoint::<serde_json::Value>(path, &Device::Cpu)
        .map(|_| ())
        .map_err(|e| e.to_string());
    names_the_file(path, full);
    let header = read_checkpoint_header::<serde_json::Value>(path)
        .map(|_| ())
        .map_err(|e| e.to_string());
    names_the_file(path, header);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn checkpoints_from_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ckpt.safetensors");
        std::fs::write(&path, &bytes).expect("write");
        check_checkpoint(&path);
    }

    #[test]
    fn checkpoints_mutated(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = mutate(&valid_checkpoint(dir.path()), &edits, cut);
        let path = dir.path().join("ckpt.safetensors");
        std::fs::write(&path, &bytes).expect("write");
        check_checkpoint(&path);
    }

    #[test]
    fn mf_models_from_arbitrary_bytes_and_mutations(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mutated = mutate(&valid_mf(dir.path()), &edits, cut);
        let path = dir.path().join("mf.safetensors");
        for content in [bytes, mutated] {
            std::fs::write(&path, &content).expect("write");
            if let Err(e) = MfModel::load(&path) {
                // peapod-pmf's errors say what is wrong; the caller names the file.
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
            }
        }
    }
}

#[test]
fn an_edited_checkpoint_is_caught_by_its_checksum_or_its_format() {
    // Every single-byte change of a valid checkpoint either fails to load or (rarely: bytes
    // the format ignores, such as JSON whitespace) loads exactly the same content.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = valid_checkpoint(dir.path());
    let path = dir.path().join("ckpt.safetensors");
    let (original, _): (HashMap<String, Tensor>, serde_json::Value) =
        load_checkpoint(&dir.path().join("valid.safetensors"), &Device::Cpu).expect("valid");
    let flat = |m: &HashMap<String, Tensor>| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = m
            .iter()
            .map(|(k, t)| {
                let bytes = t
                    .flatten_all()
                    .and_then(|t| t.to_dtype(candle_core::DType::F32))
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("values")
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                (k.clone(), bytes)
            })
            .collect();
        v.sort();
        v
    };
    let mut caught = 0;
    for at in 0..good.len() {
        let mut bytes = good.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        match load_checkpoint::<serde_json::Value>(&path, &Device::Cpu) {
            Err(_) => caught += 1,
            Ok((tensors, _)) => assert_eq!(flat(&tensors), flat(&original), "byte {at}"),
        }
    }
    assert!(
        caught * 10 > good.len() * 9,
        "{caught} of {} changes caught",
        good.len()
    );
}
