//! `peapod::optim::AdamW` against `torch.optim.AdamW`: 30 steps (lr 1e-3, weight decay 0.01,
//! gradients clipped to a global norm of 1.0, dropout 0) on the T5 parity model and its padded
//! batch; the loss and the gradient norm must match PyTorch's (f32) within 1e-4 relative at
//! every step. The fixture is written by `scripts/adamw_parity.py`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use peapod::optim::{AdamW, AdamWConfig};
use peapod_t5_rec::{load_weights, LoadOptions, T5Config, T5ForRec};
use serde_json::Value;

const PARITY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crates/t5-rec/tests/fixtures");
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/adamw_parity.json"
);

fn json(path: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

fn ints(v: &Value) -> anyhow::Result<Tensor> {
    let rows: Vec<Vec<u32>> = serde_json::from_value(v.clone())?;
    Ok(Tensor::new(rows, &Device::Cpu)?)
}

fn floats(v: &Value) -> anyhow::Result<Vec<f64>> {
    Ok(serde_json::from_value(v.clone())?)
}

#[test]
fn thirty_adamw_steps_follow_pytorch() -> anyhow::Result<()> {
    let want = json(FIXTURE)?;
    let case = &json(&format!("{PARITY}/hf_parity.json"))?["cases"]["relu_tied"];
    let mut cfg = T5Config::from_hf_json(format!("{PARITY}/relu_tied.config.json"))?;
    cfg.dropout_rate = 0.0;
    let varmap = VarMap::new();
    let model = T5ForRec::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    load_weights(
        &varmap,
        format!("{PARITY}/relu_tied.safetensors"),
        &LoadOptions::exact(),
    )?;
    let (ids, mask) = (ints(&case["input_ids"])?, ints(&case["attention_mask"])?);
    let (labels, label_mask) = (ints(&case["labels"])?, ints(&case["label_mask"])?);
    let vars: Vec<_> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
    };
    let config = AdamWConfig {
        lr: want["lr"].as_f64().unwrap_or_default(),
        weight_decay: want["weight_decay"].as_f64().unwrap_or_default(),
        max_grad_norm: want["max_grad_norm"].as_f64(),
        ..AdamWConfig::default()
    };
    assert_eq!((config.beta1, config.beta2, config.eps), (0.9, 0.999, 1e-8));
    let mut opt = AdamW::new(vars, config)?;
    let (losses, norms) = (floats(&want["losses"])?, floats(&want["grad_norms"])?);
    assert_eq!(losses.len(), 30);
    let mut worst = (0f64, 0f64);
    for (step, (&want_loss, &want_norm)) in losses.iter().zip(&norms).enumerate() {
        let loss = model.forward_loss(
            &model.embed_tokens(&ids)?,
            &mask,
            &labels,
            &label_mask,
            true,
        )?;
        let got_loss = f64::from(loss.to_scalar::<f32>()?);
        let got_norm = opt.step(&loss.backward()?)?;
        let (dl, dn) = (
            (got_loss - want_loss).abs() / want_loss.abs(),
            (got_norm - want_norm).abs() / want_norm.abs(),
        );
        assert!(
            dl < 1e-4 && dn < 1e-4,
            "step {step}: loss {got_loss} vs {want_loss}, gradient norm {got_norm} vs {want_norm}"
        );
        worst = (worst.0.max(dl), worst.1.max(dn));
    }
    eprintln!(
        "worst relative difference over 30 steps: loss {:.2e}, gradient norm {:.2e}",
        worst.0, worst.1
    );
    // Tighter than the contract, to catch systematic drift: with 1 − β computed in f32 from
    // f32-rounded betas (the old kernel's error) the losses drift 7.9e-6 from PyTorch's by step
    // 30; they stay within 3.4e-7 when the scalars are rounded once from f64.
    assert!(
        worst.0 < 3e-6,
        "losses drift from PyTorch's: {:.2e}",
        worst.0
    );
    Ok(())
}
