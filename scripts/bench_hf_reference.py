#!/usr/bin/env python3
"""The PyTorch + Hugging Face side of our CPU benchmarks, measured in the same sitting.

Timings on shared machines drift by tens of percent from hour to hour, so a speed ratio only
means something when both sides run back to back. This script times what `bench_t5` and
`bench_decode` time, the way a user of transformers would run it, and prints JSON lines with
the same fields:

- a training step (forward + backward + AdamW, lr 5e-4, dropout 0.1), batch 64 (`--batch`), full-length
  inputs, random-init weights;
- beam search with `generate`: batch 32, 20 beams, 20 returned sequences, 40-token inputs, up
  to 10 new tokens (`max_new_tokens=10`, which is our `max_length 11`; `shared/bench`'s
  figures used `max_length=10`, one token fewer), HF's defaults otherwise, as in our
  benchmark. (Adding `min_new_tokens` makes `generate` itself ~1.6× slower: not used.)

The figures in `shared/bench/REFERENCE_CPU.md` came from transformers 4.57; transformers 5.x
decoded ~1.2× slower on this CPU in a like-for-like run, so pin the version you compare against:

    pip install torch "transformers==4.57.1"
    python scripts/bench_hf_reference.py --config tiny --what train decode

`--device cuda` times the same jobs on a GPU (synchronised before each clock read), for
comparison with `bench_t5 --device cuda` / `bench_decode --device cuda`.
"""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import T5Config, T5ForConditionalGeneration

CONFIGS = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                     num_heads=8),
    "tiny": dict(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_decoder_layers=2,
                 num_heads=4),
}


DEVICE = torch.device("cpu")


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def model_for(name, seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=32128, feed_forward_proj="relu", dropout_rate=0.1,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **CONFIGS[name])
    return T5ForConditionalGeneration(cfg).to(DEVICE)


def random_ids(rows, cols, gen):
    # Ids 2.. so that no input holds pad or EOS.
    return torch.randint(2, 32128, (rows, cols), generator=gen).to(DEVICE)


def bench_train(name, input_len, target_len, steps, warmup, batch=64):
    model = model_for(name).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(1)
    times = []
    for i in range(warmup + steps):
        x = random_ids(batch, input_len, gen)
        y = random_ids(batch, target_len, gen)
        sync()
        t = time.perf_counter()
        loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"side": "pytorch", "transformers": transformers.__version__,
            "device": str(DEVICE), "what": "train",
            "config": name, "batch": batch,
            "input_len": input_len, "target_len": target_len,
            "median_s_per_step": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times]}


@torch.no_grad()
def bench_decode(name, repeats, warmup):
    model = model_for(name).eval()
    gen = torch.Generator().manual_seed(2)
    times = []
    for i in range(warmup + repeats):
        x = random_ids(32, 40, gen)
        sync()
        t = time.perf_counter()
        model.generate(input_ids=x, attention_mask=torch.ones_like(x), num_beams=20,
                       num_return_sequences=20, max_new_tokens=10, do_sample=False)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"side": "pytorch", "transformers": transformers.__version__,
            "device": str(DEVICE), "what": "decode",
            "config": name, "batch": 32, "beams": 20,
            "input_len": 40, "new_tokens": 10,
            "seconds_per_batch": round(statistics.median(times), 4),
            "times_s": [round(t, 4) for t in times]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), action="append")
    p.add_argument("--what", nargs="+", choices=["train", "decode"], default=["train", "decode"])
    p.add_argument("--case", action="append", help="training shape INxOUT (default 40x6)")
    p.add_argument("--batch", type=int, default=64, help="examples per training step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    for name in args.config or ["tiny", "t5-small"]:
        if "train" in args.what:
            for case in args.case or ["40x6"]:
                n_in, n_out = (int(v) for v in case.split("x"))
                print(json.dumps(bench_train(name, n_in, n_out, args.repeats, args.warmup,
                                             args.batch)),
                      flush=True)
        if "decode" in args.what:
            print(json.dumps(bench_decode(name, args.repeats, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
