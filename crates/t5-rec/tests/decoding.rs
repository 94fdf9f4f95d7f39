//! Incremental decoding (shared cross-attention, reorderable cache) against full decoding.

mod common;

use candle_core::{DType, Device, Tensor, D};
use common::{build, ids, max_abs_diff, small_config, tensor2};

#[test]
fn incremental_beams_with_reordering_match_full_decoding() -> anyhow::Result<()> {
    for (ff, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = small_config(ff, tied);
        let (_vm, model) = build(&cfg)?;
        let (b, t, beams, steps) = (2, 7, 3, 6);
        let input = tensor2(&ids(b, t, 2, 40, 1))?;
        let mask = tensor2(&[vec![1, 1, 1, 1, 1, 1, 1], vec![1, 1, 1, 1, 0, 0, 0]])?;
        let whole = tensor2(&ids(b, t, 0, 8, 2))?;
        let enc = model.encode(&model.embed_input(&input, &whole)?, &mask, false)?;
        let mut state = model.start_decoding(&enc, &mask, beams)?;
        let n = b * beams;
        // Full decoding sees each row's own copy of its input's encoder output.
        let row_input: Vec<u32> = (0..n as u32).map(|r| r / beams as u32).collect();
        let row_input = Tensor::from_vec(row_input, n, &Device::Cpu)?;
        let enc_rows = enc.index_select(&row_input, 0)?;
        let mask_rows = mask.index_select(&row_input, 0)?;

        let mut history: Vec<Vec<u32>> = vec![vec![cfg.decoder_start_token_id]; n];
        let new_tokens = ids(steps, n, 2, 40, 3);
        let mut worst = 0f32;
        for (step, fresh) in new_tokens.iter().enumerate() {
            let last: Vec<u32> = history.iter().map(|h| h[h.len() - 1]).collect();
            let lp = model.decode_step(&mut state, &Tensor::from_vec(last, n, &Device::Cpu)?)?;
            let logits = model.decode(&tensor2(&history)?, &enc_rows, &mask_rows, false)?;
            let full =
                candle_nn::ops::log_softmax(&logits.narrow(1, step, 1)?.squeeze(1)?, D::Minus1)?;
            worst = worst.max(max_abs_diff(&lp, &full)?);
            // Each beam continues a (rotated) beam of its own input.
            let src: Vec<usize> = (0..n)
                .map(|r| (r / beams) * beams + (r + step + 1) % beams)
                .collect();
            state.reorder(&src)?;
            history = (0..n)
                .map(|r| {
                    let mut h = history[src[r]].clone();
                    h.push(fresh[r]);
                    h
                })
                .collect();
        }
        assert_eq!(state.step(), steps);
        assert!(worst < 1e-5, "{ff}: incremental vs full {worst}");
    }
    Ok(())
}

#[test]
fn reorder_rejects_rows_of_another_input() -> anyhow::Result<()> {
    let cfg = small_config("relu", true);
    let (_vm, model) = build(&cfg)?;
    let input = tensor2(&ids(2, 4, 2, 40, 5))?;
    let mask = Tensor::ones((2, 4), DType::U32, &Device::Cpu)?;
    let enc = model.encode(&model.embed_tokens(&input)?, &mask, false)?;
    let mut state = model.start_decoding(&enc, &mask, 2)?;
    model.decode_step(&mut state, &Tensor::zeros(4, DType::U32, &Device::Cpu)?)?;
    assert!(state.reorder(&[1, 0, 3, 2]).is_ok());
    assert!(
        state.reorder(&[2, 0, 3, 2]).is_err(),
        "row 0 taken from input 1"
    );
    assert!(state.reorder(&[0, 1, 2]).is_err(), "wrong length");
    assert!(state.reorder(&[0, 1, 2, 4]).is_err(), "out of range");
    assert!(model
        .decode_step(&mut state, &Tensor::zeros(3, DType::U32, &Device::Cpu)?)
        .is_err());
    Ok(())
}

#[test]
fn padding_does_not_change_the_outputs_of_real_tokens() -> anyhow::Result<()> {
    let cfg = small_config("relu", true);
    let (_vm, model) = build(&cfg)?;
    let short = tensor2(&[vec![5, 6, 7, 1]])?;
    let padded = tensor2(&[vec![5, 6, 7, 1, 0, 0, 0]])?;
    let m_short = Tensor::ones((1, 4), DType::U32, &Device::Cpu)?;
    let m_padded = tensor2(&[vec![1, 1, 1, 1, 0, 0, 0]])?;
    let e_short = model.encode(&model.embed_tokens(&short)?, &m_short, false)?;
    let e_padded = model.encode(&model.embed_tokens(&padded)?, &m_padded, false)?;
    assert!(max_abs_diff(&e_short, &e_padded.narrow(1, 0, 4)?)? < 1e-5);
    let dec = tensor2(&[vec![0, 9, 10]])?;
    let l_short = model.decode(&dec, &e_short, &m_short, false)?;
    let l_padded = model.decode(&dec, &e_padded, &m_padded, false)?;
    assert!(max_abs_diff(&l_short, &l_padded)? < 1e-5);
    // Causality: a later decoder token leaves earlier logits unchanged.
    let dec2 = tensor2(&[vec![0, 9, 11]])?;
    let l2 = model.decode(&dec2, &e_short, &m_short, false)?;
    assert!(max_abs_diff(&l_short.narrow(1, 0, 2)?, &l2.narrow(1, 0, 2)?)? < 1e-6);
    assert!(max_abs_diff(&l_short.narrow(1, 2, 1)?, &l2.narrow(1, 2, 1)?)? > 1e-4);
    Ok(())
}

#[test]
fn grouped_rows_share_their_inputs_encoder_output() -> anyhow::Result<()> {
    let cfg = small_config("relu", true);
    let (_vm, model) = build(&cfg)?;
    let (b, t, group, s) = (2, 5, 3, 4);
    let input = tensor2(&ids(b, t, 2, 40, 8))?;
    let mask = tensor2(&[vec![1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0]])?;
    let whole = tensor2(&ids(b, t, 0, 8, 9))?;
    let enc = model.encode(&model.embed_input(&input, &whole)?, &mask, false)?;
    let dec = tensor2(&ids(b * group, s, 0, 40, 10))?;
    let rows: Vec<u32> = (0..(b * group) as u32).map(|r| r / group as u32).collect();
    let rows = Tensor::from_vec(rows, b * group, &Device::Cpu)?;
    let repeated = model.decode(
        &dec,
        &enc.index_select(&rows, 0)?,
        &mask.index_select(&rows, 0)?,
        false,
    )?;
    let grouped = model.decode(&dec, &enc, &mask, false)?;
    assert!(max_abs_diff(&grouped, &repeated)? < 1e-5);
    // Rows that are not a whole multiple of the inputs are refused.
    assert!(model
        .decode(&dec.narrow(0, 0, 5)?, &enc, &mask, false)
        .is_err());
    Ok(())
}

#[test]
fn projection_into_a_buffer_matches_project_to_vocab() -> anyhow::Result<()> {
    for tied in [true, false] {
        let cfg = small_config("relu", tied);
        let (_vm, model) = common::build_seeded(&cfg, 11)?;
        // A non-contiguous 3-D input: the rows are read through a transpose.
        let hidden =
            Tensor::randn(0f32, 1.0, (cfg.d_model, 5, 2), &Device::Cpu)?.permute((2, 1, 0))?;
        let want = model.project_to_vocab(&hidden)?.flatten_all()?;
        let mut out = vec![f32::NAN; 2 * 5 * cfg.vocab_size];
        model.project_to_vocab_into(&hidden, &mut out)?;
        let got = Tensor::from_vec(out, want.dims(), &Device::Cpu)?;
        let diff = max_abs_diff(&got, &want)?;
        assert!(diff < 1e-5, "tied {tied}: {diff}");
        let mut short = vec![0f32; 2 * 5 * cfg.vocab_size - 1];
        assert!(model.project_to_vocab_into(&hidden, &mut short).is_err());
    }
    Ok(())
}

#[test]
fn a_first_step_per_input_matches_one_per_beam() -> anyhow::Result<()> {
    let cfg = small_config("gated-gelu", false);
    let (_vm, model) = build(&cfg)?;
    let (b, t, beams) = (2, 6, 3);
    let input = tensor2(&ids(b, t, 2, 40, 12))?;
    let mask = tensor2(&[vec![1, 1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0, 0]])?;
    let enc = model.encode(&model.embed_tokens(&input)?, &mask, false)?;
    let starts = [cfg.decoder_start_token_id, 7];
    let mut per_beam = model.start_decoding(&enc, &mask, beams)?;
    let mut per_input = model.start_decoding(&enc, &mask, beams)?;
    let every_row: Vec<u32> = (0..b * beams).map(|r| starts[r / beams]).collect();
    let h_rows = model.decode_step_hidden(
        &mut per_beam,
        &Tensor::from_vec(every_row, b * beams, &Device::Cpu)?,
    )?;
    let h_inputs =
        model.decode_step_hidden(&mut per_input, &Tensor::new(&starts, &Device::Cpu)?)?;
    assert_eq!(h_inputs.dims(), &[b, cfg.d_model]);
    let first_beams = Tensor::new(&[0u32, 3], &Device::Cpu)?;
    assert!(max_abs_diff(&h_inputs, &h_rows.index_select(&first_beams, 0)?)? < 1e-6);
    // The copied cache serves every beam: later steps agree row by row.
    let src = [2, 0, 1, 3, 3, 4];
    per_beam.reorder(&src)?;
    per_input.reorder(&src)?;
    for step in 0..2 {
        let next = Tensor::from_vec(
            ids(1, b * beams, 2, 40, 13 + step)[0].clone(),
            b * beams,
            &Device::Cpu,
        )?;
        let a = model.decode_step(&mut per_beam, &next)?;
        let c = model.decode_step(&mut per_input, &next)?;
        assert!(max_abs_diff(&a, &c)? < 1e-6, "step {step}");
    }
    // One token per input is only accepted at the first step.
    assert!(model
        .decode_step(&mut per_input, &Tensor::new(&starts, &Device::Cpu)?)
        .is_err());
    Ok(())
}

#[test]
fn the_per_step_cache_matches_the_dense_cache() -> anyhow::Result<()> {
    // CPU f32 keeps the cache per step (reordering permutes indices); other dtypes and
    // devices concatenate and copy it. The same weights in f16 take the dense path
    // (hence the tolerance: f16 rounding reaches ~1e-2 here).
    let cfg = small_config("relu", true);
    let (varmap, model) = common::build_seeded(&cfg, 21)?;
    let wide_map = candle_nn::VarMap::new();
    let wide = peapod_t5_rec::T5ForRec::new(
        &cfg,
        candle_nn::VarBuilder::from_varmap(&wide_map, DType::F16, &Device::Cpu),
    )?;
    {
        let narrow = varmap.data().lock().expect("varmap");
        let wide_vars = wide_map.data().lock().expect("varmap");
        assert_eq!(narrow.len(), wide_vars.len());
        for (name, var) in narrow.iter() {
            wide_vars[name].set(&var.as_tensor().to_dtype(DType::F16)?)?;
        }
    }
    let (b, t, beams) = (2, 5, 3);
    let input = tensor2(&ids(b, t, 2, 40, 30))?;
    let mask = tensor2(&[vec![1, 1, 1, 1, 1], vec![1, 1, 0, 0, 0]])?;
    let mut states = Vec::new();
    for m in [&model, &wide] {
        let enc = m.encode(&m.embed_tokens(&input)?, &mask, false)?;
        states.push(m.start_decoding(&enc, &mask, beams)?);
    }
    let n = b * beams;
    // A per-input first step, then reorders that duplicate and drop beams.
    let mut last = Tensor::new(&[0u32, 0], &Device::Cpu)?;
    for step in 0..4 {
        let mut outs = Vec::new();
        for (m, state) in [&model, &wide].into_iter().zip(states.iter_mut()) {
            outs.push(m.decode_step(state, &last)?.to_dtype(DType::F32)?);
        }
        let diff = max_abs_diff(&outs[0], &outs[1])?;
        assert!(diff < 3e-2, "step {step}: {diff}");
        let src = [
            [0, 0, 1, 5, 3, 3],
            [2, 1, 1, 4, 5, 3],
            [1, 2, 0, 3, 3, 4],
            [0, 1, 2, 3, 4, 5],
        ][step];
        for state in states.iter_mut() {
            state.reorder(&src)?;
        }
        last = Tensor::from_vec(
            ids(1, n, 2, 40, 31 + step as u64)[0].clone(),
            n,
            &Device::Cpu,
        )?;
    }
    Ok(())
}

#[test]
fn packed_weights_decode_like_the_models_own_products() -> anyhow::Result<()> {
    for (ff, tied) in [("relu", true), ("gated-gelu", false)] {
        let cfg = small_config(ff, tied);
        let (_vm, model) = common::build_seeded(&cfg, 41)?;
        let (b, t, beams) = (2, 5, 3);
        let input = tensor2(&ids(b, t, 2, 40, 42))?;
        let mask = tensor2(&[vec![1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0]])?;
        let enc = model.encode(&model.embed_tokens(&input)?, &mask, false)?;
        let packed = model.pack_decoder()?.expect("CPU f32 models pack");
        let mut with = model.start_decoding_with(&enc, &mask, beams, Some(packed))?;
        let mut without = model.start_decoding_with(&enc, &mask, beams, None)?;
        let n = b * beams;
        let mut last = Tensor::new(&[0u32, 0], &Device::Cpu)?;
        for step in 0..3 {
            let h_with = model.decode_step_hidden(&mut with, &last)?;
            let h_without = model.decode_step_hidden(&mut without, &last)?;
            let diff = max_abs_diff(&h_with, &h_without)?;
            assert!(
                diff < 1e-5,
                "{ff}, step {step}: hidden states differ by {diff}"
            );
            // The packed vocabulary projection against the model's own.
            let rows = h_with.dim(0)?;
            let mut packed_logits = vec![f32::NAN; rows * cfg.vocab_size];
            model.project_step_into(&with, &h_with, &mut packed_logits)?;
            let own = model.project_to_vocab(&h_with)?;
            let packed_logits = Tensor::from_vec(packed_logits, own.dims(), &Device::Cpu)?;
            let diff = max_abs_diff(&packed_logits, &own)?;
            assert!(diff < 1e-5, "{ff}, step {step}: logits differ by {diff}");
            let mut short = vec![0f32; rows * cfg.vocab_size - 1];
            assert!(model.project_step_into(&with, &h_with, &mut short).is_err());
            let src = [[0, 0, 1, 5, 3, 3], [2, 1, 1, 4, 5, 3], [1, 2, 0, 3, 3, 4]][step];
            with.reorder(&src)?;
            without.reorder(&src)?;
            last = Tensor::from_vec(
                ids(1, n, 2, 40, 43 + step as u64)[0].clone(),
                n,
                &Device::Cpu,
            )?;
        }
    }
    // Weights packed from a model of other shapes are refused.
    let (_vm, model) = build(&small_config("relu", true))?;
    let (_vm2, other) = build(&small_config("gated-gelu", true))?;
    let input = tensor2(&ids(1, 3, 2, 40, 44))?;
    let mask = Tensor::ones((1, 3), DType::U32, &Device::Cpu)?;
    let enc = model.encode(&model.embed_tokens(&input)?, &mask, false)?;
    assert!(model
        .start_decoding_with(&enc, &mask, 2, other.pack_decoder()?)
        .is_err());
    Ok(())
}

#[test]
fn encoding_a_batch_matches_encoding_each_input_alone() -> anyhow::Result<()> {
    // Inference batches may be encoded in concurrent pieces on the CPU; each input must come out
    // as if encoded alone, whatever the number of pieces.
    let cfg = small_config("relu", true);
    let (_vm, model) = common::build_seeded(&cfg, 51)?;
    let (b, t) = (5, 6);
    let input = tensor2(&ids(b, t, 2, 40, 52))?;
    let mut mask_rows = vec![vec![1u32; t]; b];
    mask_rows[3][4..].iter_mut().for_each(|m| *m = 0);
    let mask = tensor2(&mask_rows)?;
    let embeds = model.embed_tokens(&input)?;
    for parts in [1, 2, 3, 9] {
        let batch = model.encode_in_parts(&embeds, &mask, parts)?;
        assert_eq!(batch.dims(), &[b, t, cfg.d_model]);
        for i in 0..b {
            let alone = model.encode(&embeds.narrow(0, i, 1)?, &mask.narrow(0, i, 1)?, false)?;
            let diff = max_abs_diff(&alone, &batch.narrow(0, i, 1)?)?;
            assert!(diff < 1e-5, "{parts} parts, input {i}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn live_hypotheses_of_varying_counts_match_full_decoding() -> anyhow::Result<()> {
    // A beam search's view: one live row per input at first, then different numbers of live
    // hypotheses per input, reshuffled between steps; each live row's logits must be those of
    // full decoding of its own history.
    let cfg = small_config("gated-gelu", false);
    let (_vm, model) = build(&cfg)?;
    let (b, t, beams) = (3, 5, 3);
    let input = tensor2(&ids(b, t, 2, 40, 61))?;
    let mask = tensor2(&[vec![1; 5], vec![1, 1, 1, 0, 0], vec![1, 1, 1, 1, 0]])?;
    let enc = model.encode(&model.embed_tokens(&input)?, &mask, false)?;
    let mut state = model.start_decoding(&enc, &mask, beams)?;
    let start = cfg.decoder_start_token_id;
    // (input, history) of every live row.
    let mut live: Vec<(usize, Vec<u32>)> = (0..b).map(|i| (i, vec![start])).collect();
    let reorders: [&[usize]; 2] = [&[0, 0, 1, 2, 2, 2], &[1, 3, 3, 4]];
    let vocab = cfg.vocab_size;
    let mut worst = 0f32;
    for step in 0..3 {
        assert_eq!(state.live_rows(), live.len());
        let last: Vec<u32> = live.iter().map(|(_, h)| h[h.len() - 1]).collect();
        let mut logits = vec![0f32; live.len() * vocab];
        model.decode_live_step(&mut state, &last, &mut logits)?;
        let got = Tensor::from_vec(logits, (live.len(), vocab), &Device::Cpu)?;
        for (r, (i, history)) in live.iter().enumerate() {
            let full = model.decode(
                &tensor2(std::slice::from_ref(history))?,
                &enc.narrow(0, *i, 1)?,
                &mask.narrow(0, *i, 1)?,
                false,
            )?;
            let want = full.narrow(1, history.len() - 1, 1)?.squeeze(1)?;
            worst = worst.max(max_abs_diff(&got.narrow(0, r, 1)?, &want)?);
        }
        if let Some(from) = reorders.get(step) {
            state.reorder_live(from)?;
            live = from
                .iter()
                .enumerate()
                .map(|(r, &src)| {
                    let (i, mut h) = live[src].clone();
                    h.push(2 + (7 * r + 3 * step) as u32 % 30);
                    (i, h)
                })
                .collect();
        }
    }
    assert!(worst < 1e-4, "live decoding vs full: {worst}");

    // Misuse is refused with the reason.
    let mut fresh = model.start_decoding(&enc, &mask, beams)?;
    let err = fresh.reorder_live(&[9]).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = fresh.reorder_live(&[1, 0]).unwrap_err().to_string();
    assert!(err.contains("ascending"), "{err}");
    let err = fresh.reorder_live(&[0, 0, 0, 0]).unwrap_err().to_string();
    assert!(err.contains("more than 3"), "{err}");
    let mut logits = vec![0f32; 2 * vocab];
    assert!(model
        .decode_live_step(&mut fresh, &[start, start], &mut logits)
        .is_err());
    Ok(())
}
