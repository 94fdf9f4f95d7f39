"""`peapod.Recommender` on the shipped checkpoint, and its lists scored from Python against
the Rust `evaluate` example on the same users."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import peapod

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shipped_file(data_root):
    return data_root / "checkpoints" / "beauty-tiny-peapod.safetensors"


@pytest.fixture(scope="module")
def shipped(shipped_file, data_root):
    return peapod.Recommender.load(shipped_file, data_root)


def test_the_shipped_checkpoint_recommends(shipped):
    beauty = shipped.dataset
    assert (shipped.variant, beauty.name) == ("peapod", "beauty") and shipped.step > 0
    assert "beauty" in repr(shipped)
    users = [1, 2, 3, 4]
    lists = shipped.recommend(users, k=10)
    assert [len(row) for row in lists] == [10] * 4
    assert all(0 <= item <= beauty.num_items for row in lists for item in row)
    assert shipped.recommend(users, k=10) == lists
    constrained = shipped.recommend(users, k=10, constrained=True)
    assert all(1 <= item <= beauty.num_items for row in constrained for item in row)
    candidates = beauty.candidates("test")
    for user, row in zip(users, shipped.rank_candidates(users)):
        assert sorted(row) == sorted(candidates[user - 1].tolist())
    given = [[5, 9, 40], [7, 1]]
    ranked = shipped.rank_candidates([1, 2], candidates=given)
    assert [sorted(row) for row in ranked] == [sorted(row) for row in given]
    assert [isinstance(text, str) for text in shipped.explain([1, 2], [5, 7])] == [True, True]
    alpha = shipped.component_weights(users)
    assert alpha.shape[0] == 4 and alpha.shape[1] >= 2
    assert (np.abs(alpha) <= 1 + 1e-6).all() and not np.allclose(alpha[0], alpha[1])


def test_bad_requests_raise(shipped, data_root, tmp_path):
    with pytest.raises(ValueError, match="user 0 is not in dataset beauty"):
        shipped.recommend([0])
    with pytest.raises(ValueError, match="2 users but 1 item lists"):
        shipped.rank_candidates([1, 2], candidates=[[3, 4]])
    with pytest.raises(ValueError, match="item 99999 \\(for user 1\\) is not an item"):
        shipped.rank_candidates([1], candidates=[[3, 99_999]])
    with pytest.raises(ValueError, match="num_return_sequences"):
        shipped.recommend([1], k=30)
    with pytest.raises(ValueError, match="neither a run directory nor a checkpoint"):
        peapod.Recommender.load(tmp_path / "missing", data_root)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(peapod.DataError, match="broken.safetensors"):
        peapod.Recommender.load(broken, data_root)


def test_its_lists_score_as_the_rust_evaluate_example_scores_them(
    shipped, shipped_file, data_root, tmp_path
):
    # A run directory with the shipped checkpoint and the MF model its user queries come from
    # (the seed's MF, written by evaluate's cache).
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(shipped_file, run / "last.safetensors")
    fresh = peapod.datasets.load(data_root, "beauty")
    n = 24
    users = [k * fresh.num_users // n + 1 for k in range(n)]  # `evaluate --users n`'s sample
    peapod.evaluate(fresh, "test", "sequential", [[1]] * n, users=users, mf_cache=run / "mf.safetensors")
    report = tmp_path / "report.json"
    evaluate = os.environ.get("PEAPOD_EVALUATE", ROOT / "target" / "release" / "examples" / "evaluate")
    subprocess.run(
        [
            str(evaluate),
            "--checkpoint", str(run),
            "--users", str(n),
            "--tasks", "sequential,topn",
            "--exact",
            "--no-sasrec",
            "--data-root", str(data_root),
            "--report", str(report),
        ],
        check=True,
        capture_output=True,
    )
    rust = json.loads(report.read_text())
    sequential = peapod.evaluate(
        shipped.dataset, "test", "sequential", shipped.recommend(users), users=users
    )
    topn = peapod.evaluate(shipped.dataset, "test", "topn", shipped.rank_candidates(users), users=users)
    assert sequential["model"] == rust["tasks"]["sequential"]["modes"]["beam"]
    assert topn["model"] == rust["tasks"]["topn"]["modes"]["exact"]
    for ranker in ("popularity", "id_order", "mf"):
        assert sequential[ranker] == rust["baselines"][ranker]["sequential"], ranker
        assert topn[ranker] == rust["baselines"][ranker]["topn"], ranker
