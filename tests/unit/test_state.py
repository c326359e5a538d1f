"""The state store on both backends (SQLite file, real PostgreSQL server): durability
settings, idempotency, honest failures, and what several gateways on one PostgreSQL
must see of each other."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recgen.core.user_history import fold_in_weights
from server.feedback import history_events
from server.state import (
    CatalogChange,
    Conflict,
    Event,
    SQLiteStore,
    StateStore,
    StoreUnavailable,
    is_postgres_url,
    open_store,
)
from server.state.postgres import PostgresStore
from tests.pg import PostgresServer


def ev(event_id: str, item: str = "1", kind: str = "CLICK", ts: float = 100.0, user: str = "u") -> Event:
    return Event(event_id, user, item, kind, None, ts)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a fresh, empty store lives: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "s.db"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture()
def store(location: Path | str) -> Iterator[StateStore]:
    s = open_store(location)
    try:
        yield s
    finally:
        s.close()


def set_read_only(store: StateStore, on: bool) -> None:
    """Make the writer connection refuse writes, the way each backend can."""
    if isinstance(store, SQLiteStore):
        # As root, file modes do not stop writes; a read-only connection does.
        store._writer.execute(f"PRAGMA query_only={int(on)}")
    else:
        assert isinstance(store, PostgresStore)
        store._writer_conn().execute(f"SET default_transaction_read_only = {'on' if on else 'off'}")


# ------------------------------------------------------------------ choosing a backend


def test_location_picks_the_backend(tmp_path: Path) -> None:
    for loc in (tmp_path / "a.db", str(tmp_path / "b.db")):
        s = open_store(loc)
        assert type(s) is SQLiteStore
        s.close()
    for url in ("postgresql://u@db/recgen", "postgres://u@db/recgen", "postgresql:///recgen?host=/run/pg"):
        assert is_postgres_url(url)
    assert not is_postgres_url("postgresql.db")  # a file that merely starts like one


# ------------------------------------------------------------------ durability settings


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    assert isinstance(store, SQLiteStore)
    assert store.pragma("journal_mode") == "wal"
    assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
    store.close()


def test_postgres_commits_wait_for_the_wal_flush(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    assert store.setting("synchronous_commit") == "on"
    assert store.setting("transaction_isolation") == "read committed"
    store.close()
    relaxed = open_store(url, synchronous="NORMAL")
    assert isinstance(relaxed, PostgresStore)
    assert relaxed.setting("synchronous_commit") == "off"
    relaxed.close()


# ------------------------------------------------------------------ the contract, on both


def test_idempotent_and_conflicting_events(store: StateStore) -> None:
    assert store.add_event_sync(ev("e1")) is True
    assert store.add_event_sync(ev("e1")) is False  # same payload: stored once
    with pytest.raises(Conflict):
        store.add_event_sync(ev("e1", item="2"))
    assert store.count_events_sync() == 1


def test_bulk_conflict_stores_nothing_of_the_batch(store: StateStore) -> None:
    store.add_event_sync(ev("a"))
    with pytest.raises(Conflict):
        store.add_events_bulk_sync([ev("b"), ev("a", item="9")])
    assert store.event_ids_sync() == ["a"]
    assert store.add_events_bulk_sync([ev("a"), ev("b"), ev("c")]) == 2


def test_bulk_path_stores_in_order_and_counts_duplicates(store: StateStore) -> None:
    """The ImportEvents / `recgen import` path: thousands of rows per transaction,
    repeats (stored before, or earlier in the batch) skipped, nothing doubled."""
    store.add_event_sync(ev("e00007", item="7", ts=7))  # stored before, same payload
    batch = [ev(f"e{i:05d}", item=str(i), ts=float(i), user=f"u{i % 50}") for i in range(3000)]
    batch[7] = ev("e00007", item="7", ts=7)
    batch.append(ev("e00010", item="10", ts=10.0, user="u10"))  # a repeat inside the batch
    assert store.add_events_bulk_sync(batch) == 2999
    assert store.count_events_sync() == 3000
    assert [e.event_id for e in store.all_events_sync()] == ["e00007"] + [
        f"e{i:05d}" for i in range(3000) if i != 7
    ]
    assert store.add_events_bulk_sync(batch) == 0  # a re-sent batch: all duplicates
    assert store.add_events_bulk_sync([]) == 0
    assert store.count_events_sync() == 3000
    assert [e.item_id for e in store.recent_events_sync("u3", 2)] == ["2953", "2903"]


@pytest.mark.parametrize("where", ["stored before", "earlier in the batch"])
def test_bulk_conflict_names_the_first_conflicting_row(store: StateStore, where: str) -> None:
    if where == "stored before":
        store.add_event_sync(ev("x", item="1"))
        batch = [ev(f"n{i}") for i in range(5)] + [ev("x", item="2"), ev("y", item="3")]
    else:
        batch = [ev(f"n{i}") for i in range(5)] + [ev("x", item="1"), ev("x", item="2")]
    with pytest.raises(Conflict) as e:
        store.add_events_bulk_sync(batch)
    assert e.value.event_id == "x" and e.value.index == (5 if where == "stored before" else 6)
    assert "'x'" in str(e.value)
    assert store.count_events_sync() == (1 if where == "stored before" else 0)  # nothing of the batch
    if where == "stored before":  # a batch of one (SendFeedback's path) names its row too
        with pytest.raises(Conflict) as e:
            store.add_events_bulk_sync([ev("x", item="3")])
        assert (e.value.event_id, e.value.index) == ("x", 0)


def test_bulk_import_is_async_and_ordered_with_other_writes(store: StateStore) -> None:
    async def main() -> None:
        first = store.add_events_bulk([ev(f"b{i}", user="bulk") for i in range(100)])
        forget = store.forget_user("bulk")
        assert await first == 100
        assert await forget == (100, 0)

    asyncio.run(main())
    assert store.count_events_sync() == 0


def test_history_newest_first_and_dismiss_apart(store: StateStore) -> None:
    store.add_event_sync(ev("a", "1", ts=10))
    store.add_event_sync(ev("b", "2", ts=30))
    store.add_event_sync(ev("c", "3", "DISMISS", ts=20))
    assert [e.item_id for e in store.recent_events_sync("u", 10)] == ["2", "1"]
    assert store.dismissed_sync("u") == ["3"]
    assert [e.event_id for e in store.all_events_sync()] == ["a", "b", "c"]  # arrival order
    assert store.recent_events_sync("u", 10)[0] == ev("b", "2", ts=30)  # round-trips exactly


def test_query_only_store_refuses_instead_of_acknowledging(store: StateStore) -> None:
    set_read_only(store, True)
    with pytest.raises(StoreUnavailable):
        store.add_event_sync(ev("x"))
    set_read_only(store, False)
    assert store.count_events_sync() == 0
    assert store.add_event_sync(ev("x")) is True  # the same store writes again


def test_forget_user_deletes_events_and_queued_impressions(store: StateStore) -> None:
    store.add_event_sync(ev("a", user="gone"))
    store.add_event_sync(ev("b", user="gone"))
    store.add_event_sync(ev("c", user="kept"))
    store.queue_impression("r1", "gone", ["1", "2"], "v1")
    store.queue_impression("r2", "kept", ["3"], "v1")
    assert store.forget_user_sync("gone") == (2, 1)  # the queued impression is flushed first
    assert store.recent_events_sync("gone", 10) == [] and store.impressions_sync("gone") == []
    assert store.impressions_sync("kept") == [("r2", ["3"], "v1")]
    assert store.event_ids_sync() == ["c"]


def test_impressions_flush_in_one_group_and_ignore_repeats(store: StateStore) -> None:
    for i in range(5):
        store.queue_impression(f"r{i}", "u", [str(i)], "v1")
    assert store.flush_impressions_sync() == 5
    assert store.flush_impressions_sync() == 0  # nothing queued
    store.queue_impression("r0", "u", ["other"], "v2")  # a repeated request_id keeps the first
    store.flush_impressions_sync()
    assert sorted(store.impressions_sync("u"))[0] == ("r0", ["0"], "v1")


def test_catalog_changes_append_in_seq_order(store: StateStore) -> None:
    assert store.catalog_seq_sync() == 0
    last = store.add_catalog_changes_sync(
        [CatalogChange("UPSERT", "x", "X", "about x", ("a", "b")), CatalogChange("DELETE", "y")]
    )
    assert last == store.catalog_seq_sync() == 2
    assert store.add_catalog_changes_sync([CatalogChange("UPSERT", "y", "Y")]) == 3
    changes = store.catalog_changes_sync()
    assert [(c.op, c.item_id, c.seq) for c in changes] == [
        ("UPSERT", "x", 1),
        ("DELETE", "y", 2),
        ("UPSERT", "y", 3),
    ]
    assert changes[0].categories == ("a", "b") and changes[0].text == "about x" and changes[0].ts > 0
    assert [c.seq for c in store.catalog_changes_sync(after_seq=2)] == [3]


def test_async_api_keeps_write_order(store: StateStore) -> None:
    async def run() -> tuple[list[bool], tuple[int, int], tuple[list[Event], list[str]], int]:
        stored = await asyncio.gather(*(store.add_event(ev(f"e{i}", str(i), ts=i)) for i in range(5)))
        forgotten = await store.forget_user("u")  # queued after the five writes: deletes all five
        await store.add_event(ev("late", "9", "DISMISS"))
        state = await store.user_state("u", 10)
        seq = await store.add_catalog_changes([CatalogChange("UPSERT", "z")])
        assert [c.item_id for c in await store.catalog_changes(0)] == ["z"]
        assert await store.catalog_seq() == seq
        return list(stored), forgotten, state, seq

    stored, forgotten, (recent, dismissed, _, forgotten_at), seq = asyncio.run(run())
    assert stored == [True] * 5 and forgotten == (5, 0)
    assert recent == [] and dismissed == ["9"] and seq == 1
    assert forgotten_at > 0  # the tombstone outlives the deleted events


def test_forget_leaves_a_durable_tombstone(store: StateStore) -> None:
    """ForgetUser deletes the events and records when, for good: the workers hide the user's
    history held in model versions built before it, across restarts and hot swaps."""
    store.add_event_sync(ev("a", "1"))
    assert store.forgotten_at_sync("u") == 0.0
    store.forget_user_sync("u")
    first = store.forgotten_at_sync("u")
    assert first > 0 and store.forgotten_users_sync() == {"u": first}
    store.add_event_sync(ev("b", "2"))  # a forgotten user may come back: new events count
    state = store.user_state_sync("u", 10)
    assert [e.event_id for e in state.events] == ["b"] and state.forgotten_at == first
    store.forget_user_sync("u")
    assert store.forgotten_at_sync("u") >= first


def test_seen_items_beyond_the_history_limit(store: StateStore) -> None:
    """Events past the fold-in limit no longer shape the vector but were consumed: the state
    names their items (only when the limit cut the history)."""
    for i in range(5):
        store.add_event_sync(Event(f"s{i}", "u", str(i), "CLICK", None, float(i)))
    store.add_event_sync(Event("dis", "u", "9", "DISMISS", None, 10.0))
    assert store.user_state_sync("u", 10).seen == ()
    cut = store.user_state_sync("u", 2)
    assert [e.item_id for e in cut.events] == ["4", "3"] and sorted(cut.seen) == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------------ several gateways, one PostgreSQL


@pytest.fixture()
def two_stores(postgres: PostgresServer) -> Iterator[tuple[StateStore, StateStore]]:
    url = postgres.new_database()
    with ThreadPoolExecutor(2) as ex:  # both create the schema at once, as two gateways starting together
        a, b = ex.map(open_store, [url, url])
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_two_stores_see_each_others_writes_at_once(two_stores: tuple[StateStore, StateStore]) -> None:
    a, b = two_stores
    assert b.recent_events_sync("u", 10) == []  # b has a reader connection open before a writes
    assert a.add_event_sync(ev("from-a", "1")) is True
    assert [e.event_id for e in b.recent_events_sync("u", 10)] == ["from-a"]
    assert b.add_event_sync(ev("from-b", "2", "DISMISS")) is True
    assert a.dismissed_sync("u") == ["2"]
    assert b.add_event_sync(ev("from-a", "1")) is False  # a's event, retried through b
    with pytest.raises(Conflict):
        b.add_event_sync(ev("from-a", "7"))
    a.queue_impression("r1", "u", ["1"], "v1")
    a.flush_impressions_sync()
    assert b.forget_user_sync("u") == (2, 1)
    assert a.count_events_sync() == 0 and a.impressions_sync("u") == []


def test_racing_duplicates_from_two_stores_store_exactly_one(
    two_stores: tuple[StateStore, StateStore],
) -> None:
    a, b = two_stores
    n = 40
    barrier = threading.Barrier(2)

    def send(store: StateStore, item: str) -> list[str]:
        barrier.wait()
        out = []
        for i in range(n):
            try:
                out.append("stored" if store.add_event_sync(ev(f"same-{i}")) else "dup")
            except Conflict:
                out.append("conflict")
            # The same id with another payload from each side: one stores, the other conflicts.
            try:
                out.append("stored" if store.add_event_sync(ev(f"diff-{i}", item)) else "dup")
            except Conflict:
                out.append("conflict")
        return out

    with ThreadPoolExecutor(2) as ex:
        ra, rb = ex.map(send, [a, b], ["1", "2"])
    for i in range(n):
        same = sorted([ra[2 * i], rb[2 * i]])
        diff = sorted([ra[2 * i + 1], rb[2 * i + 1]])
        assert same == ["dup", "stored"], (i, same)
        assert diff == ["conflict", "stored"], (i, diff)
    assert a.count_events_sync() == 2 * n


def test_catalog_changes_from_two_stores_read_in_one_order(two_stores: tuple[StateStore, StateStore]) -> None:
    """Two appenders and a reader polling by seq, as a worker does: the reader
    never skips a change, even though the appenders' transactions interleave."""
    a, b = two_stores
    batches, per_batch = 40, 3
    done = threading.Event()
    seen: list[CatalogChange] = []

    def append(store: StateStore, name: str) -> None:
        for i in range(batches):
            store.add_catalog_changes_sync(
                [CatalogChange("UPSERT", f"{name}{i}.{j}") for j in range(per_batch)]
            )

    def poll() -> None:
        while True:
            last = done.is_set()
            seen.extend(a.catalog_changes_sync(seen[-1].seq if seen else 0))
            if last:
                return

    with ThreadPoolExecutor(3) as ex:
        reader = ex.submit(poll)
        list(ex.map(append, [a, b], ["a", "b"]))
        done.set()
        reader.result()
    final = b.catalog_changes_sync()
    assert len(final) == 2 * batches * per_batch == b.catalog_seq_sync()
    assert [c.seq for c in final] == list(range(1, len(final) + 1))
    assert [(c.seq, c.item_id) for c in seen] == [(c.seq, c.item_id) for c in final]  # nothing skipped
    for name in ("a", "b"):  # each appender's batches stay whole and in its order
        mine = [c.item_id for c in final if c.item_id.startswith(name)]
        assert mine == [f"{name}{i}.{j}" for i in range(batches) for j in range(per_batch)]


def test_unavailable_while_the_server_is_down_then_recovers(postgres: PostgresServer) -> None:
    store = open_store(postgres.new_database())
    try:
        assert store.add_event_sync(ev("before")) is True
        store.recent_events_sync("u", 10)  # a reader connection, about to go stale
        postgres.stop()
        try:
            with pytest.raises(StoreUnavailable, match="cannot reach PostgreSQL"):
                store.add_event_sync(ev("during"))
            with pytest.raises(StoreUnavailable):
                store.recent_events_sync("u", 10)
            with pytest.raises(StoreUnavailable):
                asyncio.run(store.add_event(ev("during")))  # the gateway's path
        finally:
            postgres.start()
        # Old connections are gone; the store reconnects by itself.
        assert store.add_event_sync(ev("after", "2")) is True
        assert [e.event_id for e in store.recent_events_sync("u", 10)] == [
            "after",
            "before",
        ]  # same ts: newest arrival first
    finally:
        store.close()


def test_server_restart_while_idle_is_invisible(postgres: PostgresServer) -> None:
    """Connections opened before a restart are dead; the first call after it
    notices before anything was sent for commit and retries on a fresh one."""
    store = open_store(postgres.new_database())
    try:
        store.add_event_sync(ev("before"))
        assert store.count_events_sync() == 1
        postgres.stop()
        postgres.start()
        assert store.add_event_sync(ev("after", "2")) is True  # no StoreUnavailable
        assert store.count_events_sync() == 2
        assert asyncio.run(store.add_event(ev("async-after", "3"))) is True
    finally:
        store.close()


def test_feedback_weights_decay_and_sum() -> None:
    day = 86400.0
    events = [
        Event("1", "u", "a", "PURCHASE", None, 100 * day),
        Event("2", "u", "b", "VIEW", None, 100 * day),
        Event("3", "u", "a", "CLICK", None, 10 * day),
    ]
    sent = history_events(events)
    assert [(i, w) for i, w, _ in sent] == [("a", 3.0), ("b", 0.25), ("a", 1.0)]
    rows = np.asarray([ord(i) for i, _, _ in sent])
    got = fold_in_weights(rows, np.asarray([w for _, w, _ in sent]), np.asarray([t for _, _, t in sent]))
    w = {chr(r): x for r, x in zip(got[0].tolist(), got[1].tolist(), strict=True)}
    assert w["b"] == pytest.approx(0.25)
    assert w["a"] == pytest.approx(3.0 + 0.5)  # the click is one half-life (90 days) old
