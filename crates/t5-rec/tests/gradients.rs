//! Gradients reach soft prompts, whole-word embeddings and every weight, and are correct.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{build, build_seeded, ids, small_config, tensor2};
use peapod_t5_rec::T5ForRec;

#[test]
fn gradients_reach_prompt_whole_words_and_every_weight() -> anyhow::Result<()> {
    for (ff, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = small_config(ff, tied);
        let (varmap, model) = build(&cfg)?;
        let (b, t) = (3, 6);
        let prompt = Var::randn(0f32, 1.0, (b, 2, cfg.d_model), &Device::Cpu)?;
        let input = tensor2(&ids(b, t, 2, 40, 7))?;
        let whole = tensor2(&ids(b, t, 1, 8, 8))?;
        let embeds = Tensor::cat(
            &[prompt.as_tensor(), &model.embed_input(&input, &whole)?],
            1,
        )?;
        let mask = Tensor::ones((b, t + 2), DType::U32, &Device::Cpu)?;
        let targets = tensor2(&ids(b, 4, 2, 40, 9))?;
        let tmask = tensor2(&[vec![1, 1, 1, 1], vec![1, 1, 0, 0], vec![1, 1, 1, 0]])?;
        let loss = model.forward_loss(&embeds, &mask, &targets, &tmask, true)?;
        let grads = loss.backward()?;
        let norm =
            |t: &Tensor| -> anyhow::Result<f32> { Ok(t.abs()?.sum_all()?.to_scalar::<f32>()?) };
        let g = grads
            .get(prompt.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no prompt grad"))?;
        assert!(norm(g)? > 0.0, "prompt");
        let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
        assert!(vars.contains_key("whole_word_embeddings.weight"));
        assert_eq!(vars.contains_key("lm_head.weight"), !tied);
        let mut without = Vec::new();
        for (name, var) in vars.iter() {
            match grads.get(var.as_tensor()) {
                Some(g) if norm(g)? > 0.0 => {}
                _ => without.push(name.clone()),
            }
        }
        assert!(without.is_empty(), "{ff}: no gradient for {without:?}");
    }
    Ok(())
}

/// Central finite differences in f64 against backprop, for prompt entries and weights.
#[test]
fn gradients_match_finite_differences() -> anyhow::Result<()> {
    let mut cfg = small_config("gated-gelu", true);
    cfg.dropout_rate = 0.0;
    let varmap = VarMap::new();
    let model = T5ForRec::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu),
    )?;
    let (b, t) = (2, 5);
    let prompt = Var::randn(0f64, 1.0, (b, 1, cfg.d_model), &Device::Cpu)?;
    let input = tensor2(&ids(b, t, 2, 40, 11))?;
    let whole = tensor2(&ids(b, t, 0, 8, 12))?;
    let mask = tensor2(&[vec![1; t + 1], vec![1, 1, 1, 1, 0, 0]])?;
    let targets = tensor2(&ids(b, 3, 2, 40, 13))?;
    let tmask = tensor2(&[vec![1, 1, 1], vec![1, 1, 0]])?;
    let loss_of = |p: &Tensor| -> anyhow::Result<Tensor> {
        let embeds = Tensor::cat(&[p, &model.embed_input(&input, &whole)?], 1)?;
        Ok(model.forward_loss(&embeds, &mask, &targets, &tmask, true)?)
    };
    let grads = loss_of(prompt.as_tensor())?.backward()?;
    let g_prompt = grads
        .get(prompt.as_tensor())
        .ok_or_else(|| anyhow::anyhow!("no grad"))?;
    let eps = 1e-5;
    let base: Vec<f64> = prompt.as_tensor().flatten_all()?.to_vec1()?;
    let analytic: Vec<f64> = g_prompt.flatten_all()?.to_vec1()?;
    for &i in &[0usize, 7, 20, 31] {
        let shifted = |delta: f64| -> anyhow::Result<f64> {
            let mut v = base.clone();
            v[i] += delta;
            let p = Tensor::from_vec(v, (b, 1, cfg.d_model), &Device::Cpu)?;
            Ok(loss_of(&p)?.to_scalar::<f64>()?)
        };
        let numeric = (shifted(eps)? - shifted(-eps)?) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 + 1e-4 * numeric.abs(),
            "prompt[{i}]: numeric {numeric} vs backprop {}",
            analytic[i]
        );
    }
    for name in [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "decoder.block.1.layer.1.EncDecAttention.k.weight",
        "decoder.final_layer_norm.weight",
        "whole_word_embeddings.weight",
    ] {
        let var = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no grad for {name}"))?
            .flatten_all()?
            .to_vec1()?;
        let original = var.as_tensor().copy()?;
        let values: Vec<f64> = original.flatten_all()?.to_vec1()?;
        // The entry with the largest gradient is certainly exercised.
        let i = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap_or(0);
        let at = |delta: f64| -> anyhow::Result<f64> {
            let mut v = values.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu)?)?;
            Ok(loss_of(prompt.as_tensor())?.to_scalar::<f64>()?)
        };
        let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
        var.set(&original)?;
        assert!(
            (numeric - g[i]).abs() < 1e-6 + 1e-4 * numeric.abs(),
            "{name}[{i}]: numeric {numeric} vs backprop {}",
            g[i]
        );
    }
    Ok(())
}

/// A batch backpropagated in concurrent pieces, each loss weighted by its share of the target
/// tokens, has the batch's loss and gradients; with dropout on, a split step repeats exactly
/// under the same seed.
#[test]
fn gradients_in_parts_sum_to_the_batch_gradients() -> anyhow::Result<()> {
    let cfg = small_config("relu", true);
    let (varmap, model) = build_seeded(&cfg, 11)?;
    let (b, t) = (4, 6);
    let input = tensor2(&ids(b, t, 2, 40, 7))?;
    let whole = tensor2(&ids(b, t, 1, 8, 8))?;
    let mask = Tensor::ones((b, t), DType::U32, &Device::Cpu)?;
    let targets = tensor2(&ids(b, 4, 2, 40, 9))?;
    let counts = [4usize, 2, 3, 1];
    let tmask = tensor2(
        &counts
            .iter()
            .map(|&c| (0..4).map(|i| u32::from(i < c)).collect())
            .collect::<Vec<_>>(),
    )?;
    let total: usize = counts.iter().sum();
    // Rows start..end, weighted by their share of the batch's target tokens.
    let loss_of = |start: usize, end: usize, train: bool| -> peapod_t5_rec::Result<Tensor> {
        let n = end - start;
        let embeds = model.embed_input(&input.narrow(0, start, n)?, &whole.narrow(0, start, n)?)?;
        let loss = model.forward_loss(
            &embeds,
            &mask.narrow(0, start, n)?,
            &targets.narrow(0, start, n)?,
            &tmask.narrow(0, start, n)?,
            train,
        )?;
        let share = counts[start..end].iter().sum::<usize>() as f64 / total as f64;
        Ok((loss * share)?)
    };
    let bounds = [(0, 1), (1, 4)];
    let (batch_grads, batch_loss) = model.backward_in_parts(1, |_| loss_of(0, 4, false))?;
    let (split_grads, split_loss) =
        model.backward_in_parts(2, |p| loss_of(bounds[p].0, bounds[p].1, false))?;
    assert!(
        (batch_loss - split_loss).abs() < 1e-5,
        "{batch_loss} vs {split_loss}"
    );
    let vars = varmap.data().lock().map_err(|_| anyhow::anyhow!("lock"))?;
    for (name, var) in vars.iter() {
        let want = batch_grads.get(var.as_tensor());
        let got = split_grads.get(var.as_tensor());
        match (want, got) {
            (Some(w), Some(g)) => {
                let scale = w
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?
                    .max(1e-3);
                let diff = common::max_abs_diff(w, g)?;
                assert!(diff <= 1e-4 * scale, "{name}: {diff} (scale {scale})");
            }
            (None, None) => {}
            _ => anyhow::bail!("{name}: gradient in only one of the two runs"),
        }
    }

    let with_dropout = |seed: u64| -> anyhow::Result<(Vec<f32>, f64)> {
        model.set_dropout_seed(seed)?;
        let (grads, loss) =
            model.backward_in_parts(2, |p| loss_of(bounds[p].0, bounds[p].1, true))?;
        let var = &vars["decoder.block.0.layer.2.DenseReluDense.wi.weight"];
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| anyhow::anyhow!("no gradient"))?;
        Ok((g.flatten_all()?.to_vec1::<f32>()?, loss))
    };
    let first = with_dropout(5)?;
    assert_eq!(first, with_dropout(5)?, "same seed, same split step");
    assert_ne!(
        first.1,
        with_dropout(6)?.1,
        "dropout is on: another seed, other masks"
    );
    assert_ne!(first.1, split_loss, "dropout changes the loss");
    Ok(())
}
