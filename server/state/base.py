"""The state store's contract: what every backend (SQLite, PostgreSQL) must do.

The gateway keeps three things here: the feedback log (events), impressions
(what each answer showed) and the live catalog's change log. A backend
implements the synchronous methods; the asynchronous API the servicer awaits
is the same for all of them: writes run on one writer thread, in the order
they were asked for, reads on a small pool, so the event loop never blocks on
the store.

The contract, which tests/unit/test_state.py checks on every backend:

- Durability: `add_event` (and every write that returns) returns only after
  its transaction has committed durably as the backend defines it (SQLite:
  WAL fsync'ed, `synchronous=FULL`; PostgreSQL: COMMIT answered with
  `synchronous_commit=on`, i.e. the WAL is flushed on the server). An
  acknowledged event survives a crash of the gateway.
- Idempotency: `event_id` is unique. The same id with the same payload is a
  no-op (stored=False); with another payload it is a `Conflict`. Two gateways
  racing on one event_id get exactly one stored=True.
- Bulk (`add_events_bulk_sync`, what ImportEvents and `recgen import` use): a
  batch commits in one durable transaction, all or nothing, rows in their
  order; stored + duplicates = the batch (an id repeated inside the batch is a
  duplicate of its first row). A conflicting row (`Conflict.index`, the first
  in batch order) leaves nothing of the batch stored.
- Visibility: a committed write is seen by the next read of any store on the
  same database (two gateways on one PostgreSQL see each other at once).
- Catalog changes: `seq` only grows, and a reader polling
  `catalog_changes(after_seq)` never skips a change: a change with a lower seq
  is committed before one with a higher seq becomes visible.
- `forget_user` deletes the user's events and impressions and writes a
  durable tombstone (the user and when) in one transaction. The tombstone
  stays: workers hide the user's history held in model versions built before
  it (`UserState.forgotten_at`), and `export --feedback` drops the user.
- Failure: a store that cannot write or cannot be reached raises
  `StoreUnavailable` (the gateway answers UNAVAILABLE) and never acknowledges;
  it recovers by itself when the database comes back.

This module knows nothing of gRPC, of feedback weights or of SQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 1
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps writes a str as (ensure_ascii)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Conflict(Exception):
    """The event_id exists with a different payload.

    `event_id` names it; `index` is the conflicting row's position in the batch
    given to `add_events_bulk_sync` (the first such row), -1 when unknown."""

    def __init__(self, message: str, event_id: str = "", index: int = -1) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.index = index


class StoreUnavailable(Exception):
    """The store cannot take writes or answer reads (disk full, read-only, I/O
    error, database server unreachable)."""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    type: str  # VIEW | CLICK | PURCHASE | RATE | DISMISS
    value: float | None
    ts: float
    request_id: str = ""

    def payload_hash(self) -> str:
        # The server's clock fills a missing timestamp, so a retry of an event
        # without one would differ in ts: the hash covers what the caller sent.
        # The bytes are json.dumps([user_id, item_id, type, value, request_id]) (stored
        # hashes depend on it), written out by hand for the bulk path: 2-3x faster.
        value = self.value
        if value is None:
            v = "null"
        elif type(value) is float and math.isfinite(value):
            v = repr(value)  # json.dumps writes finite floats with float.__repr__
        else:
            v = json.dumps(value)
        enc = _json_str
        raw = f"[{enc(self.user_id)}, {enc(self.item_id)}, {enc(self.type)}, {v}, {enc(self.request_id)}]"
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class CatalogChange:
    """One change to the live catalog, on top of the serving model version's catalog.

    The log is append-only: an item's current state is its last change. `seq` is
    assigned by the store; workers apply changes in seq order and remember the
    last one applied, so a change is applied once however often it is sent."""

    op: str  # UPSERT | DELETE
    item_id: str
    title: str = ""
    text: str = ""
    categories: tuple[str, ...] = ()
    seq: int = 0
    ts: float = 0.0


class UserState(NamedTuple):
    """What the gateway reads of one user for a Recommend."""

    events: list[Event]  # newest non-DISMISS events first, at most `limit`
    dismissed: list[str]  # item ids the user dismissed
    # Every item id of the user's positive events when `events` was cut at `limit`
    # (for exclusion: older events no longer count for the vector but were consumed);
    # empty when `events` holds them all.
    seen: tuple[str, ...] = ()
    forgotten_at: float = 0.0  # the newest ForgetUser of this user (unix seconds); 0: never


ImpressionRow = tuple[str, str, str, str, float]  # request_id, user_id, items JSON, model_version, created_at


def is_postgres_url(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


class StateStore:
    """The interface; `server.state.open_store(location)` opens the backend the location names."""

    def _start_executors(self) -> None:
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="state-writer")
        self._read_pool = ThreadPoolExecutor(4, thread_name_prefix="state-reader")
        self._impressions: list[ImpressionRow] = []

    # ------------------------------------------------------------ backends implement

    def add_events_bulk_sync(self, events: list[Event]) -> int:
        """Many events in one durable transaction; returns how many were stored now.

        An event_id already stored with the same payload is skipped (as is a repeat
        of an earlier row of the batch): `len(events) - stored` are duplicates. With
        another payload it is a Conflict naming the first such row (`index`) and
        nothing of the batch is stored."""
        raise NotImplementedError

    def _delete_user(self, user_id: str) -> tuple[int, int]:
        """Delete the user's (events, impressions) in one durable transaction."""
        raise NotImplementedError

    def _write_impressions(self, rows: list[ImpressionRow]) -> int:
        """Insert rows in one transaction, ignoring request_ids already logged.
        Best effort (never fails an answer): returns 0 and logs when it cannot."""
        raise NotImplementedError

    def recent_events_sync(self, user_id: str, limit: int) -> list[Event]:
        """The user's newest non-DISMISS events first (by event time, then arrival)."""
        raise NotImplementedError

    def dismissed_sync(self, user_id: str) -> list[str]:
        raise NotImplementedError

    def seen_items_sync(self, user_id: str) -> list[str]:
        """Every item id of the user's non-DISMISS events."""
        raise NotImplementedError

    def forgotten_at_sync(self, user_id: str) -> float:
        """When the user was last forgotten (unix seconds), 0.0 if never."""
        raise NotImplementedError

    def forgotten_users_sync(self) -> dict[str, float]:
        """Every tombstone: user id -> when it was forgotten (for `export --feedback`)."""
        raise NotImplementedError

    def count_events_sync(self) -> int:
        raise NotImplementedError

    def event_ids_sync(self) -> list[str]:
        raise NotImplementedError

    def impressions_sync(self, user_id: str) -> list[tuple[str, list[str], str]]:
        raise NotImplementedError

    def add_catalog_changes_sync(self, changes: list[CatalogChange]) -> int:
        """Append changes in one durable transaction; returns the last seq assigned."""
        raise NotImplementedError

    def catalog_changes_sync(self, after_seq: int = 0) -> list[CatalogChange]:
        raise NotImplementedError

    def catalog_seq_sync(self) -> int:
        raise NotImplementedError

    def all_events_sync(self) -> list[Event]:
        """Every stored event in arrival order (for `recgen export --feedback`)."""
        raise NotImplementedError

    def _close_connections(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ shared sync API

    def add_event_sync(self, ev: Event) -> bool:
        """True if stored now, False if this exact event was stored before."""
        return self.add_events_bulk_sync([ev]) == 1

    def forget_user_sync(self, user_id: str) -> tuple[int, int]:
        """Delete the user's events and impressions in one durable transaction."""
        self.flush_impressions_sync()  # queued impressions of this user too
        return self._delete_user(user_id)

    def queue_impression(self, request_id: str, user_id: str, items: list[str], model_version: str) -> None:
        """Impressions are written in groups by `flush_impressions`: one commit per
        group instead of one per answer, off the request path."""
        self._impressions.append((request_id, user_id, json.dumps(items), model_version, time.time()))

    def flush_impressions_sync(self) -> int:
        rows, self._impressions = self._impressions, []
        if not rows:
            return 0
        return self._write_impressions(rows)

    # ------------------------------------------------------------------ async API

    async def add_event(self, ev: Event) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, self.add_event_sync, ev)

    async def add_events_bulk(self, events: list[Event]) -> int:
        """`add_events_bulk_sync` on the writer thread (in order with every other write)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._write_pool, self.add_events_bulk_sync, events
        )

    async def forget_user(self, user_id: str) -> tuple[int, int]:
        return await asyncio.get_running_loop().run_in_executor(
            self._write_pool, self.forget_user_sync, user_id
        )

    async def flush_impressions(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._write_pool, self.flush_impressions_sync)

    def user_state_sync(self, user_id: str, limit: int) -> UserState:
        events = self.recent_events_sync(user_id, limit)
        # Only a user with more events than the fold-in reads needs the full list of what
        # they consumed: most users' events are all in `events` already.
        seen = tuple(self.seen_items_sync(user_id)) if len(events) >= limit else ()
        return UserState(events, self.dismissed_sync(user_id), seen, self.forgotten_at_sync(user_id))

    async def user_state(self, user_id: str, limit: int) -> UserState:
        def read() -> UserState:
            return self.user_state_sync(user_id, limit)

        return await asyncio.get_running_loop().run_in_executor(self._read_pool, read)

    async def add_catalog_changes(self, changes: list[CatalogChange]) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            self._write_pool, self.add_catalog_changes_sync, changes
        )

    async def catalog_changes(self, after_seq: int = 0) -> list[CatalogChange]:
        return await asyncio.get_running_loop().run_in_executor(
            self._read_pool, self.catalog_changes_sync, after_seq
        )

    async def catalog_seq(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._read_pool, self.catalog_seq_sync)

    def close(self) -> None:
        self._write_pool.submit(self.flush_impressions_sync).result()
        self._write_pool.shutdown(wait=True)
        self._read_pool.shutdown(wait=True)
        self._close_connections()
