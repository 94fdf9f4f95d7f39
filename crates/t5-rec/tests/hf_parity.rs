//! Parity with Hugging Face transformers on seeded random tiny T5s (fixture written by
//! scripts/t5_parity.py).

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::{max_abs_diff, FIXTURES};
use peapod_t5_rec::{load_weights, relative_position_bucket, LoadOptions, T5Config, T5ForRec};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture() -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/hf_parity.json"))?;
    Ok(serde_json::from_str(&text)?)
}

fn ints(v: &Value) -> anyhow::Result<Tensor> {
    let rows: Vec<Vec<u32>> = serde_json::from_value(v.clone())?;
    Ok(Tensor::new(rows, &Device::Cpu)?)
}

fn floats(v: &Value, shape: &[usize]) -> anyhow::Result<Tensor> {
    let flat: Vec<f32> = serde_json::from_value(v.clone())?;
    Ok(Tensor::from_vec(flat, shape, &Device::Cpu)?)
}

fn load_case(case: &Value) -> anyhow::Result<(T5Config, T5ForRec)> {
    let name = |k: &str| -> anyhow::Result<String> {
        let file = case[k].as_str().ok_or_else(|| anyhow::anyhow!("no {k}"))?;
        Ok(format!("{FIXTURES}/{file}"))
    };
    let cfg = T5Config::from_hf_json(name("config_file")?)?;
    let varmap = VarMap::new();
    let model = T5ForRec::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let report = load_weights(&varmap, name("weights_file")?, &LoadOptions::exact())?;
    assert!(
        report.kept.is_empty() && report.skipped.is_empty(),
        "{report:?}"
    );
    Ok((cfg, model))
}

struct Checked {
    encoder: f32,
    logits: f32,
    loss: f32,
}

fn check(
    model: &T5ForRec,
    cfg: &T5Config,
    embeds: &Tensor,
    mask: &Tensor,
    labels: &Tensor,
    label_mask: &Tensor,
    expected: &Value,
) -> anyhow::Result<Checked> {
    let (b, t, d) = embeds.dims3()?;
    let s = labels.dim(1)?;
    let enc = model.encode(embeds, mask, false)?;
    let e_enc = floats(&expected["encoder"], &[b, t, d])?;
    let dec_in = model.shift_right(labels)?;
    let logits = model.decode(&dec_in, &enc, mask, false)?;
    let e_logits = floats(&expected["logits"], &[b, s, cfg.vocab_size])?;
    let loss = model
        .loss(&logits, labels, label_mask)?
        .to_scalar::<f32>()?;
    let fused = model
        .forward_loss(embeds, mask, labels, label_mask, false)?
        .to_scalar::<f32>()?;
    let e_loss = expected["loss"].as_f64().unwrap_or(f64::NAN) as f32;
    assert!(
        (fused - loss).abs() < 1e-5,
        "forward_loss {fused} vs loss {loss}"
    );
    Ok(Checked {
        encoder: max_abs_diff(&enc, &e_enc)?,
        logits: max_abs_diff(&logits, &e_logits)?,
        loss: (loss - e_loss).abs(),
    })
}

#[test]
fn matches_hugging_face_on_token_and_embedding_inputs() -> anyhow::Result<()> {
    let fx = fixture()?;
    let cases = fx["cases"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no cases"))?;
    assert_eq!(cases.len(), 2);
    for (name, case) in cases {
        let (cfg, model) = load_case(case)?;
        let ids = ints(&case["input_ids"])?;
        let ww = ints(&case["whole_word_ids"])?;
        let mask = ints(&case["attention_mask"])?;
        let labels = ints(&case["labels"])?;
        let label_mask = ints(&case["label_mask"])?;

        // Token ids only (Hugging Face's own input path).
        let got = check(
            &model,
            &cfg,
            &model.embed_tokens(&ids)?,
            &mask,
            &labels,
            &label_mask,
            &case["ids"],
        )?;
        eprintln!(
            "{name} ids: max |Δ| encoder {:.2e} logits {:.2e} loss {:.2e}",
            got.encoder, got.logits, got.loss
        );
        assert!(
            got.encoder < TOL && got.logits < TOL && got.loss < TOL,
            "{name} ids"
        );

        // Whole-word embeddings added, one extra vector prepended (a soft prompt).
        let b = ids.dim(0)?;
        let extra = floats(&case["extra_vector"], &[b, 1, cfg.d_model])?;
        let embeds = Tensor::cat(&[&extra, &model.embed_input(&ids, &ww)?], 1)?;
        let mask = Tensor::cat(
            &[&Tensor::ones((b, 1), DType::U32, &Device::Cpu)?, &mask],
            1,
        )?;
        let got = check(
            &model,
            &cfg,
            &embeds,
            &mask,
            &labels,
            &label_mask,
            &case["embeds"],
        )?;
        eprintln!(
            "{name} embeds+prompt: max |Δ| encoder {:.2e} logits {:.2e} loss {:.2e}",
            got.encoder, got.logits, got.loss
        );
        assert!(
            got.encoder < TOL && got.logits < TOL && got.loss < TOL,
            "{name} embeds"
        );
    }
    Ok(())
}

#[test]
fn incremental_greedy_decoding_matches_hugging_face() -> anyhow::Result<()> {
    let fx = fixture()?;
    for (name, case) in fx["cases"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no cases"))?
    {
        let (cfg, model) = load_case(case)?;
        let ids = ints(&case["input_ids"])?;
        let mask = ints(&case["attention_mask"])?;
        let expected: Vec<Vec<u32>> = serde_json::from_value(case["greedy_tokens"].clone())?;
        let (b, steps) = (expected.len(), expected[0].len());
        let e_lp = floats(&case["greedy_log_probs"], &[b, steps, cfg.vocab_size])?;
        let enc = model.encode(&model.embed_tokens(&ids)?, &mask, false)?;
        let mut state = model.start_decoding(&enc, &mask, 1)?;
        let mut last = Tensor::full(cfg.decoder_start_token_id, b, &Device::Cpu)?;
        let mut worst = 0f32;
        for step in 0..steps {
            let lp = model.decode_step(&mut state, &last)?;
            worst = worst.max(max_abs_diff(&lp, &e_lp.narrow(1, step, 1)?.squeeze(1)?)?);
            last = lp.argmax(1)?;
            let tokens: Vec<u32> = last.to_vec1()?;
            let want: Vec<u32> = expected.iter().map(|row| row[step]).collect();
            assert_eq!(tokens, want, "{name} step {step}");
        }
        eprintln!("{name} greedy: max |Δ| log-probs {worst:.2e}");
        assert!(worst < TOL);
    }
    Ok(())
}

#[test]
fn relative_position_buckets_match_hugging_face() -> anyhow::Result<()> {
    let fx = fixture()?;
    let bk = &fx["buckets"];
    let lo = bk["relative_positions"][0].as_i64().unwrap_or(0);
    for (key, bidirectional) in [("bidirectional", true), ("causal", false)] {
        let want: Vec<u32> = serde_json::from_value(bk[key].clone())?;
        let got: Vec<u32> = (0..want.len() as i64)
            .map(|i| relative_position_bucket(lo + i, bidirectional, 32, 128))
            .collect();
        assert_eq!(got, want, "{key}");
    }
    Ok(())
}

#[test]
fn reads_hugging_face_config() -> anyhow::Result<()> {
    let cfg = T5Config::from_hf_json(format!("{FIXTURES}/gated_untied.config.json"))?;
    assert_eq!((cfg.num_layers, cfg.num_decoder_layers), (3, 2));
    assert_eq!(cfg.feed_forward_proj, "gated-gelu");
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(cfg.num_whole_word_embeddings, 16);
    let cfg = T5Config::from_hf_json(format!("{FIXTURES}/relu_tied.config.json"))?;
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.relative_attention_max_distance, 16);
    let err = T5Config::from_hf_json(format!("{FIXTURES}/absent.json"));
    assert!(err.is_err());
    Ok(())
}
