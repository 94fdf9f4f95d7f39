#!/usr/bin/env python3
"""Regenerates the Hugging Face parity fixture of `peapod-t5-rec`.

Builds two seeded random tiny T5 models with `transformers` (one T5 v1 style: relu, tied
embeddings; one T5 v1.1 style: gated-gelu, untied head, 3+2 layers), saves their weights as
safetensors (f32, plus a random whole-word embedding table under our name), runs a padded batch
through them and writes the expected values as JSON. The Rust tests
(crates/t5-rec/tests/hf_parity.rs) load the same weights and must match within 1e-4.

    pip install torch transformers safetensors numpy
    python scripts/t5_parity.py            # writes crates/t5-rec/tests/fixtures/
"""

import json
import os

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "t5-rec", "tests", "fixtures")

NUM_WHOLE_WORDS = 16
GREEDY_STEPS = 6


def rounded(t):
    return [float("%.8g" % x) for x in t.detach().double().flatten().tolist()]


def build(name, seed, untie=False, **overrides):
    torch.manual_seed(seed)
    params = dict(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        # Few buckets and a short max distance so that short inputs reach the log-spaced and
        # the clamped buckets.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="relu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    params.update(overrides)
    cfg = T5Config(**params)
    model = T5ForConditionalGeneration(cfg).eval()
    if untie:
        # transformers 5 always ties the head and only drops the d^-0.5 output scaling for
        # "untied" (T5 v1.1) configs; give the head its own weights, as T5 v1.1 checkpoints
        # have them (and transformers 4 modelled them).
        cfg.scale_decoder_outputs = False
        model.lm_head.weight = torch.nn.Parameter(
            torch.randn(cfg.vocab_size, cfg.d_model) * cfg.d_model**-0.5
        )
    with torch.no_grad():
        # Layer norms start at 1: perturb them so that the test sees their weights.
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    whole_words = torch.randn(NUM_WHOLE_WORDS, cfg.d_model)

    tensors = {}
    for pname, p in model.state_dict().items():
        # Tied copies share storage: keep `shared.weight` only (our loader accepts aliases).
        if pname in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue
        if pname == "lm_head.weight" and not untie:
            continue
        tensors[pname] = p.detach().float().contiguous().clone()
    tensors["whole_word_embeddings.weight"] = whole_words.contiguous()
    save_file(tensors, os.path.join(OUT, f"{name}.safetensors"))

    config = cfg.to_dict()
    config["num_whole_word_embeddings"] = NUM_WHOLE_WORDS
    config["tie_word_embeddings"] = not untie
    with open(os.path.join(OUT, f"{name}.config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True, default=str)

    # A padded batch: 3 inputs of 9, 6 and 4 tokens; targets of 5, 3 and 2 tokens.
    lengths, target_lengths = [9, 6, 4], [5, 3, 2]
    b, t, s = 3, max(lengths), max(target_lengths)
    input_ids = torch.randint(2, cfg.vocab_size, (b, t))
    whole_word_ids = torch.randint(0, NUM_WHOLE_WORDS, (b, t))
    attention_mask = torch.zeros(b, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        input_ids[i, n - 1] = cfg.eos_token_id
        input_ids[i, n:] = cfg.pad_token_id
        whole_word_ids[i, n - 1:] = 0
        attention_mask[i, :n] = 1
    labels = torch.randint(2, cfg.vocab_size, (b, s))
    label_mask = torch.zeros(b, s, dtype=torch.long)
    for i, n in enumerate(target_lengths):
        labels[i, n - 1] = cfg.eos_token_id
        labels[i, n:] = cfg.pad_token_id
        label_mask[i, :n] = 1
    hf_labels = labels.masked_fill(label_mask == 0, -100)
    extra = torch.randn(b, 1, cfg.d_model)

    case = {
        "config_file": f"{name}.config.json",
        "weights_file": f"{name}.safetensors",
        "input_ids": input_ids.tolist(),
        "whole_word_ids": whole_word_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "labels": labels.tolist(),
        "label_mask": label_mask.tolist(),
        "extra_vector": rounded(extra),
    }
    assert untie == (model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr())
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=hf_labels)
        case["ids"] = {
            "encoder": rounded(out.encoder_last_hidden_state),
            "logits": rounded(out.logits),
            "loss": float(out.loss),
        }
        embeds = model.shared(input_ids) + whole_words[whole_word_ids]
        embeds = torch.cat([extra, embeds], dim=1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.long), attention_mask], dim=1)
        out = model(inputs_embeds=embeds, attention_mask=mask, labels=hf_labels)
        case["embeds"] = {
            "encoder": rounded(out.encoder_last_hidden_state),
            "logits": rounded(out.logits),
            "loss": float(out.loss),
        }
        # Greedy decoding by full re-decoding each step (no cache, no early stop).
        enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask)
        dec = torch.full((b, 1), cfg.decoder_start_token_id, dtype=torch.long)
        log_probs = []
        for _ in range(GREEDY_STEPS):
            logits = model(
                encoder_outputs=enc, attention_mask=attention_mask, decoder_input_ids=dec
            ).logits[:, -1, :]
            lp = torch.log_softmax(logits, dim=-1)
            log_probs.append(lp)
            dec = torch.cat([dec, lp.argmax(-1, keepdim=True)], dim=1)
        case["greedy_tokens"] = dec[:, 1:].tolist()
        case["greedy_log_probs"] = rounded(torch.stack(log_probs, dim=1))
    return case


def buckets():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    return {
        "relative_positions": [-300, 300],
        "num_buckets": 32,
        "max_distance": 128,
        "bidirectional": T5Attention._relative_position_bucket(rel, True, 32, 128)[0].tolist(),
        "causal": T5Attention._relative_position_bucket(rel, False, 32, 128)[0].tolist(),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    fixture = {
        "generator": "scripts/t5_parity.py",
        "torch": torch.__version__,
        "cases": {
            "relu_tied": build("relu_tied", 0),
            "gated_untied": build(
                "gated_untied",
                1,
                untie=True,
                feed_forward_proj="gated-gelu",
                num_layers=3,
            ),
        },
        "buckets": buckets(),
    }
    import transformers

    fixture["transformers"] = transformers.__version__
    with open(os.path.join(OUT, "hf_parity.json"), "w") as f:
        json.dump(fixture, f)


if __name__ == "__main__":
    main()
