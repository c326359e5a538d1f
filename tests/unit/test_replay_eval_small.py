"""The replay evaluation's split, sampling, metrics and state loading on a toy dataset.

No server and no model here: the replay itself runs in `make eval`. These pin
down the bookkeeping the reported numbers rest on. No timing assertions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export.data import CleaningReport, Dataset
from recgen.repository import CatalogItem
from server.state import Conflict, Event, open_store
from tools.replay_eval.metrics import (
    ArmStats,
    MetricContext,
    bootstrap_lift,
    hit_and_ndcg,
    intra_list_diversity,
    lift,
    novelty,
    popularity_share,
    unit_rows,
)
from tools.replay_eval.report import summarize, table, users_better
from tools.replay_eval.split import by_user, past_dataset, sample_future, time_split, user_groups
from tools.replay_eval.state import load_state, rfc3339


def toy(rows: list[tuple[str, int, float, float]], n_items: int = 6) -> Dataset:
    """(user, item index, rating, timestamp) rows in file order."""
    users = list(dict.fromkeys(r[0] for r in rows))
    return Dataset(
        items=[CatalogItem(item_id=f"i{i}", title=f"Item {i}") for i in range(n_items)],
        users=users,
        user=np.asarray([users.index(r[0]) for r in rows], dtype=np.int32),
        item=np.asarray([r[1] for r in rows], dtype=np.int32),
        rating=np.asarray([r[2] for r in rows], dtype=np.float32),
        timestamp=np.asarray([r[3] for r in rows], dtype=np.float64),
        source="toy",
        fingerprint="0" * 64,
        report=CleaningReport(),
    )


# Users a and b act early and late; c only late (new in the future); d only early.
ROWS = [
    ("a", 0, 5.0, 100.0),
    ("b", 1, 4.0, 110.0),
    ("d", 2, 3.0, 120.0),
    ("a", 1, 4.0, 130.0),
    ("c", 0, 5.0, 300.0),  # file position 4, but late in time
    ("b", 2, 2.0, 140.0),
    ("a", 3, 5.0, 200.0),
    ("c", 4, 4.0, 200.0),  # ties with the row before it: file order decides
    ("b", 5, 1.0, 210.0),
    ("a", 5, 3.0, 220.0),
]


def test_time_split_is_global_and_keeps_ties_in_file_order() -> None:
    ds = toy(ROWS)
    split = time_split(ds, 0.4)
    assert split.past.tolist() == [0, 1, 2, 3, 5, 6]
    assert split.future.tolist() == [7, 8, 9, 4]  # by time; row 7 (t=200) after row 6 (t=200)
    assert split.cut_time == 200.0
    assert max(ds.timestamp[split.past]) <= min(ds.timestamp[split.future])
    assert {ds.users[u] for u in split.known_users} == {"a", "b", "d"}
    with pytest.raises(ValueError):
        time_split(ds, 1.0)


def test_past_dataset_reindexes_users_and_keeps_the_whole_catalog() -> None:
    ds = toy(ROWS)
    split = time_split(ds, 0.4)
    past = past_dataset(ds, split.past)
    assert len(past) == 6 and past.n_items == ds.n_items
    assert past.users == ["a", "b", "d"]  # c has no past: not a training user
    assert [past.users[u] for u in past.user] == ["a", "b", "d", "a", "b", "a"]
    assert past.item.tolist() == [0, 1, 2, 1, 2, 3]
    assert past.timestamp.max() <= split.cut_time
    assert past.fingerprint != ds.fingerprint


def test_by_user_keeps_each_users_time_order() -> None:
    ds = toy(ROWS)
    split = time_split(ds, 0.4)
    groups = by_user(ds, split.future)
    assert {ds.users[u]: rs.tolist() for u, rs in groups.items()} == {"c": [7, 4], "b": [8], "a": [9]}


def test_sample_future_takes_whole_users_from_both_groups() -> None:
    # 20 known users with 3 future events each, 20 new users with 2 each.
    rows = [(f"k{u}", 0, 4.0, 1.0) for u in range(20)]
    rows += [(f"k{u}", 1 + j, 4.0, 10.0 + j) for u in range(20) for j in range(3)]
    rows += [(f"n{u}", 1 + j, 4.0, 10.0 + j) for u in range(20) for j in range(2)]
    ds = toy(rows)
    split = time_split(ds, 100 / len(rows))
    assert len(split.future) == 100
    sample = sample_future(ds, split, 40, seed=1)
    assert 0 < len(sample) <= 40
    assert set(sample.tolist()) <= set(split.future.tolist())
    users = ds.user[sample]
    for u in set(users.tolist()):  # a sampled user comes with all of his future events
        assert (users == u).sum() == (ds.user[split.future] == u).sum()
    names = {ds.users[u][0] for u in users.tolist()}
    assert names == {"k", "n"}
    order = [int(np.flatnonzero(split.future == r)[0]) for r in sample]
    assert order == sorted(order)  # still in time order
    assert sample_future(ds, split, 40, seed=1).tolist() == sample.tolist()  # reproducible
    assert sample_future(ds, split, None, seed=1) is split.future


def test_hit_and_ndcg() -> None:
    assert hit_and_ndcg(["x", "y", "z"], "x") == (1.0, 1.0)
    hit, ndcg = hit_and_ndcg(["x", "y", "z"], "z")
    assert hit == 1.0 and ndcg == pytest.approx(1 / math.log2(4))
    assert hit_and_ndcg(["x"] * 10 + ["t"], "t") == (0.0, 0.0)  # rank 11 is outside the top 10
    assert hit_and_ndcg([], "t") == (0.0, 0.0)


def test_novelty_and_share() -> None:
    share = popularity_share(np.array([4, 2, 1, 0]), 4)
    assert share.tolist() == [1.0, 0.5, 0.25, 0.25]  # never rated counts as rated once
    assert novelty(np.array([0, 1]), share) == pytest.approx(0.5)
    assert novelty(np.array([2, 3]), share) == pytest.approx(2.0)
    assert novelty(np.array([], dtype=np.int64), share) == 0.0


def test_intra_list_diversity() -> None:
    f = unit_rows(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0]]))
    assert intra_list_diversity(np.array([0, 1]), f) == pytest.approx(0.0)  # same direction
    assert intra_list_diversity(np.array([0, 2]), f) == pytest.approx(1.0)  # orthogonal
    assert intra_list_diversity(np.array([0, 3]), f) == pytest.approx(2.0)  # opposite
    assert intra_list_diversity(np.array([0, 1, 2]), f) == pytest.approx(2 / 3)
    assert intra_list_diversity(np.array([0]), f) == 0.0
    assert np.isfinite(f).all()  # a zero vector does not divide by zero


def test_user_groups() -> None:
    assert user_groups(0) == ["new"]
    assert user_groups(5) == ["known"]
    assert user_groups(20) == ["known", "known_20plus"]


def test_lift_bootstrap_and_user_counts() -> None:
    assert lift(0.2, 0.1) == pytest.approx(1.0)
    assert lift(0.2, 0.0) is None
    users = [0, 0, 1, 1, 2, 2, 3, 3]
    a = [0, 1, 0, 0, 1, 0, 0, 0]
    b = [1, 1, 1, 0, 1, 0, 0, 1]
    ci = bootstrap_lift(users, b, a, n_boot=500, seed=0)
    assert ci is not None
    assert ci[0] <= 5 / 2 - 1 <= ci[1]  # the point lift: 5 hits against 2
    assert bootstrap_lift(users, b, a, n_boot=500, seed=0) == ci  # seeded
    assert bootstrap_lift([], [], []) is None
    assert bootstrap_lift([0, 1], [1, 0], [0, 0]) is None  # no baseline hit in any resample
    assert users_better(users, b, a) == {"better": 3, "worse": 0, "same": 1}


def test_summarize_and_table() -> None:
    f = unit_rows(np.eye(4))
    ctx = MetricContext({f"i{i}": i for i in range(4)}, popularity_share(np.array([3, 2, 1, 0]), 4), f)
    stats = {
        (g, a): ArmStats()
        for g in ("known", "known_20plus", "new")
        for a in ("static", "feedback", "popularity")
    }
    for g in ("known", "known_20plus", "new"):
        stats[(g, "static")].add(0, np.array([0, 1]), 0.0, 0.0, ctx)
        stats[(g, "static")].add(1, np.array([0, 1]), 1.0, 0.5, ctx)
        stats[(g, "feedback")].add(0, np.array([2, 3]), 1.0, 1.0, ctx)
        stats[(g, "feedback")].add(1, np.array([2, 3]), 1.0, 1.0, ctx)
        stats[(g, "popularity")].add(0, np.array([0, 1]), 0.0, 0.0, ctx)
        stats[(g, "popularity")].add(1, np.array([0, 1]), 0.0, 0.0, ctx)
    res = summarize(stats, n_items=4, n_boot=50)
    s = res["known"]["arms"]["static"]
    assert s["events"] == 2 and s["users"] == 2 and s["short_lists"] == 2
    assert s["hit_rate@10"] == 0.5 and s["coverage@10"] == 0.5 and s["intra_list_diversity"] == 1.0
    lf = res["known"]["lift_feedback_over_static"]
    assert lf["hit_rate@10"]["lift"] == pytest.approx(1.0)
    assert lf["ndcg@10"]["lift"] == pytest.approx(3.0)
    assert lf["users_by_hits"] == {"better": 1, "worse": 0, "same": 1}
    text = table(res)
    assert "| known, ≥20 past events | feedback | 2 | 2 | 1.0000 |" in text
    assert "+100.0%" in text


def test_load_state_puts_the_past_under_real_and_static_ids(tmp_path: Path) -> None:
    ds = toy(ROWS)
    split = time_split(ds, 0.4)
    db = tmp_path / "state.db"
    assert load_state(db, ds, split.past) == 2 * len(split.past)
    store = open_store(db, synchronous="NORMAL")
    try:
        for uid in ("a", "static:a"):
            evs = store.recent_events_sync(uid, 200)
            assert [e.item_id for e in evs] == ["i3", "i1", "i0"]  # newest first, no future event
            assert [e.value for e in evs] == [5.0, 4.0, 5.0] and all(e.type == "RATE" for e in evs)
        assert store.recent_events_sync("c", 200) == []  # new in the future: no state
        # The bulk load is idempotent like add_event_sync; a changed payload is a conflict.
        ev = Event("past:real:0", "a", "i0", "RATE", 5.0, 100.0)
        assert store.add_events_bulk_sync([ev]) == 0
        with pytest.raises(Conflict):
            changed = Event("past:real:0", "a", "i0", "RATE", 1.0, 100.0)
            store.add_events_bulk_sync([Event("new-1", "a", "i2", "RATE", 1.0, 1.0), changed])
        assert store.count_events_sync() == 2 * len(split.past)  # nothing of the failed batch
    finally:
        store.close()


def test_rfc3339_is_utc() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00Z"
    assert rfc3339(891382309.0) == "1998-03-31T22:11:49Z"


def test_the_eval_fails_when_feedback_does_not_lift_known_users() -> None:
    from tools.replay_eval.__main__ import failed_claims

    def results(hr: float | None, ndcg: float) -> dict:
        return {
            "known": {"lift_feedback_over_static": {"hit_rate@10": {"lift": hr}, "ndcg@10": {"lift": ndcg}}}
        }

    assert failed_claims(results(0.3, 0.2)) == []
    assert failed_claims(results(0.0, 0.2)) == ["lift of hit_rate@10 for known users is 0.0, not > 0"]
    assert len(failed_claims(results(None, -0.1))) == 2  # no lift computed is a failure too
    assert len(failed_claims(results(float("nan"), 0.1))) == 1
    assert len(failed_claims({})) == 2
