//! Loading by name with aliases and clear errors; checkpoints round-trip.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{build, ids, max_abs_diff, small_config, tensor2};
use peapod_t5_rec::{load_weights, save_checkpoint, LoadOptions, T5Error, WHOLE_WORD_EMBEDDINGS};

fn tensors(varmap: &candle_nn::VarMap) -> anyhow::Result<HashMap<String, Tensor>> {
    let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
    Ok(vars
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_tensor()
                    .copy()
                    .unwrap_or_else(|_| v.as_tensor().clone()),
            )
        })
        .collect())
}

fn logits(model: &peapod_t5_rec::T5ForRec) -> anyhow::Result<Tensor> {
    let input = tensor2(&ids(2, 5, 2, 40, 21))?;
    let whole = tensor2(&ids(2, 5, 0, 8, 22))?;
    let mask = Tensor::ones((2, 5), DType::U32, &Device::Cpu)?;
    let enc = model.encode(&model.embed_input(&input, &whole)?, &mask, false)?;
    Ok(model.decode(&tensor2(&ids(2, 3, 0, 40, 23))?, &enc, &mask, false)?)
}

#[test]
fn checkpoint_round_trip_restores_the_model() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("t5rec-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.safetensors");
    let cfg = small_config("gated-gelu", false);
    let (vm_a, a) = build(&cfg)?;
    save_checkpoint(&vm_a, &path)?;
    let (vm_b, b) = build(&cfg)?;
    assert!(
        max_abs_diff(&logits(&a)?, &logits(&b)?)? > 1e-3,
        "fresh models differ"
    );
    let report = load_weights(&vm_b, &path, &LoadOptions::exact())?;
    assert_eq!(report.loaded.len(), tensors(&vm_a)?.len());
    assert!(report.loaded.iter().any(|n| n == WHOLE_WORD_EMBEDDINGS));
    assert_eq!(max_abs_diff(&logits(&a)?, &logits(&b)?)?, 0.0);

    // Loading converts dtypes: an f64 model reads the f32 checkpoint.
    let varmap = candle_nn::VarMap::new();
    let c = peapod_t5_rec::T5ForRec::new(
        &cfg,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu),
    )?;
    load_weights(&varmap, &path, &LoadOptions::exact())?;
    let diff = max_abs_diff(&logits(&a)?, &logits(&c)?.to_dtype(DType::F32)?)?;
    assert!(diff < 1e-4, "f64 model from f32 checkpoint: {diff}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn missing_extra_and_misshapen_tensors_are_named() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("t5rec-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = small_config("relu", true);
    let (vm_a, _a) = build(&cfg)?;
    let (vm_b, b) = build(&cfg)?;
    let before = logits(&b)?;
    let full = tensors(&vm_a)?;

    let mut missing = full.clone();
    missing.remove("decoder.block.1.layer.2.DenseReluDense.wo.weight");
    missing.insert(
        "encoder.block.9.layer.0.SelfAttention.q.weight".into(),
        Tensor::zeros((16, 16), DType::F32, &Device::Cpu)?,
    );
    let path = dir.join("bad.safetensors");
    candle_core::safetensors::save(&missing, &path)?;
    match load_weights(&vm_b, &path, &LoadOptions::exact()) {
        Err(err @ T5Error::WeightMismatch { .. }) => {
            let msg = err.to_string();
            assert!(
                msg.contains("decoder.block.1.layer.2.DenseReluDense.wo.weight"),
                "{msg}"
            );
            assert!(
                msg.contains("encoder.block.9.layer.0.SelfAttention.q.weight"),
                "{msg}"
            );
            if let T5Error::WeightMismatch {
                missing,
                unexpected,
                ..
            } = err
            {
                assert_eq!(
                    missing,
                    vec!["decoder.block.1.layer.2.DenseReluDense.wo.weight"]
                );
                assert_eq!(
                    unexpected,
                    vec!["encoder.block.9.layer.0.SelfAttention.q.weight"]
                );
            }
        }
        other => anyhow::bail!("expected a mismatch error, got {other:?}"),
    }
    // A failed load modifies nothing.
    assert_eq!(max_abs_diff(&before, &logits(&b)?)?, 0.0);

    let mut misshapen = full.clone();
    misshapen.insert(
        "decoder.final_layer_norm.weight".into(),
        Tensor::ones(17, DType::F32, &Device::Cpu)?,
    );
    candle_core::safetensors::save(&misshapen, &path)?;
    match load_weights(&vm_b, &path, &LoadOptions::exact()) {
        Err(T5Error::ShapeMismatch {
            name, file, model, ..
        }) => {
            assert_eq!(name, "decoder.final_layer_norm.weight");
            assert_eq!((file, model), (vec![17], vec![16]));
        }
        other => anyhow::bail!("expected a shape error, got {other:?}"),
    }
    assert!(load_weights(&vm_b, dir.join("absent.safetensors"), &LoadOptions::exact()).is_err());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn hugging_face_layout_loads_with_aliases() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("t5rec-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = small_config("relu", true);
    let (vm_a, a) = build(&cfg)?;
    let (vm_b, b) = build(&cfg)?;
    let mut hf = tensors(&vm_a)?;
    // A Hugging Face file: the embedding under an alias, no whole-word table, the unused
    // cross-attention bias of old checkpoints.
    let shared = hf
        .remove("shared.weight")
        .ok_or_else(|| anyhow::anyhow!("no shared"))?;
    hf.insert("encoder.embed_tokens.weight".into(), shared);
    hf.remove(WHOLE_WORD_EMBEDDINGS);
    hf.insert(
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight".into(),
        Tensor::zeros((8, 4), DType::F32, &Device::Cpu)?,
    );
    let path = dir.join("hf.safetensors");
    candle_core::safetensors::save(&hf, &path)?;
    let err = load_weights(&vm_b, &path, &LoadOptions::exact());
    assert!(
        matches!(err, Err(T5Error::WeightMismatch { .. })),
        "{err:?}"
    );
    let report = load_weights(&vm_b, &path, &LoadOptions::hf_pretrained())?;
    assert_eq!(report.kept, vec![WHOLE_WORD_EMBEDDINGS.to_string()]);
    assert_eq!(report.skipped.len(), 1);
    // Same weights except the whole-word table: equal outputs without whole-word ids.
    let input = tensor2(&ids(2, 5, 2, 40, 31))?;
    let mask = Tensor::ones((2, 5), DType::U32, &Device::Cpu)?;
    let ea = a.encode(&a.embed_tokens(&input)?, &mask, false)?;
    let eb = b.encode(&b.embed_tokens(&input)?, &mask, false)?;
    assert_eq!(max_abs_diff(&ea, &eb)?, 0.0);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn parameter_names_and_seeded_init_are_reproducible() -> anyhow::Result<()> {
    for (ff, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = small_config(ff, tied);
        let (vm_a, a) = common::build_seeded(&cfg, 42)?;
        let mut keys: Vec<String> = tensors(&vm_a)?.into_keys().collect();
        keys.sort();
        assert_eq!(keys, peapod_t5_rec::parameter_names(&cfg));
        let (_vm_b, b) = common::build_seeded(&cfg, 42)?;
        let (_vm_c, c) = common::build_seeded(&cfg, 43)?;
        assert_eq!(max_abs_diff(&logits(&a)?, &logits(&b)?)?, 0.0);
        assert!(max_abs_diff(&logits(&a)?, &logits(&c)?)? > 1e-3);
        // Hugging Face's scale: q weights have std (d_model·d_kv)^-1/2 = 1/8 here.
        let q = tensors(&vm_a)?["encoder.block.0.layer.0.SelfAttention.q.weight"].clone();
        let std = q.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
        assert!((std - 0.125).abs() < 0.02, "{std}");
    }
    Ok(())
}
