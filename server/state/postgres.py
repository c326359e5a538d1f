"""The shared state store backend: PostgreSQL (`--state postgresql://...`), psycopg 3.

Several gateways on one database share the feedback log, impressions and the
catalog change log: a committed write is in the next read of every gateway.

Connections follow the same pattern as the SQLite backend, on purpose: one
writer connection used by the store's single writer thread (writes of one
gateway keep their order: an event then a ForgetUser of its user), and one
autocommit connection per reader thread (every SELECT sees everything committed
before it started). psycopg's synchronous API in those threads serves both the
async servicer and the sync callers (export, replay, tests) with one code path;
its async API would need a second one for them.

Durability: each session sets `synchronous_commit=on` (PostgreSQL's default,
set explicitly so a server configured otherwise cannot weaken it), so COMMIT
returns after the server has flushed its WAL. `--synchronous NORMAL` maps to
`synchronous_commit=off`: like SQLite's NORMAL, a crash of the database server
may lose the last commits, never corrupt.

Failures: a database that cannot be reached, or that drops the connection,
raises StoreUnavailable; the broken connection is thrown away and the next call
connects again, so the store recovers by itself when the server is back. A
transaction that failed before COMMIT was sent is retried once on a fresh
connection (it cannot have committed); one that failed during COMMIT is not
(its outcome is unknown; a retried SendFeedback is idempotent).

What it does not do: pooling across gateways (use pgbouncer in transaction mode
if there are hundreds), TLS settings beyond what the URL carries, migrations
between schema versions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from server.state.base import (
    SCHEMA_VERSION,
    CatalogChange,
    Conflict,
    Event,
    ImpressionRow,
    StateStore,
    StoreUnavailable,
)

LOG = logging.getLogger(__name__)

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5
SCHEMA_LOCK = 0x72656367656E  # pg_advisory_xact_lock key: gateways starting together create the schema once

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- arrival order (ties in ts)
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value DOUBLE PRECISION,
    ts DOUBLE PRECISION NOT NULL,        -- the event's own time (unix seconds)
    request_id TEXT NOT NULL DEFAULT '',
    received_at DOUBLE PRECISION NOT NULL,
    payload_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts DESC, seq DESC);
CREATE TABLE IF NOT EXISTS impressions (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,                 -- JSON list of item ids, in rank order
    model_version TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_id);
CREATE TABLE IF NOT EXISTS forgotten (   -- ForgetUser tombstones: kept for good
    user_id TEXT PRIMARY KEY,
    forgotten_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_changes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- the order workers apply them in
    op TEXT NOT NULL,                    -- UPSERT | DELETE
    item_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    categories TEXT NOT NULL DEFAULT '[]',  -- JSON list
    ts DOUBLE PRECISION NOT NULL
);
"""

_EVENT_COLUMNS = "event_id, user_id, item_id, type, value, ts, request_id"


class PostgresStore(StateStore):
    def __init__(self, url: str, synchronous: str = "FULL") -> None:
        assert synchronous in ("FULL", "NORMAL"), synchronous
        self.url = url
        self.synchronous_commit = "on" if synchronous == "FULL" else "off"
        self._local = threading.local()
        self._readers: set[psycopg.Connection[Any]] = set()  # to close them all in close()
        self._readers_lock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        self._write(self._create_schema)
        self._start_executors()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            conn.execute(f"SET synchronous_commit = {self.synchronous_commit}")
        except psycopg.Error as e:
            # The detail (host, port, server message) goes to the log, not to callers.
            LOG.warning("state store: cannot connect to PostgreSQL: %s", e)
            raise StoreUnavailable("state store unavailable: cannot reach PostgreSQL") from e
        return conn

    def _writer_conn(self) -> psycopg.Connection[Any]:
        if self._writer is None or self._writer.closed:
            self._writer = self._connect()
        return self._writer

    def _reader_conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.add(conn)
        return conn

    def _drop_reader(self, conn: psycopg.Connection[Any]) -> None:
        self._local.conn = None
        with self._readers_lock:
            self._readers.discard(conn)
        conn.close()

    def _write(self, fn: Callable[[psycopg.Connection[Any]], T], what: str = "write") -> T:
        """Run fn in one transaction on the writer connection; StoreUnavailable on failure."""
        for attempt in range(2):
            conn = self._writer_conn()
            committing = False
            try:
                with conn.transaction():
                    out = fn(conn)
                    committing = True  # leaving the block sends COMMIT
                return out
            except psycopg.Error as e:
                lost = conn.broken or conn.closed
                if lost:
                    conn.close()
                    self._writer = None
                if lost and not committing and attempt == 0:
                    # Nothing was committed (e.g. the server restarted since this
                    # connection was opened): once more on a fresh connection.
                    LOG.info("state store: connection lost before commit, reconnecting: %s", e)
                    continue
                LOG.warning("state store cannot %s: %s", what, e)
                raise StoreUnavailable(f"state store cannot {what}: {type(e).__name__}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """All rows of one query; retried once on a fresh connection (reads have no effects)."""
        for attempt in range(2):
            conn = self._reader_conn()
            try:
                return conn.execute(sql, params).fetchall()
            except psycopg.Error as e:
                lost = conn.broken or conn.closed
                if lost:
                    self._drop_reader(conn)
                    if attempt == 0:
                        continue
                LOG.warning("state store cannot read: %s", e)
                raise StoreUnavailable(f"state store cannot read: {type(e).__name__}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute(_SCHEMA)
        conn.execute(
            "INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (key) DO NOTHING",
            (str(SCHEMA_VERSION),),
        )
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise RuntimeError(
                f"state schema version {row and row[0]} in {self.url!r}, expected {SCHEMA_VERSION}"
            )

    # ------------------------------------------------------------------ writes

    def add_events_bulk_sync(self, events: list[Event]) -> int:
        """One durable transaction; see the base contract. One event (SendFeedback):
        one INSERT ... ON CONFLICT DO NOTHING. More (ImportEvents, `recgen import`):
        COPY into a temporary table, one INSERT ... SELECT ... ON CONFLICT DO NOTHING,
        and, only when some rows were not inserted, one join comparing payload hashes.
        Another gateway inserting the same event_id makes the INSERT wait for its
        commit, then do nothing: exactly one of them stores it."""
        now = time.time()
        rows = [
            (ev.event_id, ev.user_id, ev.item_id, ev.type, ev.value, ev.ts, ev.request_id, ev.payload_hash())
            for ev in events
        ]
        if not rows:
            return 0
        if len(rows) == 1:
            return self._write(lambda conn: self._insert_one(conn, rows[0], now))
        return self._write(lambda conn: self._insert_many(conn, rows, now))

    @staticmethod
    def _insert_one(conn: psycopg.Connection[Any], row: tuple[Any, ...], now: float) -> int:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, value, ts, request_id,"
                " payload_hash, received_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (event_id) DO NOTHING RETURNING seq",
                (*row, now),
            )
            if cur.fetchone() is not None:
                return 1
            found = cur.execute("SELECT payload_hash FROM events WHERE event_id=%s", (row[0],)).fetchone()
        if found is not None and found[0] != row[7]:
            raise Conflict(f"event_id {row[0]!r} was stored with another payload", row[0], 0)
        return 0

    @staticmethod
    def _insert_many(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], now: float) -> int:
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TEMP TABLE import_batch (ord INTEGER NOT NULL, event_id TEXT NOT NULL,"
                " user_id TEXT NOT NULL, item_id TEXT NOT NULL, type TEXT NOT NULL,"
                " value DOUBLE PRECISION, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL,"
                " payload_hash TEXT NOT NULL) ON COMMIT DROP"
            )
            with cur.copy("COPY import_batch FROM STDIN") as copy:
                for i, row in enumerate(rows):
                    copy.write_row((i, *row))
            cur.execute(
                "INSERT INTO events (event_id, user_id, item_id, type, value, ts, request_id,"
                " payload_hash, received_at) SELECT event_id, user_id, item_id, type, value, ts,"
                " request_id, payload_hash, %s FROM import_batch ORDER BY ord"
                " ON CONFLICT (event_id) DO NOTHING",
                (now,),
            )
            stored = cur.rowcount
            if stored < len(rows):
                bad = cur.execute(
                    "SELECT b.ord, b.event_id FROM import_batch b JOIN events e USING (event_id)"
                    " WHERE e.payload_hash <> b.payload_hash ORDER BY b.ord LIMIT 1"
                ).fetchone()
                if bad is not None:
                    raise Conflict(f"event_id {bad[1]!r} was stored with another payload", bad[1], bad[0])
        return stored

    def _delete_user(self, user_id: str) -> tuple[int, int]:
        def delete(conn: psycopg.Connection[Any]) -> tuple[int, int]:
            events = conn.execute("DELETE FROM events WHERE user_id=%s", (user_id,)).rowcount
            impressions = conn.execute("DELETE FROM impressions WHERE user_id=%s", (user_id,)).rowcount
            conn.execute(
                "INSERT INTO forgotten VALUES (%s, %s)"
                " ON CONFLICT (user_id) DO UPDATE SET forgotten_at = EXCLUDED.forgotten_at",
                (user_id, time.time()),
            )
            return events, impressions

        return self._write(delete, "delete")

    def _write_impressions(self, rows: list[ImpressionRow]) -> int:
        def insert(conn: psycopg.Connection[Any]) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO impressions VALUES (%s,%s,%s,%s,%s) ON CONFLICT (request_id) DO NOTHING",
                    rows,
                )

        try:
            self._write(insert)
        except StoreUnavailable as e:  # impressions are best effort: never fail an answer
            LOG.warning("%d impressions not logged: %s", len(rows), e)
            return 0
        return len(rows)

    def add_catalog_changes_sync(self, changes: list[CatalogChange]) -> int:
        now = time.time()

        def append(conn: psycopg.Connection[Any]) -> int:
            # Identity values are handed out at INSERT, but transactions commit in
            # any order: without this lock, gateway A could take seq 7, B seq 8, B
            # commit, a worker read up to 8, then A commit 7 behind its back. The
            # lock (one appender at a time; readers are not blocked) is held until
            # COMMIT, so seqs become visible in order.
            conn.execute("LOCK TABLE catalog_changes IN SHARE ROW EXCLUSIVE MODE")
            last = 0
            with conn.cursor() as cur:
                for ch in changes:
                    cur.execute(
                        "INSERT INTO catalog_changes (op, item_id, title, text, categories, ts)"
                        " VALUES (%s,%s,%s,%s,%s,%s) RETURNING seq",
                        (ch.op, ch.item_id, ch.title, ch.text, json.dumps(list(ch.categories)), now),
                    )
                    row = cur.fetchone()
                    assert row is not None
                    last = int(row[0])
            return last

        return self._write(append)

    # ------------------------------------------------------------------ reads

    def recent_events_sync(self, user_id: str, limit: int) -> list[Event]:
        rows = self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE user_id=%s AND type != 'DISMISS'"
            " ORDER BY ts DESC, seq DESC LIMIT %s",
            (user_id, limit),
        )
        return [Event(*r) for r in rows]

    def dismissed_sync(self, user_id: str) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT item_id FROM events WHERE user_id=%s AND type='DISMISS'", (user_id,)
        )
        return [r[0] for r in rows]

    def seen_items_sync(self, user_id: str) -> list[str]:
        rows = self._read(
            "SELECT DISTINCT item_id FROM events WHERE user_id=%s AND type != 'DISMISS'", (user_id,)
        )
        return [r[0] for r in rows]

    def forgotten_at_sync(self, user_id: str) -> float:
        rows = self._read("SELECT forgotten_at FROM forgotten WHERE user_id=%s", (user_id,))
        return float(rows[0][0]) if rows else 0.0

    def forgotten_users_sync(self) -> dict[str, float]:
        return {r[0]: float(r[1]) for r in self._read("SELECT user_id, forgotten_at FROM forgotten")}

    def count_events_sync(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM events")[0][0])

    def event_ids_sync(self) -> list[str]:
        return [r[0] for r in self._read("SELECT event_id FROM events")]

    def impressions_sync(self, user_id: str) -> list[tuple[str, list[str], str]]:
        rows = self._read(
            "SELECT request_id, items, model_version FROM impressions WHERE user_id=%s", (user_id,)
        )
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]

    def catalog_changes_sync(self, after_seq: int = 0) -> list[CatalogChange]:
        rows = self._read(
            "SELECT op, item_id, title, text, categories, seq, ts FROM catalog_changes"
            " WHERE seq > %s ORDER BY seq",
            (after_seq,),
        )
        return [CatalogChange(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6]) for r in rows]

    def catalog_seq_sync(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM catalog_changes")[0][0])

    def all_events_sync(self) -> list[Event]:
        return [Event(*r) for r in self._read(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY seq")]

    def setting(self, name: str) -> str:
        """A server setting as the writer session sees it (`synchronous_commit`, ...)."""
        row = self._writer_conn().execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        return str(row[0])

    def _close_connections(self) -> None:
        if self._writer is not None:
            self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
