"""The metrics against the reference scripts' formulas, written here in their own language."""

import math
import random
from collections import Counter

import numpy as np
import pytest

from peapod import metrics


def reference_ranking(lists, targets, ks):
    """P5/POD's evaluation: HR@k = target in the top k; nDCG@k = 1 / log2(rank + 1) (not
    reported at k = 1, where it equals HR@1)."""
    out = {}
    for k in ks:
        hits, gains = [], []
        for ranked, target in zip(lists, targets):
            top = list(ranked[:k])
            hits.append(1.0 if target in top else 0.0)
            gains.append(1.0 / math.log2(top.index(target) + 2) if target in top else 0.0)
        out[f"hr@{k}"] = sum(hits) / len(hits)
        if k > 1:
            out[f"ndcg@{k}"] = sum(gains) / len(gains)
    return out


def reference_bleu(references, candidates, max_order=4, smooth=False):
    """`compute_bleu` (one reference per candidate) x100, as POD's bleu.py returns it."""
    matches, possible = [0] * max_order, [0] * max_order
    ref_len = cand_len = 0
    for r, c in zip(references, candidates):
        r, c = r.split(), c.split()
        ref_len, cand_len = ref_len + len(r), cand_len + len(c)
        grams = lambda t: Counter(
            tuple(t[i : i + n]) for n in range(1, max_order + 1) for i in range(len(t) - n + 1)
        )
        overlap = grams(r) & grams(c)
        for gram, count in overlap.items():
            matches[len(gram) - 1] += count
        for n in range(1, max_order + 1):
            possible[n - 1] += max(len(c) - n + 1, 0)
    if smooth:
        precisions = [(m + 1.0) / (p + 1.0) for m, p in zip(matches, possible)]
    else:
        precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    geo = math.exp(sum(math.log(p) / max_order for p in precisions)) if min(precisions) > 0 else 0
    ratio = cand_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo * bp * 100


def reference_rouge(references, candidates):
    """POD's rouge.py: ROUGE-1/2 on n-gram sets, ROUGE-L on the LCS, averaged, x100."""
    sums = {name: [0.0, 0.0, 0.0] for name in ("rouge_1", "rouge_2", "rouge_l")}
    for r, c in zip(references, candidates):
        rw, cw = " ".join(r.split()).split(" "), " ".join(c.split()).split(" ")
        for n in (1, 2):
            es = {tuple(cw[i : i + n]) for i in range(len(cw) - n + 1)}
            rs = {tuple(rw[i : i + n]) for i in range(len(rw) - n + 1)}
            overlap = len(es & rs)
            p = overlap / len(es) if es else 0.0
            rr = overlap / len(rs) if rs else 0.0
            f = 2.0 * ((p * rr) / (p + rr + 1e-8))
            for k, v in enumerate((f, p, rr)):
                sums[f"rouge_{n}"][k] += v
        table = [[0] * (len(rw) + 1) for _ in range(len(cw) + 1)]
        for i in range(1, len(cw) + 1):
            for j in range(1, len(rw) + 1):
                table[i][j] = (
                    table[i - 1][j - 1] + 1
                    if cw[i - 1] == rw[j - 1]
                    else max(table[i - 1][j], table[i][j - 1])
                )
        lcs = table[len(cw)][len(rw)]
        rl, pl = lcs / len(rw), lcs / len(cw)
        beta = pl / (rl + 1e-12)
        f = ((1 + beta**2) * rl * pl) / (rl + beta**2 * pl + 1e-12)
        for k, v in enumerate((f, pl, rl)):
            sums["rouge_l"][k] += v
    n = len(references)
    keys = ("f_score", "p_score", "r_score")
    return {name: {key: s / n * 100 for key, s in zip(keys, row)} for name, row in sums.items()}


WORDS = ["the", "a", "good", "great", "price", "fit", "is"]


def corpus(rng, pairs):
    sentence = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
    return [sentence() for _ in range(pairs)], [sentence() for _ in range(pairs)]


def test_single_lists():
    assert metrics.hit_ratio_at([5, 12, 7], 12, 1) == 0.0
    assert metrics.hit_ratio_at([5, 12, 7], 12, 5) == 1.0
    assert metrics.ndcg_at([5, 12, 7], 12, 5) == pytest.approx(1 / math.log2(3), abs=1e-15)
    assert metrics.ndcg_at([5, 12, 7], 99, 5) == 0.0


def test_rank_metrics_match_the_reference_formulas_for_every_input_form():
    rng = random.Random(7)
    lists = [rng.sample(range(1, 40), 12) for _ in range(300)]
    targets = [rng.choice(row) if rng.random() < 0.6 else 40 + u for u, row in enumerate(lists)]
    want = reference_ranking(lists, targets, (1, 5, 10))
    got = metrics.rank_metrics(lists, targets)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    for dtype in (np.int64, np.int32, np.uint32, np.uint64):
        assert metrics.rank_metrics(np.array(lists, dtype=dtype), targets) == got
    assert metrics.rank_metrics(np.array(lists)[:, ::2], targets, cutoffs=[3]) == pytest.approx(
        reference_ranking([row[::2] for row in lists], targets, (3,)), abs=1e-12
    )


def test_text_metrics_match_the_reference_scripts():
    rng = random.Random(11)
    for _ in range(5):
        refs, cands = corpus(rng, 60)
        for n in (1, 2, 4):
            for smoothing, smooth in (("none", False), ("add-one", True)):
                assert metrics.bleu(refs, cands, n, smoothing) == pytest.approx(
                    reference_bleu(refs, cands, n, smooth), abs=1e-9
                )
        want = reference_rouge(refs, cands)
        got = metrics.rouge(refs, cands)
        for name in want:
            for key in want[name]:
                assert got[name][key] == pytest.approx(want[name][key], abs=1e-9)
        report = metrics.text_report(refs, cands)
        assert report["bleu_4"] == metrics.bleu(refs, cands, 4)
        assert report["rouge_l/f_score"] == got["rouge_l"]["f_score"]
        assert 0 < report["usr"] <= 1 and 0 < report["distinct_2"] <= 1


def test_bad_inputs_raise_with_the_reason():
    with pytest.raises(ValueError, match="cut-off"):
        metrics.hit_ratio_at([1, 2], 1, 0)
    with pytest.raises(ValueError, match="2 references but 1 candidates"):
        metrics.bleu(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="smoothing"):
        metrics.bleu(["a"], ["a"], 1, "laplace")
    with pytest.raises(ValueError, match="2 ranked lists but 1 targets"):
        metrics.rank_metrics([[1], [2]], [1])
    with pytest.raises(ValueError, match=r"rankings\[0\]\[1\] is -1"):
        metrics.rank_metrics(np.array([[3, -1]]), [3])
    with pytest.raises(TypeError, match="integer"):
        metrics.rank_metrics(np.array([[1.0, 2.0]]), [1])
