"""The gateway's user-state cache: bounds, write-through order, invalidation, racing reads.

The reference is the real SQLite store: after each write the cached state must
equal what `user_state` reads from the file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.state import Event, SQLiteStore
from server.user_state_cache import UserStateCache


def ev(
    n: int, user: str = "u", item: str | None = None, kind: str = "CLICK", ts: float | None = None
) -> Event:
    return Event(f"e{user}{n}", user, item or str(n), kind, None, float(n) if ts is None else ts)


def test_lru_bound_evicts_least_recently_used() -> None:
    cache = UserStateCache(capacity=2, history_cap=10)
    for user in ("a", "b"):
        assert cache.fill(user, cache.ticket(), [ev(1, user)], [])
    assert cache.get("a") is not None  # a is now the most recent
    assert cache.fill("c", cache.ticket(), [], [])
    assert len(cache) == 2
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None


def test_record_keeps_store_order_and_history_cap() -> None:
    cache = UserStateCache(capacity=4, history_cap=3)
    cache.fill("u", cache.ticket(), [ev(30), ev(20), ev(10)], [])
    cache.record(ev(25))  # lands between ts 30 and 20; the oldest falls off the cap
    state = cache.get("u")
    assert state is not None
    assert [e.ts for e in state[0]] == [30.0, 25.0, 20.0]
    cache.record(ev(5))  # older than all three kept: not among the newest 3
    assert [e.ts for e in cache.get("u")[0]] == [30.0, 25.0, 20.0]  # type: ignore[index]
    cache.record(ev(99, item="x", ts=30.0))  # same ts as the newest: arrived later, goes first
    assert [e.item_id for e in cache.get("u")[0]] == ["x", "30", "25"]  # type: ignore[index]


def test_dismiss_goes_to_dismissed_once_not_to_history() -> None:
    cache = UserStateCache(capacity=4, history_cap=10)
    cache.fill("u", cache.ticket(), [ev(1)], [])
    cache.record(ev(2, item="7", kind="DISMISS"))
    cache.record(ev(3, item="7", kind="DISMISS"))
    events, dismissed, _, _ = cache.get("u")  # type: ignore[misc]
    assert [e.item_id for e in events] == ["1"] and dismissed == ["7"]


def test_invalidate_drops_the_user() -> None:
    cache = UserStateCache(capacity=4, history_cap=10)
    cache.fill("u", cache.ticket(), [ev(1)], ["9"])
    cache.invalidate("u")
    assert cache.get("u") is None


def test_a_read_that_raced_a_write_is_not_cached() -> None:
    cache = UserStateCache(capacity=4, history_cap=10)
    ticket = cache.ticket()  # a read starts ...
    cache.record(ev(1))  # ... a write commits before it ends: the read may predate it
    assert not cache.fill("u", ticket, [], [])
    assert cache.get("u") is None
    assert cache.fill("other", ticket, [], [])  # another user's read is unaffected
    assert cache.fill("u", cache.ticket(), [ev(1)], [])  # a read after the write is


def test_a_racing_write_whose_trace_was_evicted_still_blocks_the_fill() -> None:
    cache = UserStateCache(capacity=2, history_cap=10)
    ticket = cache.ticket()
    cache.record(ev(1, user="u"))
    cache.record(ev(1, user="v"))
    cache.record(ev(1, user="w"))  # u's write generation leaves the bounded table
    assert not cache.fill("u", ticket, [], [])


def test_write_through_matches_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    cache = UserStateCache(capacity=8, history_cap=4)

    async def scenario() -> None:
        for e in (ev(10), ev(20), ev(30, kind="DISMISS")):
            await store.add_event(e)
        ticket = cache.ticket()
        assert cache.fill("u", ticket, *await store.user_state("u", 4))
        for e in (ev(15), ev(40), ev(41, item="20", kind="DISMISS"), ev(50, ts=20.0), ev(60, ts=5.0)):
            assert await store.add_event(e)
            cache.record(e)
            cached, stored = cache.get("u"), await store.user_state("u", 4)
            assert cached is not None and cached[0] == stored[0]
            assert sorted(cached[1]) == sorted(stored[1])  # the store gives dismissed in no order
        await store.forget_user("u")
        cache.invalidate("u")
        assert cache.get("u") is None and tuple(await store.user_state("u", 4))[:2] == ([], [])

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(AssertionError, match="capacity"):
        UserStateCache(capacity=0, history_cap=10)


def test_servicer_reads_writes_and_forgets_through_the_cache(tmp_path: Path) -> None:
    from server.service import RecommenderService

    store = SQLiteStore(tmp_path / "state.db")
    cache = UserStateCache(capacity=8, history_cap=200)
    svc = RecommenderService(store, None, set(), user_cache=cache)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert tuple(await svc._user_state("u"))[:2] == ([], [])  # a miss, read from the store and cached
        assert await svc._store_event(ev(1))
        assert tuple(cache.get("u") or ())[:2] == ([ev(1)], [])  # written through after the commit
        assert not await svc._store_event(ev(1))  # a retry: stored before, the user is read again
        assert cache.get("u") is None
        assert tuple(await svc._user_state("u"))[:2] == ([ev(1)], [])
        await svc._forget("u")
        state = await svc._user_state("u")
        assert cache.get("u") is not None and tuple(state)[:2] == ([], [])
        assert state.forgotten_at > 0  # the tombstone is read (and cached) with the user

    try:
        asyncio.run(scenario())
    finally:
        store.close()
