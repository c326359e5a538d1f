"""recgen/core/user_history.py against a plain-Python reference: the version's users' histories
(format, lookup, cap), the decay clock (the user's newest event, never the wall clock), and
merging live events without counting a folded-in event twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recgen.core.user_history import (
    DECAY_FLOOR,
    HistoryArrays,
    UserHistories,
    empty_history,
    fold_in_weights,
    merge_live,
    write_user_histories,
)

DAY = 86400.0
Y1998 = 883_612_800.0  # 1998-01-01


def reference(user_ids, user, item, ts, cap):
    """Per user: events newest first (ties: later row first), capped; and every item seen."""
    out = {}
    for u, name in enumerate(user_ids):
        rows = [i for i in range(len(user)) if user[i] == u]
        rows.sort(key=lambda i: (-ts[i], -i))
        out[name] = (
            [int(item[i]) for i in rows[:cap]],
            [float(ts[i]) for i in rows[:cap]],
            sorted(set(item[rows])),
        )
    return out


def test_written_histories_match_a_python_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["b", "a", "ü-ser", "c", "quiet"]
    user = rng.integers(0, 4, 300)  # "quiet" has no interactions
    item = rng.integers(0, 40, 300)
    ts = Y1998 + rng.integers(0, 20, 300) * DAY  # many time ties
    counts = write_user_histories(tmp_path, names, user, item, ts, cap=25).counts()
    h = UserHistories(tmp_path, n_items=40)
    assert (
        len(h) == 5
        and counts["users"] == 5
        and counts["seen_pairs"] == len(set(zip(user, item, strict=True)))
    )
    for name, (items, times, seen) in reference(names, user, item, ts, 25).items():
        got = h.get(name)
        assert got.rows.tolist() == items and got.ts.tolist() == times, name
        assert got.seen.tolist() == seen and np.all(got.weights == 1.0)
    assert h.index("nobody") == -1 and h.get("nobody").rows.size == 0
    assert h.index("a" * 500) == -1


def test_fold_in_weights_sum_per_item_newest_first_with_decay_from_the_newest_event() -> None:
    rows = np.array([7, 3, 7, 9])
    w = np.array([1.0, 3.0, 1.0, 0.25])
    ts = np.array([100.0, 100.0, 10.0, 10.0]) * DAY
    got_rows, got_w = fold_in_weights(rows, w, ts, half_life_days=90.0)
    assert got_rows.tolist() == [7, 3, 9]
    assert got_w.tolist() == pytest.approx([1.5, 3.0, 0.125])
    # Only the newest `cap` events count.
    assert fold_in_weights(rows, w, ts, cap=2)[0].tolist() == [7, 3]


def test_a_1998_history_keeps_its_weights_whatever_the_date() -> None:
    """Decay is relative to the user's newest event: the same history weighs the same in
    1998 and in 2026 (a clock-based decay gave weights of ~0 to an old data set)."""
    ts = Y1998 + np.array([30.0, 20.0, 0.0]) * DAY
    rows, w = fold_in_weights(np.array([1, 2, 3]), np.ones(3), ts)
    assert w[0] == 1.0 and w.min() > 0.7
    ancient = fold_in_weights(np.array([1, 2]), np.ones(2), np.array([Y1998 + 10_000 * DAY, Y1998]))[1]
    assert ancient[1] == pytest.approx(DECAY_FLOOR)  # faded, never gone


def test_live_events_merge_without_counting_a_folded_event_twice() -> None:
    held = HistoryArrays.build(
        np.zeros(3, np.int64), np.array([4, 5, 6]), np.array([10.0, 20.0, 30.0]), n_users=1
    )
    h = empty_history()
    h.rows, h.weights, h.ts = held.events(0)
    h.seen = np.array([4, 5, 6])
    # The live log repeats the event (5 @ 20: `export --feedback` folded it in), adds a new one.
    merged = merge_live(h, np.array([8, 5]), np.array([3.0, 1.0], np.float32), np.array([40.0, 20.0]), 30.0)
    assert merged.rows.tolist() == [8, 6, 5, 4] and merged.ts.tolist() == [40.0, 30.0, 20.0, 10.0]
    assert merged.weights.tolist() == [3.0, 1.0, 1.0, 1.0] and merged.seen.tolist() == [4, 5, 6, 8]
    # The same item at the same time but after the version's data end is a new event.
    again = merge_live(h, np.array([5]), np.array([1.0], np.float32), np.array([20.0]), 15.0)
    assert again.rows.tolist().count(5) == 2


def test_fold_in_of_the_arrays_is_what_training_counts() -> None:
    """Without decay differences (same times), c = 1 + α·count, the trainer's confidence."""
    h = HistoryArrays.build(np.zeros(4, np.int64), np.array([2, 2, 3, 1]), np.full(4, 5.0), n_users=1)
    rows, conf = h.fold_in(0, alpha=2.0)
    assert dict(zip(rows.tolist(), conf.tolist(), strict=True)) == {1: 3.0, 2: 5.0, 3: 3.0}
