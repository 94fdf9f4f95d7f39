"""`peapod.evaluate`: rankers written here in Python, scored by the protocol, against the
figures `docs/baselines.md` and `data/checkpoints/README.md` publish for all beauty users."""

from collections import Counter

import numpy as np
import pytest

import peapod


def id_order_rule(dataset, split):
    """The ID-order rule as docs/baselines.md states it: after the largest id m of the visible
    history, m+1, m+2, ..., then 1, 2, ... (wrapping), skipping the history; the first 20."""
    n, lists = dataset.num_items, []
    for user in dataset.users():
        history = dataset.history(user, split)
        seen, item, ranked = set(history), max(history), []
        while len(ranked) < 20:
            item = item % n + 1
            if item not in seen:
                ranked.append(item)
        lists.append(ranked)
    return lists


def popularity_ranker(dataset, candidates):
    """Candidates by descending training popularity (every item but each user's last two),
    ties by ascending id."""
    counts = Counter(i for u in dataset.users() for i in dataset.sequence(u)[:-2])
    return [sorted(row.tolist(), key=lambda i: (-counts[i], i)) for row in candidates]


@pytest.fixture(scope="module")
def mf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mf") / "mf.safetensors"


def rounded(metrics):
    return {k: round(v, 4) for k, v in metrics.items()}


def test_a_python_id_order_rule_reproduces_the_published_sequential_row(beauty, mf_cache):
    lists = id_order_rule(beauty, "test")
    report = peapod.evaluate(beauty, "test", "sequential", lists, mf_cache=mf_cache)
    assert report["users"] == 22_363 and report["task"] == "sequential"
    assert report["model"] == report["id_order"]
    assert rounded(report["model"]) == {
        "hr@5": 0.0452,
        "ndcg@5": 0.0446,
        "hr@10": 0.0462,
        "ndcg@10": 0.0449,
    }
    # The same lists as a numpy array give the same figures.
    again = peapod.evaluate(beauty, "test", "sequential", np.array(lists), baselines=False)
    assert again["model"] == report["model"] and "mf" not in again


def test_popularity_id_order_and_mf_rows_on_the_test_candidates(beauty, mf_cache):
    candidates = beauty.candidates("test")
    report = peapod.evaluate(
        beauty, "test", "topn", popularity_ranker(beauty, candidates), mf_cache=mf_cache
    )
    assert report["model"] == report["popularity"]
    # The reports' popularity (interaction counts, ties by id), docs/baselines.md.
    assert rounded(report["popularity"]) == {
        "hr@1": 0.0523,
        "hr@5": 0.1724,
        "ndcg@5": 0.1117,
        "hr@10": 0.2878,
        "ndcg@10": 0.1488,
    }
    assert [round(report["id_order"][k], 4) for k in ("hr@1", "hr@5", "hr@10", "ndcg@10")] == [
        0.0936,
        0.2149,
        0.3293,
        0.1906,
    ]
    # MF (BPR, the paper's settings, seed 2022); published: HR@1 0.1485, HR@10 0.4376.
    assert report["mf"]["hr@1"] == pytest.approx(0.1485, abs=2e-3)
    assert report["mf"]["hr@10"] == pytest.approx(0.4376, abs=2e-3)
    assert mf_cache.exists()
    # The candidates in their shuffled order rank at chance (HR@10 = 10 / 100).
    chance = peapod.evaluate(beauty, "test", "topn", candidates, baselines=False)
    assert chance["model"]["hr@10"] == pytest.approx(0.1, abs=0.01)


def test_the_shipped_sasrec_checkpoint_reproduces_its_published_row(beauty, data_root):
    shipped = data_root / "checkpoints" / "sasrec-beauty.safetensors"
    lists = id_order_rule(beauty, "test")
    report = peapod.evaluate(beauty, "test", "sequential", lists, sasrec=shipped)
    assert rounded(report["sasrec"]) == {
        "hr@5": 0.0497,
        "ndcg@5": 0.0302,
        "hr@10": 0.0793,
        "ndcg@10": 0.0397,
    }


def test_a_user_sample_scores_its_rows_in_its_order(beauty):
    lists = id_order_rule(beauty, "validation")
    users = [22_363, 5, 1_000, 77]
    report = peapod.evaluate(
        beauty, "validation", "sequential", [lists[u - 1] for u in users], users=users
    )
    assert report["users"] == 4 and report["model"] == report["id_order"]
    targets = [beauty.target(u, "validation") for u in users]
    want = peapod.metrics.rank_metrics([lists[u - 1] for u in users], targets, cutoffs=[5, 10])
    assert report["model"] == want


def test_lists_outside_the_protocol_are_refused(beauty, data_root):
    candidates = beauty.candidates("test")
    lists = [row.tolist() for row in candidates[:3]]
    users = [1, 2, 3]
    with pytest.raises(ValueError, match="3 ranked lists for 22363 users"):
        peapod.evaluate(beauty, "test", "topn", lists, baselines=False)
    outside = next(i for i in range(1, 99) if i not in lists[1])
    bad = [lists[0], [outside] + lists[1][1:], lists[2]]
    with pytest.raises(ValueError, match=rf"rankings\[1\] \(user 2\): item {outside} at rank 1 is not among"):
        peapod.evaluate(beauty, "test", "topn", bad, users=users, baselines=False)
    # P5's test negatives repeat an item for some users: a list may repeat it as often.
    repeats = next(u for u in beauty.users() if len(set(candidates[u - 1].tolist())) < 100)
    row = candidates[repeats - 1].tolist()
    twice = next(i for i in row if row.count(i) > 1)
    peapod.evaluate(beauty, "test", "topn", [row], users=[repeats], baselines=False)
    with pytest.raises(ValueError, match=f"item {twice} at rank 101 appears more often"):
        peapod.evaluate(beauty, "test", "topn", [row + [twice]], users=[repeats], baselines=False)
    with pytest.raises(ValueError, match="appears twice in the list"):
        peapod.evaluate(beauty, "test", "sequential", [[5, 6, 5]], users=[1], baselines=False)
    with pytest.raises(ValueError, match="is not an item"):
        peapod.evaluate(beauty, "test", "sequential", [[12_102]], users=[1], baselines=False)
    with pytest.raises(ValueError, match="user 22364 is not in dataset beauty"):
        peapod.evaluate(beauty, "test", "sequential", [[1]], users=[22_364], baselines=False)
    with pytest.raises(ValueError, match="user 1 appears twice"):
        peapod.evaluate(beauty, "test", "sequential", [[1], [2]], users=[1, 1], baselines=False)
    with pytest.raises(ValueError, match="text_report"):
        peapod.evaluate(beauty, "test", "explanation", [[1]], users=[1])
    with pytest.raises(ValueError, match="not train"):
        peapod.evaluate(beauty, "train", "sequential", [[1]], users=[1])
    shuffled = peapod.datasets.load(data_root, "beauty", indexing="random")
    with pytest.raises(peapod.DataError, match="not a SASRec model trained on this dataset"):
        peapod.evaluate(
            shuffled,
            "test",
            "sequential",
            [[1]],
            users=[1],
            sasrec=data_root / "checkpoints" / "sasrec-beauty.safetensors",
        )
