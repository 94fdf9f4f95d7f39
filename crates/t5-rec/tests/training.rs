//! A toy copy task: training drives the loss down within seconds.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::{build_seeded, ids, small_config, tensor2};

#[test]
fn copy_task_loss_goes_down() -> anyhow::Result<()> {
    let mut cfg = small_config("relu", true);
    cfg.d_model = 32;
    cfg.d_kv = 8;
    cfg.d_ff = 64;
    cfg.vocab_size = 16;
    cfg.dropout_rate = 0.0;
    let (varmap, model) = build_seeded(&cfg, 7)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 5e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let (b, t) = (16, 5);
    let eval_input = tensor2(&ids(b, t, 2, 16, 999))?;
    let mask = Tensor::ones((b, t), DType::U32, &Device::Cpu)?;
    let zeros = Tensor::zeros((b, t), DType::U32, &Device::Cpu)?;
    let eval = |model: &peapod_t5_rec::T5ForRec| -> anyhow::Result<f32> {
        let embeds = model.embed_input(&eval_input, &zeros)?;
        Ok(model
            .forward_loss(&embeds, &mask, &eval_input, &mask, false)?
            .to_scalar::<f32>()?)
    };
    let initial = eval(&model)?;
    for step in 0..300 {
        let input = tensor2(&ids(b, t, 2, 16, step))?;
        let embeds = model.embed_input(&input, &zeros)?;
        let loss = model.forward_loss(&embeds, &mask, &input, &mask, true)?;
        opt.backward_step(&loss)?;
    }
    let last = eval(&model)?;
    eprintln!("copy task: held-out loss {initial:.3} -> {last:.3}");
    assert!(last < 0.3 * initial, "{initial} -> {last}");
    Ok(())
}
