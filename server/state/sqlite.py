"""The embedded state store backend: one SQLite file in WAL mode (the default).

Durability: a write returns only after its transaction has committed with
`synchronous=FULL` in WAL mode, i.e. after the WAL has been fsync'ed; an
acknowledged event survives a crash of the process or of the OS. All writes
go through one writer connection on the writer thread (SQLite allows one
writer at a time anyway); reads use per-thread connections and never block
on it (WAL). One file serves one gateway host: several gateways share state
through the PostgreSQL backend instead.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value REAL,
    ts REAL NOT NULL,            -- the event's own time (unix seconds)
    request_id TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    payload_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts DESC, seq DESC);
CREATE TABLE IF NOT EXISTS impressions (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    items TEXT NOT NULL,         -- JSON list of item ids, in rank order
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS impressions_user ON impressions (user_id);
CREATE TABLE IF NOT EXISTS forgotten (   -- ForgetUser tombstones: kept for good
    user_id TEXT PRIMARY KEY,
    forgotten_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- the order workers apply them in
    op TEXT NOT NULL,            -- UPSERT | DELETE
    item_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    categories TEXT NOT NULL DEFAULT '[]',  -- JSON list
    ts REAL NOT NULL
);
"""


_INSERT_EVENT = (
    "INSERT INTO events (event_id, user_id, item_id, type, value, ts, request_id, received_at, payload_hash)"
    " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (event_id) DO NOTHING"
)


def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA secure_delete=ON")  # forgotten users leave no bytes in free pages
    return conn


class SQLiteStore(StateStore):
    def __init__(self, path: Path | str, synchronous: str = "FULL") -> None:
        assert synchronous in ("FULL", "NORMAL", "EXTRA"), synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self._writer = _connect(self.path, synchronous)
        self._writer.executescript(_SCHEMA)
        self._writer.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        self._local = threading.local()
        self._start_executors()

    def pragma(self, name: str) -> str:
        return str(self._reader().execute(f"PRAGMA {name}").fetchone()[0])

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self.synchronous)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    # ------------------------------------------------------------------ writes

    def _delete_user(self, user_id: str) -> tuple[int, int]:
        c = self._writer
        try:
            c.execute("BEGIN IMMEDIATE")
            events = c.execute("DELETE FROM events WHERE user_id=?", (user_id,)).rowcount
            impressions = c.execute("DELETE FROM impressions WHERE user_id=?", (user_id,)).rowcount
            c.execute("INSERT OR REPLACE INTO forgotten VALUES (?, ?)", (user_id, time.time()))
            c.execute("COMMIT")
        except sqlite3.Error as e:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise StoreUnavailable(f"state store cannot delete: {e}") from e
        return events, impressions

    def add_events_bulk_sync(self, events: list[Event]) -> int:
        """Many events in one transaction (one fsync); returns how many were stored now.

        The bulk path of ImportEvents and `recgen import` (and of one SendFeedback:
        a batch of one). One `executemany` of `INSERT ... ON CONFLICT (event_id) DO
        NOTHING`; only when some rows were not inserted, one query compares their
        payload hashes with the stored ones: the same payload is a duplicate, another
        is a Conflict naming the first such row, and nothing of the batch is stored.
        """
        now = time.time()
        rows = [
            (
                ev.event_id,
                ev.user_id,
                ev.item_id,
                ev.type,
                ev.value,
                ev.ts,
                ev.request_id,
                now,
                ev.payload_hash(),
            )
            for ev in events
        ]
        c = self._writer
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                stored = c.executemany(_INSERT_EVENT, rows).rowcount if rows else 0
                if stored < len(rows):
                    self._check_duplicates(c, rows)
                c.execute("COMMIT")
                return stored
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"state store cannot write: {e}") from e
        except sqlite3.DatabaseError as e:
            raise StoreUnavailable(f"state store error: {e}") from e

    @staticmethod
    def _check_duplicates(c: sqlite3.Connection, rows: list[tuple]) -> None:
        """Conflict for the first row whose event_id is stored with another payload."""
        ids = json.dumps([r[0] for r in rows])
        stored = dict(
            c.execute(
                "SELECT event_id, payload_hash FROM events"
                " WHERE event_id IN (SELECT value FROM json_each(?))",
                (ids,),
            ).fetchall()
        )
        for i, r in enumerate(rows):
            if stored.get(r[0]) != r[8]:
                raise Conflict(f"event_id {r[0]!r} was stored with another payload", r[0], i)

    def _write_impressions(self, rows: list[ImpressionRow]) -> int:
        c = self._writer
        try:
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT OR IGNORE INTO impressions VALUES (?,?,?,?,?)", rows)
            c.execute("COMMIT")
        except sqlite3.Error as e:  # impressions are best effort: never fail an answer
            if c.in_transaction:
                c.execute("ROLLBACK")
            LOG.warning("%d impressions not logged: %s", len(rows), e)
            return 0
        return len(rows)

    def add_catalog_changes_sync(self, changes: list[CatalogChange]) -> int:
        # One writer, and AUTOINCREMENT inside BEGIN IMMEDIATE: seqs commit in order.
        c = self._writer
        now = time.time()
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                last = 0
                for ch in changes:
                    cur = c.execute(
                        "INSERT INTO catalog_changes (op, item_id, title, text, categories, ts)"
                        " VALUES (?,?,?,?,?,?)",
                        (ch.op, ch.item_id, ch.title, ch.text, json.dumps(list(ch.categories)), now),
                    )
                    last = int(cur.lastrowid or 0)
                c.execute("COMMIT")
                return last
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreUnavailable(f"state store cannot write: {e}") from e

    # ------------------------------------------------------------------ reads

    def recent_events_sync(self, user_id: str, limit: int) -> list[Event]:
        rows = (
            self._reader()
            .execute(
                "SELECT event_id, user_id, item_id, type, value, ts, request_id FROM events "
                "WHERE user_id=? AND type != 'DISMISS' ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, limit),
            )
            .fetchall()
        )
        return [Event(*r) for r in rows]

    def dismissed_sync(self, user_id: str) -> list[str]:
        rows = (
            self._reader()
            .execute("SELECT DISTINCT item_id FROM events WHERE user_id=? AND type='DISMISS'", (user_id,))
            .fetchall()
        )
        return [r[0] for r in rows]

    def seen_items_sync(self, user_id: str) -> list[str]:
        rows = (
            self._reader()
            .execute("SELECT DISTINCT item_id FROM events WHERE user_id=? AND type != 'DISMISS'", (user_id,))
            .fetchall()
        )
        return [r[0] for r in rows]

    def forgotten_at_sync(self, user_id: str) -> float:
        sql = "SELECT forgotten_at FROM forgotten WHERE user_id=?"
        row = self._reader().execute(sql, (user_id,)).fetchone()
        return 0.0 if row is None else float(row[0])

    def forgotten_users_sync(self) -> dict[str, float]:
        rows = self._reader().execute("SELECT user_id, forgotten_at FROM forgotten")
        return {r[0]: float(r[1]) for r in rows}

    def count_events_sync(self) -> int:
        return int(self._reader().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def event_ids_sync(self) -> list[str]:
        return [r[0] for r in self._reader().execute("SELECT event_id FROM events")]

    def impressions_sync(self, user_id: str) -> list[tuple[str, list[str], str]]:
        rows = (
            self._reader()
            .execute("SELECT request_id, items, model_version FROM impressions WHERE user_id=?", (user_id,))
            .fetchall()
        )
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]

    def catalog_changes_sync(self, after_seq: int = 0) -> list[CatalogChange]:
        rows = (
            self._reader()
            .execute(
                "SELECT op, item_id, title, text, categories, seq, ts FROM catalog_changes"
                " WHERE seq > ? ORDER BY seq",
                (after_seq,),
            )
            .fetchall()
        )
        return [CatalogChange(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6]) for r in rows]

    def catalog_seq_sync(self) -> int:
        return int(self._reader().execute("SELECT COALESCE(MAX(seq), 0) FROM catalog_changes").fetchone()[0])

    def all_events_sync(self) -> list[Event]:
        rows = self._reader().execute(
            "SELECT event_id, user_id, item_id, type, value, ts, request_id FROM events ORDER BY seq"
        )
        return [Event(*r) for r in rows]

    def _close_connections(self) -> None:
        self._writer.close()
