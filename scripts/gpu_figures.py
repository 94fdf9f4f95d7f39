#!/usr/bin/env python3
"""Collects one gpu_check.sh run's figures, ours and PyTorch's, into one JSON file.

Reads the JSON lines the run printed (check_device, bench_t5, bench_decode and
scripts/bench_hf_reference.py all print one JSON object per measurement) from its log, pairs
each of our timings with PyTorch's for the same job, and writes

    {"gpu": ..., "commit": ..., "date": ..., "command": ...,
     "parity": [check_device lines], "compare": [{job, ours_s, pytorch_s, ours_over_pytorch}],
     "ours": [our lines], "pytorch": [PyTorch's lines]}

Usage: python3 scripts/gpu_figures.py LOG OUT.json [--gpu NAME] [--commit SHA] [--command CMD]
A Markdown table of the comparison goes to stdout (for docs/gpu.md). Standard library only.
"""

import argparse
import datetime
import json
import subprocess
import sys


def json_lines(path):
    """Every line of `path` that is a JSON object."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def job_of(line):
    """The job a timing line measured, as a key shared by both sides, or None."""
    config = line.get("config")
    if "median_s_per_step" in line:
        return ("train", config, line.get("input_len"), line.get("target_len"))
    if "seconds_per_batch" in line and line.get("batch") == 32 and line.get("beams") == 20:
        return ("decode", config, None, None)
    return None


def seconds_of(line):
    return line.get("median_s_per_step", line.get("seconds_per_batch"))


def describe(job):
    what, config, t_in, t_out = job
    if what == "train":
        return f"train {config}, batch 64, {t_in} -> {t_out}"
    return f"20-beam decoding {config}, batch 32"


def collect(lines):
    parity = [l for l in lines if "encoder_rel_diff" in l]
    pytorch = [l for l in lines if l.get("side") == "pytorch"]
    ours = [l for l in lines if l.get("side") != "pytorch" and job_of(l) is not None]
    # Our lines on the CPU (decoding's --compare-cpu aside) are not GPU figures.
    ours = [l for l in ours if str(l.get("device", "")).lower() not in ("cpu",)]
    theirs = {job_of(l): l for l in pytorch if job_of(l) is not None}
    compare = []
    for line in ours:
        job = job_of(line)
        mine = seconds_of(line)
        row = {"job": describe(job), "ours_s": mine}
        other = theirs.get(job)
        if other is not None:
            row["pytorch_s"] = seconds_of(other)
            if mine and row["pytorch_s"]:
                row["ours_over_pytorch"] = round(mine / row["pytorch_s"], 3)
        compare.append(row)
    return parity, compare, ours, pytorch


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             check=True).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.CalledProcessError):
        return None


def markdown(compare):
    rows = ["| job | ours (s) | PyTorch (s) | ours / PyTorch |", "|---|---|---|---|"]
    for r in compare:
        pt = r.get("pytorch_s")
        ratio = r.get("ours_over_pytorch")
        rows.append(f"| {r['job']} | {r['ours_s']:.3f} | "
                    f"{'—' if pt is None else f'{pt:.3f}'} | "
                    f"{'—' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log")
    p.add_argument("out")
    p.add_argument("--gpu", help="the GPU's name (default: nvidia-smi's)")
    p.add_argument("--commit", help="the commit measured (default: git rev-parse HEAD)")
    p.add_argument("--command", default="bash scripts/gpu_check.sh")
    args = p.parse_args()
    parity, compare, ours, pytorch = collect(json_lines(args.log))
    if not compare and not parity:
        sys.exit(f"{args.log}: no figures found (no JSON lines of check_device, bench_t5, "
                 "bench_decode or bench_hf_reference.py)")
    doc = {
        "gpu": args.gpu or gpu_name(),
        "commit": args.commit or git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": args.command,
        "parity": parity,
        "compare": compare,
        "ours": ours,
        "pytorch": pytorch,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(markdown(compare))


if __name__ == "__main__":
    main()
