"""Datasets, splits, candidates and indexings, checked against the shipped files."""

import numpy as np
import pytest

import peapod


def test_beauty_loads_with_p5s_counts(beauty):
    assert (beauty.name, beauty.num_users, beauty.num_items, len(beauty)) == (
        "beauty",
        22_363,
        12_101,
        22_363,
    )
    assert beauty.users()[:3] == [1, 2, 3]
    assert sum(len(beauty.sequence(u)) for u in beauty.users()) == 198_502
    assert "22363 users" in repr(beauty)


def test_histories_and_targets_are_leave_one_out(beauty):
    for user in (1, 77, 22_363):
        seq = beauty.sequence(user)
        assert beauty.target(user, "test") == seq[-1]
        assert beauty.target(user, "validation") == seq[-2]
        assert beauty.history(user, "test") == seq[:-1][-20:]
        assert beauty.history(user, "validation") == seq[:-2][-20:]


def test_test_candidates_are_the_target_among_p5s_negatives(beauty):
    candidates, negatives = beauty.candidates("test"), beauty.test_negatives()
    assert candidates.shape == (22_363, 100) and candidates.dtype == np.uint32
    assert negatives.shape == (22_363, 99)
    for user in (1, 500, 22_363):
        row = candidates[user - 1]
        target = beauty.target(user, "test")
        assert target in row
        assert sorted(set(row.tolist()) - {target}) == sorted(negatives[user - 1].tolist())
        assert not set(negatives[user - 1].tolist()) & set(beauty.sequence(user))
    # The seed shuffles the order only; validation negatives are drawn from it.
    again = beauty.candidates("test", seed=5)
    assert (np.sort(again, axis=1) == np.sort(candidates, axis=1)).all()
    assert (beauty.candidates("validation", seed=5) == beauty.candidates("validation", seed=5)).all()
    assert (beauty.candidates("validation", seed=5) != beauty.candidates("validation")).any()


def test_toys_negatives_are_the_published_file(toys, data_root):
    rows = [line.split() for line in (data_root / "toys" / "negative_samples.txt").open()]
    negatives = toys.test_negatives()
    assert negatives.shape == (len(rows), 99)
    for row in rows[:: len(rows) // 50]:
        user, items = int(row[0]), [int(x) for x in row[1:]]
        assert negatives[user - 1].tolist() == items


def test_random_indexing_renames_items_and_keeps_everything_else(beauty, data_root):
    shuffled = peapod.datasets.load(data_root, "beauty", indexing="random", seed=2022)
    assert "random" in shuffled.indexing and "sequential" in beauty.indexing
    moved = 0
    for user in (1, 2, 3000, 22_363):
        new, old = shuffled.sequence(user), beauty.sequence(user)
        assert [shuffled.p5_item(i) for i in new] == old
        assert [shuffled.item_from_p5(i) for i in old] == new
        assert [shuffled.item_key(i) for i in new] == [beauty.item_key(i) for i in old]
        moved += sum(a != b for a, b in zip(new, old))
        new_candidates = {shuffled.p5_item(int(i)) for i in shuffled.candidates()[user - 1]}
        assert new_candidates == set(beauty.candidates()[user - 1].tolist())
    assert moved > 0
    assert beauty.user_key(1) == shuffled.user_key(1) and beauty.user_key(1)


def test_bad_inputs_raise_with_file_line_and_reason(beauty, data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        peapod.datasets.load(data_root, "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sequential_data.txt").write_text("1 2 3 4 5 6\n2 7 x 9 10 11\n")
    with pytest.raises(peapod.DataError, match=r"sequential_data.txt:2"):
        peapod.datasets.load(tmp_path, "bad")
    with pytest.raises(ValueError, match="indexing"):
        peapod.datasets.load(data_root, "beauty", indexing="alphabetical")
    with pytest.raises(ValueError, match="user 0 is not in dataset beauty"):
        beauty.sequence(0)
    with pytest.raises(ValueError, match="item 12102 is not in dataset beauty"):
        beauty.item_key(12_102)
    with pytest.raises(ValueError, match="not train"):
        beauty.history(1, "train")
    with pytest.raises(ValueError, match="unknown split"):
        beauty.candidates("dev")
