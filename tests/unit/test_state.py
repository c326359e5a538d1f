"""The SQLite state store: durability settings, idempotency, honest failures."""

from pathlib import Path

import pytest

from server.feedback import history_weights
from server.state import Conflict, Event, StateStore, StoreUnavailable


def ev(event_id: str, item: str = "1", kind: str = "CLICK", ts: float = 100.0) -> Event:
    return Event(event_id, "u", item, kind, None, ts)


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    assert store.pragma("journal_mode") == "wal"
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    store.close()


def test_idempotent_and_conflicting_events(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    assert store.add_event_sync(ev("e1")) is True
    assert store.add_event_sync(ev("e1")) is False  # same payload: stored once
    with pytest.raises(Conflict):
        store.add_event_sync(ev("e1", item="2"))
    assert store.count_events_sync() == 1
    store.close()


def test_history_newest_first_and_dismiss_apart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.add_event_sync(ev("a", "1", ts=10))
    store.add_event_sync(ev("b", "2", ts=30))
    store.add_event_sync(ev("c", "3", "DISMISS", ts=20))
    assert [e.item_id for e in store.recent_events_sync("u", 10)] == ["2", "1"]
    assert store.dismissed_sync("u") == ["3"]
    store.close()


def test_query_only_store_refuses_instead_of_acknowledging(tmp_path: Path) -> None:
    # As root, file modes do not stop writes; a read-only connection does.
    store = StateStore(tmp_path / "s.db")
    store._writer.execute("PRAGMA query_only=1")
    with pytest.raises(StoreUnavailable):
        store.add_event_sync(ev("x"))
    store._writer.execute("PRAGMA query_only=0")
    assert store.count_events_sync() == 0
    store.close()


def test_feedback_weights_decay_and_sum() -> None:
    day = 86400.0
    events = [
        Event("1", "u", "a", "PURCHASE", None, 100 * day),
        Event("2", "u", "b", "VIEW", None, 100 * day),
        Event("3", "u", "a", "CLICK", None, 10 * day),
    ]
    w = dict(history_weights(events, now=100 * day))
    assert w["b"] == pytest.approx(0.25)
    assert w["a"] == pytest.approx(3.0 + 0.5)  # the click is one half-life (90 days) old
