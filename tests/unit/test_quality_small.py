"""tools/quality/: splits, exclusion and metrics on tiny data with hand-checked answers (no servers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.quality import metrics, peers, served, splits


def arr(*v: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


# Rows in file order. User 0: items 0,1,2 at times 1,2,2 (a tie at the end: the later row wins);
# user 1: items 3,4 at times 5,3; user 2: one interaction only.
USER = arr(0, 0, 0, 1, 1, 2)
ITEM = arr(0, 1, 2, 3, 4, 0)
TS = np.asarray([1, 2, 2, 5, 3, 4], dtype=np.float64)


def test_leave_last_one_out_by_time_ties_in_file_order() -> None:
    s = splits.leave_last_one_out(USER, ITEM, TS)
    assert s.test_users.tolist() == [0, 1]
    assert [t.tolist() for t in s.test_items] == [[2], [3]]  # row 2 (tie, later in file); row 3 (time 5)
    assert s.train_rows.tolist() == [0, 1, 4, 5]  # user 2 (one interaction) trains only


def test_leave_last_one_out_of_a_subset_is_the_validation_carving() -> None:
    outer = splits.leave_last_one_out(USER, ITEM, TS)
    val = splits.leave_last_one_out(USER, ITEM, TS, rows=outer.train_rows)
    assert val.test_users.tolist() == [0]  # user 1 has one train row left, user 2 never had two
    assert [t.tolist() for t in val.test_items] == [[1]]
    assert val.train_rows.tolist() == [0, 4, 5]
    assert set(val.train_rows) <= set(outer.train_rows)


def test_a_test_item_also_in_train_is_dropped_and_so_is_a_user_left_without_one() -> None:
    user, item, ts = arr(0, 0, 0, 1, 1), arr(5, 6, 5, 7, 7), np.asarray([1, 2, 3, 1, 2], float)
    s = splits.leave_last_one_out(user, item, ts)
    assert s.test_users.size == 0 and s.test_items == []  # both users re-consumed a train item


def test_random_split_per_user_share_and_determinism() -> None:
    user = np.repeat(arr(0, 1, 2, 3), [10, 5, 2, 1])
    item = np.arange(user.size)
    train, test = splits.random_split(user, seed=7)
    counts = np.bincount(user[test], minlength=4).tolist()
    assert counts == [2, 1, 1, 0]  # 20 % of 10; round(1.0) of 5; >= 1 leaving >= 1 of 2; none of 1
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(user.size))
    again_train, again_test = splits.random_split(user, seed=7)
    assert sorted(test.tolist()) == sorted(again_test.tolist())
    other = splits.random_80_20(user, item, seed=8)
    assert other.test_users.tolist() == [0, 1, 2]
    assert splits.random_80_20(user, item, seed=7).test_users.tolist() == [0, 1, 2]


def test_global_time_split_newest_fifth_ties_in_file_order() -> None:
    # 10 rows; times 0..8 with a tie at 7 (rows 7 and 8): the newest 2 rows are rows 8 and 9.
    user = arr(0, 1, 0, 1, 0, 1, 0, 1, 2, 3)
    item = arr(0, 0, 1, 1, 2, 2, 3, 3, 0, 4)
    ts = np.asarray([0, 1, 2, 3, 4, 5, 6, 7, 7, 8], float)
    s = splits.global_time(user, item, ts)
    assert s.train_rows.tolist() == list(range(8))
    # rows 8 (user 2) and 9 (user 3) are test, but neither user has a train interaction
    assert s.test_users.size == 0
    ts2 = ts.copy()
    ts2[3] = 9.0  # user 1's item 1 is now the newest
    s2 = splits.global_time(user, item, ts2)
    assert s2.test_users.tolist() == [1] and [t.tolist() for t in s2.test_items] == [[1]]


def test_top_k_excludes_seen_breaks_ties_by_index_and_pads() -> None:
    scores = np.asarray([[0.5, 0.9, 0.9, 0.1], [1.0, 2.0, 3.0, 4.0]])
    seen = np.asarray([[False, True, False, False], [True, True, True, False]])
    top = metrics.top_k(scores, seen, k=3)
    assert top.tolist() == [[2, 0, 3], [3, -1, -1]]


def test_rank_metrics_by_hand() -> None:
    d = [1.0 / math.log2(r + 2) for r in range(10)]
    top = np.asarray(
        [
            [5, 1, 2, 3, 4, 6, 7, 8, 9, 10],  # user A: one test item {1}, hit at rank 2
            [0, 9, 2, 8, -1, -1, -1, -1, -1, -1],  # user B: test {0, 8, 30}: hits at ranks 1 and 4
            [11, 12, 13, 14, 15, 16, 17, 18, 19, 20],  # user C: no hit
        ]
    )
    tests = [arr(1), arr(0, 8, 30), arr(99)]
    m = metrics.rank_metrics(top, tests, n_items=100)
    assert m["users"] == 3
    assert m["hr@10"] == pytest.approx(2 / 3)
    ndcg_a = d[1] / d[0]
    ndcg_b = (d[0] + d[3]) / (d[0] + d[1] + d[2])
    assert m["ndcg@10"] == pytest.approx((ndcg_a + ndcg_b + 0) / 3)
    assert m["recall@10"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    listed = {5, 1, 2, 3, 4, 6, 7, 8, 9, 10, 0} | set(range(11, 21))
    assert m["coverage@10"] == pytest.approx(len(listed) / 100)


def test_recall_and_ndcg_cap_at_ten_test_items() -> None:
    top = np.arange(10)[None, :]
    m = metrics.rank_metrics(top, [np.arange(15)], n_items=20)  # 15 test items, all 10 slots hit
    assert m["recall@10"] == pytest.approx(1.0) and m["ndcg@10"] == pytest.approx(1.0)


def test_peers_on_a_tiny_matrix() -> None:
    # Users 0-2 all like items 0 and 1; user 3 likes only 0. Popularity and EASE both put item 1
    # first for user 3, whose own item 0 is excluded.
    user, item = arr(0, 0, 1, 1, 2, 2, 3), arr(0, 1, 0, 1, 0, 1, 0)
    x = peers.interaction_matrix(user, item, np.arange(user.size), 4, 4)
    pop = peers.score_top(x, arr(3), peers.popularity_scorer(x), k=2)
    assert pop.tolist() == [[1, 2]]  # then the lowest index among the zero-count items
    ease = peers.score_top(x, arr(3), peers.Ease(x).scorer(1.0), k=1)
    assert ease.tolist() == [[1]]


def test_served_ids_map_to_rows_and_goal_verdict() -> None:
    top, unknown = served.served_top([["b", "zz", "a"]], {"a": 0, "b": 1}, k=4)
    assert top.tolist() == [[1, -1, 0, -1]] and unknown == 1
    runs = [
        {
            "models": {
                "recgen": {m: 0.30 for m in metrics.METRICS},
                "implicit_als": {m: 0.25 for m in metrics.METRICS},
                "ease": {m: 0.32 for m in metrics.METRICS},
            }
        },
        {
            "models": {
                "recgen": {m: 0.32 for m in metrics.METRICS},
                "implicit_als": {m: 0.27 for m in metrics.METRICS},
                "ease": {m: 0.32 for m in metrics.METRICS},
            }
        },
    ]
    s = metrics.summarize(runs)
    assert s["recgen"]["ndcg@10"]["mean"] == pytest.approx(0.31)
    assert s["recgen"]["ndcg@10"]["sd"] == pytest.approx(math.sqrt(2) * 0.01)
    g = metrics.goal(s)
    assert g["target"] == "ease" and not g["met"] and g["gap"] == pytest.approx(-0.01)
