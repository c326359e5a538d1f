"""`recgen import`: feedback events from a CSV file straight into the state store.

The offline twin of the ImportEvents RPC, for history that arrived after the
serving model version was built, a backfill or a migration:

    recgen import --state var/state.db --events events.csv [--models models] [--batch 5000]

CSV with a header; columns `user_id,item_id,type` and optional
`event_id,value,timestamp,request_id` (any other column is an error):

- `type`: VIEW | CLICK | PURCHASE | RATE | DISMISS (any case); `value` the
  rating for RATE (0..5, required there);
- `timestamp`: unix seconds or RFC 3339; empty: the time of the import;
- `event_id`: the idempotency key; empty or absent: derived from the row's
  content (`csv-` + 32 hex digits of a SHA-256 over user, item, type, value,
  timestamp and request id as written), so running the same import twice
  stores nothing the second time, and rows identical in all of these are one
  event (counted as a duplicate). A row with no timestamp gets the time of the
  import it was first stored by.

Every row is checked with SendFeedback's rules (server/validation.py); with
`--models`, its item must be in the SERVING version's catalog or added by the
live catalog (UpsertItems) and not deleted since; without it item ids are not
checked. Rows are written in batches of `--batch`, each in one durable
transaction (`StateStore.add_events_bulk_sync`: the same bulk path as
ImportEvents). A bad row stops the import with `FILE:LINE: problem` before its
batch is written: the batches before it are durable and the message says how
many rows; re-running after the fix is safe (idempotent). An event_id stored
before with another payload stops it the same way.

The gateway may be running or stopped. SQLite allows one writer at a time:
each batch waits (up to 30 s) for the gateway's write in progress and the
gateway's writes wait for it. A running SQLite gateway keeps recent user
state in memory (`--user-cache`): users it holds answer without the imported
events until they leave that cache or the gateway restarts; use the
ImportEvents RPC (or `--user-cache 0`) to import into a running gateway.
PostgreSQL gateways keep no such cache.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Container, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recgen.v1 import recommender_pb2 as pb
    from server.state import Event, StateStore

COLUMNS = ("event_id", "user_id", "item_id", "type", "value", "timestamp", "request_id")
REQUIRED = ("user_id", "item_id", "type")
TYPES = ("VIEW", "CLICK", "PURCHASE", "RATE", "DISMISS")
MAX_UNIX_S = 7_289_654_400.0  # 2201-01-01T00:00:00Z: timestamps are years 1970..2200


class BadImport(ValueError):
    """A row or the file cannot be imported; the message is `FILE:LINE: problem`."""


@dataclass
class Tally:
    rows: int = 0
    stored: int = 0
    duplicates: int = 0
    batches: int = 0

    def durable(self) -> str:
        if not self.batches:
            return "nothing was stored"
        return (
            f"the {self.rows} rows before its batch are durable "
            f"({self.stored} stored, {self.duplicates} duplicates, {_batches(self.batches)})"
        )


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="load feedback events from a CSV file into the state store (idempotent by event_id)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--state",
        default=os.environ.get("RECGEN_STATE"),
        help="the serve --state value: a SQLite file or postgresql:// (env RECGEN_STATE); a URL "
        "with a password is refused here, because the command line is visible to every local "
        "user: give it through RECGEN_STATE or --state-file",
    )
    p.add_argument(
        "--state-file",
        default=os.environ.get("RECGEN_STATE_FILE"),
        help="read --state from FILE (its first line): how to give a password (env RECGEN_STATE_FILE)",
    )
    p.add_argument(
        "--events",
        required=True,
        help="CSV with a header: user_id,item_id,type and optional event_id,value,timestamp,request_id",
    )
    p.add_argument(
        "--models",
        help="model repository: item ids must be in its SERVING catalog (with the live catalog changes)",
    )
    p.add_argument("--batch", type=int, default=5000, help="rows per transaction (default 5000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def derived_event_id(
    user_id: str, item_id: str, kind: str, value: str, timestamp: str, request_id: str
) -> str:
    """`csv-` + 32 hex digits of SHA-256 over the row's fields as written (type upper-cased,
    value and timestamp stripped): the same row gives the same id in every run."""
    raw = json.dumps([user_id, item_id, kind, value, timestamp, request_id])
    return "csv-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def _catalog(models: str, store: StateStore) -> set[str]:
    """The item ids a gateway serving `models` accepts: SERVING's catalog, then the
    live catalog's change log in the state store on top."""
    from recgen.repository import ModelRepository

    ids = {it.item_id for it in ModelRepository(models).open(None, verify=False).catalog()}
    for ch in store.catalog_changes_sync(0):
        if ch.op == "DELETE":
            ids.discard(ch.item_id)
        else:
            ids.add(ch.item_id)
    return ids


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def read_rows(path: Path) -> Iterator[tuple[int, pb.SendFeedbackRequest, float | None]]:
    """(line, row, unix seconds or None) per CSV record, the CSV itself checked (columns,
    type names, numbers); the rules of SendFeedback are `events_from_pb`'s, per batch."""
    from recgen.v1 import recommender_pb2 as pb

    name = path.name
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise BadImport(f"{name}:1: empty file (expected a header: {','.join(COLUMNS)})")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in COLUMNS]
        if unknown:
            raise BadImport(f"{name}:1: unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise BadImport(f"{name}:1: missing column {missing[0]!r}")
        if len(set(header)) != len(header):
            raise BadImport(f"{name}:1: a column appears twice")
        at = {c: header.index(c) for c in header}
        width = len(header)
        i_event, i_user, i_item, i_type = at.get("event_id"), at["user_id"], at["item_id"], at["type"]
        i_value, i_ts, i_rid = at.get("value"), at.get("timestamp"), at.get("request_id")
        types = {t: pb.FeedbackType.Value("FEEDBACK_TYPE_" + t) for t in TYPES}
        for record in reader:
            line = reader.line_num
            if not record:
                continue  # a blank line
            if len(record) != width:
                raise BadImport(f"{name}:{line}: {len(record)} fields; the header has {width}")
            kind = record[i_type].strip().upper()
            if kind not in types:
                raise BadImport(f"{name}:{line}: type {record[i_type]!r} is not one of {', '.join(TYPES)}")
            value_text = record[i_value].strip() if i_value is not None else ""
            ts_text = record[i_ts].strip() if i_ts is not None else ""
            request_id = record[i_rid] if i_rid is not None else ""
            row = pb.SendFeedbackRequest(
                event_id=record[i_event] if i_event is not None else "",
                user_id=record[i_user],
                item_id=record[i_item],
                type=types[kind],
                request_id=request_id,
            )
            if value_text:
                try:
                    row.value = float(value_text)
                except ValueError:
                    raise BadImport(f"{name}:{line}: value {value_text[:64]!r} is not a number") from None
            unix: float | None = None
            if ts_text:
                try:
                    unix = float(ts_text)
                except ValueError:
                    row.timestamp = ts_text  # RFC 3339: SendFeedback's parser and limits
                else:
                    if not 0.0 <= unix < MAX_UNIX_S:  # also rejects NaN
                        raise BadImport(
                            f"{name}:{line}: timestamp {ts_text!r} is outside the years 1970..2200"
                        )
            if not row.event_id:
                row.event_id = derived_event_id(
                    row.user_id, row.item_id, kind, value_text, ts_text, request_id
                )
            yield line, row, unix


class _AnyItem:
    """No --models: item ids are not checked."""

    def __contains__(self, item_id: object) -> bool:
        return True


def _state(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The state store to write: --state-file's first line, else --state (from the command line
    only when it holds no password; RECGEN_STATE may hold one), as `serve` takes its secret."""
    from recgen.config.flags import holds_password

    if args.state_file:
        try:
            line = Path(args.state_file).read_text().splitlines()[:1]
        except OSError as e:
            raise ValueError(f"--state-file: {e.strerror}: {args.state_file}") from None
        if not line or not line[0].strip():
            raise ValueError(f"--state-file {args.state_file}: its first line is empty")
        return line[0].strip()
    if not args.state:
        raise ValueError("--state (or RECGEN_STATE, or --state-file) is required")
    on_command_line = any(a == "--state" or a.startswith("--state=") for a in argv)
    if on_command_line and holds_password(args.state):
        raise ValueError(
            "--state: the value holds a secret (a password), and the command line is visible to "
            "every local user: give it through RECGEN_STATE or --state-file"
        )
    return str(args.state)


def run_import(args: argparse.Namespace) -> int:
    from server.bulk_import import BadRow, events_from_pb
    from server.state import Conflict, StoreUnavailable, open_store

    try:
        state = _state(args, sys.argv)
    except ValueError as e:
        print(f"recgen import: {e}", file=sys.stderr)
        return 2
    path = Path(args.events)
    name = path.name
    if args.batch < 1:
        print("recgen import: --batch must be >= 1", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"recgen import: {path}: no such file", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        store = open_store(state)
    except StoreUnavailable as e:
        print(f"recgen import: {e}", file=sys.stderr)
        return 1
    tally = Tally()
    bar = None
    now = time.time()
    rows: list[pb.SendFeedbackRequest] = []
    times: list[float | None] = []
    lines: list[int] = []

    def check() -> list[Event]:
        try:
            return events_from_pb(rows, catalog, now, times)
        except BadRow as e:
            raise BadImport(f"{name}:{lines[e.index]}: {e.problem}") from None

    # One batch is written on a thread while the next is read: SQLite and the fsync run
    # without the GIL. Each batch is checked only after the one before it committed, so
    # what an error message calls durable is.
    writer = ThreadPoolExecutor(1, thread_name_prefix="import-writer")
    pending: list[tuple[Future[int], list[int]]] = []

    def settle() -> None:
        if not pending:
            return
        fut, at = pending.pop()
        try:
            stored = fut.result()
        except Conflict as e:
            line = at[e.index] if 0 <= e.index < len(at) else at[0]
            raise BadImport(
                f"{name}:{line}: event_id {e.event_id!r} was stored with another payload"
            ) from None
        tally.rows += len(at)
        tally.stored += stored
        tally.duplicates += len(at) - stored
        tally.batches += 1
        if bar is not None:
            bar.update(len(at))

    def write() -> None:
        settle()
        events = check()
        pending.append((writer.submit(store.add_events_bulk_sync, events), lines.copy()))
        rows.clear()
        times.clear()
        lines.clear()

    try:
        catalog: Container[str] = _catalog(args.models, store) if args.models else _AnyItem()
        if not args.quiet:
            try:
                from tqdm import tqdm
            except ImportError:  # the export extra is not installed: no bar
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=max(0, _count_lines(path) - 1), unit="rows", file=sys.stderr)
        try:
            for line, row, unix in read_rows(path):
                rows.append(row)
                times.append(unix)
                lines.append(line)
                if len(rows) >= args.batch:
                    write()
        except BadImport:
            settle()  # the batches before it: durable (or their conflict comes first)
            check()  # a row before it in the same batch may be bad too: the first one is named
            raise
        if rows:
            write()
        settle()
    except BadImport as e:
        if bar is not None:
            bar.close()
        print(
            f"{e}\nrecgen import: stopped; nothing of that row's batch was stored; {tally.durable()}",
            file=sys.stderr,
        )
        return 1
    except StoreUnavailable as e:
        if bar is not None:
            bar.close()
        print(f"recgen import: {e}; {tally.durable()}", file=sys.stderr)
        return 1
    finally:
        writer.shutdown(wait=True)  # a write in flight finishes (committed or not) before the store closes
        store.close()
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    print(
        f"recgen import: {name}: {tally.rows} rows, {tally.stored} stored, {tally.duplicates} duplicates"
        f" in {_batches(tally.batches)}, {dt:.1f} s ({tally.rows / max(dt, 1e-9):,.0f} rows/s)",
        flush=True,
    )
    return 0
