#!/usr/bin/env python3
"""Regenerates the AdamW parity fixture of the root crate (tests/fixtures/adamw_parity.json).

On the `relu_tied` model of the T5 parity fixture (scripts/t5_parity.py) and its padded batch,
with dropout 0: the loss and the global gradient norm at every one of 30 steps of
`torch.optim.AdamW` (lr 1e-3, weight decay 0.01, betas 0.9 / 0.999, eps 1e-8) with the gradients
clipped to a global norm of 1.0 (`clip_grad_norm_`), in f32 as training runs, and the same
losses in f64 for reference. tests/adamw_parity.rs must match the f32 losses and norms within
1e-4 relative at every step.

    pip install torch "transformers==4.57.1" safetensors
    python scripts/adamw_parity.py
"""

import json
import os

import torch
from safetensors.torch import load_file
from transformers import T5Config, T5ForConditionalGeneration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(ROOT, "crates", "t5-rec", "tests", "fixtures")
OUT = os.path.join(ROOT, "tests", "fixtures", "adamw_parity.json")
STEPS = 30
LR, WEIGHT_DECAY, MAX_NORM = 1e-3, 0.01, 1.0


def run(dtype):
    with open(os.path.join(PARITY, "relu_tied.config.json")) as f:
        config = json.load(f)
    config["dropout_rate"] = 0.0
    known = set(T5Config().to_dict())
    cfg = T5Config(**{k: v for k, v in config.items() if k in known})
    model = T5ForConditionalGeneration(cfg)
    weights = load_file(os.path.join(PARITY, "relu_tied.safetensors"))
    weights.pop("whole_word_embeddings.weight")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all("embed_tokens" in m or m == "lm_head.weight" for m in missing), missing
    model = model.to(dtype).train()
    with open(os.path.join(PARITY, "hf_parity.json")) as f:
        case = json.load(f)["cases"]["relu_tied"]
    input_ids = torch.tensor(case["input_ids"])
    attention_mask = torch.tensor(case["attention_mask"])
    labels = torch.tensor(case["labels"])
    labels = labels.masked_fill(torch.tensor(case["label_mask"]) == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=1e-8)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        losses.append(float(loss.detach()))
        norms.append(float(norm))
        opt.step()
    return losses, norms


def main():
    torch.set_num_threads(1)
    losses, norms = run(torch.float32)
    losses64, norms64 = run(torch.float64)
    import transformers

    fixture = {
        "generator": "scripts/adamw_parity.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "relu_tied (crates/t5-rec/tests/fixtures), dropout 0",
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "max_grad_norm": MAX_NORM,
        "losses": losses,
        "grad_norms": norms,
        "losses_f64": losses64,
        "grad_norms_f64": norms64,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)


if __name__ == "__main__":
    main()
